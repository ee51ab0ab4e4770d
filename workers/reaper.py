"""Re-queue the stages of workers that died while building them.

Celery gives a lost worker's message back only after the Redis
transport's visibility timeout (an hour by default), so every worker runs
a reaper thread. Every few seconds it reads the stages marked running and
re-queues each one whose holder's heartbeat has expired or belongs to a
newer process. The check and the move are one Lua script, so a stage that
finished or was taken over in the meantime is left alone, and two reapers
re-queue a stage once.

A stage is re-queued at most `heartbeat.EXPIRY_SECONDS + INTERVAL_SECONDS`
(20 s) after its worker's last heartbeat.
"""

from __future__ import annotations

import threading

import redis
import structlog
from celery import Celery

from farm.build_store import BuildStore
from farm.celery_app import send_stage
from farm.fleet import route_stage

log = structlog.get_logger(__name__)

INTERVAL_SECONDS = 5.0


class Reaper:
    """A thread that re-queues the stages held by worker processes that are gone."""

    def __init__(self, store: BuildStore, app: Celery, worker_id: str) -> None:
        self.store = store
        self.app = app
        self.worker_id = worker_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="farm-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=INTERVAL_SECONDS * 2)

    def reap(self) -> list[str]:
        """Re-queue every orphaned stage once; return their `<build id>/<stage id>` names."""
        requeued = []
        for stage in self.store.running_stages():
            if not self.store.requeue_orphan(stage):
                continue
            spec = self.store.spec(stage.build_id, stage.stage_id)
            if spec is None:
                continue
            send_stage(self.app, stage.build_id, stage.stage_id, route_stage(self.store.redis, spec))
            requeued.append(f"{stage.build_id}/{stage.stage_id}")
            log.warning(
                "stage re-queued: its worker stopped sending heartbeats",
                build_id=stage.build_id,
                stage=stage.stage_id,
                lost_worker=stage.worker,
                worker=self.worker_id,
            )
        return requeued

    def _loop(self) -> None:
        failures = 0
        while not self._stop.wait(INTERVAL_SECONDS):
            try:
                self.reap()
                failures = 0
            except redis.RedisError as error:
                # Redis may be restarting; the next round tries again.
                failures += 1
                if failures == 1 or failures % 12 == 0:
                    log.warning("reaper could not read running stages", error=str(error), failures=failures)
