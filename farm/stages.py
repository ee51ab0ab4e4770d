"""Split a Dockerfile into stages and find what each stage reads from.

A stage reads from another stage through `FROM <stage>`,
`COPY --from=<stage>` (or `ADD --from`) and `RUN --mount=...,from=<stage>`.
A `--from` value names a stage when it is the name (in any case) or the
index of an earlier stage; any other value is an external image.
"""

from __future__ import annotations

import platform as _platform
import re
import shlex
from dataclasses import dataclass, field

from .dockerfile import DockerfileSource, Instruction
from .errors import DockerfileError
from .substitution import SubstitutionError, substitute

_STAGE_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")
_FLAG = re.compile(r"^--([a-z-]+)(?:=(.*))?$")


@dataclass(frozen=True)
class Reference:
    """A read from another stage: which stage, by which instruction and line."""

    stage_index: int
    keyword: str
    line: int


@dataclass
class Stage:
    """One `FROM` and the instructions up to the next one."""

    index: int
    name: str | None
    from_instruction: Instruction
    base: str | None
    base_stage: int | None
    platform: str | None
    instructions: list[Instruction] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)

    @property
    def id(self) -> str:
        """Return the stage's name, or its index as a string when it has none."""
        return self.name if self.name is not None else str(self.index)

    @property
    def needs(self) -> list[int]:
        """Return the indexes of the stages read from, in order of first appearance."""
        seen: list[int] = []
        for reference in self.references:
            if reference.stage_index not in seen:
                seen.append(reference.stage_index)
        return seen


@dataclass
class StageGraph:
    """All stages of one Dockerfile and the global `ARG`s before the first `FROM`."""

    path: str
    source: DockerfileSource
    global_args: list[Instruction]
    global_values: dict[str, str | None]
    stages: list[Stage]

    def stage_for(self, value: str, stage: Stage, line: int) -> int | None:
        """Return the index of the stage that a `--from` `value` in `stage` names.

        Returns None when `value` names an external image.
        """
        expanded = _expand(value, self.global_values, self.path, line)
        return _resolve(expanded, stage, self.stages, self.path, line)

    def find(self, target: str) -> Stage | None:
        """Return the stage named `target` (any case) or with index `target`."""
        lowered = target.lower()
        for stage in self.stages:
            if stage.name == lowered:
                return stage
        if target.isdigit() and int(target) < len(self.stages):
            return self.stages[int(target)]
        return None


def default_platform() -> str:
    """Return this host's platform in OCI form, such as `linux/amd64`."""
    machine = _platform.machine().lower()
    architecture = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return f"linux/{architecture}"


def platform_args(platform: str) -> dict[str, str | None]:
    """Return the predefined platform ARGs that BuildKit sets for `platform`."""
    os_name, _, rest = platform.partition("/")
    architecture, _, variant = rest.partition("/")
    host = default_platform()
    host_os, _, host_arch = host.partition("/")
    return {
        "TARGETPLATFORM": platform,
        "TARGETOS": os_name,
        "TARGETARCH": architecture,
        "TARGETVARIANT": variant,
        "BUILDPLATFORM": host,
        "BUILDOS": host_os,
        "BUILDARCH": host_arch,
        "BUILDVARIANT": "",
    }


def split_stages(
    source: DockerfileSource,
    build_args: dict[str, str] | None = None,
    platform: str | None = None,
) -> StageGraph:
    """Split `source` into stages, resolving every stage reference.

    Raises DockerfileError with the file and line for a Dockerfile without
    `FROM`, an instruction other than `ARG` before the first `FROM`, an
    empty or malformed base, and a read from an unknown, later or the same stage.
    """
    build_args = build_args or {}
    path = source.path
    global_args, body = _split_global_args(source)
    values: dict[str, str | None] = dict(platform_args(platform or default_platform()))
    for instruction in global_args:
        for name, default in _arg_declarations(instruction, path):
            values[name] = build_args.get(name, default)

    stages: list[Stage] = []
    for instruction in body:
        if instruction.keyword == "FROM":
            stages.append(_read_from(instruction, len(stages), stages, values, path))
            continue
        stage = stages[-1]
        stage.instructions.append(instruction)
        for text in stage_reads(instruction, path):
            expanded = _expand(text, values, path, instruction.line)
            index = _resolve(expanded, stage, stages, path, instruction.line)
            if index is not None:
                stage.references.append(Reference(index, instruction.keyword, instruction.line))

    graph = StageGraph(path, source, global_args, values, stages)
    check_later_references(graph)
    return graph


def _split_global_args(source: DockerfileSource) -> tuple[list[Instruction], list[Instruction]]:
    instructions = source.instructions
    for position, instruction in enumerate(instructions):
        if instruction.keyword == "FROM":
            return instructions[:position], instructions[position:]
        if instruction.keyword != "ARG":
            raise DockerfileError(
                source.path,
                instruction.line,
                f"{instruction.keyword} before the first FROM: only ARG may come before FROM",
            )
    line = instructions[-1].end_line if instructions else 1
    raise DockerfileError(source.path, line, "no FROM instruction: a Dockerfile needs at least one stage")


def _arg_declarations(instruction: Instruction, path: str) -> list[tuple[str, str | None]]:
    declarations = []
    for word in _split_words(instruction, path):
        name, has_default, default = word.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise DockerfileError(path, instruction.line, f"invalid ARG name {name!r}")
        declarations.append((name, default if has_default else None))
    if not declarations:
        raise DockerfileError(path, instruction.line, "ARG needs a name")
    return declarations


