"""The Celery application shared by the producer and the workers.

Task options follow Celery's documented reliability settings: a stage's
message is acknowledged only after the stage finished (`acks_late`), it
goes back to the queue when the worker process dies
(`reject_on_worker_lost`), and a worker reserves one stage at a time
(prefetch 1), so a long stage never holds others hostage.

Redis gives an unacknowledged message to another worker only after the
visibility timeout; the reaper in each worker re-queues a dead worker's
stage much sooner (workers/reaper.py).

A `rediss://` broker URL connects with TLS, using Celery's
`broker_use_ssl` setting with the same CA and client certificate as the
farm's own Redis client (farm/connections.py).
"""

from __future__ import annotations

from celery import Celery

from .config import Settings
from .connections import redis_tls_options

BUILD_STAGE_TASK = "farm.build_stage"
QUEUE_PREFIX = "farm.stages."


def queue_for(platform: str, native: bool = False, mount_from: bool = False) -> str:
    """Return the Celery queue for stages of `platform`.

    Every worker that builds `platform` serves its shared queue; workers
    that build it natively (not under emulation) also serve the `native`
    queue, which the producer uses while such a worker is live. Workers
    whose Buildah builds `RUN --mount ... from=` correctly also serve the
    `mount-from` queue, for the stages that have such a step.
    """
    queue = QUEUE_PREFIX + platform.replace("/", "-")
    if mount_from:
        return queue + ".mount-from"
    return queue + ".native" if native else queue


def worker_queue(worker_id: str) -> str:
    """Return the queue that only worker `worker_id` serves, for stages sent to it by locality."""
    return f"farm.worker.{worker_id}"


def create_app(settings: Settings) -> Celery:
    """Create the Celery app for the farm's Redis."""
    app = Celery("farm", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "socket_connect_timeout": 5,
            # A running stage is never started twice when this expires: the
            # second delivery finds the stage held by a live worker and skips.
            "visibility_timeout": settings.visibility_timeout,
            # Kombu looks for expired messages every interval times throttle
            # seconds (100 s by default); a short visibility timeout needs a
            # shorter sweep to take effect. One sweep is one indexed ZRANGE.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 3)),
            "unacked_restore_throttle": 1,
        },
        task_default_queue=queue_for("linux/amd64"),
    )
    tls = redis_tls_options(settings)
    if tls:
        app.conf.broker_use_ssl = tls
    return app


def send_stage(app: Celery, build_id: str, stage_id: str, queue: str) -> None:
    """Queue the build of one stage on `queue` (see `queue_for`).

    The message carries only ids; the stage spec stays in Redis, so no
    Dockerfile text, build arg or credential travels through the broker.
    """
    app.send_task(BUILD_STAGE_TASK, kwargs={"build_id": build_id, "stage_id": stage_id}, queue=queue)


def __getattr__(name: str) -> Celery:
    """Create `app` from the environment on first use, for Celery's own tools.

    `celery -A farm.celery_app inspect active` and
    `celery -A farm.celery_app flower` find the farm's app this way.
    """
    if name == "app":
        global app
        app = create_app(Settings.from_env())
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
