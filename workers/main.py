"""`farm-worker`: start a Celery worker that builds stages with Buildah.

The worker builds as root with chroot isolation, on the overlay driver
when a test mount works and on vfs otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform as _platform
import secrets
import socket
import sys
from pathlib import Path

import structlog

from farm.build_store import BuildStore
from farm.celery_app import BUILD_STAGE_TASK, create_app, queue_for
from farm.config import Settings
from farm.connections import connect_redis, connect_registry
from farm.errors import FarmError
from farm.log import configure_logging
from farm.registries_conf import registries_conf
from farm.stages import default_platform

from .buildah import Buildah
from .context_cache import ContextCache
from .heartbeat import Heartbeat
from .messages import InvalidMessage, stage_message
from .platforms import emulated_platforms
from .reaper import Reaper
from .stage_runner import StageRunner
from .storage import choose_storage

log = structlog.get_logger(__name__)

DEFAULT_ROOT = Path("/var/lib/farm-worker")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="farm-worker", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--name",
        default=os.environ.get("FARM_WORKER_NAME"),
        help="suffix of the worker id (HOST-NAME); default: one generated and kept in --root",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help=f"directory for storage, contexts and work files (default: {DEFAULT_ROOT}/NAME)",
    )
    parser.add_argument(
        "--storage-driver",
        choices=["auto", "overlay", "vfs"],
        default=os.environ.get("FARM_BUILDAH_STORAGE_DRIVER", "auto"),
        help="storage driver (default: auto, overlay when a test mount works, else vfs)",
    )
    parser.add_argument("--concurrency", type=int, default=1, help="stages built at once (default: 1)")
    parser.add_argument("--log-level", default=None, help="log level (default: FARM_LOG_LEVEL or INFO)")
    return parser.parse_args(argv)


def worker_identity(name: str | None, root: Path | None) -> tuple[str, Path]:
    """Return the worker id and root; a generated name is kept in the root so the id is stable."""
    host = socket.gethostname()
    if name:
        root = root or DEFAULT_ROOT / name
        return f"{host}-{name}", root
    root = root or DEFAULT_ROOT / "default"
    root.mkdir(parents=True, exist_ok=True)
    name_file = root / "worker-name"
    if not name_file.exists():
        name_file.write_text(secrets.token_hex(3))
    return f"{host}-{name_file.read_text().strip()}", root


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    settings = Settings.from_env()
    try:
        return _run(args, settings)
    except FarmError as error:
        print(f"farm-worker: {error}", file=sys.stderr)
        return 1
    except RuntimeError as error:
        print(f"farm-worker: {error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, settings: Settings) -> int:
    worker_id, root = worker_identity(args.name, args.root)
    root.mkdir(parents=True, exist_ok=True)
    redis_client = connect_redis(settings)
    registry = connect_registry(settings)

    conf = root / "registries.conf"
    conf.write_text(registries_conf(settings.registry, settings.registry_insecure, settings.mirror_docker_io))
    storage = choose_storage(root, conf, args.storage_driver)
    buildah = Buildah(storage, conf, isolation="chroot")
    buildah.remove_containers()

    platform = default_platform()
    app = create_app(settings)
    work_dir = root / "work"
    work_dir.mkdir(exist_ok=True)
    runner = StageRunner(
        worker_id=worker_id,
        store=BuildStore(redis_client),
        buildah=buildah,
        contexts=ContextCache(root / "contexts", registry, settings.contexts_repository),
        registry=registry,
        stages_repository=settings.stages_repository,
        app=app,
        work_dir=work_dir,
        native_platform=platform,
        layer_cache=settings.layer_cache_repository,
    )
    emulated = emulated_platforms(platform)
    queues = [queue_for(platform), queue_for(platform, native=True)] + [queue_for(p) for p in emulated]

    @app.task(name=BUILD_STAGE_TASK, acks_late=True, reject_on_worker_lost=True)
    def build_stage(*args, **kwargs) -> None:
        try:
            build_id, stage_id = stage_message(args, kwargs)
        except InvalidMessage as error:
            log.error("task message rejected", task=BUILD_STAGE_TASK, reason=str(error))
            return
        runner.run(build_id, stage_id)

    profile = {
        "id": worker_id,
        "host": socket.gethostname(),
        "os": _platform.system().lower(),
        "arch": _platform.machine(),
        "kernel": _platform.release(),
        "mode": "native-chroot",
        "driver": storage.driver,
        "isolation": "chroot",
        "platforms": [platform, *emulated],
        "emulated": emulated,
        "concurrency": args.concurrency,
        "pid": os.getpid(),
    }
    heartbeat = Heartbeat(redis_client, worker_id, profile, str(root))
    heartbeat.start()
    reaper = Reaper(runner.store, app, worker_id)
    reaper.start()
    log.info(
        "worker starting", worker=worker_id, root=str(root), driver=storage.driver, queue=queue_for(platform)
    )
    try:
        app.Worker(
            hostname=f"{worker_id}@{socket.gethostname()}",
            queues=queues,
            concurrency=args.concurrency,
            pool="threads",
            without_mingle=True,
            without_gossip=True,
            loglevel=(args.log_level or os.environ.get("FARM_LOG_LEVEL") or "INFO").upper(),
        ).start()
    finally:
        reaper.stop()
        heartbeat.stop()
        buildah.remove_containers()
        log.info("worker stopped", worker=worker_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