def _read_from(
    instruction: Instruction,
    index: int,
    stages: list[Stage],
    values: dict[str, str | None],
    path: str,
) -> Stage:
    words = _split_words(instruction, path)
    flags, words = _take_flags(words)
    unknown = set(flags) - {"platform"}
    if unknown:
        raise DockerfileError(path, instruction.line, f"unknown FROM flag --{sorted(unknown)[0]}")

    name = None
    if len(words) == 3 and words[1].lower() == "as":
        name = words[2].lower()
        if not _STAGE_NAME.match(name):
            raise DockerfileError(path, instruction.line, f"invalid stage name {words[2]!r}")
        if any(stage.name == name for stage in stages):
            raise DockerfileError(path, instruction.line, f"duplicate stage name {words[2]!r}")
    elif len(words) != 1:
        raise DockerfileError(path, instruction.line, "FROM takes an image and an optional 'AS name'")

    image = _expand(words[0], values, path, instruction.line).strip()
    if not image:
        raise DockerfileError(
            path, instruction.line, f"base image {words[0]!r} is empty after build-arg substitution"
        )
    platform = None
    if flags.get("platform"):
        platform = _expand(flags["platform"], values, path, instruction.line) or None

    stage = Stage(index, name, instruction, None, None, platform)
    base_stage = _earlier_stage(image.lower(), stages)
    if base_stage is not None:
        stage.base_stage = base_stage
        stage.references.append(Reference(base_stage, "FROM", instruction.line))
    else:
        stage.base = image
    return stage


def stage_reads(instruction: Instruction, path: str) -> list[str]:
    """Return the raw `--from` values of `COPY`, `ADD` and `RUN --mount`."""
    if instruction.keyword in ("COPY", "ADD"):
        flags, _ = _take_flags(_split_words(instruction, path))
        return [flags["from"]] if flags.get("from") else []
    if instruction.keyword == "RUN":
        reads = []
        for flag, value in _leading_flags(instruction.arguments):
            if flag != "mount" or value is None:
                continue
            for option in value.split(","):
                key, _, option_value = option.partition("=")
                if key.strip() == "from" and option_value:
                    reads.append(option_value.strip())
        return reads
    return []


def _resolve(text: str, stage: Stage, stages: list[Stage], path: str, line: int) -> int | None:
    """Return the index of the stage `text` names, or None for an external image."""
    lowered = text.lower()
    if lowered.isdigit():
        index = int(lowered)
        if index >= stage.index:
            raise DockerfileError(
                path,
                line,
                f"--from={text} refers to stage {index}, which is not an earlier stage "
                f"(this is stage {stage.index})",
            )
        return index
    if lowered == stage.name:
        raise DockerfileError(path, line, f"stage {text!r} reads from itself")
    earlier = _earlier_stage(lowered, stages[: stage.index])
    if earlier is not None:
        return earlier
    return None


def _earlier_stage(name: str, stages: list[Stage]) -> int | None:
    for stage in stages:
        if stage.name == name:
            return stage.index
    return None


def check_later_references(graph: StageGraph) -> None:
    """Reject `--from` values naming a stage that is only defined later.

    BuildKit would read such a name as an image and try to pull it; it is
    almost always a mistake, so the farm refuses it.
    """
    names = {stage.name: stage.index for stage in graph.stages if stage.name}
    for stage in graph.stages:
        for instruction in stage.instructions:
            for text in stage_reads(instruction, graph.path):
                lowered = _expand(text, graph.global_values, graph.path, instruction.line).lower()
                later = names.get(lowered)
                if later is not None and later > stage.index:
                    raise DockerfileError(
                        graph.path,
                        instruction.line,
                        f"stage {stage.id!r} reads from stage {lowered!r}, which is defined "
                        f"later (line {graph.stages[later].from_instruction.line}); "
                        "move it before this stage",
                    )
                if later is not None and later == stage.index:
                    raise DockerfileError(
                        graph.path, instruction.line, f"stage {lowered!r} reads from itself"
                    )


def _expand(text: str, values: dict[str, str | None], path: str, line: int) -> str:
    try:
        return substitute(text, values)
    except SubstitutionError as error:
        raise DockerfileError(path, line, str(error)) from None


def _split_words(instruction: Instruction, path: str) -> list[str]:
    try:
        return shlex.split(instruction.arguments, posix=True)
    except ValueError as error:
        raise DockerfileError(path, instruction.line, f"cannot read {instruction.keyword}: {error}") from None


def _take_flags(words: list[str]) -> tuple[dict[str, str | None], list[str]]:
    flags: dict[str, str | None] = {}
    position = 0
    while position < len(words):
        match = _FLAG.match(words[position])
        if not match:
            break
        flags[match.group(1)] = match.group(2)
        position += 1
    return flags, words[position:]


def _leading_flags(arguments: str) -> list[tuple[str, str | None]]:
    """Return the `--flag[=value]` words at the start of `arguments`."""
    flags = []
    for word in arguments.split():
        match = _FLAG.match(word)
        if not match:
            break
        value = match.group(2)
        if value is not None:
            value = value.strip("\"'")
        flags.append((match.group(1), value))
    return flags
