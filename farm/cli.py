"""The `farm` command: plan and build Dockerfiles on the farm, run a local farm."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console

from .config import Settings
from .errors import FarmError
from .log import configure_logging

BATCH_SUFFIXES = (".yaml", ".yml", ".json")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level or os.environ.get("FARM_LOG_LEVEL") or "WARNING")
    try:
        return args.run(args)
    except FarmError as error:
        print(f"farm: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("farm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (as with `farm logs | head`):
        # stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="farm", description="Build Dockerfiles stage by stage on a farm of Buildah workers."
    )
    parser.add_argument("--log-level", help="log level for diagnostics on standard error (default: WARNING)")
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser(
        "build",
        help="build a Dockerfile, or a batch file of many, on the farm and tag the results",
        description="Build on the farm. With -f BATCH.yaml (or .yml, .json) every target of the batch "
        "file is built and CONTEXT is not needed.",
    )
    _add_dockerfile_arguments(build, context_required=False)
    build.add_argument(
        "-t",
        "--tag",
        action="append",
        default=[],
        dest="tags",
        help="name the result [REGISTRY/]REPOSITORY[:TAG] (repeatable)",
    )
    build.add_argument(
        "--platform", help="comma-separated platforms, such as linux/amd64,linux/arm64 (default: this host's)"
    )
    build.add_argument(
        "--no-cache",
        action="store_true",
        help="build every stage and run every step again, even when the registry has them",
    )
    build.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="id=ID,src=FILE",
        help="give RUN --mount=type=secret,id=ID the contents of FILE (or id=ID,env=VAR: of variable VAR); "
        "sent to the workers encrypted with FARM_SECRET_KEY (repeatable)",
    )
    build.add_argument(
        "--json", action="store_true", help="print the result as JSON; progress goes to standard error"
    )
    build.set_defaults(run=_run_build)

    plan = commands.add_parser("plan", help="print the stage graph a build would queue, without queueing")
    _add_dockerfile_arguments(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(run=_run_plan)

    workers = commands.add_parser("workers", help="list the live workers")
    workers.add_argument("--json", action="store_true", help="print the workers as JSON")
    workers.set_defaults(run=_run_workers)

    from .local_cli import add_local_commands
    from .ops_cli import add_ops_commands

    add_ops_commands(commands)
    add_local_commands(commands)
    return parser


def _add_dockerfile_arguments(parser: argparse.ArgumentParser, context_required: bool = True) -> None:
    parser.add_argument(
        "context", type=Path, nargs=None if context_required else "?", help="build context directory"
    )
    parser.add_argument(
        "-f", "--file", type=Path, dest="dockerfile", help="Dockerfile path (default: CONTEXT/Dockerfile)"
    )
    parser.add_argument("--target", help="stage to build (name or index; default: the last stage)")
    parser.add_argument(
        "--build-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a build argument (repeatable)",
    )


def _build_args(values: list[str]) -> dict[str, str]:
    args = {}
    for item in values:
        name, separator, value = item.partition("=")
        if not name:
            raise FarmError(f"invalid --build-arg {item!r}: expected NAME=VALUE")
        args[name] = value if separator else os.environ.get(name, "")
    return args


def _dockerfile(args: argparse.Namespace) -> Path:
    return args.dockerfile if args.dockerfile else args.context / "Dockerfile"


def _run_plan(args: argparse.Namespace) -> int:
    from .plan import plan_dockerfile

    plan = plan_dockerfile(_dockerfile(args), args.target, _build_args(args.build_arg))
    if args.json:
        print(json.dumps(plan.to_json(), indent=2))
        return 0
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"{plan.path}: target [bold]{plan.target.id}[/]")
    for stage in plan.stages:
        source = stage.base if stage.base else f"stage {plan.graph.stages[stage.base_stage].id}"
        needs = ", ".join(plan.needs_ids(stage)) or "-"
        console.print(
            f"  {stage.index}: [bold]{stage.id}[/] from {source} (line {stage.from_instruction.line}); needs: {needs}"
        )
    return 0


def _run_build(args: argparse.Namespace) -> int:
    from .build_secrets import parse_secret
    from .build_store import BuildStore
    from .connections import connect_redis
    from .follow import BuildFollower
    from .report import print_json_outcome, print_summary
    from .submit import submit

    settings = Settings.from_env()
    entries = _build_entries(args)
    secrets = [parse_secret(text) for text in args.secret]
    console = Console(highlight=False, soft_wrap=True, stderr=args.json)
    build = submit(entries, settings, use_cache=not args.no_cache, secrets=secrets)
    console.print(f"build [bold]{build.build_id}[/]: {len(build.specs)} stages, {len(build.cached)} cached")
    outcome = BuildFollower(BuildStore(connect_redis(settings)), build, settings, console).follow()
    if args.json:
        print_json_outcome(outcome, build)
    elif len(outcome.entries) > 1 or not outcome.succeeded:
        print_summary(outcome, console)
    return 0 if outcome.succeeded else 1


def _build_entries(args: argparse.Namespace) -> list:
    from .batch import BuildEntry, load_batch

    if args.dockerfile is not None and args.dockerfile.suffix in BATCH_SUFFIXES:
        if args.tags or args.target or args.build_arg or args.context is not None:
            raise FarmError(
                "a batch file sets contexts, tags, targets and build args itself; give only -f BATCH"
            )
        entries = load_batch(args.dockerfile)
        if args.platform:
            for entry in entries:
                entry.platforms = entry.platforms or _platforms(args.platform)
        return entries

    if args.context is None:
        raise FarmError("missing build context: farm build [options] CONTEXT (or -f BATCH.yaml)")
    return [
        BuildEntry(
            name=args.context.resolve().name or "build",
            context=args.context,
            dockerfile=_dockerfile(args),
            target=args.target,
            tags=args.tags,
            build_args=_build_args(args.build_arg),
            platforms=_platforms(args.platform) if args.platform else [],
        )
    ]


def _platforms(value: str) -> list[str]:
    platforms = [item.strip() for item in value.split(",") if item.strip()]
    for platform in platforms:
        if platform.count("/") not in (1, 2):
            raise FarmError(f"invalid platform {platform!r}: expected OS/ARCH[/VARIANT], such as linux/arm64")
    return platforms


def _run_workers(args: argparse.Namespace) -> int:
    from .connections import connect_redis
    from .fleet import live_workers

    workers = live_workers(connect_redis(Settings.from_env()))
    if args.json:
        print(json.dumps(workers, indent=2))
        return 0
    from rich.table import Table

    table = Table(
        "id",
        "host",
        "os/arch",
        "kernel",
        "mode",
        "driver",
        "runtime",
        "buildah",
        "platforms",
        "jobs",
        "load",
        "disk free",
        "state",
    )
    for worker in workers:
        table.add_row(
            worker.get("id", "?"),
            worker.get("host", "?"),
            f"{worker.get('os', '?')}/{worker.get('arch', '?')}",
            worker.get("kernel", "?"),
            worker.get("mode", "?"),
            worker.get("driver", "?"),
            worker.get("runtime") or f"none ({worker.get('isolation', '?')})",
            worker.get("buildah") or "?",
            ",".join(worker.get("platforms", [])),
            str(worker.get("concurrency", "?")),
            f"{worker.get('load', 0):.2f}",
            f"{worker.get('disk_free', 0) / 2**30:.1f} GiB",
            _worker_state(worker),
        )
    if not workers:
        print("no live workers")
        return 0
    Console(width=200).print(table)
    return 0


def _worker_state(worker: dict) -> str:
    """Return `accepting`, or `paused: REASON` for a worker that takes no stages."""
    if worker.get("accepting", True):
        return "accepting"
    return f"paused: {worker.get('reason') or 'no reason given'}"


if __name__ == "__main__":
    sys.exit(main())
