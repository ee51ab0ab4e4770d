"""A Redis lock per content key, so concurrent builds build a stage once.

The holder renews the lock while it builds; a worker that dies stops
renewing, and the lock expires, so a waiting build takes over.
"""

from __future__ import annotations

import threading

import redis
import structlog

from farm import redis_keys as keys

log = structlog.get_logger(__name__)

LOCK_SECONDS = 30

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class StageLock:
    """The lock on one content key, held by `holder` (a build and stage id)."""

    def __init__(self, client: redis.Redis, key: str, holder: str) -> None:
        self.client = client
        self.name = keys.stage_lock(key)
        self.holder = holder
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the lock unless another build holds it; renew it from a thread while held."""
        if not self.client.set(self.name, self.holder, nx=True, ex=LOCK_SECONDS):
            return False
        self._thread = threading.Thread(target=self._keep, name="farm-stage-lock", daemon=True)
        self._thread.start()
        return True

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        try:
            self._release(keys=[self.name], args=[self.holder])
        except redis.RedisError as error:
            # Redis may be restarting; the lock expires within LOCK_SECONDS
            # anyway, and the stage's result must still be recorded.
            log.warning("stage lock not released; it expires by itself", lock=self.name, error=str(error))

    def _keep(self) -> None:
        while not self._stop.wait(LOCK_SECONDS / 3):
            try:
                self._renew(keys=[self.name], args=[self.holder, LOCK_SECONDS])
            except redis.RedisError:
                # The next renewal tries again; if Redis stays away the
                # lock expires and another build may take the stage over.
                continue
