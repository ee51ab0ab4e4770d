"""Fixtures shared by the test modules."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from farm.registry import RegistryClient

from .cli import run_farm, start_farm


@dataclass
class FarmHandle:
    """A local farm started for the test session, and ways to use it as a user does."""

    directory: Path
    env: dict[str, str]
    registry_address: str
    registries_conf: Path
    redis: redis.Redis
    registry: RegistryClient

    def cli(
        self, *arguments: str, env: dict[str, str] | None = None, timeout: float = 900
    ) -> subprocess.CompletedProcess:
        """Run the `farm` command with this farm's environment (plus `env`)."""
        return run_farm({**self.env, **(env or {})}, *arguments, timeout=timeout)

    def popen(self, *arguments: str) -> subprocess.Popen:
        """Start the `farm` command in the background with this farm's environment."""
        return start_farm(self.env, *arguments)


@pytest.fixture(scope="session")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmHandle]:
    """Start Redis, a registry and two workers on loopback, with a busybox base image.

    Skips when Buildah, Redis or the registry is not installed.
    """
    from farm.base_images import make_busybox_image
    from farm.local import LocalFarm

    for binary in ("buildah", "redis-server", "docker-registry"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed")

    directory = tmp_path_factory.mktemp("farm")
    local = LocalFarm(directory)
    state = local.start(workers=2)
    try:
        registry = RegistryClient(state.registry, insecure=True)
        make_busybox_image(registry, directory / "base-images")
        yield FarmHandle(
            directory=directory,
            env=state.environment(),
            registry_address=state.registry,
            registries_conf=local.registries_conf,
            redis=redis.Redis.from_url(state.redis_url),
            registry=registry,
        )
    finally:
        local.stop()


@pytest.fixture(scope="session")
def debian_image(farm: FarmHandle) -> str:
    """Make and push debian:bookworm (debootstrap from Debian's mirror, about 30 s)."""
    from farm.base_images import make_debian_image

    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed")
    return make_debian_image(farm.registry, farm.directory / "base-images")
