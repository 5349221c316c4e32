"""docker/Dockerfile.cpu, built unchanged with podman and run as `docker run` would: the shipped model answers,
real crops enrol and match through the published port, the gallery in its named volume survives a restart and a
kill -9, the HEALTHCHECK passes, and the service runs as the image's unprivileged user."""

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
IMAGE_SIZE_LIMIT = 1_500_000_000  # bytes: a CPU image with no torch in it; the terminal summary reports the size


@dataclass
class Container:
    podman: Podman
    name: str
    volume: str
    url: str

    def health(self) -> dict:
        return wait_healthy(self.url, container=self.podman, name=self.name)

    def count(self) -> int:
        return httpx.get(f"{self.url}/gallery", timeout=10).json()["entries"]


@pytest.fixture(scope="module")
def container(podman: Podman, cpu_image: str) -> Iterator[Container]:
    suffix = uuid.uuid4().hex[:8]
    name, volume, port = f"genreid-test-{suffix}", f"genreid-test-gallery-{suffix}", free_port()
    podman.run("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", "-v", f"{volume}:/var/lib/genreid",
               cpu_image)
    try:
        yield Container(podman, name, volume, f"http://127.0.0.1:{port}")
    finally:
        podman.run("rm", "-f", name, check=False)
        podman.run("volume", "rm", "-f", volume, check=False)


def test_the_image_serves_the_shipped_model(container: Container) -> None:
    health = container.health()
    shipped = json.loads((REPO / "models" / "model.json").read_text())
    assert health["models_loaded"] and health["model_id"] == shipped["model_id"]
    assert health["models_dir"] == "/opt/genreid/models"
    assert health["gallery"] == {"backend": "embedded", "location": "/var/lib/genreid", "faiss_device": "cpu"}
    assert health["precision"]["inv_id"] == "int8", "a CPU serves the INT8 Inv-Id"


def test_real_crops_enrol_and_match_through_the_published_port(container: Container,
                                                               crops: dict[str, list[Path]]) -> None:
    container.health()
    before = container.count()
    people = list(crops)
    enrolled = [(person, crop) for person in people for crop in crops[person][:3]]
    response = httpx.post(f"{container.url}/gallery", files=form_files([crop for _, crop in enrolled]),
                          data={"person_id": [person for person, _ in enrolled]}, timeout=60)
    assert response.status_code == 201, response.text
    assert response.json()["added"] == len(enrolled) and container.count() == before + len(enrolled)
    for person in people:
        query = crops[person][3]  # a crop of each person that was not enrolled
        answer = httpx.post(f"{container.url}/query", params={"k": 3, "include_noise": "false"},
                            files={"file": (query.name, query.read_bytes(), "image/jpeg")}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["matches"][0]["person_id"] == person, answer.json()["matches"]


def test_the_gallery_survives_a_restart_and_a_kill_9(container: Container, crops: dict[str, list[Path]]) -> None:
    container.health()
    person, files = next(iter(crops.items()))
    response = httpx.post(f"{container.url}/gallery", files=form_files(files[:1]), data={"person_id": [person]},
                          timeout=60)
    assert response.status_code == 201, response.text
    acknowledged = container.count()
    container.podman.run("restart", container.name)
    container.health()
    assert container.count() == acknowledged
    container.podman.run("kill", "--signal", "KILL", container.name)
    container.podman.run("start", container.name)
    container.health()
    assert container.count() == acknowledged, "an acknowledged enrolment was lost to kill -9"


def test_the_healthcheck_passes_and_the_service_is_unprivileged(container: Container) -> None:
    container.health()
    container.podman.run("healthcheck", "run", container.name)  # exits non-zero when unhealthy
    status = container.podman.run("inspect", "--format", "{{.State.Health.Status}}", container.name).stdout.strip()
    assert status == "healthy"
    # PID 1 is `genreid serve` itself (no init here): its real and effective user ids are the image's user.
    uids = container.podman.run("exec", container.name, "grep", "^Uid:", "/proc/1/status").stdout.split()[1:]
    assert set(uids) == {"10001"}, uids
    owner = container.podman.run("exec", container.name, "stat", "-c", "%u", "/var/lib/genreid").stdout.strip()
    assert owner == "10001", "the named volume must belong to the service's user"


def test_the_image_carries_no_torch_and_stays_small(podman: Podman, cpu_image: str) -> None:
    result = podman.run("run", "--rm", cpu_image, "python", "-c",
                        "import importlib.util as u; print(u.find_spec('torch') is None,"
                        " u.find_spec('genreid.training') is None,"
                        " u.find_spec('service') is None, u.find_spec('genreid.service').origin)")
    no_torch, no_training, no_bare_service, service = result.stdout.split(maxsplit=3)
    assert no_torch == no_training == no_bare_service == "True", result.stdout
    assert "site-packages/genreid/service/" in service, "the service is installed as genreid.service, not editable"
    assert podman.image_size(cpu_image) < IMAGE_SIZE_LIMIT
