"""Read a stage's Buildah output from Redis, and follow it while the stage runs.

A worker appends each output line to `farm:build:<id>:log:<stage>` as
Buildah prints it. Following polls each list from the last index read
until the stage's state is final; the state is read before the lines, so
the last read after a final state contains every line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import redis

from . import redis_keys as keys
from .build_store import BuildStore
from .errors import FarmError

FINAL_STATES = frozenset({"done", "failed", "cancelled"})
POLL_SECONDS = 0.3


def stages_to_read(store: BuildStore, build_id: str, stage: str | None) -> list[str]:
    """Return the stages whose output to read: `stage`, or every stage of the build."""
    specs = store.specs(build_id)
    if not specs:
        raise FarmError(f"build {build_id} not found in Redis: it never existed there or expired")
    if stage is None:
        return list(specs)
    if stage not in specs:
        raise FarmError(f"build {build_id} has no stage {stage!r}; its stages: {', '.join(specs)}")
    return [stage]


def stage_lines(
    client: redis.Redis,
    build_id: str,
    stages: list[str],
    follow: bool = False,
    poll_seconds: float = POLL_SECONDS,
) -> Iterator[tuple[str, str]]:
    """Yield (stage, line) for each output line; with `follow`, until every stage has ended."""
    store = BuildStore(client)
    offsets = dict.fromkeys(stages, 0)
    while True:
        states = store.states(build_id)
        build_running = store.status(build_id) == "running"
        for stage in stages:
            lines = client.lrange(keys.stage_log(build_id, stage), offsets[stage], -1)
            offsets[stage] += len(lines)
            for line in lines:
                yield stage, line.decode("utf-8", errors="replace")
        if not follow or all(_ended(states.get(stage), build_running) for stage in stages):
            return
        time.sleep(poll_seconds)


def _ended(state: str | None, build_running: bool) -> bool:
    # A stage still waiting in a build that has ended (another branch
    # failed) never starts, so following it would never end.
    return state is None or state in FINAL_STATES or (not build_running and state != "running")
