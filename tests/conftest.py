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
    worker_metrics_ports: list[int]
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

    Each worker serves Prometheus metrics on its own loopback port.

    Skips when Buildah, Redis or the registry is not installed.
    """
    from farm.base_images import make_busybox_image
    from farm.local import LocalFarm

    for binary in ("buildah", "redis-server", "docker-registry"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed")

    directory = tmp_path_factory.mktemp("farm")
    local = LocalFarm(directory)
    state = local.start(workers=2, metrics=True)
    try:
        registry = RegistryClient(state.registry, insecure=True)
        make_busybox_image(registry, directory / "base-images")
        yield FarmHandle(
            directory=directory,
            env=state.environment(),
            worker_metrics_ports=[s.metrics_port for s in state.services if s.metrics_port],
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


@pytest.fixture(scope="session")
def fleet_metrics(farm: FarmHandle) -> Iterator[int]:
    """Run `farm metrics` on a free loopback port for the session; yield the port."""
    import socket
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = farm.popen("metrics", "--port", str(port), "--address", "127.0.0.1")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"farm metrics did not start: {process.stderr.read()}") from None
                time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
