"""Podman as the image tests drive it: this host's settings, the stand-in base image, builds and containers.

No Docker engine runs on the project's machines, and no registry image can be pulled; Debian's podman builds and
runs the images instead. Everything here is about the host, never about the images: the Dockerfiles and compose
files are used as they are (docs/DOCKER.md, "Building and running the images with podman").

- podman's default ulimits exceed this host's hard limits and crun refuses its cgroups: a containers.conf of the
  harness's own (CONTAINERS_CONF) clears the ulimits and picks runc.
- `python:3.11.15-slim-bookworm`, the CPU image's base, is made from Debian's packages with debootstrap (bookworm,
  its python3.11 with pip and venv, `python`/`pip` on PATH, no EXTERNALLY-MANAGED marker) and tagged with the
  official name, so `FROM` finds it locally. It is cached in podman's storage, labelled with its recipe.
- Builds reach Debian's and PyPI's indexes over the host network, trusting the host's CA bundle (mounted into the
  build with a pip.conf that names it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

STANDIN = "docker.io/library/python:3.11.15-slim-bookworm"
STANDIN_SUITE = "bookworm"
STANDIN_PACKAGES = ("python3", "python3-pip", "python3-venv")
STANDIN_MIRROR = "http://deb.debian.org/debian"
# What the official image sets that a plain Debian root lacks (its `python`/`pip` live in /usr/local/bin).
STANDIN_CHANGES = ('CMD ["python3"]', "ENV LANG=C.UTF-8")
STANDIN_LABEL = "genreid.standin"
CONTAINERS_CONF = """\
[containers]
default_ulimits = []
pids_limit = 0

[engine]
runtime = "runc"
"""
HOST_CA_BUNDLE = Path(os.environ.get("SSL_CERT_FILE") or os.environ.get("PIP_CERT") or
                      "/etc/ssl/certs/ca-certificates.crt")
TOOLS = ("podman", "runc", "debootstrap", "podman-compose")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def standin_recipe() -> str:
    """A short hash of what the stand-in is made of: a changed recipe makes a new one."""
    text = json.dumps([STANDIN, STANDIN_SUITE, STANDIN_PACKAGES, STANDIN_MIRROR, STANDIN_CHANGES])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Podman:
    """podman with this host's settings; `workdir` holds the harness's own configuration files."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "containers.conf").write_text(CONTAINERS_CONF)
        (workdir / "pip.conf").write_text("[global]\ncert = /run/host-ca.crt\ndisable-pip-version-check = true\n")
        self.env = {**os.environ, "CONTAINERS_CONF": str(workdir / "containers.conf")}

    def run(self, *args: str, check: bool = True, timeout: float = 120, program: str = "podman",
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([program, *args], env={**self.env, **(env or {})}, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{program} {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def image_label(self, image: str, label: str) -> str | None:
        result = self.run("image", "inspect", "--format", "{{json .Labels}}", image, check=False)
        if result.returncode != 0:
            return None
        return (json.loads(result.stdout.strip() or "null") or {}).get(label)

    def ensure_standin(self) -> str:
        """The stand-in for the CPU image's base, made once per recipe (about a minute) and kept."""
        recipe = standin_recipe()
        if self.image_label(STANDIN, STANDIN_LABEL) == recipe:
            return STANDIN
        with tempfile.TemporaryDirectory(prefix="genreid-standin-") as tmp:
            root = Path(tmp) / "root"
            subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(STANDIN_PACKAGES)}",
                            STANDIN_SUITE, str(root), STANDIN_MIRROR], check=True, capture_output=True, timeout=900)
            (root / "usr/local/bin/python").symlink_to("/usr/bin/python3")
            (root / "usr/local/bin/pip").symlink_to("/usr/bin/pip3")
            for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
                marker.unlink()
            for cached in [*root.glob("var/cache/apt/archives/*.deb"), *root.glob("var/lib/apt/lists/*_*")]:
                cached.unlink()
            changes = [arg for change in (*STANDIN_CHANGES, f"LABEL {STANDIN_LABEL}={recipe}")
                       for arg in ("--change", change)]
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            subprocess.run(["podman", "import", *changes, "-", STANDIN], stdin=tar.stdout, env=self.env,
                           check=True, capture_output=True, timeout=600)
            assert tar.wait(timeout=60) == 0
        return STANDIN

    def build(self, *, dockerfile: Path, tag: str, context: Path) -> None:
        """`docker build -f DOCKERFILE -t TAG CONTEXT`, with the host's network and CA; layers are cached."""
        self.run("build", "--format", "docker", "--pull=never", "--network", "host",
                 "--volume", f"{HOST_CA_BUNDLE}:/run/host-ca.crt:ro",
                 "--volume", f"{self.workdir / 'pip.conf'}:/etc/pip.conf:ro",
                 "-f", str(dockerfile), "-t", tag, str(context), timeout=1500)

    def image_size(self, image: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())

    def compose(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300):
        return self.run(*args, program="podman-compose", env=env, timeout=timeout)


def wait_healthy(url: str, *, seconds: float = 120, container: Podman | None = None, name: str = "") -> dict:
    """/health's body once it answers 200 (a container's log in the failure message)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            response = httpx.get(f"{url}/health", timeout=5)
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            log = container.run("logs", name, check=False).stderr[-3000:] if container and name else ""
            raise AssertionError(f"{url}/health did not answer within {seconds:.0f} s\n{log}")
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def form_files(crops: Sequence[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (crop.name, crop.read_bytes(), "image/jpeg")) for crop in crops]
