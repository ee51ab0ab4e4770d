"""The worker's presence in Redis: a profile that expires unless renewed."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable

import psutil
import redis
import structlog

from farm import redis_keys as keys

log = structlog.get_logger(__name__)

INTERVAL_SECONDS = 5.0
# A worker missing three beats in a row drops out of the fleet.
EXPIRY_SECONDS = 15


class Heartbeat:
    """Publishes `profile` under `farm:worker:<id>` every few seconds, from a thread.

    The profile carries an `instance` token new to each process, so a stage
    recorded as held by this process is known to be orphaned once the
    process is gone, even if a worker with the same id starts again.
    """

    def __init__(
        self,
        client: redis.Redis,
        worker_id: str,
        profile: dict,
        disk_path: str,
        interval: float = INTERVAL_SECONDS,
        expiry: int = EXPIRY_SECONDS,
        extra: Callable[[], dict] | None = None,
    ) -> None:
        self.client = client
        self.interval = interval
        self.expiry = expiry
        self.worker_id = worker_id
        self.profile = {**profile, "instance": secrets.token_hex(8)}
        self.disk_path = disk_path
        # Fields that change while the worker runs, such as whether it takes stages.
        self.extra = extra
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="farm-heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.client.delete(keys.worker(self.worker_id))
        except redis.RedisError as error:
            log.warning("could not remove worker profile", error=str(error))

    def beat(self) -> None:
        profile = {
            **self.profile,
            "heartbeat": time.time(),
            # psutil emulates the load average on Windows.
            "load": psutil.getloadavg()[0],
            "disk_free": psutil.disk_usage(self.disk_path).free,
            **(self.extra() if self.extra else {}),
        }
        self.client.set(keys.worker(self.worker_id), json.dumps(profile), ex=self.expiry)

    def _loop(self) -> None:
        failures = 0
        while not self._stop.wait(self.interval):
            try:
                self.beat()
                if failures:
                    log.info("heartbeat restored", failures=failures)
                failures = 0
            except redis.RedisError as error:
                failures += 1
                if failures == 1 or failures % 12 == 0:
                    log.warning("heartbeat failed", error=str(error), failures=failures)
