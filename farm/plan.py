"""The stage graph that a build of one target needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .dockerfile import read_dockerfile
from .errors import DockerfileError
from .stages import Stage, StageGraph, split_stages


@dataclass
class Plan:
    """The stages a target needs, in Dockerfile order, ending with the target."""

    graph: StageGraph
    target: Stage
    stages: list[Stage]

    @property
    def path(self) -> str:
        return self.graph.path

    def needs_ids(self, stage: Stage) -> list[str]:
        return [self.graph.stages[index].id for index in stage.needs]

    def to_json(self) -> dict:
        """Return the plan in the shape `farm plan --json` prints."""
        return {
            "dockerfile": self.path,
            "target": self.target.id,
            "stages": [
                {
                    "id": stage.id,
                    "index": stage.index,
                    "base": stage.base,
                    "platform": stage.platform,
                    "line": stage.from_instruction.line,
                    "needs": self.needs_ids(stage),
                }
                for stage in self.stages
            ],
        }


def plan_dockerfile(
    path: str | Path,
    target: str | None = None,
    build_args: dict[str, str] | None = None,
    platform: str | None = None,
) -> Plan:
    """Read the Dockerfile at `path` and plan the stages `target` needs.

    `target` is a stage name (any case) or index; the default is the last
    stage. Raises DockerfileError with the file and line on a bad file.
    """
    graph = split_stages(read_dockerfile(path), build_args, platform)
    plan = plan_graph(graph, target)
    check_renderable(plan)
    return plan


def check_renderable(plan: Plan) -> None:
    """Render every planned stage once, so that what a worker cannot build is refused now.

    Raises DockerfileError for an instruction the renderer cannot lower,
    such as a `RUN` heredoc that starts with `#!`.
    """
    from .render import render_stage

    for stage in plan.stages:
        render_stage(plan.graph, stage, lambda index: f"stage-{index}")


def plan_graph(graph: StageGraph, target: str | None = None) -> Plan:
    """Prune `graph` to the stages `target` needs."""
    if target is None or target == "":
        target_stage = graph.stages[-1]
    else:
        target_stage = graph.find(target)
        if target_stage is None:
            known = ", ".join(stage.id for stage in graph.stages)
            last = graph.stages[-1].from_instruction.line
            raise DockerfileError(
                graph.path, last, f"target stage {target!r} not found; the stages are: {known}"
            )

    needed = {target_stage.index}
    for stage in reversed(graph.stages[: target_stage.index + 1]):
        if stage.index in needed:
            needed.update(stage.needs)
    stages = [stage for stage in graph.stages if stage.index in needed]
    return Plan(graph, target_stage, stages)
