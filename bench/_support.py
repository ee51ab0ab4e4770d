"""Shared set-up for the benchmarks: a local farm and a description of the machine."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from farm.base_images import make_busybox_image
from farm.local import LocalFarm, LocalFarmState
from farm.log import configure_logging
from farm.registry import RegistryClient

FARM = str(Path(sys.executable).with_name("farm"))

# The tables go to standard output; the farm's own logs only when something is wrong.
configure_logging("WARNING")


@contextlib.contextmanager
def local_farm(workers: int) -> Iterator[tuple[LocalFarm, LocalFarmState]]:
    """Start a farm of `workers` workers with a busybox base image; stop it afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    local = LocalFarm(directory)
    state = local.start(workers=workers)
    try:
        with RegistryClient(state.registry, insecure=True) as registry:
            make_busybox_image(registry, directory / "base-images")
        yield local, state
    finally:
        local.stop()
        shutil.rmtree(directory, ignore_errors=True)


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


def machine_line() -> str:
    """Describe the machine the figures come from: cores, Python, Buildah."""
    buildah = subprocess.run(
        ["buildah", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, {buildah}"
