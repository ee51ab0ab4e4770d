"""A stage whose Buildah process hangs past the worker's stage timeout is killed and failed.

The test starts a farm of its own whose single worker has a stage
timeout of a few seconds, and builds a stage that sleeps for ten minutes.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.buildah import leftover_mounts

from .chaos import ChaosFarm, start_chaos_farm, unique_token, write_context

STAGE_TIMEOUT = "5"


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosFarm]:
    yield from start_chaos_farm(
        tmp_path_factory.mktemp("stage-timeout-farm"), ["w1"], {"FARM_STAGE_TIMEOUT": STAGE_TIMEOUT}
    )


def _storage_roots(chaos: ChaosFarm) -> list[Path]:
    return sorted((chaos.local.directory / "workers" / "w1").glob("storage-*"))


def test_hung_stage_killed_at_timeout(chaos: ChaosFarm, tmp_path: Path) -> None:
    token = unique_token()
    context = write_context(tmp_path / "context", f"FROM busybox\nRUN echo {token} && sleep 600\n")

    started = time.monotonic()
    result = chaos.cli("build", str(context), timeout=300)
    seconds = time.monotonic() - started

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{context}/Dockerfile:2" in result.stdout
    assert f"stage timed out after {STAGE_TIMEOUT} s (farm-worker --stage-timeout)" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    # Far below the 600 s the step would sleep.
    assert seconds < 120
    roots = _storage_roots(chaos)
    assert roots
    for root in roots:
        run_root = root.with_name(root.name.replace("storage-", "run-", 1))
        containers = subprocess.run(
            ["buildah", "--root", str(root), "--runroot", str(run_root), "containers", "--quiet"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert containers.stdout.strip() == "", containers.stdout
        assert leftover_mounts(root) == []
    assert token not in _process_commands()
    print(f"build failed after {seconds:.1f} s with a {STAGE_TIMEOUT} s stage timeout")


def _process_commands() -> str:
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
