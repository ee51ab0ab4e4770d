"""Read a Dockerfile into instructions and stages, as BuildKit reads it.

dockerfile-parse finds where each instruction starts, but it reads heredoc
bodies as instructions of their own and ends a continuation at a blank
line. Its entries are therefore checked against the raw lines and
corrected: continuations are joined across blank and comment lines, and
a heredoc body belongs to the instruction that opened it.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser

from .errors import DockerfileError, FarmError

INSTRUCTIONS = frozenset(
    "ADD ARG CMD COPY ENTRYPOINT ENV EXPOSE FROM HEALTHCHECK LABEL MAINTAINER "
    "ONBUILD RUN SHELL STOPSIGNAL USER VOLUME WORKDIR".split()
)
HEREDOC_INSTRUCTIONS = frozenset({"RUN", "COPY", "ADD"})

_HEREDOC_OPENER = re.compile(r"<<(-?)([\"']?)([A-Za-z_][A-Za-z0-9_]*)\2")
_DIRECTIVE = re.compile(r"^\s*#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class Heredoc:
    """One here-document: its delimiter and body, as written."""

    delimiter: str
    body: str
    strip_tabs: bool
    quoted: bool


@dataclass(frozen=True)
class Instruction:
    """One instruction with its continuations joined.

    `arguments` excludes heredoc bodies, which are kept in `heredocs`;
    `line` and `end_line` are 1-based and cover the bodies too.
    """

    keyword: str
    arguments: str
    line: int
    end_line: int
    heredocs: tuple[Heredoc, ...] = ()

    def text(self) -> str:
        """Return the instruction as one logical line plus its heredoc bodies."""
        parts = [f"{self.keyword} {self.arguments}".rstrip()]
        for heredoc in self.heredocs:
            parts.append(heredoc.body + heredoc.delimiter)
        return "\n".join(parts)


@dataclass
class DockerfileSource:
    """A Dockerfile read into instructions, before it is split into stages."""

    path: str
    instructions: list[Instruction]
    directives: dict[str, str] = field(default_factory=dict)

    @property
    def escape(self) -> str:
        return self.directives.get("escape", "\\")


def read_dockerfile(path: str | Path) -> DockerfileSource:
    """Read and check the Dockerfile at `path`.

    Raises FarmError when the file cannot be read and DockerfileError, with
    the file and line, for an unknown instruction or an unterminated heredoc.
    """
    path = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise FarmError(f"Dockerfile not found: {path}") from None
    except OSError as error:
        raise FarmError(f"cannot read Dockerfile {path}: {error.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DockerfileError(path, line, "the file is not valid UTF-8") from None
    return parse_dockerfile(text, path)


def parse_dockerfile(text: str, path: str = "Dockerfile") -> DockerfileSource:
    """Parse Dockerfile `text`; `path` is only used in error messages."""
    text = text.lstrip("\ufeff")
    lines = text.splitlines()
    directives = _read_directives(lines)
    escape = directives.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise DockerfileError(path, 1, f"invalid escape directive {escape!r}: use \\ or `")

    parser = DockerfileParser(fileobj=io.BytesIO(text.encode("utf-8")))
    entries = [e for e in parser.structure if e["instruction"] != "COMMENT"]
    instructions = _correct_entries(entries, lines, escape, path)

    for instruction in instructions:
        if instruction.keyword not in INSTRUCTIONS:
            raise DockerfileError(path, instruction.line, f"unknown instruction {instruction.keyword}")
    return DockerfileSource(path, instructions, directives)


def _read_directives(lines: list[str]) -> dict[str, str]:
    """Read parser directives: `# key=value` comments before anything else."""
    directives: dict[str, str] = {}
    for line in lines:
        match = _DIRECTIVE.match(line)
        if not match:
            break
        key = match.group(1).lower()
        if key in directives:
            break
        directives[key] = match.group(2)
    return directives


def _correct_entries(entries: list[dict], lines: list[str], escape: str, path: str) -> list[Instruction]:
    """Rebuild instructions from dockerfile-parse's entries and the raw lines."""
    instructions: list[Instruction] = []
    consumed_until = -1  # 0-based index of the last raw line already used
    for entry in entries:
        start = entry["startline"]
        if start <= consumed_until:
            continue

        end = _continuation_end(lines, start, escape)
        keyword = entry["instruction"].upper()
        first_word = lines[start].split(None, 1)
        arguments = _join_continuation(lines[start : end + 1], escape)
        arguments = arguments[len(first_word[0]) :].strip() if first_word else ""

        heredocs: tuple[Heredoc, ...] = ()
        if keyword in HEREDOC_INSTRUCTIONS:
            heredocs, end = _read_heredocs(arguments, lines, end, path, start + 1)

        instructions.append(Instruction(keyword, arguments, start + 1, end + 1, heredocs))
        consumed_until = end
    return instructions


def _continuation_end(lines: list[str], start: int, escape: str) -> int:
    """Return the last raw line of the instruction that starts at `start`.

    Blank lines and comment lines inside a continuation do not end it,
    as in BuildKit.
    """
    index = start
    while lines[index].rstrip().endswith(escape):
        following = index + 1
        while following < len(lines) and _is_blank_or_comment(lines[following]):
            following += 1
        if following >= len(lines):
            return index
        index = following
    return index


def _join_continuation(raw_lines: list[str], escape: str) -> str:
    """Join continued lines as BuildKit does: drop each escape and newline, keep the rest."""
    parts = []
    for number, line in enumerate(raw_lines):
        if number > 0 and _is_blank_or_comment(line):
            continue
        trimmed = line.rstrip()
        if trimmed.endswith(escape):
            parts.append(trimmed[: -len(escape)])
        else:
            parts.append(line)
    return "".join(parts).strip()


def _is_blank_or_comment(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _read_heredocs(
    arguments: str, lines: list[str], end: int, path: str, line_number: int
) -> tuple[tuple[Heredoc, ...], int]:
    """Collect the bodies of the heredocs opened in `arguments`, in order."""
    heredocs = []
    for match in _HEREDOC_OPENER.finditer(arguments):
        strip_tabs, quote, delimiter = match.group(1) == "-", match.group(2), match.group(3)
        body_lines = []
        index = end + 1
        while True:
            if index >= len(lines):
                raise DockerfileError(
                    path, line_number, f"unterminated heredoc: no line {delimiter!r} follows"
                )
            candidate = lines[index].lstrip("\t") if strip_tabs else lines[index]
            if candidate == delimiter:
                break
            body_lines.append(lines[index] + "\n")
            index += 1
        heredocs.append(Heredoc(delimiter, "".join(body_lines), strip_tabs, bool(quote)))
        end = index
    return tuple(heredocs), end
