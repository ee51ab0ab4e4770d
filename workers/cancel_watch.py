"""Stop a stage's Buildah process when its build is cancelled or it runs too long.

`farm cancel` sets the build's status to `cancelled` in one Lua script.
While a stage builds, a thread polls that status; when it changes, the
thread kills the Buildah process and every process it started (RUN steps
run as its descendants under chroot isolation), so the stage ends within
about one poll interval even when it prints nothing. The same thread
kills a Buildah process that outlives the stage timeout
(`farm-worker --stage-timeout`).
"""

from __future__ import annotations

import contextvars
import subprocess
import threading
import time

import psutil
import redis
import structlog

from farm import redis_keys as keys

log = structlog.get_logger(__name__)

POLL_SECONDS = 0.5
# Buildah gets this long to exit on SIGTERM before the tree is killed.
_TERM_GRACE_SECONDS = 5.0


class CancelWatch:
    """Polls one build's status from a thread and kills the attached process on cancel or timeout.

    With `timeout_seconds`, each attached process may run that long. Past
    that, the process is killed and `timed_out` becomes true.
    """

    def __init__(
        self,
        client: redis.Redis,
        build_id: str,
        poll_seconds: float = POLL_SECONDS,
        timeout_seconds: float | None = None,
    ) -> None:
        self.client = client
        self.build_id = build_id
        self.poll_seconds = poll_seconds
        self.timeout_seconds = timeout_seconds
        self._deadline: float | None = None
        self._cancelled = threading.Event()
        self._timed_out = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        # The thread logs with the caller's structlog context (build, stage, key, worker).
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._loop,), name="farm-cancel-watch", daemon=True
        )

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def timed_out(self) -> bool:
        return self._timed_out.is_set()

    def __enter__(self) -> CancelWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def attach(self, process: subprocess.Popen) -> None:
        """Watch `process` (Buildah); kill it at once if the build is already cancelled."""
        with self._lock:
            self._process = process
            if self.timeout_seconds is not None:
                self._deadline = time.monotonic() + self.timeout_seconds
        if self.cancelled:
            self._kill()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            if self._past_deadline():
                self._timed_out.set()
                log.warning("stage timed out; stopping buildah", timeout=self.timeout_seconds)
                self._kill()
                return
            try:
                status = self.client.hget(keys.build(self.build_id), "status")
            except redis.RedisError as error:
                # The next poll tries again; a cancel is seen once Redis is back.
                log.debug("build status not read", error=str(error))
                continue
            if status == b"cancelled":
                self._cancelled.set()
                log.info("build cancelled; stopping buildah")
                self._kill()
                return

    def _past_deadline(self) -> bool:
        with self._lock:
            deadline, process = self._deadline, self._process
        if deadline is None or process is None or process.poll() is not None:
            return False
        return time.monotonic() > deadline

    def _kill(self) -> None:
        with self._lock:
            process = self._process
        if process is None or process.poll() is not None:
            return
        kill_tree(process.pid)


def kill_tree(pid: int) -> None:
    """Send SIGTERM to a process and its descendants, then SIGKILL to any still alive."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in tree:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            continue
    # Polled rather than waited for: waiting would reap Buildah, and its
    # Popen in the build loop would then read a wrong exit status.
    deadline = time.monotonic() + _TERM_GRACE_SECONDS
    alive = [process for process in tree if _running(process)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [process for process in alive if _running(process)]
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    if alive:
        log.warning("buildah did not stop on SIGTERM; killed", pid=pid, killed=[p.pid for p in alive])


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
