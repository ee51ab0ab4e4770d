"""`farm-worker`: probe the host, prove a Buildah mode, then serve stage builds.

At start the worker probes its host (workers/probe.py), orders the Buildah
modes and storage drivers that can work there (workers/selection.py), and
proves the first with a small real build (workers/proof.py), falling back
to the next candidate when it fails. Only then does the Celery worker
start, so a worker that cannot build consumes nothing from the queue.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import sys
from pathlib import Path

import redis
import structlog
from celery import Celery
from celery.signals import worker_ready

from farm.build_store import BuildStore
from farm.buildah_support import builds_mount_from
from farm.celery_app import BUILD_STAGE_TASK, create_app, queue_for, worker_queue
from farm.config import Settings
from farm.connections import connect_redis, connect_registry
from farm.errors import FarmError
from farm.log import configure_logging
from farm.registries_conf import registries_conf
from farm.registry import RegistryClient
from farm.stages import default_platform

from .buildah import Buildah
from .context_cache import ContextCache
from .disk_guard import DEFAULT_MIN_FREE, DiskGuard, MinFree
from .heartbeat import Heartbeat
from .messages import InvalidMessage, stage_message
from .metrics import serve_metrics
from .modes import make_buildah
from .platforms import emulated_platforms
from .probe import HostProfile, probe_host
from .proof import choose
from .reaper import Reaper
from .registry_access import registry_access
from .report import format_probe, probe_json
from .selection import Candidate, Selection, SelectionError, select_candidates
from .stage_runner import StageRunner

log = structlog.get_logger(__name__)

DEFAULT_ROOT = Path("/var/lib/farm-worker")
# Generous: a stage that legitimately compiles for hours is not killed.
DEFAULT_STAGE_TIMEOUT_SECONDS = 3 * 3600
BUSYBOX_REPOSITORY = "library/busybox"


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
        help=f"directory for storage, contexts and work files (default: {DEFAULT_ROOT}/NAME for root, "
        "~/.local/share/farm-worker/NAME for other users)",
    )
    parser.add_argument(
        "--mode",
        default=os.environ.get("FARM_BUILDAH_MODE", "auto"),
        help="auto, native-chroot, native-rootless or docker-with-fuse (default: FARM_BUILDAH_MODE or auto)",
    )
    parser.add_argument(
        "--storage-driver",
        default=os.environ.get("FARM_BUILDAH_STORAGE_DRIVER", "auto"),
        help="auto, overlay or vfs (default: FARM_BUILDAH_STORAGE_DRIVER or auto)",
    )
    parser.add_argument(
        "--overlay-mount",
        default=os.environ.get("FARM_BUILDAH_OVERLAY_MOUNT", "auto"),
        help="how overlay mounts: auto, kernel or fuse-overlayfs (default: FARM_BUILDAH_OVERLAY_MOUNT or auto)",
    )
    parser.add_argument(
        "--runner-image",
        default=os.environ.get("FARM_RUNNER_IMAGE"),
        help="Buildah image of docker-with-fuse mode (default: FARM_RUNNER_IMAGE or REGISTRY/NAMESPACE/runner:latest)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="print the host probe, the choice and the rejected candidates, then exit without starting",
    )
    parser.add_argument("--json", action="store_true", help="with --probe: print JSON")
    parser.add_argument(
        "--profile",
        type=Path,
        help="with --probe: select for a host profile recorded with --probe --json (its `profile` "
        "object) instead of probing this host",
    )
    parser.add_argument("--concurrency", type=int, default=1, help="stages built at once (default: 1)")
    parser.add_argument(
        "--stage-timeout",
        type=_stage_timeout,
        default=os.environ.get("FARM_STAGE_TIMEOUT") or str(DEFAULT_STAGE_TIMEOUT_SECONDS),
        metavar="SECONDS",
        help="kill a stage's Buildah process after this many seconds and fail the stage "
        f"(default: FARM_STAGE_TIMEOUT or {DEFAULT_STAGE_TIMEOUT_SECONDS})",
    )
    parser.add_argument("--log-level", default=None, help="log level (default: FARM_LOG_LEVEL or INFO)")
    return parser.parse_args(argv)


def _stage_timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive number of seconds")
    return seconds


def worker_identity(name: str | None, root: Path | None) -> tuple[str, Path]:
    """Return the worker id and root; a generated name is kept in the root so the id is stable."""
    host = socket.gethostname()
    default_root = _default_root()
    # Buildah, runc and the probe's container bundle need absolute paths.
    root = root.resolve() if root else None
    if name:
        root = root or default_root / name
        return f"{host}-{name}", root
    root = root or default_root / "default"
    root.mkdir(parents=True, exist_ok=True)
    name_file = root / "worker-name"
    if not name_file.exists():
        name_file.write_text(secrets.token_hex(3))
    return f"{host}-{name_file.read_text().strip()}", root


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = Settings.from_env()
        if args.probe:
            return _print_probe(args)
        return _run(args, settings)
    except FarmError as error:
        print(f"farm-worker: {error}", file=sys.stderr)
        return 1


def probe_and_select(args: argparse.Namespace, root: Path) -> tuple[HostProfile, Selection]:
    """Probe this host and order the candidates; SelectionError for an impossible request."""
    profile = probe_host(root / "probe")
    log.info("host probed", profile=profile.to_json())
    selection = select_candidates(profile, args.mode, args.storage_driver, args.overlay_mount)
    for rejection in selection.rejected:
        log.info("candidate rejected by the probe", candidate=rejection.candidate, reason=rejection.reason)
    return profile, selection


def _print_probe(args: argparse.Namespace) -> int:
    if args.profile:
        profile = _load_profile(args.profile)
    else:
        _, root = worker_identity(args.name, args.root)
        root.mkdir(parents=True, exist_ok=True)
        profile = probe_host(root / "probe")
    try:
        selection = select_candidates(profile, args.mode, args.storage_driver, args.overlay_mount)
        error = None
    except SelectionError as raised:
        selection, error = None, str(raised)
    if args.json:
        print(json.dumps(probe_json(profile, selection, error), indent=2))
    else:
        print(format_probe(profile, selection, error))
    return 0 if selection and selection.candidates else 1


def _run(args: argparse.Namespace, settings: Settings) -> int:
    worker_id, root = worker_identity(args.name, args.root)
    root.mkdir(parents=True, exist_ok=True)
    profile, selection = probe_and_select(args, root)

    redis_client = connect_redis(settings)
    registry = connect_registry(settings)
    base_image = _proof_base_image(registry, settings)
    conf = root / "registries.conf"
    conf.write_text(registries_conf(settings.registry, settings.registry_insecure, settings.mirror_docker_io))
    work_dir = root / "work"
    work_dir.mkdir(exist_ok=True)
    contexts = ContextCache(root / "contexts", registry, settings.contexts_repository, settings.context_limit)
    runner_image = args.runner_image or f"{settings.registry}/{settings.namespace}/runner:latest"
    access = registry_access(settings, root)

    def make(candidate: Candidate) -> Buildah:
        mounts = [(contexts.directory, False), (work_dir, True), *((path, False) for path in access.paths)]
        return make_buildah(candidate, worker_id, root, conf, ["docker"], runner_image, mounts, access.flags)

    chosen = choose(selection, make, work_dir, base_image)
    if chosen is None:
        reasons = "\n".join(f"  {r.candidate}: {r.reason}" for r in selection.rejected)
        raise FarmError(f"no Buildah mode works on this host; the candidates and why each failed:\n{reasons}")
    candidate, buildah = chosen

    platform = default_platform()
    app = create_app(settings)
    min_free = MinFree.parse(os.environ.get("FARM_MIN_FREE_DISK") or DEFAULT_MIN_FREE)
    guard = DiskGuard(root, min_free, buildah, settings.stages_repository, redis_client, worker_id)
    runner = StageRunner(
        worker_id=worker_id,
        store=BuildStore(redis_client),
        buildah=buildah,
        contexts=contexts,
        registry=registry,
        stages_repository=settings.stages_repository,
        app=app,
        work_dir=work_dir,
        native_platform=platform,
        layer_cache=settings.layer_cache_repository,
        platforms=[platform, *emulated_platforms(platform)],
        locality=settings.locality,
        push_compression=settings.push_compression,
        builds_mount_from=builds_mount_from(profile.buildah_version),
        secret_key=settings.secret_key,
        concurrency=args.concurrency,
        stage_timeout=args.stage_timeout,
        disk_guard=guard,
    )
    emulated = emulated_platforms(platform)
    queues = [queue_for(platform), queue_for(platform, native=True)] + [queue_for(p) for p in emulated]
    queues.append(worker_queue(worker_id))
    if builds_mount_from(profile.buildah_version):
        queues += [queue_for(p, mount_from=True) for p in [platform, *emulated]]

    @app.task(name=BUILD_STAGE_TASK, acks_late=True, reject_on_worker_lost=True)
    def build_stage(*args, **kwargs) -> None:
        try:
            build_id, stage_id = stage_message(args, kwargs)
        except InvalidMessage as error:
            log.error("task message rejected", task=BUILD_STAGE_TASK, reason=str(error))
            return
        # A message taken just before the worker paused is passed on, not built.
        state = guard.check()
        if not state.accepting:
            runner.pass_on(build_id, stage_id, state.reason or "")
            return
        runner.run(build_id, stage_id)

    hostname = f"{worker_id}@{socket.gethostname()}"

    @worker_ready.connect(weak=False)
    def start_disk_guard(**_) -> None:
        # Remote control commands reach the worker only once it consumes, so the guard starts now.
        guard.start()

    published = worker_profile(worker_id, profile, candidate, platform, emulated, args)
    serve_metrics(published, root)
    heartbeat = Heartbeat(redis_client, worker_id, published, str(root), extra=guard.profile_fields)
    heartbeat.start()
    guard.pause = lambda reason: _set_consuming(app, hostname, queues, heartbeat, consuming=False)
    guard.resume = lambda: _set_consuming(app, hostname, queues, heartbeat, consuming=True)
    reaper = Reaper(runner.store, app, worker_id)
    reaper.start()
    log.info(
        "worker starting",
        worker=worker_id,
        root=str(root),
        candidate=candidate.label,
        queues=queues,
    )
    try:
        app.Worker(
            hostname=hostname,
            queues=queues,
            concurrency=args.concurrency,
            pool="threads",
            without_mingle=True,
            without_gossip=True,
            loglevel=(args.log_level or os.environ.get("FARM_LOG_LEVEL") or "INFO").upper(),
        ).start()
    finally:
        guard.stop()
        reaper.stop()
        heartbeat.stop()
        buildah.remove_containers()
        log.info("worker stopped", worker=worker_id)
    return 0


def _set_consuming(
    app: Celery, hostname: str, queues: list[str], heartbeat: Heartbeat, consuming: bool
) -> None:
    """Stop or start consuming `queues` on this worker, with Celery's remote control commands.

    The heartbeat then publishes the change at once, so producers and
    other workers do not wait for the next beat to see it.
    """
    command = app.control.add_consumer if consuming else app.control.cancel_consumer
    for queue in queues:
        replies = command(queue, destination=[hostname], reply=True, timeout=5)
        if not replies:
            log.warning("no reply to a consumer change from this worker", queue=queue, consuming=consuming)
    try:
        heartbeat.beat()
    except redis.RedisError as error:
        log.warning("worker state not published; the next heartbeat publishes it", error=str(error))


def worker_profile(
    worker_id: str,
    profile: HostProfile,
    candidate: Candidate,
    platform: str,
    emulated: list[str],
    args: argparse.Namespace,
) -> dict:
    """Return what the heartbeat publishes about this worker (load and free disk are added per beat)."""
    return {
        "id": worker_id,
        "host": socket.gethostname(),
        "os": profile.os,
        "arch": profile.arch,
        "kernel": profile.kernel,
        "user": profile.user,
        "mode": candidate.mode,
        "driver": candidate.driver_label,
        "isolation": candidate.isolation,
        "runtime": candidate.runtime,
        "network": candidate.network,
        "buildah": profile.buildah_version,
        "platforms": [platform, *emulated],
        "emulated": emulated,
        "concurrency": args.concurrency,
        "stage_timeout": args.stage_timeout,
        "pid": os.getpid(),
    }


def _load_profile(path: Path) -> HostProfile:
    try:
        data = json.loads(path.read_text())
        return HostProfile.from_json(data.get("profile", data))
    except (OSError, ValueError, TypeError) as error:
        raise FarmError(f"cannot read the host profile {path}: {error}") from None


def _proof_base_image(registry: RegistryClient, settings: Settings) -> str:
    if registry.get_manifest(BUSYBOX_REPOSITORY, "latest") is None:
        raise FarmError(
            f"the proof build needs {settings.registry}/{BUSYBOX_REPOSITORY}:latest, which is not in "
            "the registry; push it with: farm base-images"
        )
    return f"{settings.registry}/{BUSYBOX_REPOSITORY}:latest"


def _default_root() -> Path:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return DEFAULT_ROOT
    return Path.home() / ".local" / "share" / "farm-worker"


if __name__ == "__main__":
    sys.exit(main())
