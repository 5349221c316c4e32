"""docker/compose.cpu.yaml, unchanged, brought up by podman-compose on the image the tests built: the published
port serves the shipped model, real crops enrol and match, the image's HEALTHCHECK passes in the compose
container, and `down` keeps the gallery's named volume for the next `up`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .conftest import REPO
from .podman import Podman, form_files, free_port, wait_healthy

pytestmark = pytest.mark.slow
COMPOSE_FILE = REPO / "docker" / "compose.cpu.yaml"


@dataclass
class Project:
    podman: Podman
    name: str
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['GENREID_PUBLISH_PORT']}"

    @property
    def container(self) -> str:
        return f"{self.name}_genreid_1"  # podman-compose's name for the service's first container

    @property
    def volume(self) -> str:
        return f"{self.name}_gallery"

    def compose(self, *args: str) -> None:
        self.podman.compose("-p", self.name, "-f", str(COMPOSE_FILE), *args, env=self.env)


@pytest.fixture
def project(podman: Podman, cpu_image: str) -> Iterator[Project]:
    # A project name of the test's own, so a gallery of a real `genreid` project on this host is never touched.
    project = Project(podman, f"genreid-test-{uuid.uuid4().hex[:8]}", {"GENREID_PUBLISH_PORT": str(free_port())})
    try:
        yield project
    finally:
        project.compose("down")
        podman.run("volume", "rm", "-f", project.volume, check=False)


def test_compose_up_serves_and_down_keeps_the_gallery(project: Project, crops: dict[str, list[Path]]) -> None:
    project.compose("up", "-d")
    health = wait_healthy(project.url, container=project.podman, name=project.container)
    assert health["model_id"] == json.loads((REPO / "models" / "model.json").read_text())["model_id"]
    people = list(crops)[:2]
    enrolled = [(person, crop) for person in people for crop in crops[person][:3]]
    response = httpx.post(f"{project.url}/gallery", files=form_files([crop for _, crop in enrolled]),
                          data={"person_id": [person for person, _ in enrolled]}, timeout=60)
    assert response.status_code == 201, response.text
    query = crops[people[0]][3]
    answer = httpx.post(f"{project.url}/query", params={"k": 3, "include_noise": "false"},
                        files={"file": (query.name, query.read_bytes(), "image/jpeg")}, timeout=60)
    assert answer.status_code == 200 and answer.json()["matches"][0]["person_id"] == people[0], answer.text
    project.podman.run("healthcheck", "run", project.container)  # the image's HEALTHCHECK, as compose runs it

    project.compose("down")
    assert project.podman.run("volume", "exists", project.volume, check=False).returncode == 0, "down kept no volume"
    project.compose("up", "-d")
    wait_healthy(project.url, container=project.podman, name=project.container)
    counts = httpx.get(f"{project.url}/gallery", timeout=10).json()
    assert counts == {"entries": len(enrolled), "persons": len(people)}
