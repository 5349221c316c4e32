"""What pyproject.toml cannot say: `service/` and `training/` install under one top-level name, as
`genreid.service` and `genreid.training`, each only where its folder exists (the service images carry no
training code). Everything else is in pyproject.toml."""

from pathlib import Path

from setuptools import find_packages, setup

ROOTS = [root for root in ("service", "training") if (Path(__file__).parent / root / "__init__.py").is_file()]

setup(
    packages=[f"genreid.{name}" for name in find_packages(include=[f"{root}*" for root in ROOTS])],
    package_dir={f"genreid.{root}": root for root in ROOTS},
)
