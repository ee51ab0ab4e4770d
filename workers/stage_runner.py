"""Build one stage: the body of the Celery task a worker runs.

The runner marks the stage running, builds it with Buildah, pushes it to
`stages:<key>`, and completes it, which releases and queues the
dependants whose last dependency it was. A Buildah failure fails the
stage, with its output and the Dockerfile line of the failing step, and
cancels what depends on it.

Two builds that need the same content key at once build it once: the
first takes the key's lock, the second waits and then reuses the pushed
image.

While a stage runs, every log line of the worker thread carries its
build id, stage, content key and worker id (structlog context variables),
and a cancelled build stops its Buildah process (see `CancelWatch`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import structlog
from celery import Celery

from farm import redis_keys as keys
from farm.build_store import BuildStore, StartDecision
from farm.celery_app import send_stage, worker_queue
from farm.errors import FarmError
from farm.fleet import route_stage, worker_with_space
from farm.registry import RegistryClient
from farm.spec import StageResult, StageSpec

from . import metrics
from .buildah import Buildah, BuildahError, BuildOutput, leftover_mounts
from .cancel_watch import CancelWatch
from .context_cache import ContextCache
from .disk_guard import DiskGuard
from .outage import push_with_retry, wait_out_outage
from .secret_files import remove_secret_files, write_secret_files
from .stage_lock import StageLock

log = structlog.get_logger(__name__)

# A stage that runs out of disk space moves to another worker at most this often.
SPACE_REQUEUE_LIMIT = 3
_NO_SPACE = "no space left on device"

# Build output lines stay readable in Redis this long after the stage.
_LOG_TTL_SECONDS = 7 * 24 * 3600
_LOCK_POLL_SECONDS = 0.25


@dataclass
class StageRunner:
    """Everything one worker process needs to build stages."""

    worker_id: str
    store: BuildStore
    buildah: Buildah
    contexts: ContextCache
    registry: RegistryClient
    stages_repository: str
    app: Celery
    work_dir: Path
    native_platform: str
    layer_cache: str | None = None
    platforms: list[str] = field(default_factory=list)
    locality: bool = True
    push_compression: str = "gzip"
    builds_mount_from: bool = False
    concurrency: int = 1
    secret_key: str | None = field(default=None, repr=False)
    stage_timeout: float | None = None
    disk_guard: DiskGuard | None = None

    def run(self, build_id: str, stage_id: str) -> None:
        """Build stage `stage_id` of build `build_id`, unless it no longer needs building."""
        with structlog.contextvars.bound_contextvars(
            build_id=build_id, stage=stage_id, worker=self.worker_id
        ):
            spec = self.store.spec(build_id, stage_id)
            if spec is None:
                log.warning("stage not found in Redis; the build expired or was lost")
                return
            with structlog.contextvars.bound_contextvars(key=spec.key):
                self._run(build_id, spec)

    def _run(self, build_id: str, spec: StageSpec) -> None:
        decision = self.store.start(build_id, spec.id, self.worker_id)
        if decision == StartDecision.SKIP:
            log.info("stage skipped: its build is no longer running")
            return
        if decision == StartDecision.HELD:
            log.info("stage skipped: a live worker is building it")
            return
        if decision == StartDecision.ALREADY_DONE:
            # A message delivered again after the stage was built: release
            # the dependants again in case the first delivery died before that.
            result = self.store.result(build_id, spec.id) or StageResult(worker=self.worker_id)
            self._complete(build_id, spec, result)
            return

        if spec.mount_from_line is not None and not self.builds_mount_from:
            self._reject_mount_from(build_id, spec)
            return

        started = time.monotonic()
        with CancelWatch(self.store.redis, build_id, timeout_seconds=self.stage_timeout) as watch:
            result = self._build_once(build_id, spec, watch)
        result.seconds = round(time.monotonic() - started, 3)

        if result.digest:
            log.info("stage done", digest=result.digest, seconds=result.seconds, cached=result.cached)
            self._count(result)
            self._complete(build_id, spec, result)
        elif watch.cancelled:
            self._stop_cancelled(build_id, spec)
        elif not watch.timed_out and _out_of_space(result):
            self._requeue_for_space(build_id, spec, result)
        else:
            cancelled = self.store.fail(build_id, spec, result)
            metrics.STAGES_FAILED.labels(self.worker_id).inc()
            log.warning("stage failed", error=result.error, line=result.line, cancelled=cancelled)

    def pass_on(self, build_id: str, stage_id: str, reason: str) -> None:
        """Send a stage this worker will not start back to its queue, for another worker."""
        spec = self.store.spec(build_id, stage_id)
        if spec is None:
            log.warning(
                "stage not found in Redis; the build expired or was lost", build_id=build_id, stage=stage_id
            )
            return
        send_stage(self.app, build_id, stage_id, route_stage(self.store.redis, spec))
        log.warning("stage passed on to another worker", build_id=build_id, stage=stage_id, reason=reason)

    def _requeue_for_space(self, build_id: str, spec: StageSpec, result: StageResult) -> None:
        """Send a stage that ran out of disk space to the live worker with the most space, or fail it."""
        if self.disk_guard:
            self.disk_guard.check()
        reason = f"no space left on device on worker {self.worker_id}"
        other = worker_with_space(self.store.redis, spec, exclude=self.worker_id)
        if other is None:
            why = f"no other live worker that takes stages serves {spec.platform}"
        elif self.store.requeue_held(build_id, spec.id, self.worker_id, reason, SPACE_REQUEUE_LIMIT):
            # NOTE: if `other` pauses before it takes the stage, the stage waits in its queue.
            send_stage(self.app, build_id, spec.id, worker_queue(other))
            log.warning("stage re-queued: out of disk space", to_worker=other)
            return
        else:
            why = f"the stage was moved {SPACE_REQUEUE_LIMIT} times already or its build ended"
        result.error = f"{reason}, and {why}: {result.error}"
        cancelled = self.store.fail(build_id, spec, result)
        metrics.STAGES_FAILED.labels(self.worker_id).inc()
        log.warning("stage failed: out of disk space", error=result.error, cancelled=cancelled)

    def _reject_mount_from(self, build_id: str, spec: StageSpec) -> None:
        """Fail a stage this worker's Buildah would build wrongly, rather than push a wrong image."""
        result = StageResult(
            worker=self.worker_id,
            line=spec.mount_from_line,
            error=(
                f"worker {self.worker_id} runs Buildah 1.28 or older, which drops the files a "
                "RUN --mount ... from= step writes; this stage needs a worker with a newer Buildah"
            ),
        )
        cancelled = self.store.fail(build_id, spec, result)
        log.warning("stage rejected: RUN --mount from= needs a Buildah newer than 1.28", cancelled=cancelled)

    def _build_once(self, build_id: str, spec: StageSpec, watch: CancelWatch) -> StageResult:
        """Build the stage unless its key is, or becomes, available from another build."""
        lock = StageLock(self.store.redis, spec.key, f"{build_id}/{spec.id}")
        while True:
            pushed = None if spec.no_cache else self.registry.get_manifest(self.stages_repository, spec.key)
            if pushed is not None:
                log.info("stage reused: another build pushed its key")
                return StageResult(worker=self.worker_id, digest=pushed.digest, cached=True)
            if watch.cancelled:
                return StageResult(worker=self.worker_id, error="build cancelled")
            if lock.acquire():
                break
            time.sleep(_LOCK_POLL_SECONDS)

        try:
            log.info("stage started")
            return self._build_and_push(build_id, spec, watch)
        except (FarmError, BuildahError, OSError) as error:
            log.error("stage failed on the worker", error=str(error))
            return StageResult(worker=self.worker_id, error=f"worker {self.worker_id}: {error}")
        finally:
            lock.release()

    def _stop_cancelled(self, build_id: str, spec: StageSpec) -> None:
        """Clean up after Buildah was stopped for a cancelled build, and mark the stage cancelled."""
        # NOTE: `buildah rm --all` also removes the working containers of
        # other stages this worker builds at the same time (--concurrency
        # above 1); those stages then fail and are built again.
        self.buildah.remove_containers()
        self.store.stage_stopped(build_id, spec.id, self.worker_id)
        metrics.STAGES_CANCELLED.labels(self.worker_id).inc()
        log.info("stage stopped: its build was cancelled")

    def _count(self, result: StageResult) -> None:
        if result.cached:
            metrics.STAGES_CACHED.labels(self.worker_id).inc()
            return
        metrics.STAGES_BUILT.labels(self.worker_id).inc()
        metrics.STAGE_SECONDS.labels(self.worker_id).observe(result.seconds)

    def _build_and_push(self, build_id: str, spec: StageSpec, watch: CancelWatch) -> StageResult:
        context = self.contexts.get(spec.context_digest) if spec.context_digest else self.contexts.empty()
        scratch = Path(tempfile.mkdtemp(prefix="stage-", dir=self.work_dir))
        log_key = keys.stage_log(build_id, spec.id)
        secrets: dict[str, Path] = {}
        try:
            dockerfile = scratch / "Dockerfile"
            dockerfile.write_text(spec.dockerfile)
            secrets = write_secret_files(
                self.store.redis, build_id, self.secret_key, scratch, tmpfs=self.buildah.launcher is None
            )
            output = self._build(spec, dockerfile, context, log_key, watch, secrets)
            if watch.timed_out:
                return self._timed_out(spec, output)
            if not output.ok and wait_out_outage(self.registry):
                log.warning("stage failed while the registry was unreachable; building it again")
                output = self._build(spec, dockerfile, context, log_key, watch, secrets)
            elif not output.ok and output.transient_error:
                log.warning(
                    "stage failed with a transient Buildah error; building it again",
                    error=output.transient_error,
                )
                output = self._build(spec, dockerfile, context, log_key, watch, secrets)
            if not output.ok:
                return self._failure(spec, output)
            push_started = time.monotonic()
            digest = push_with_retry(
                self.buildah, self.registry, spec.image, scratch / "digest", self.push_compression
            )
            push_seconds = round(time.monotonic() - push_started, 3)
            return StageResult(worker=self.worker_id, digest=digest, push_seconds=push_seconds)
        finally:
            remove_secret_files(secrets)
            shutil.rmtree(scratch, ignore_errors=True)
            self._expire(log_key)

    def _build(
        self,
        spec: StageSpec,
        dockerfile: Path,
        context: Path,
        log_key: str,
        watch: CancelWatch,
        secrets: dict[str, Path],
    ) -> BuildOutput:
        return self.buildah.build(
            dockerfile,
            context,
            spec.image,
            spec.build_args,
            platform=None if spec.platform == self.native_platform else spec.platform,
            layer_cache=self.layer_cache,
            no_cache=spec.no_cache,
            on_line=lambda line: self._record_line(log_key, line),
            on_start=watch.attach,
            secrets=secrets,
        )

    def _record_line(self, log_key: str, line: str) -> None:
        try:
            self.store.redis.rpush(log_key, line)
        except redis.RedisError as error:
            log.debug("build output line not recorded", error=str(error))

    def _expire(self, log_key: str) -> None:
        try:
            self.store.redis.expire(log_key, _LOG_TTL_SECONDS)
        except redis.RedisError as error:
            log.debug("build output expiry not set", error=str(error))

    def _timed_out(self, spec: StageSpec, output: BuildOutput) -> StageResult:
        """Clean up after Buildah was killed at the stage timeout, and return the stage's failure."""
        # NOTE: as on cancel, `buildah rm --all` also removes the working
        # containers of other stages this worker builds at the same time.
        self.buildah.remove_containers()
        left = leftover_mounts(self.buildah.storage.root)
        if left:
            log.warning("mounts left below the storage root after the timeout", mounts=left)
        result = self._failure(spec, output)
        result.error = (
            f"worker {self.worker_id}: stage timed out after {self.stage_timeout:g} s "
            "(farm-worker --stage-timeout); buildah was killed"
        )
        return result

    def _failure(self, spec: StageSpec, output: BuildOutput) -> StageResult:
        line = spec.from_line
        if output.last_step and output.last_step <= len(spec.step_lines):
            line = spec.step_lines[output.last_step - 1]
        reason = output.error_line or f"buildah exited with status {output.returncode}"
        return StageResult(
            worker=self.worker_id,
            line=line,
            step=output.last_step_text,
            error=reason,
            output=output.text,
        )

    def _complete(self, build_id: str, spec: StageSpec, result: StageResult) -> None:
        released = self.store.complete(build_id, spec, result)
        if not released:
            return
        specs = self.store.specs_of(build_id, released)
        kept_here = 0
        for stage_id in released:
            dependant = specs[stage_id]
            if kept_here < self.concurrency and self._stays_here(dependant, spec):
                kept_here += 1
                queue = worker_queue(self.worker_id)
            else:
                queue = route_stage(self.store.redis, dependant)
            send_stage(self.app, build_id, stage_id, queue)
        log.info("stages released", released=released, kept_here=kept_here)

    def _stays_here(self, dependant: StageSpec, finished: StageSpec) -> bool:
        """Return whether a released stage should run on this worker: it starts FROM the stage just built here.

        This worker is free as soon as the current task returns, and it has
        the parent's layers in its storage, so nothing is pulled. Only as
        many stages as it builds at once stay, so that others run elsewhere
        at the same time rather than wait for this worker.
        NOTE: a stage sent to a worker's own queue waits there if that
        worker stops before it takes the stage.
        """
        able = dependant.mount_from_line is None or self.builds_mount_from
        return (
            self.locality
            and able
            and dependant.parent == finished.id
            and dependant.platform in self.platforms
        )


def _out_of_space(result: StageResult) -> bool:
    """Return whether a failed build's output reports a full disk."""
    return _NO_SPACE in f"{result.error or ''}\n{result.output}".lower()
