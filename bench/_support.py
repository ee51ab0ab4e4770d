"""Shared set-up for the benchmarks: a local farm and a description of the machine."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from farm import redis_keys as keys
from farm.base_images import make_busybox_image
from farm.local import LocalFarm, LocalFarmState
from farm.log import configure_logging
from farm.registry import RegistryClient
from workers.buildah import Storage

FARM = str(Path(sys.executable).with_name("farm"))

# The tables go to standard output; the farm's own logs only when something is wrong.
configure_logging("WARNING")

# The mode, storage driver and isolation of the workers this process
# started, kept for `machine_line` because each table is printed after its
# farm has stopped.
_worker_setups: set[str] = set()


@contextlib.contextmanager
def local_farm(workers: int) -> Iterator[tuple[LocalFarm, LocalFarmState]]:
    """Start a farm of `workers` workers with a busybox base image; stop it afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    local = LocalFarm(directory)
    state = local.start(workers=workers)
    try:
        with RegistryClient(state.registry, insecure=True) as registry:
            make_busybox_image(registry, directory / "base-images")
        _worker_setups.update(_read_worker_setups(state.redis_url))
        yield local, state
    finally:
        local.stop()
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class OwnBuildah:
    """A `buildah` command line and environment over a storage outside every worker, for plain runs."""

    command: list[str]
    env: dict[str, str]
    context: Path

    def run(self, *arguments: str) -> float:
        """Run one Buildah verb and return its wall time in seconds."""
        started = time.perf_counter()
        subprocess.run([*self.command, *arguments], env=self.env, check=True, capture_output=True)
        return time.perf_counter() - started


@contextlib.contextmanager
def own_buildah(registries_conf: Path) -> Iterator[OwnBuildah]:
    """Yield Buildah with an overlay storage and a context directory of its own, and remove its images afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-buildah-") as scratch:
        storage = Storage(Path(scratch) / "root", Path(scratch) / "run", "overlay")
        context = Path(scratch) / "context"
        context.mkdir()
        buildah = OwnBuildah(
            ["buildah", *storage.global_flags()],
            {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(registries_conf)},
            context,
        )
        try:
            yield buildah
        finally:
            subprocess.run([*buildah.command, "rmi", "--all", "--force"], capture_output=True, check=False)


def run_farm(state: LocalFarmState, *arguments: str) -> tuple[float, subprocess.CompletedProcess]:
    """Run the `farm` command against `state`; return its wall time in seconds and its result."""
    started = time.perf_counter()
    result = subprocess.run(
        [FARM, *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, **state.environment()},
        check=False,
    )
    return time.perf_counter() - started, result


@dataclass
class StageSpan:
    """When one stage of a build was queued, started and finished, in epoch milliseconds."""

    stage: str
    worker: str
    queued: int
    started: int
    finished: int

    @property
    def waited(self) -> int:
        return self.started - self.queued

    @property
    def ran(self) -> int:
        return self.finished - self.started


def stage_timeline(redis_url: str, build_id: str) -> list[StageSpan]:
    """Read a build's events stream into one span per stage that was built, in start order.

    Stream ids are millisecond times from Redis's clock, which on one
    machine is the clock `time.time()` reads too.
    """
    client = redis.Redis.from_url(redis_url)
    queued: dict[str, int] = {}
    started: dict[str, tuple[int, str]] = {}
    spans = []
    for event_id, fields in client.xrange(keys.events(build_id)):
        millis = int(event_id.decode().split("-")[0])
        kind = fields.get(b"type", b"").decode()
        stage = fields.get(b"stage", b"").decode()
        if kind == "queued":
            queued[stage] = millis
        elif kind == "started" and stage in queued:
            started[stage] = (millis, fields.get(b"worker", b"").decode())
        elif kind == "built" and stage in started:
            start, worker = started.pop(stage)
            spans.append(StageSpan(stage, worker, queued.pop(stage), start, millis))
    return sorted(spans, key=lambda span: span.started)


def _read_worker_setups(redis_url: str) -> set[str]:
    """Return each live worker's mode, storage driver and isolation as one string."""
    client = redis.Redis.from_url(redis_url)
    setups = set()
    for key in client.scan_iter(match=keys.worker("*"), _type="string"):
        profile = json.loads(client.get(key) or "{}")
        if "mode" in profile:
            setups.add(f"{profile['mode']}, {profile['driver']} storage, {profile['isolation']} isolation")
    return setups


def machine_line() -> str:
    """Describe the machine the figures come from: cores, Python, Buildah, and how the workers build."""
    buildah = subprocess.run(
        ["buildah", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    line = f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, {buildah}"
    if _worker_setups:
        line += f"; workers: {'; '.join(sorted(_worker_setups))}"
    return line
