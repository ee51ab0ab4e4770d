"""Split a Dockerfile into stages and find what each stage reads from.

A stage reads from another stage through `FROM <stage>`,
`COPY --from=<stage>` and `RUN --mount=...,from=<stage>`.
A `--from` value names a stage when it is the name (in any case) or, for
`COPY`, the index of an earlier stage; any other value is an external
image. As in BuildKit, variables are not expanded in `--from` values.
"""

from __future__ import annotations

import platform as _platform
import re
import shlex
from dataclasses import dataclass, field

from .architectures import oci_architecture
from .dockerfile import DockerfileSource, Instruction
from .errors import DockerfileError
from .flags import leading_flags, mount_fields
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

    def stage_for(self, kind: str, value: str, stage: Stage, line: int) -> int | None:
        """Return the index of the stage that a `--from` `value` in `stage` names.

        `kind` is `copy` for `COPY --from` and `mount` for `RUN --mount`.
        Returns None when `value` names an external image.
        """
        return _resolve(kind, value, stage, self.stages, self.path, line)

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
    return f"linux/{oci_architecture(_platform.machine())}"


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
    empty or malformed base, and a read from an invalid index, a later stage
    or the same stage.
    """
    build_args = build_args or {}
    path = source.path
    global_args, body = _split_global_args(source)
    values: dict[str, str | None] = dict(platform_args(platform or default_platform()))
    for instruction in global_args:
        for name, default in _arg_declarations(instruction, path):
            if name in build_args:
                values[name] = build_args[name]
            elif default is not None:
                # A default may use the global ARGs declared before it.
                values[name] = _expand(default, values, path, instruction.line)
            else:
                values[name] = None

    stages: list[Stage] = []
    for instruction in body:
        if instruction.keyword == "FROM":
            stages.append(_read_from(instruction, len(stages), stages, values, path))
        else:
            stages[-1].instructions.append(instruction)

    # References are resolved once every stage is known, so that a read
    # from a later stage is reported as such.
    for stage in stages:
        for instruction in stage.instructions:
            for kind, text in _reads(instruction, path):
                index = _resolve(kind, text, stage, stages, path, instruction.line)
                if index is not None:
                    stage.references.append(Reference(index, instruction.keyword, instruction.line))

    return StageGraph(path, source, global_args, values, stages)


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
    """Return the `--from` values of `COPY --from` and `RUN --mount=...,from=`, as written.

    Raises DockerfileError where BuildKit rejects the value: a variable in
    it, `ADD --from`, and an unreadable `--mount`.
    """
    return [value for _, value in _reads(instruction, path)]


def _reads(instruction: Instruction, path: str) -> list[tuple[str, str]]:
    """Return `(kind, value)` for each read of another stage or image; kind is `copy` or `mount`."""
    if instruction.keyword not in ("COPY", "ADD", "RUN"):
        return []
    flags = leading_flags(instruction.arguments)
    if instruction.keyword == "ADD":
        if flags.value("from") is not None:
            raise DockerfileError(
                path, instruction.line, "ADD does not accept --from (BuildKit rejects it); use COPY --from"
            )
        return []
    if instruction.keyword == "COPY":
        value = flags.value("from")
        if value is None:
            return []
        _reject_variable(value, "COPY --from", path, instruction.line)
        return [("copy", value)]

    reads = []
    for mount in flags.values("mount"):
        try:
            fields = dict(mount_fields(mount))
        except ValueError as error:
            raise DockerfileError(path, instruction.line, f"cannot read --mount: {error}") from None
        value = fields.get("from")
        if not value or (fields.get("type") or "bind").lower() == "tmpfs":
            continue
        _reject_variable(value, "RUN --mount from", path, instruction.line)
        reads.append(("mount", value))
    return reads


def _reject_variable(value: str, where: str, path: str, line: int) -> None:
    # BuildKit (dockerfile frontend 1.x) rejects variables here rather than
    # expanding them, because it resolves stage references before any ARG
    # has a value.
    if re.search(r"\$.", value):
        raise DockerfileError(
            path,
            line,
            f"{where}={value}: variables are not expanded in {where}; declare the ARG before the "
            "first FROM, add a stage 'FROM ${NAME} AS alias' and read from that stage",
        )


def _resolve(kind: str, text: str, stage: Stage, stages: list[Stage], path: str, line: int) -> int | None:
    """Return the index of the stage `text` names, or None for an external image.

    `stages` are all stages of the file, so that a read from a later stage
    is reported instead of being taken for an image.
    """
    if kind == "copy" and re.fullmatch(r"[+-]?[0-9]+", text):
        index = int(text)
        if index < 0 or index >= len(stages):
            raise DockerfileError(
                path, line, f"--from={text}: invalid stage index; the file has {len(stages)} stages"
            )
        if index >= stage.index:
            raise DockerfileError(
                path,
                line,
                f"--from={text} refers to stage {index}, which is not an earlier stage "
                f"(this is stage {stage.index})",
            )
        return index
    if kind == "mount" and text.isdigit():
        # BuildKit looks up a --mount from value by stage name only, so a
        # number there names an image; that is never what the author meant.
        raise DockerfileError(
            path,
            line,
            f"--mount from={text}: BuildKit reads a number here as an image name; use the stage name",
        )

    lowered = text.lower()
    named = _earlier_stage(lowered, stages)
    if named is None:
        return None
    if named == stage.index:
        raise DockerfileError(path, line, f"stage {text!r} reads from itself")
    if named > stage.index:
        raise DockerfileError(
            path,
            line,
            f"stage {stage.id!r} reads from stage {lowered!r}, which is defined later "
            f"(line {stages[named].from_instruction.line}); move it before this stage",
        )
    return named


def _earlier_stage(name: str, stages: list[Stage]) -> int | None:
    for stage in stages:
        if stage.name == name:
            return stage.index
    return None


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
