"""Render one stage as a single-stage Dockerfile for a worker.

References to other stages become image references (the registry
references of their pushed images), so a worker builds the stage alone,
and stage names in any case never reach Buildah. The global `ARG`s are
kept before the `FROM`, so `ARG NAME` inside the stage still picks up
their defaults. Heredocs are lowered (see `farm.lowering`) because
Buildah 1.28 does not read them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from .dockerfile import Instruction
from .errors import DockerfileError
from .flags import Flag, format_mount, leading_flags, mount_fields
from .lowering import DEFAULT_SHELL, InlineImage, lower_heredocs
from .stages import Stage, StageGraph


@dataclass(frozen=True)
class RenderedStage:
    """A single-stage Dockerfile, the source line of each build step, and its inline images."""

    dockerfile: str
    step_lines: list[int]
    inline_images: list[InlineImage] = field(default_factory=list)


def render_stage(
    graph: StageGraph,
    stage: Stage,
    image_for: Callable[[int], str],
    inline_repository: str = "stages",
) -> RenderedStage:
    """Render `stage`; `image_for(index)` returns the image reference of stage `index`.

    Inline images (heredoc files) are referenced as `inline_repository:TAG`.
    """
    lines: list[str] = []
    if graph.source.escape != "\\":
        lines.append(f"# escape={graph.source.escape}")
    lines.extend(instruction.text() for instruction in graph.global_args)

    base = image_for(stage.base_stage) if stage.base_stage is not None else stage.base
    platform = f"--platform={stage.platform} " if stage.platform else ""
    lines.append(f"FROM {platform}{base}")
    step_lines = [stage.from_instruction.line]

    shell = inherited_shell(graph, stage)
    if shell is not None:
        # The base stage's SHELL lives in its image config only in Docker
        # format; Buildah pushes OCI images, which drop it, so set it again.
        lines.append("SHELL " + json.dumps(shell))
        step_lines.append(stage.from_instruction.line)

    inline_images: list[InlineImage] = []
    for instruction in stage.instructions:
        if instruction.keyword == "SHELL":
            shell = shell_of(instruction, graph.path)
        rewritten = _rewrite_references(graph, stage, instruction, image_for)
        if instruction.heredocs:
            lowered = lower_heredocs(
                rewritten, list(shell or DEFAULT_SHELL), inline_repository, graph.source.escape, graph.path
            )
            lines.extend(lowered.texts)
            step_lines.extend(instruction.line for _ in lowered.texts)
            inline_images.extend(lowered.inline_images)
            continue
        lines.append(rewritten.text())
        step_lines.append(instruction.line)
    return RenderedStage("\n".join(lines) + "\n", step_lines, inline_images)


def inherited_shell(graph: StageGraph, stage: Stage) -> list[str] | None:
    """Return the SHELL that `stage` inherits from the stage it starts from, if any."""
    base = stage.base_stage
    while base is not None:
        ancestor = graph.stages[base]
        for instruction in reversed(ancestor.instructions):
            if instruction.keyword == "SHELL":
                return shell_of(instruction, graph.path)
        base = ancestor.base_stage
    return None


def shell_of(instruction: Instruction, path: str) -> list[str]:
    """Return the command of a `SHELL` instruction, which must be a JSON array of strings."""
    try:
        shell = json.loads(instruction.arguments)
    except ValueError:
        shell = None
    if not isinstance(shell, list) or not shell or not all(isinstance(word, str) for word in shell):
        raise DockerfileError(
            path, instruction.line, 'SHELL needs a JSON array, such as SHELL ["/bin/sh", "-c"]'
        )
    return shell


def _rewrite_references(
    graph: StageGraph, stage: Stage, instruction: Instruction, image_for: Callable[[int], str]
) -> Instruction:
    """Return `instruction` with every `--from` that names a stage replaced by its image."""
    if instruction.keyword not in ("COPY", "RUN"):
        return instruction
    flags = leading_flags(instruction.arguments)
    if not flags.flags:
        return instruction

    def image_of(kind: str, value: str) -> str:
        index = graph.stage_for(kind, value, stage, instruction.line)
        return value if index is None else image_for(index)

    words = []
    for flag in flags.flags:
        words.append(_rewrite_flag(instruction.keyword, flag, image_of))
    arguments = " ".join(words) + (" " + flags.rest if flags.rest else "")
    return Instruction(
        instruction.keyword, arguments, instruction.line, instruction.end_line, instruction.heredocs
    )


def _rewrite_flag(keyword: str, flag: Flag, image_of: Callable[[str, str], str]) -> str:
    if keyword == "COPY" and flag.name == "from" and flag.value is not None:
        return "--from=" + image_of("copy", flag.value)
    if keyword == "RUN" and flag.name == "mount" and flag.value is not None:
        fields = mount_fields(flag.value)
        is_tmpfs = any(key == "type" and (value or "").lower() == "tmpfs" for key, value in fields)
        rewritten = [
            (key, image_of("mount", value) if key == "from" and value and not is_tmpfs else value)
            for key, value in fields
        ]
        return "--mount=" + format_mount(rewritten)
    return flag.text
