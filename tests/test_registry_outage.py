"""Registry outages: a registry down for 30 s during a push or a pull does not fail the build."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm import redis_keys as keys
from farm.spec import StageResult

from .chaos import ChaosFarm, start_chaos_farm, unique_token, write_context
from .images import image_files

OUTAGE_SECONDS = 30.0


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosFarm]:
    yield from start_chaos_farm(tmp_path_factory.mktemp("registry-outage-farm"), ["w1", "w2"], {})


def _dockerfile(token: str) -> str:
    return (
        "FROM busybox AS first\n"
        f"RUN sleep 2 && echo {token} > /marker\n"
        "\n"
        "FROM busybox\n"
        "COPY --from=first /marker /marker\n"
    )


def _outage(chaos: ChaosFarm) -> threading.Thread:
    """Stop the registry now and start it again, same port and storage, after OUTAGE_SECONDS."""
    thread = threading.Thread(target=chaos.local.restart_server, args=("registry", OUTAGE_SECONDS))
    thread.start()
    return thread


def _check_build(chaos: ChaosFarm, build_id: str, tag: str, token: str) -> None:
    events = chaos.events(build_id)
    started = [event["stage"] for event in events if event["type"] == "started"]
    assert len(started) == 2
    assert len(set(started)) == 2
    specs = {stage: spec for stage, spec in _specs(chaos, build_id).items()}
    for stage_id, spec in specs.items():
        result = StageResult.from_json(chaos.redis.hget(keys.results(build_id), stage_id))
        # The digest the worker recorded is the one the registry keeps.
        assert chaos.registry.manifest_digest("farm/stages", spec.key) == result.digest
    assert image_files(chaos.registry, tag)["/marker"].content == f"{token}\n".encode()


def _specs(chaos: ChaosFarm, build_id: str):
    from farm.build_store import BuildStore

    return BuildStore(chaos.redis).specs(build_id)


def test_registry_outage_during_push(chaos: ChaosFarm, tmp_path: Path) -> None:
    token = unique_token()
    context = write_context(tmp_path / "context", _dockerfile(token))
    tag = f"{chaos.state.registry}/outage/push:{token}"
    build = chaos.popen("build", "-t", tag, str(context))

    build_id, _stage, _worker = chaos.wait_running()
    outage = _outage(chaos)
    started_at = time.monotonic()
    stdout, stderr = build.communicate(timeout=300)
    outage.join()

    assert build.returncode == 0, stdout + stderr
    assert time.monotonic() - started_at >= OUTAGE_SECONDS
    _check_build(chaos, build_id, tag, token)


def test_registry_outage_during_pull(chaos: ChaosFarm, tmp_path: Path) -> None:
    token = unique_token()
    context = write_context(tmp_path / "context", _dockerfile(token))
    tag = f"{chaos.state.registry}/outage/pull:{token}"
    build = chaos.popen("build", "-t", tag, str(context))

    build_id, _stage, _worker = chaos.wait_running()
    # The second stage is queued now and pulls the first from the registry.
    chaos.wait_event(build_id, "built", timeout=120)
    outage = _outage(chaos)
    stdout, stderr = build.communicate(timeout=300)
    outage.join()

    assert build.returncode == 0, stdout + stderr
    _check_build(chaos, build_id, tag, token)
