"""`farm local` and `farm base-images`: a farm and base images on one machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import Settings

DEFAULT_DIRECTORY = Path(".farm")


def add_local_commands(commands) -> None:
    local = commands.add_parser("local", help="run Redis, a registry and workers on this machine")
    actions = local.add_subparsers(dest="action", required=True)

    up = actions.add_parser("up", help="start a local farm and print the variables that point at it")
    up.add_argument("--workers", type=int, default=2, help="number of workers (default: 2)")
    up.add_argument(
        "--metrics",
        action="store_true",
        help="let each worker serve Prometheus metrics on a free loopback port (see farm local env)",
    )
    up.add_argument(
        "--dir", type=Path, default=DEFAULT_DIRECTORY, help="state and data directory (default: .farm)"
    )
    up.set_defaults(run=_run_up)

    down = actions.add_parser("down", help="stop the local farm started from --dir")
    down.add_argument(
        "--dir", type=Path, default=DEFAULT_DIRECTORY, help="state and data directory (default: .farm)"
    )
    down.set_defaults(run=_run_down)

    env = actions.add_parser("env", help="print shell exports for the running local farm")
    env.add_argument(
        "--dir", type=Path, default=DEFAULT_DIRECTORY, help="state and data directory (default: .farm)"
    )
    env.set_defaults(run=_run_env)

    images = commands.add_parser(
        "base-images",
        help="make busybox and debian base images without internet and push them to FARM_REGISTRY",
    )
    images.add_argument(
        "--debian", action="store_true", help="also make debian:bookworm (debootstrap, about 30 s)"
    )
    images.add_argument(
        "--platform",
        help="comma-separated platforms of the busybox image, such as linux/amd64,linux/arm64; "
        "several make an image index, other architectures come from Debian's busybox-static "
        "package of that architecture (default: this host's)",
    )
    images.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIRECTORY / "base-images",
        help="work directory, kept to make the next run faster (default: .farm/base-images)",
    )
    images.set_defaults(run=_run_base_images)


def _run_up(args: argparse.Namespace) -> int:
    from .local import LocalFarm

    state = LocalFarm(args.dir).start(workers=args.workers, metrics=args.metrics)
    _print_environment(state)
    return 0


def _print_environment(state) -> None:
    for name, value in state.environment().items():
        print(f"export {name}={value}")
    ports = [str(service.metrics_port) for service in state.services if service.metrics_port]
    if ports:
        print(f"export FARM_WORKER_METRICS_PORTS='{' '.join(ports)}'")


def _run_down(args: argparse.Namespace) -> int:
    from .local import LocalFarm

    LocalFarm(args.dir).stop()
    return 0


def _run_env(args: argparse.Namespace) -> int:
    from .errors import FarmError
    from .local import LocalFarm

    state = LocalFarm(args.dir).load()
    if state is None:
        raise FarmError(f"no local farm runs from {args.dir.resolve()}; start one with: farm local up")
    _print_environment(state)
    return 0


def _run_base_images(args: argparse.Namespace) -> int:
    from . import base_images
    from .connections import connect_registry

    settings = Settings.from_env()
    args.dir.mkdir(parents=True, exist_ok=True)
    with connect_registry(settings) as registry:
        platforms = [item.strip() for item in (args.platform or "").split(",") if item.strip()]
        print(base_images.make_busybox_image(registry, args.dir, platforms))
        if args.debian:
            print(base_images.make_debian_image(registry, args.dir))
    return 0
