"""The end of `farm build`: a summary table, or the whole result as JSON."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from .follow import BuildOutcome
from .submit import SubmittedBuild


def outcome_json(outcome: BuildOutcome, build: SubmittedBuild) -> dict:
    """Return the build's result: each entry with its tags, digests and stages."""
    entries = []
    for name, entry in outcome.entries.items():
        stage_ids = _stages_of(build, [unit.target_id for unit in build.units_of(name)])
        entries.append(
            {
                "entry": name,
                "status": entry.status,
                "error": entry.error,
                "tags": entry.tags,
                "digests": entry.digests,
                "stages": [_stage_json(build, outcome, stage_id) for stage_id in stage_ids],
            }
        )
    return {"build_id": build.build_id, "succeeded": outcome.succeeded, "entries": entries}


def print_json_outcome(outcome: BuildOutcome, build: SubmittedBuild) -> None:
    print(json.dumps(outcome_json(outcome, build), indent=2))


def print_summary(outcome: BuildOutcome, console: Console) -> None:
    table = Table("entry", "status", "tags or error")
    for name, entry in outcome.entries.items():
        detail = ", ".join(entry.tags) if entry.status == "succeeded" else entry.error or ""
        table.add_row(name, entry.status, detail)
    console.print(table)
    if outcome.failed_entries:
        console.print(f"[bold red]failed entries:[/] {', '.join(outcome.failed_entries)}")


def _stage_json(build: SubmittedBuild, outcome: BuildOutcome, stage_id: str) -> dict:
    spec = build.specs[stage_id]
    result = outcome.results.get(stage_id)
    state = "not built"
    if result is not None:
        state = "cached" if result.cached else "built"
    return {
        "id": stage_id,
        "stage": spec.stage,
        "platform": spec.platform,
        "key": spec.key,
        "state": state,
        "worker": result.worker if result else None,
        "digest": result.digest if result else None,
        "seconds": result.seconds if result else None,
        "push_seconds": result.push_seconds if result else None,
    }


def _stages_of(build: SubmittedBuild, targets: list[str]) -> list[str]:
    found: list[str] = []
    pending = list(targets)
    while pending:
        node = pending.pop()
        if node in found or node not in build.specs:
            continue
        found.append(node)
        pending.extend(build.specs[node].needs)
    return [node for node in build.specs if node in found]
