"""Build one stage: the body of the Celery task a worker runs.

The runner marks the stage running, builds it with Buildah, pushes it to
`stages:<key>`, and completes it, which releases and queues the
dependants whose last dependency it was. A Buildah failure fails the
build with the stage's output and the Dockerfile line of the failing step.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from celery import Celery

from farm.build_store import BuildStore, StartDecision
from farm.celery_app import send_stage
from farm.errors import FarmError
from farm.spec import StageResult, StageSpec

from .buildah import Buildah, BuildahError, BuildOutput
from .context_cache import ContextCache

log = structlog.get_logger(__name__)


@dataclass
class StageRunner:
    """Everything one worker process needs to build stages."""

    worker_id: str
    store: BuildStore
    buildah: Buildah
    contexts: ContextCache
    app: Celery
    work_dir: Path

    def run(self, build_id: str, stage_id: str) -> None:
        """Build stage `stage_id` of build `build_id`, unless it no longer needs building."""
        bound = log.bind(build_id=build_id, stage=stage_id, worker=self.worker_id)
        spec = self.store.spec(build_id, stage_id)
        if spec is None:
            bound.warning("stage not found in Redis; the build expired or was lost")
            return

        decision = self.store.start(build_id, stage_id, self.worker_id)
        if decision == StartDecision.SKIP:
            bound.info("stage skipped: its build is no longer running")
            return
        if decision == StartDecision.ALREADY_DONE:
            # A message delivered again after the stage was built: release
            # the dependants again in case the first delivery died before that.
            result = self.store.result(build_id, stage_id) or StageResult(worker=self.worker_id)
            self._complete(build_id, spec, result)
            return

        bound = bound.bind(key=spec.key)
        bound.info("stage started")
        started = time.monotonic()
        try:
            result = self._build_and_push(spec, bound)
        except (FarmError, BuildahError, OSError) as error:
            bound.error("stage failed on the worker", error=str(error))
            result = StageResult(worker=self.worker_id, error=f"worker {self.worker_id}: {error}")
        result.seconds = round(time.monotonic() - started, 3)

        if result.digest:
            bound.info("stage built", digest=result.digest, seconds=result.seconds)
            self._complete(build_id, spec, result)
        else:
            cancelled = self.store.fail(build_id, stage_id, result)
            bound.warning("stage failed", error=result.error, line=result.line, cancelled=cancelled)

    def _build_and_push(self, spec: StageSpec, bound) -> StageResult:
        context = self.contexts.get(spec.context_digest) if spec.context_digest else self.contexts.empty()
        scratch = Path(tempfile.mkdtemp(prefix=f"{spec.id}-", dir=self.work_dir))
        try:
            dockerfile = scratch / "Dockerfile"
            dockerfile.write_text(spec.dockerfile)
            output = self.buildah.build(
                dockerfile,
                context,
                spec.image,
                spec.build_args,
                on_line=lambda line: bound.debug("buildah", line=line),
            )
            if not output.ok:
                return self._failure(spec, output)
            digest = self.buildah.push(spec.image, scratch / "digest")
            return StageResult(worker=self.worker_id, digest=digest)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

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
        target = self.store.record(build_id).get("target")
        released = self.store.complete(build_id, spec, result, is_target=spec.id == target)
        specs = self.store.specs(build_id) if released else {}
        for stage_id in released:
            send_stage(self.app, build_id, stage_id, specs[stage_id].platform)
        if released:
            log.info("stages released", build_id=build_id, stage=spec.id, released=released)
