"""What `farm status` shows: builds and their stages, read back from Redis.

A stage's worker and times come from its result once it ended, and from
the record its worker wrote at start (`farm:build:<id>:runs`) while it
runs, so a running stage shows where it runs and for how long.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import redis

from . import redis_keys as keys
from .build_store import BuildStore
from .errors import FarmError

# `farm status` without a build id lists this many of the newest builds.
RECENT_BUILDS = 20


@dataclass
class StageStatus:
    """One stage of a build as `farm status` shows it."""

    id: str
    state: str
    platform: str
    key: str
    worker: str | None = None
    started: float | None = None
    seconds: float | None = None
    digest: str | None = None
    cached: bool = False
    error: str | None = None


@dataclass
class BuildStatus:
    """A build's status, its entries and targets, and its stages in plan order."""

    build_id: str
    status: str
    created: float | None
    finished: float | None
    entries: list[str]
    stages: list[StageStatus] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def build_status(client: redis.Redis, build_id: str) -> BuildStatus:
    """Return a build's status and stages; raise FarmError when Redis has no such build."""
    store = BuildStore(client)
    record = store.record(build_id)
    if not record:
        raise FarmError(
            f"build {build_id} not found in Redis: it never existed there or expired "
            f"({keys.BUILD_TTL_SECONDS // 86400} days after it finished); list builds with: farm status"
        )
    states = store.states(build_id)
    runs = store.runs(build_id)
    now = time.time()
    stages = []
    for stage_id, spec in store.specs(build_id).items():
        stage = StageStatus(
            id=stage_id, state=states.get(stage_id, "?"), platform=spec.platform, key=spec.key
        )
        run = runs.get(stage_id, {})
        stage.worker = run.get("worker")
        stage.started = run.get("started")
        result = store.result(build_id, stage_id)
        if result is not None:
            stage.worker = result.worker or stage.worker
            stage.seconds = result.seconds
            stage.digest = result.digest
            stage.cached = result.cached
            stage.error = result.error
        elif stage.state == "running" and stage.started:
            stage.seconds = round(now - stage.started, 1)
        stages.append(stage)
    stages.sort(key=lambda stage: (_STATE_ORDER.get(stage.state, 9), stage.started or 0))
    return BuildStatus(
        build_id=build_id,
        status=record.get("status", "?"),
        created=_float(record.get("created")),
        finished=_float(record.get("finished")),
        entries=record.get("entries", "").split(),
        stages=stages,
    )


def recent_builds(client: redis.Redis, limit: int = RECENT_BUILDS) -> list[dict]:
    """Return the newest builds still in Redis: id, status, entries and times, newest first."""
    builds = []
    for raw_id, created in client.zrevrange(keys.builds(), 0, limit * 2, withscores=True):
        build_id = raw_id.decode()
        record = BuildStore(client).record(build_id)
        if not record:
            continue
        states = BuildStore(client).states(build_id).values()
        builds.append(
            {
                "build_id": build_id,
                "status": record.get("status", "?"),
                "entries": record.get("entries", "").split(),
                "created": created,
                "finished": _float(record.get("finished")),
                "stages": len(states),
                "stages_done": sum(1 for state in states if state == "done"),
            }
        )
        if len(builds) == limit:
            break
    return builds


# Stages that ended first, then the running ones, then those still to run.
_STATE_ORDER = {"done": 0, "failed": 1, "cancelled": 2, "running": 3, "queued": 4, "waiting": 5}


def _float(value: str | None) -> float | None:
    return float(value) if value else None
