"""Worker loss: a killed worker's stage runs again elsewhere, a stopped one finishes its stage.

These tests kill and stop workers of a farm of their own (see chaos.py).
Its workers use a visibility timeout of a few seconds, so Redis hands
every unacknowledged message to another worker while its stage still runs.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .chaos import ChaosFarm, start_chaos_farm, unique_token, write_context
from .images import image_files

# Short enough that a stage of a few seconds outlives it several times.
VISIBILITY_TIMEOUT = "3"
# A stage held by a worker whose heartbeat stopped is re-queued within this.
REQUEUE_LIMIT_SECONDS = 30


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosFarm]:
    yield from start_chaos_farm(
        tmp_path_factory.mktemp("worker-loss-farm"),
        ["w1", "w2"],
        {"FARM_VISIBILITY_TIMEOUT": VISIBILITY_TIMEOUT},
    )


def _two_stage_dockerfile(token: str, seconds: int) -> str:
    return (
        "FROM busybox AS slow\n"
        f"RUN sleep {seconds} && echo {token} > /marker\n"
        "\n"
        "FROM busybox\n"
        "COPY --from=slow /marker /marker\n"
    )


def _started_on(chaos: ChaosFarm, build_id: str, stage_id: str) -> list[str]:
    return [
        event["worker"]
        for event in chaos.events(build_id)
        if event["type"] == "started" and event["stage"] == stage_id
    ]


def test_killed_worker_stage_requeued(chaos: ChaosFarm, tmp_path: Path) -> None:
    token = unique_token()
    context = write_context(tmp_path / "context", _two_stage_dockerfile(token, 8))
    tag = f"{chaos.state.registry}/chaos/killed:{token}"
    build = chaos.popen("build", "-t", tag, str(context))

    build_id, stage_id, victim = chaos.wait_running()
    chaos.local.signal_service(f"worker-{victim}", signal.SIGKILL, group=True)
    killed_at = time.monotonic()
    assert chaos.local.wait_stopped(f"worker-{victim}", timeout=30)

    requeued = chaos.wait_event(build_id, "requeued", timeout=60)
    delay = time.monotonic() - killed_at
    stdout, stderr = build.communicate(timeout=300)

    assert build.returncode == 0, stdout + stderr
    assert requeued["stage"] == stage_id
    assert delay < REQUEUE_LIMIT_SECONDS
    workers = _started_on(chaos, build_id, stage_id)
    assert len(workers) == 2
    assert workers[0] != workers[1]
    assert image_files(chaos.registry, tag)["/marker"].content == f"{token}\n".encode()

    # The worker comes back under the same name; its old stage stays orphaned.
    chaos.add_worker(victim)


def test_long_stage_not_started_twice(chaos: ChaosFarm, tmp_path: Path) -> None:
    token = unique_token()
    context = write_context(tmp_path / "context", _two_stage_dockerfile(token, 12))
    tag = f"{chaos.state.registry}/chaos/long:{token}"
    build = chaos.popen("build", "-t", tag, str(context))

    build_id, stage_id, _worker = chaos.wait_running()
    stdout, stderr = build.communicate(timeout=300)

    assert build.returncode == 0, stdout + stderr
    assert len(_started_on(chaos, build_id, stage_id)) == 1
    logs = chaos.worker_log("w1") + chaos.worker_log("w2")
    # The idle worker received the message again after the visibility
    # timeout and refused it.
    assert "stage skipped: a live worker is building it" in logs


def test_terminated_worker_finishes_stage(chaos: ChaosFarm, tmp_path: Path) -> None:
    token = unique_token()
    context = write_context(tmp_path / "context", _two_stage_dockerfile(token, 6))
    tag = f"{chaos.state.registry}/chaos/terminated:{token}"
    build = chaos.popen("build", "-t", tag, str(context))

    build_id, stage_id, stopping = chaos.wait_running()
    chaos.local.signal_service(f"worker-{stopping}", signal.SIGTERM)
    assert chaos.local.wait_stopped(f"worker-{stopping}", timeout=120)
    stdout, stderr = build.communicate(timeout=300)

    assert build.returncode == 0, stdout + stderr
    started = [(e["stage"], e["worker"]) for e in chaos.events(build_id) if e["type"] == "started"]
    first_worker = started[0][1]
    assert started[0][0] == stage_id
    assert len(started) == 2
    assert started[1][1] != first_worker
    assert not any(e["type"] == "requeued" for e in chaos.events(build_id))
    assert "worker stopped" in chaos.worker_log(stopping)

    chaos.add_worker(stopping)
