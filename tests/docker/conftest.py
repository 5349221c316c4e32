"""The CPU image, really built from docker/Dockerfile.cpu with podman, for the tests that run it.

Without podman, runc, debootstrap and podman-compose these tests skip, unless REQUIRE_CONTAINER_TESTS=1 (CI sets
it, after installing them), where they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .podman import Podman, missing_tools

REPO = Path(__file__).resolve().parents[2]
CPU_DOCKERFILE = REPO / "docker" / "Dockerfile.cpu"
# The name docker/compose.cpu.yaml gives the image, so that compose runs what the tests built.
CPU_IMAGE = "genreid:cpu"
SUBSET = REPO.parent / "shared" / "data" / "market1501-subset"
IMAGE_SIZES: dict[str, int] = {}


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    if missing := missing_tools():
        message = f"the image tests need {', '.join(missing)} (apt-get install podman runc debootstrap podman-compose)"
        if os.environ.get("REQUIRE_CONTAINER_TESTS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return Podman(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="session")
def cpu_image(podman: Podman) -> Iterator[str]:
    """docker/Dockerfile.cpu built unchanged from the repository root, on the stand-in base."""
    podman.ensure_standin()
    podman.build(dockerfile=CPU_DOCKERFILE, tag=CPU_IMAGE, context=REPO)
    IMAGE_SIZES[CPU_IMAGE] = podman.image_size(CPU_IMAGE)
    yield CPU_IMAGE


@pytest.fixture(scope="session")
def crops() -> dict[str, list[Path]]:
    """Real Market-1501 crops of three people (gallery crops of the subset's test split), by person."""
    if not SUBSET.is_dir():
        pytest.skip("../shared/data/market1501-subset is absent")
    by_person: dict[str, list[Path]] = {}
    for crop in sorted((SUBSET / "bounding_box_test").glob("*.jpg")):
        by_person.setdefault(crop.name.split("_")[0], []).append(crop)
    people = [person for person, files in by_person.items() if len(files) >= 4][:3]
    return {person: by_person[person][:4] for person in people}


def pytest_terminal_summary(terminalreporter) -> None:
    for image, size in IMAGE_SIZES.items():
        terminalreporter.write_line(f"image {image}: {size / 1e6:.0f} MB")
