"""Stop taking stages while the worker's disk is nearly full, and prune stage images to free it.

Every few seconds, and before each stage, the guard compares the free
space of the worker's root with `FARM_MIN_FREE_DISK` (bytes, a size such
as `5G`, or a percentage of the file system such as `10%`). An operator
can override the value of one worker at run time with the Redis key
`farm:min-free-disk:<worker id>`, which the guard reads on every check.

Below the minimum, the guard first removes the worker's local stage
images, oldest first, until enough space is free. If that is not enough,
the worker stops consuming its queues (Celery's `cancel_consumer` remote
control command, sent to this worker only) and publishes
`"accepting": false` with the reason in its heartbeat profile. Once
space returns it consumes them again (`add_consumer`).
"""

from __future__ import annotations

import contextvars
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis
import structlog

from farm import redis_keys as keys
from farm.config import format_size, parse_size
from farm.errors import FarmError

from .buildah import Buildah, BuildahError

log = structlog.get_logger(__name__)

CHECK_SECONDS = 5.0
DEFAULT_MIN_FREE = "2G"
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")


@dataclass(frozen=True)
class MinFree:
    """A minimum of free disk space: a byte count or a percentage of the file system."""

    text: str
    size: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str, name: str = "FARM_MIN_FREE_DISK") -> MinFree:
        """Parse `5G`, `1073741824` or `10%`; raise FarmError naming `name` otherwise."""
        value = text.strip()
        percent = _PERCENT.fullmatch(value)
        if percent:
            share = float(percent.group(1))
            if share >= 100:
                raise FarmError(f"invalid {name}={text!r}: a percentage must be below 100")
            return cls(value, percent=share)
        try:
            return cls(value, size=parse_size(value))
        except ValueError as error:
            raise FarmError(f"invalid {name}={text!r}: {error}, or a percentage such as 10%") from None

    def bytes_of(self, total: int) -> int:
        """Return the minimum in bytes on a file system of `total` bytes."""
        if self.percent is not None:
            return int(total * self.percent / 100)
        return self.size or 0


@dataclass(frozen=True)
class DiskState:
    """Whether the worker takes stages, and why not."""

    accepting: bool
    reason: str | None = None


class DiskGuard:
    """Checks the free space below `root`, prunes stage images, and pauses or resumes the worker.

    `pause` and `resume` are called from the guard's thread when the
    state changes; they stop and restart consuming the worker's queues.
    """

    def __init__(
        self,
        root: Path,
        min_free: MinFree,
        buildah: Buildah,
        stages_repository: str,
        client: redis.Redis,
        worker_id: str,
    ) -> None:
        self.root = root
        self.min_free = min_free
        self.buildah = buildah
        self.stages_repository = stages_repository
        self.client = client
        self.worker_id = worker_id
        self.pause: Callable[[str], None] | None = None
        self.resume: Callable[[], None] | None = None
        self._state = DiskState(accepting=True)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._loop,), name="farm-disk-guard", daemon=True
        )

    @property
    def state(self) -> DiskState:
        return self._state

    def profile_fields(self) -> dict:
        """Return the heartbeat fields of the current state."""
        return {"accepting": self._state.accepting, "reason": self._state.reason}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=CHECK_SECONDS * 2)

    def check(self) -> DiskState:
        """Check the free space now, pruning stage images when it is low; pause or resume on a change."""
        with self._lock:
            before = self._state
            self._state = self._measure()
            changed = self._state.accepting != before.accepting
        if changed and not self._state.accepting:
            log.warning("worker paused: disk nearly full", reason=self._state.reason)
            if self.pause:
                self.pause(self._state.reason or "")
        elif changed:
            log.info("worker resumed: disk space returned")
            if self.resume:
                self.resume()
        return self._state

    def _measure(self) -> DiskState:
        min_free = self._min_free()
        usage = psutil.disk_usage(str(self.root))
        needed = min_free.bytes_of(usage.total)
        if usage.free >= needed:
            return DiskState(accepting=True)

        self.prune(needed)
        usage = psutil.disk_usage(str(self.root))
        if usage.free >= needed:
            return DiskState(accepting=True)
        reason = (
            f"disk nearly full: {format_size(usage.free)} free on {self.root}, "
            f"below FARM_MIN_FREE_DISK={min_free.text} ({format_size(needed)})"
        )
        return DiskState(accepting=False, reason=reason)

    def prune(self, needed: int) -> list[str]:
        """Remove local stage images, oldest first, until `needed` bytes are free; return the names removed.

        Only names in the stages repository are removed, so an image that
        also has another name (a base image) is untagged but kept.
        """
        removed = []
        for created, names in self._stage_images():
            if psutil.disk_usage(str(self.root)).free >= needed:
                break
            try:
                self.buildah.run("rmi", *names, timeout=120)
            except BuildahError as error:
                # An image a running build uses cannot be removed; the next one may be.
                log.info("stage image not pruned", image=names, error=str(error))
                continue
            removed.extend(names)
            log.info("stage image pruned for disk space", image=names, created=created)
        return removed

    def _stage_images(self) -> list[tuple[int, list[str]]]:
        """Return the creation time and stage names of each local image with a stage name, oldest first."""
        try:
            images = json.loads(self.buildah.run("images", "--json", timeout=120) or "[]")
        except (BuildahError, ValueError) as error:
            log.warning("local images not listed", error=str(error))
            return []
        marker = f"/{self.stages_repository}:"
        stages = []
        for image in images:
            names = [name for name in image.get("names") or [] if marker in name]
            if names:
                stages.append((image.get("created") or 0, names))
        return sorted(stages, key=lambda entry: entry[0])

    def _min_free(self) -> MinFree:
        """Return the minimum: the worker's Redis override when set and valid, else the configured one."""
        try:
            override = self.client.get(keys.min_free_disk(self.worker_id))
        except redis.RedisError as error:
            log.debug("min free disk override not read", error=str(error))
            return self.min_free
        if not override:
            return self.min_free
        try:
            return MinFree.parse(override.decode(), keys.min_free_disk(self.worker_id))
        except FarmError as error:
            log.warning("min free disk override ignored", error=str(error))
            return self.min_free

    def _loop(self) -> None:
        while True:
            try:
                self.check()
            except (OSError, redis.RedisError) as error:
                log.warning("disk check failed", error=str(error))
            if self._stop.wait(CHECK_SECONDS):
                return
