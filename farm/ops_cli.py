"""`farm status`, `farm logs`, `farm cancel` and `farm metrics`: running the farm day to day."""

from __future__ import annotations

import argparse
import datetime
import json
import os

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .config import Settings
from .errors import FarmError

DEFAULT_METRICS_ADDRESS = "0.0.0.0"


def add_ops_commands(commands) -> None:
    status = commands.add_parser(
        "status", help="show a build's stages with state, worker and time (without BUILD: the newest builds)"
    )
    status.add_argument("build_id", nargs="?", metavar="BUILD", help="build id, as printed by farm build")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(run=_run_status)

    logs = commands.add_parser("logs", help="print the Buildah output of a build's stages")
    logs.add_argument("build_id", metavar="BUILD", help="build id, as printed by farm build")
    logs.add_argument(
        "stage", nargs="?", metavar="STAGE", help="stage id, as farm status shows it (default: all)"
    )
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines until the stages have ended"
    )
    logs.add_argument("--json", action="store_true", help="print one JSON object per line: stage and line")
    logs.set_defaults(run=_run_logs)

    cancel = commands.add_parser(
        "cancel", help="cancel a build: drop its queued stages and stop its running ones"
    )
    cancel.add_argument("build_id", metavar="BUILD", help="build id, as printed by farm build")
    cancel.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for running stages to stop (default: 60)",
    )
    cancel.add_argument("--json", action="store_true", help="print what was cancelled as JSON")
    cancel.set_defaults(run=_run_cancel)

    metrics = commands.add_parser(
        "metrics", help="serve fleet-wide Prometheus metrics (queue depth, workers, stage counters)"
    )
    metrics.add_argument("--port", type=int, default=9464, help="port to listen on (default: 9464)")
    metrics.add_argument(
        "--address",
        default=os.environ.get("FARM_METRICS_ADDRESS") or DEFAULT_METRICS_ADDRESS,
        help="address to listen on (default: FARM_METRICS_ADDRESS or 0.0.0.0)",
    )
    metrics.set_defaults(run=_run_metrics)


def _redis():
    from .connections import connect_redis

    return connect_redis(Settings.from_env())


def _run_status(args: argparse.Namespace) -> int:
    from .build_status import build_status, recent_builds

    client = _redis()
    if args.build_id is None:
        builds = recent_builds(client)
        if args.json:
            print(json.dumps(builds, indent=2))
            return 0
        table = Table("build", "status", "entries", "stages done", "created")
        for build in builds:
            table.add_row(
                build["build_id"],
                build["status"],
                " ".join(build["entries"]),
                f"{build['stages_done']}/{build['stages']}",
                _time(build["created"]),
            )
        Console(highlight=False).print(table)
        return 0

    status = build_status(client, args.build_id)
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
        return 0
    console = Console(highlight=False, soft_wrap=True)
    console.print(
        f"build [bold]{status.build_id}[/]: {status.status} ({' '.join(status.entries)}), created {_time(status.created)}"
    )
    table = Table("stage", "state", "worker", "time", "digest or error")
    for stage in status.stages:
        state = "cached" if stage.cached and stage.state == "done" else stage.state
        seconds = f"{stage.seconds:.1f} s" if stage.seconds is not None else "-"
        detail = stage.digest or stage.error or ""
        table.add_row(escape(stage.id), state, escape(stage.worker or "-"), seconds, escape(detail))
    console.print(table)
    return 0


def _run_logs(args: argparse.Namespace) -> int:
    from .build_store import BuildStore
    from .stage_logs import stage_lines, stages_to_read

    client = _redis()
    stages = stages_to_read(BuildStore(client), args.build_id, args.stage)
    prefix = len(stages) > 1
    for stage, line in stage_lines(client, args.build_id, stages, follow=args.follow):
        if args.json:
            text = json.dumps({"stage": stage, "line": line})
        else:
            text = f"{stage} | {line}" if prefix else line
        print(text, flush=True)
    return 0


def _run_cancel(args: argparse.Namespace) -> int:
    from .cancel import cancel_build

    report = cancel_build(_redis(), args.build_id, wait_seconds=args.wait)
    if args.json:
        print(
            json.dumps(
                {
                    "build_id": report.build_id,
                    "dropped": report.dropped,
                    "stopped": report.stopped,
                    "abandoned": report.abandoned,
                    "still_running": report.still_running,
                    "messages_removed": report.messages_removed,
                },
                indent=2,
            )
        )
    else:
        print(f"build {report.build_id} cancelled")
        print(f"  queued stages dropped: {', '.join(report.dropped) or 'none'}")
        print(f"  running stages stopped: {', '.join(report.stopped) or 'none'}")
        if report.abandoned:
            print(f"  stages of lost workers marked cancelled: {', '.join(report.abandoned)}")
    if report.still_running:
        running = ", ".join(f"{stage} on {worker}" for stage, worker in report.still_running.items())
        raise FarmError(
            f"build {report.build_id}: still running after {args.wait:.0f} s: {running}; "
            "those workers stop the stage when they next read the build's status (see farm status)"
        )
    return 0


def _run_metrics(args: argparse.Namespace) -> int:
    from .metrics import serve

    if not 0 < args.port < 65536:
        raise FarmError(f"invalid --port {args.port}: expected a port number from 1 to 65535")
    serve(_redis(), args.port, args.address)
    return 0


def _time(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.datetime.fromtimestamp(epoch).isoformat(sep=" ", timespec="seconds")
