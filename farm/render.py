"""Render one stage as a single-stage Dockerfile for a worker.

References to other stages become image references (the registry
references of their pushed images), so a worker builds the stage alone.
The global `ARG`s are kept before the `FROM`, so `ARG NAME` inside the
stage still picks up their defaults.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .dockerfile import Instruction
from .stages import Stage, StageGraph

_LEADING_FLAG = re.compile(r"\s*(--\S+)")


@dataclass(frozen=True)
class RenderedStage:
    """A single-stage Dockerfile and, for each build step, its source line."""

    dockerfile: str
    step_lines: list[int]


def render_stage(graph: StageGraph, stage: Stage, image_for: Callable[[int], str]) -> RenderedStage:
    """Render `stage`; `image_for(index)` returns the image reference of stage `index`."""
    lines: list[str] = []
    if graph.source.escape != "\\":
        lines.append(f"# escape={graph.source.escape}")
    lines.extend(instruction.text() for instruction in graph.global_args)

    base = image_for(stage.base_stage) if stage.base_stage is not None else stage.base
    platform = f"--platform={stage.platform} " if stage.platform else ""
    lines.append(f"FROM {platform}{base}")
    step_lines = [stage.from_instruction.line]

    for instruction in stage.instructions:
        lines.append(_render_instruction(graph, stage, instruction, image_for))
        step_lines.append(instruction.line)
    return RenderedStage("\n".join(lines) + "\n", step_lines)


def _render_instruction(
    graph: StageGraph, stage: Stage, instruction: Instruction, image_for: Callable[[int], str]
) -> str:
    if instruction.keyword not in ("COPY", "ADD", "RUN"):
        return instruction.text()

    arguments = instruction.arguments
    flags: list[str] = []
    position = 0
    while match := _LEADING_FLAG.match(arguments, position):
        flags.append(_rewrite_flag(graph, stage, instruction, match.group(1), image_for))
        position = match.end()
    if not flags:
        return instruction.text()

    rewritten = Instruction(
        instruction.keyword,
        " ".join(flags) + arguments[position:],
        instruction.line,
        instruction.end_line,
        instruction.heredocs,
    )
    return rewritten.text()


def _rewrite_flag(
    graph: StageGraph,
    stage: Stage,
    instruction: Instruction,
    flag: str,
    image_for: Callable[[int], str],
) -> str:
    def image_of(value: str) -> str:
        index = graph.stage_for(value, stage, instruction.line)
        return value if index is None else image_for(index)

    if instruction.keyword in ("COPY", "ADD") and flag.startswith("--from="):
        return "--from=" + image_of(flag[len("--from=") :])

    if instruction.keyword == "RUN" and flag.startswith("--mount="):
        options = []
        for option in flag[len("--mount=") :].split(","):
            key, separator, value = option.partition("=")
            if key.strip() == "from" and separator:
                option = f"{key}={image_of(value.strip())}"
            options.append(option)
        return "--mount=" + ",".join(options)
    return flag
