"""Follow a submitted build: print its progress and finish each entry.

`farm build` waits here until every entry has either its target built on
each platform (then its tags are written: a manifest copy for one
platform, an image index for several) or a failed stage on its path
(then the stage's Buildah output and Dockerfile line are shown), or until
the build is cancelled (`farm cancel`), which ends every entry still
running as `cancelled`.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis
import structlog
from rich.console import Console
from rich.markup import escape

from .build_store import BuildStore, Event, decode_data
from .config import Settings
from .connections import connect_registry
from .errors import FarmError
from .registry import RegistryClient
from .spec import StageResult
from .submit import SubmittedBuild
from .tags import write_tags

log = structlog.get_logger(__name__)

# `farm build` waits this long for Redis to come back before it gives up.
_REDIS_OUTAGE_SECONDS = 300.0
_REDIS_RETRY_MAX_PAUSE_SECONDS = 5.0
# After this long without an event, the command prints the stages it still waits for.
_QUIET_NOTICE_SECONDS = 30.0
# Tags of several finished entries are written in parallel: each is a few
# small registry requests, and a cached batch finishes all entries at once.
_TAGGING_THREADS = 8


@dataclass
class EntryOutcome:
    """The result of one entry of a build: its status, digests per platform, tags and error."""

    name: str
    status: str = "running"
    digests: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class BuildOutcome:
    """The result of a build: one outcome per entry, and the stage results."""

    build_id: str
    entries: dict[str, EntryOutcome]
    results: dict[str, StageResult] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return all(entry.status == "succeeded" for entry in self.entries.values())

    @property
    def failed_entries(self) -> list[str]:
        return [name for name, entry in self.entries.items() if entry.status == "failed"]

    @property
    def cancelled(self) -> bool:
        return any(entry.status == "cancelled" for entry in self.entries.values())


class BuildFollower:
    """Reads a build's events, prints them, and writes each entry's tags when it is built."""

    def __init__(
        self, store: BuildStore, build: SubmittedBuild, settings: Settings, console: Console
    ) -> None:
        self.store = store
        self.build = build
        self.settings = settings
        self.console = console
        self.outcome = BuildOutcome(build.build_id, {name: EntryOutcome(name) for name in build.entries})
        self._built_units: dict[tuple[str, str], str] = {}
        self._ready: list[str] = []
        self._outage = RedisOutage(settings.redis_address)

    def follow(self) -> BuildOutcome:
        """Print events until every entry has ended; return the outcome."""
        last_id = "0"
        last_event_at = time.monotonic()
        with connect_registry(self.settings) as registry:
            while not self._all_ended():
                try:
                    received = False
                    for event in self.store.events(self.build.build_id, last_id):
                        received = True
                        last_id = event.id
                        self._handle(event)
                    self._finish_ready(registry)
                    if received:
                        last_event_at = time.monotonic()
                    else:
                        self._check_alive(last_event_at)
                    self._outage.end(self.console)
                except (redis.ConnectionError, redis.TimeoutError) as error:
                    self._outage.wait(self.console, error)

        status = "failed"
        if self.outcome.succeeded:
            status = "succeeded"
        elif self.outcome.cancelled:
            status = "cancelled"
        self.store.finish(self.build.build_id, status, failed=" ".join(self.outcome.failed_entries))
        return self.outcome

    def _handle(self, event: Event) -> None:
        stage = escape(event.stage or "?")
        data = decode_data(event)
        if event.type in ("built", "cached"):
            self.outcome.results[event.stage] = StageResult(**data)
        if event.type == "queued":
            self.console.print(f"[dim]queued[/]    stage {stage}")
        elif event.type == "started":
            self.console.print(
                f"[cyan]building[/]  stage {stage} on worker {escape(event.fields.get('worker', '?'))}"
            )
        elif event.type == "cached":
            self.console.print(f"[green]cached[/]    stage {stage} {data.get('digest')}")
        elif event.type == "built":
            how = "reused from another build" if data.get("cached") else f"{data.get('seconds', 0):.1f} s"
            self.console.print(
                f"[green]pushed[/]    stage {stage} {data.get('digest')} ({how} on {escape(data.get('worker', '?'))})"
            )
        elif event.type == "failed":
            self._print_failure(data, event.stage)
            self._fail_units(event.stage, data)
        elif event.type == "cancelled":
            # Redis's cjson encodes an empty Lua table as {}.
            cancelled = event.fields.get("cancelled", "[]")
            if cancelled not in ("[]", "{}"):
                self.console.print(f"[yellow]cancelled[/] stages {escape(cancelled)} (they needed {stage})")
        elif event.type == "target-built":
            self._target_built(event.stage)
        elif event.type == "build-cancelled":
            self._cancelled(event)
        elif event.type == "stage-stopped":
            worker = escape(event.fields.get("worker", "?"))
            self.console.print(f"[yellow]stopped[/]   stage {stage} on worker {worker} (build cancelled)")

    def _cancelled(self, event: Event) -> None:
        dropped = ", ".join(json.loads(event.fields.get("cancelled", "[]"))) or "none"
        running = ", ".join(json.loads(event.fields.get("running", "[]"))) or "none"
        self.console.print(
            f"[bold yellow]cancelled[/] build {escape(self.build.build_id)} (farm cancel): "
            f"queued stages dropped: {escape(dropped)}; running stages being stopped: {escape(running)}"
        )
        for entry in self.outcome.entries.values():
            if entry.status == "running":
                entry.status = "cancelled"
                entry.error = f"build {self.build.build_id} was cancelled"

    def _target_built(self, node: str) -> None:
        result = self.store.result(self.build.build_id, node)
        if result is None or not result.digest:
            raise FarmError(f"build {self.build.build_id}: stage {node} has no recorded digest")
        for unit in self.build.units:
            if unit.target_id == node:
                self._built_units[(unit.entry.name, unit.platform)] = result.digest
        for name, entry in self.outcome.entries.items():
            if entry.status == "running" and name not in self._ready and self._entry_built(name):
                self._ready.append(name)

    def _entry_built(self, name: str) -> bool:
        return all((name, unit.platform) in self._built_units for unit in self.build.units_of(name))

    def _finish_ready(self, registry: RegistryClient) -> None:
        """Write the tags of the entries whose targets are all built, several at a time."""
        if not self._ready:
            return
        names, self._ready = self._ready, []
        with ThreadPoolExecutor(max_workers=_TAGGING_THREADS) as pool:
            digests = list(pool.map(lambda name: self._write_tags(registry, name), names))
        for name, digest in zip(names, digests, strict=True):
            self._print_entry(name, digest)

    def _write_tags(self, registry: RegistryClient, name: str) -> str:
        entry = self.outcome.entries[name]
        entry.digests = {
            unit.platform: self._built_units[(name, unit.platform)] for unit in self.build.units_of(name)
        }
        tags = self.build.tags.get(name, [])
        digest = write_tags(registry, self.settings, tags, entry.digests)
        entry.tags = [str(tag) for tag in tags]
        entry.status = "succeeded"
        return digest

    def _print_entry(self, name: str, digest: str) -> None:
        label = f"entry {escape(name)}: " if len(self.outcome.entries) > 1 else ""
        tags = self.outcome.entries[name].tags
        for tag in tags:
            self.console.print(f"[bold green]tagged[/]    {label}{escape(tag)}@{digest}")
        if not tags:
            self.console.print(f"[bold green]built[/]     {label}{digest}")

    def _fail_units(self, node: str, data: dict) -> None:
        spec = self.build.specs.get(node)
        affected = {node, *(spec.descendants if spec else [])}
        for unit in self.build.units:
            entry = self.outcome.entries[unit.entry.name]
            if unit.target_id in affected and entry.status == "running":
                entry.status = "failed"
                entry.error = f"stage {node} failed: {data.get('error') or 'see its output above'}"

    def _print_failure(self, data: dict, node: str) -> None:
        spec = self.build.specs.get(node)
        path = spec.source_path if spec else "Dockerfile"
        location = f"{path}:{data['line']}" if data.get("line") else path
        step = escape(data.get("step") or "")
        self.console.print(f"[bold red]failed[/]    stage {escape(node)} at {escape(location)}: {step}")
        if data.get("error"):
            self.console.print(f"  {escape(data['error'])}")
        output = data.get("output") or ""
        if output:
            worker = escape(data.get("worker", "?"))
            self.console.print(f"[dim]--- Buildah output of stage {escape(node)} on {worker} ---[/]")
            self.console.print(escape(output.rstrip()))
            self.console.print("[dim]--- end of output ---[/]")

    def _all_ended(self) -> bool:
        return all(entry.status != "running" for entry in self.outcome.entries.values())

    def _check_alive(self, last_event_at: float) -> None:
        if not self.store.record(self.build.build_id):
            raise FarmError(
                f"build {self.build.build_id} is no longer in Redis (was its data lost or flushed?); "
                "submit it again: stages already in the registry are reused"
            )
        quiet = time.monotonic() - last_event_at
        if quiet > _QUIET_NOTICE_SECONDS and int(quiet) % int(_QUIET_NOTICE_SECONDS) == 0:
            states = self.store.states(self.build.build_id)
            waiting = sorted(stage for stage, state in states.items() if state in ("queued", "running"))
            self.console.print(
                f"[dim]still waiting for {', '.join(waiting) or 'the build'} ({quiet:.0f} s)[/]"
            )


class RedisOutage:
    """Tracks a lost Redis connection while following: says so once, waits with backoff, gives up late.

    The build's state stays in Redis, so after a restart that kept its
    data the follower reads on from the last event it printed.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.since: float | None = None
        self.pause = 0.5

    def wait(self, console: Console, error: Exception) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
            console.print(f"[yellow]lost connection to Redis at {escape(self.address)}; reconnecting[/]")
            log.warning("redis connection lost while following", redis=self.address, error=str(error))
        if now - self.since > _REDIS_OUTAGE_SECONDS:
            raise FarmError(
                f"Redis at {self.address} unreachable for {_REDIS_OUTAGE_SECONDS:.0f} s ({error}); "
                "the build may still run: submit it again once Redis is back, and stages already "
                "in the registry are reused"
            )
        time.sleep(self.pause)
        self.pause = min(self.pause * 2, _REDIS_RETRY_MAX_PAUSE_SECONDS)

    def end(self, console: Console) -> None:
        if self.since is None:
            return
        console.print(f"[green]reconnected to Redis at {escape(self.address)}[/]")
        self.since = None
        self.pause = 0.5
