"""Follow a submitted build: print its progress and finish it.

`farm build` waits here until the target stage is built (then it writes
the tags) or a stage fails (then it shows that stage's Buildah output
and the Dockerfile line it came from).
"""

from __future__ import annotations

import time

import structlog
from rich.console import Console
from rich.markup import escape

from .build_store import BuildStore, Event, decode_data
from .config import Settings
from .connections import connect_registry
from .errors import BuildFailed, FarmError
from .submit import SubmittedBuild, write_tags

log = structlog.get_logger(__name__)

# Without any event for this long, the command says it is still waiting.
_QUIET_NOTICE_SECONDS = 30.0


def follow_build(store: BuildStore, build: SubmittedBuild, settings: Settings, console: Console) -> str:
    """Print the build's events until it ends; return the target's manifest digest.

    Raises BuildFailed when a stage fails, after printing its output.
    """
    last_id = "0"
    last_event_at = time.monotonic()
    while True:
        received = False
        for event in store.events(build.build_id, last_id):
            received = True
            last_id = event.id
            digest = _handle(event, store, build, settings, console)
            if digest:
                return digest
        if received:
            last_event_at = time.monotonic()
            continue
        _check_alive(store, build, console, last_event_at)


def _handle(
    event: Event, store: BuildStore, build: SubmittedBuild, settings: Settings, console: Console
) -> str | None:
    stage = event.stage
    if event.type == "queued":
        console.print(f"[dim]queued[/]    stage {escape(stage)}")
    elif event.type == "started":
        console.print(
            f"[cyan]building[/]  stage {escape(stage)} on worker {escape(event.fields.get('worker', '?'))}"
        )
    elif event.type == "built":
        data = decode_data(event)
        console.print(
            f"[green]pushed[/]    stage {escape(stage)} {data.get('digest')} "
            f"({data.get('seconds', 0):.1f} s on {escape(data.get('worker', '?'))})"
        )
    elif event.type == "failed":
        _print_failure(decode_data(event), stage, build, console)
    elif event.type == "build-failed":
        cancelled = event.fields.get("cancelled", "[]")
        store.finish(build.build_id, "failed", error=f"stage {stage} failed")
        raise BuildFailed(f"build {build.build_id} failed in stage {stage!r}; cancelled stages: {cancelled}")
    elif event.type == "target-built":
        return _finish(store, build, settings, console)
    return None


def _finish(store: BuildStore, build: SubmittedBuild, settings: Settings, console: Console) -> str:
    result = store.result(build.build_id, build.target_id)
    if result is None or not result.digest:
        raise FarmError(f"build {build.build_id}: the target stage has no recorded digest")
    with connect_registry(settings) as registry:
        write_tags(registry, settings, build, result.digest)
    for tag in build.tags:
        console.print(f"[bold green]tagged[/]    {escape(str(tag))}@{result.digest}")
    store.finish(build.build_id, "succeeded", digest=result.digest)
    return result.digest


def _print_failure(data: dict, stage: str | None, build: SubmittedBuild, console: Console) -> None:
    location = f"{build.plan.path}:{data.get('line')}" if data.get("line") else build.plan.path
    step = data.get("step") or ""
    console.print(
        f"[bold red]failed[/]    stage {escape(stage or '?')} at {escape(location)}: {escape(step)}"
    )
    if data.get("error"):
        console.print(f"  {escape(data['error'])}")
    output = data.get("output") or ""
    if output:
        console.print(
            f"[dim]--- Buildah output of stage {escape(stage or '?')} on {escape(data.get('worker', '?'))} ---[/]"
        )
        console.print(escape(output.rstrip()), highlight=False, markup=True)
        console.print("[dim]--- end of output ---[/]")


def _check_alive(store: BuildStore, build: SubmittedBuild, console: Console, last_event_at: float) -> None:
    if not store.record(build.build_id):
        raise FarmError(
            f"build {build.build_id} is no longer in Redis (was its data lost or flushed?); "
            "submit it again: stages already in the registry are reused"
        )
    quiet = time.monotonic() - last_event_at
    if quiet > _QUIET_NOTICE_SECONDS and int(quiet) % int(_QUIET_NOTICE_SECONDS) == 0:
        states = store.states(build.build_id)
        waiting = sorted(stage for stage, state in states.items() if state in ("queued", "running"))
        console.print(f"[dim]still waiting for {', '.join(waiting) or 'the build'} ({quiet:.0f} s)[/]")
