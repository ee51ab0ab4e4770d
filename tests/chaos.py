"""A farm of its own for tests that kill or restart its processes.

The session's farm stays untouched: each chaos test module starts Redis,
a registry and workers in a directory of its own, signals only the
processes recorded there (by PID), and stops them all at the end.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

from farm import redis_keys as keys
from farm.base_images import make_busybox_image
from farm.local import LocalFarm, LocalFarmState
from farm.registry import RegistryClient

from .cli import run_farm, start_farm


@dataclass
class ChaosFarm:
    """A local farm whose services a test may kill, stop and restart."""

    local: LocalFarm
    state: LocalFarmState
    registry: RegistryClient
    worker_env: dict[str, str]

    @property
    def env(self) -> dict[str, str]:
        return self.state.environment()

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.state.redis_url, socket_connect_timeout=2)

    def cli(self, *arguments: str, env: dict[str, str] | None = None, timeout: float = 600):
        return run_farm({**self.env, **(env or {})}, *arguments, timeout=timeout)

    def popen(self, *arguments: str):
        return start_farm(self.env, *arguments)

    def add_worker(self, name: str) -> None:
        self.local.add_worker(name, self.worker_env)

    def worker_log(self, name: str) -> str:
        return (self.local.directory / "logs" / f"worker-{name}.log").read_text(errors="replace")

    def wait_running(self, timeout: float = 120) -> tuple[str, str, str]:
        """Wait until some stage is marked running; return its build id, stage id and worker name."""
        client = self.redis
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for field, holder in client.hgetall(keys.running()).items():
                build_id, _, stage_id = field.decode().partition("/")
                worker_id = json.loads(holder)["worker"]
                return build_id, stage_id, worker_name(worker_id)
            time.sleep(0.1)
        raise AssertionError(f"no stage started within {timeout} s")

    def wait_event(self, build_id: str, event_type: str, timeout: float = 120) -> dict[str, str]:
        """Wait for the first event of `event_type` in a build's stream; return its fields."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events(build_id):
                if event["type"] == event_type:
                    return event
            time.sleep(0.1)
        raise AssertionError(f"no {event_type} event in build {build_id} within {timeout} s")

    def events(self, build_id: str) -> list[dict[str, str]]:
        entries = self.redis.xrange(keys.events(build_id))
        return [{k.decode(): v.decode() for k, v in fields.items()} for _id, fields in entries]


def worker_name(worker_id: str) -> str:
    """Return the local farm's worker name (`w1`) of a worker id (`<host>-w1`)."""
    return worker_id.removeprefix(f"{socket.gethostname()}-")


def start_chaos_farm(directory: Path, workers: list[str], worker_env: dict[str, str]) -> Iterator[ChaosFarm]:
    """Start a farm with the named workers and a busybox image; stop everything afterwards."""
    local = LocalFarm(directory)
    try:
        state = local.start(workers=0)
        for name in workers:
            local.add_worker(name, worker_env)
        state = local.load()
        with RegistryClient(state.registry, insecure=True) as registry:
            make_busybox_image(registry, directory / "base-images")
            yield ChaosFarm(local, state, registry, worker_env)
    finally:
        local.stop()
        unmount_below(directory)


def unmount_below(directory: Path) -> None:
    """Unmount what the farm's workers left mounted below `directory`, deepest first.

    Buildah's overlay driver mounts its storage root on itself, and a
    worker killed mid-stage leaves its container's overlay mounted.
    """
    prefix = str(directory.resolve()) + "/"
    mounts = [p.mountpoint for p in psutil.disk_partitions(all=True) if p.mountpoint.startswith(prefix)]
    for mountpoint in sorted(set(mounts), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mountpoint], check=False, capture_output=True)


def unique_token() -> str:
    """Return a token that makes a stage's content key new, so it is built, not reused."""
    return uuid.uuid4().hex[:12]


def write_context(root: Path, dockerfile: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    return root
