"""The live fleet: workers whose heartbeat profile is still in Redis."""

from __future__ import annotations

import json

import redis

from . import redis_keys as keys
from .buildah_support import builds_mount_from
from .celery_app import queue_for
from .errors import FarmError
from .spec import StageSpec


def live_workers(client: redis.Redis) -> list[dict]:
    """Return the profiles of the workers whose heartbeat has not expired."""
    profiles = []
    for key in client.scan_iter(match=keys.worker_pattern()):
        text = client.get(key)
        if text:
            profiles.append(json.loads(text))
    return sorted(profiles, key=lambda profile: profile.get("id", ""))


def require_platforms(client: redis.Redis, platforms: set[str]) -> None:
    """Raise FarmError unless some live worker serves each of `platforms`."""
    workers = live_workers(client)
    served = {platform for worker in workers for platform in worker.get("platforms", [])}
    missing = sorted(platforms - served)
    if not missing:
        return
    if not workers:
        raise FarmError(
            f"no live worker serves {', '.join(missing)}: no worker is connected to this Redis; "
            "start one with farm-worker (or farm local up)"
        )
    raise FarmError(
        f"no live worker serves {', '.join(missing)}; the live workers serve: {', '.join(sorted(served))}"
    )


def route_platform(client: redis.Redis, platform: str) -> str:
    """Return the queue for a stage of `platform`: the native one while a native worker is live.

    A worker serves the shared queue of every platform it builds and the
    `.native` queue only of its own platform (see `queue_for`). So while
    a native worker is live, stages of its platform reach native workers
    only, and emulating workers take them only when no native one is live.

    NOTE: the choice is made when a stage is queued. A stage sent to the
    `.native` queue waits there if every native worker leaves afterwards,
    even while an emulating worker is live.
    """
    for worker in live_workers(client):
        native = set(worker.get("platforms", [])) - set(worker.get("emulated", []))
        if platform in native:
            return queue_for(platform, native=True)
    return queue_for(platform)


def route_stage(client: redis.Redis, spec: StageSpec) -> str:
    """Return the queue for `spec`: the `mount-from` queue when it needs that, else by platform."""
    if spec.mount_from_line is not None:
        return queue_for(spec.platform, mount_from=True)
    return route_platform(client, spec.platform)


def worker_with_space(client: redis.Redis, spec: StageSpec, exclude: str) -> str | None:
    """Return the live worker, other than `exclude`, that takes stages and can build `spec`, with the most free disk.

    None when no such worker is live. A worker that stopped taking stages
    publishes `"accepting": false` in its profile.
    """
    able = [
        worker
        for worker in live_workers(client)
        if worker.get("id") != exclude
        and worker.get("accepting", True)
        and spec.platform in worker.get("platforms", [])
        and (spec.mount_from_line is None or builds_mount_from(worker.get("buildah")))
    ]
    if not able:
        return None
    return max(able, key=lambda worker: worker.get("disk_free", 0))["id"]


def require_mount_from(client: redis.Redis, specs: list[StageSpec]) -> None:
    """Raise FarmError, naming the line, when no live worker can build a stage's `RUN --mount from=`."""
    needing = [spec for spec in specs if spec.mount_from_line is not None]
    if not needing:
        return
    workers = live_workers(client)
    for spec in needing:
        able = [
            w
            for w in workers
            if spec.platform in w.get("platforms", []) and builds_mount_from(w.get("buildah"))
        ]
        if not able:
            versions = sorted({str(w.get("buildah")) for w in workers}) or ["none live"]
            raise FarmError(
                f"{spec.source_path}:{spec.mount_from_line}: RUN --mount with from= needs a worker whose "
                f"Buildah is newer than 1.28 (1.28 drops the files such a step writes); the live workers "
                f"run Buildah {', '.join(versions)}"
            )
