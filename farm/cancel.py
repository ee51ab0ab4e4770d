"""Cancel a build: drop its queued stages and stop its running ones.

One Lua script marks the build `cancelled` and its waiting and queued
stages `cancelled`. The Celery messages of queued stages are then removed
from the platform queues, so queue depth (the autoscaling signal) drops
at once; a message that a worker took in the meantime is skipped, because
a worker starts no stage of a build that is not running. Each running
stage's worker sees the status within a second, kills its Buildah process
and marks the stage cancelled; `cancel_build` waits for that.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass, field

import redis
import structlog

from .build_store import BuildStore
from .celery_app import QUEUE_PREFIX
from .errors import FarmError
from .fleet import live_workers

log = structlog.get_logger(__name__)

DEFAULT_WAIT_SECONDS = 60.0
_POLL_SECONDS = 0.25


@dataclass
class CancelReport:
    """What `farm cancel` did to a build."""

    build_id: str
    dropped: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)
    still_running: dict[str, str] = field(default_factory=dict)
    messages_removed: int = 0


def cancel_build(
    client: redis.Redis, build_id: str, wait_seconds: float = DEFAULT_WAIT_SECONDS
) -> CancelReport:
    """Cancel a running build and wait up to `wait_seconds` for its running stages to stop.

    Raises FarmError when the build is unknown or no longer running.
    A running stage whose worker has no live heartbeat is marked
    cancelled here (`abandoned`), since no worker is left to stop it.
    """
    store = BuildStore(client)
    outcome = store.cancel(build_id)
    if not outcome.found:
        raise FarmError(f"build {build_id} not found in Redis: it never existed there or expired")
    if not outcome.took_effect:
        raise FarmError(f"build {build_id} has already {outcome.status_before}; there is nothing to cancel")
    log.info("build cancelled", build_id=build_id, dropped=outcome.cancelled, running=outcome.running)

    report = CancelReport(build_id, dropped=outcome.cancelled)
    report.messages_removed = remove_queued_messages(client, build_id)
    _wait_for_stages(store, build_id, outcome.running, wait_seconds, report)
    store.expire(build_id)
    return report


def remove_queued_messages(client: redis.Redis, build_id: str) -> int:
    """Remove the build's stage messages from every platform queue; return how many were removed."""
    removed = 0
    for queue in client.scan_iter(match=QUEUE_PREFIX + "*", _type="list"):
        for raw in client.lrange(queue, 0, -1):
            if message_build_id(raw) == build_id:
                removed += client.lrem(queue, 1, raw)
    return removed


def message_build_id(raw: bytes) -> str | None:
    """Return the build id in a Celery task message as Kombu stores it in a Redis list."""
    try:
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        return kwargs.get("build_id")
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None


def _wait_for_stages(
    store: BuildStore, build_id: str, running: list[str], wait_seconds: float, report: CancelReport
) -> None:
    deadline = time.monotonic() + wait_seconds
    pending = list(running)
    while pending:
        states = store.states(build_id)
        for stage in [stage for stage in pending if states.get(stage) != "running"]:
            pending.remove(stage)
            report.stopped.append(stage)
        if not pending:
            return
        _abandon_lost_stages(store, build_id, pending, report)
        if time.monotonic() > deadline:
            break
        time.sleep(_POLL_SECONDS)
    runs = store.runs(build_id)
    report.still_running = {stage: runs.get(stage, {}).get("worker", "?") for stage in pending}


def _abandon_lost_stages(store: BuildStore, build_id: str, pending: list[str], report: CancelReport) -> None:
    live = {worker.get("id") for worker in live_workers(store.redis)}
    runs = store.runs(build_id)
    for stage in list(pending):
        worker = runs.get(stage, {}).get("worker")
        if worker in live:
            continue
        if store.stage_stopped(build_id, stage, worker or "?"):
            log.warning(
                "stage marked cancelled: its worker is gone", build_id=build_id, stage=stage, worker=worker
            )
            report.abandoned.append(stage)
        pending.remove(stage)
