"""Lower heredocs into instructions that Buildah 1.28 builds to the same image.

Buildah 1.28 (Debian 12) has no heredocs: it runs `RUN <<EOF` as a plain
shell command and parses the body lines as instructions. The renderer
therefore rewrites every instruction with a heredoc:

- `RUN` becomes the exec form that BuildKit itself produces, the stage's
  shell plus one script argument. For `RUN <<EOF` alone the script is the
  body (with leading tabs removed for `<<-`). Otherwise the script is the
  command line followed by each body and its delimiter, so the shell reads
  the heredocs itself, with its own rules for `<<-` and quoted delimiters.
  As in BuildKit, the Dockerfile parser expands nothing in a `RUN` heredoc.
- `COPY <<EOF dest` (and `ADD`) becomes `COPY --from=<inline image>`: the
  producer pushes a one-layer image holding each body as a root-owned
  file of mode 0644, which is what BuildKit creates, so `--chown` and
  `--chmod` keep their meaning. A `RUN` that writes the file is not
  exact: it needs a shell in the image and leaves what the shell touches.

Refused, with the Dockerfile line: a `RUN <<EOF` body starting with `#!`
(BuildKit runs it as an executable file, which a Buildah 1.28 `RUN` cannot
reproduce without leaving a file behind) and a `COPY` heredoc with an
unquoted delimiter whose body contains `$` or the escape character
(BuildKit expands the stage's ARG and ENV values there, which the
producer does not know in general).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass

from .dockerfile import Heredoc, Instruction
from .errors import DockerfileError
from .flags import LeadingFlags, leading_flags

DEFAULT_SHELL = ("/bin/sh", "-c")
INLINE_FILE_MODE = 0o644

_HEREDOC_WORD = re.compile(r"^[0-9]*<<(-?)([\"']?)([^<\"']+)\2$")
# Flags that only ADD has; they do not apply to a heredoc source.
_ADD_ONLY_FLAGS = frozenset({"checksum", "keep-git-dir", "unpack"})


@dataclass(frozen=True)
class InlineImage:
    """Files made from COPY heredocs, pushed as a one-layer image the stage copies from.

    `files` maps a relative path in the image to the file's content.
    """

    files: tuple[tuple[str, bytes], ...]

    @property
    def tag(self) -> str:
        """Return the tag, which is derived from the files so that equal files share one image."""
        digest = hashlib.sha256()
        for path, content in self.files:
            digest.update(json.dumps([path, hashlib.sha256(content).hexdigest()]).encode())
        return "inline-" + digest.hexdigest()


@dataclass(frozen=True)
class LoweredInstruction:
    """The instructions (one build step each) that replace one instruction."""

    texts: list[str]
    inline_images: list[InlineImage]


def lower_heredocs(
    instruction: Instruction, shell: list[str], inline_reference: str, escape: str, path: str
) -> LoweredInstruction:
    """Lower `instruction`, which has heredocs, for Buildah 1.28.

    `shell` is the stage's SHELL at this instruction and `inline_reference`
    the repository (`REGISTRY/REPOSITORY`) inline images are pushed to.
    """
    flags = leading_flags(instruction.arguments)
    if instruction.keyword == "RUN":
        return LoweredInstruction([_lower_run(instruction, flags, shell, path)], [])
    return _lower_copy(instruction, flags, inline_reference, escape, path)


def _lower_run(instruction: Instruction, flags: LeadingFlags, shell: list[str], path: str) -> str:
    command = flags.rest
    heredocs = instruction.heredocs
    if len(heredocs) == 1 and _HEREDOC_WORD.match(command.strip()):
        script = _body(heredocs[0])
        if script.startswith("#!"):
            raise DockerfileError(
                path,
                instruction.line,
                "a RUN heredoc starting with #! runs as an executable file in BuildKit, which the "
                "farm's Buildah 1.28 workers cannot reproduce; name the interpreter in the command "
                "instead, such as 'RUN python3 <<EOF'",
            )
    else:
        script = command + "".join("\n" + heredoc.body + heredoc.delimiter for heredoc in heredocs)

    words = [flag.text for flag in flags.flags]
    words.append(json.dumps([*shell, script]))
    return "RUN " + " ".join(words)


def _lower_copy(
    instruction: Instruction, flags: LeadingFlags, inline_reference: str, escape: str, path: str
) -> LoweredInstruction:
    try:
        # Words keep their quotes, so that Buildah reads them as written.
        lexer = shlex.shlex(flags.rest, posix=False)
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError as error:
        raise DockerfileError(path, instruction.line, f"cannot read {instruction.keyword}: {error}") from None
    if len(words) < 2:
        raise DockerfileError(
            path, instruction.line, f"{instruction.keyword} needs a source and a destination"
        )
    if flags.value("from") is not None:
        raise DockerfileError(path, instruction.line, f"{instruction.keyword} --from cannot copy a heredoc")
    sources, destination = words[:-1], words[-1]

    bodies = iter(instruction.heredocs)
    groups: list[tuple[bool, list]] = []
    for source in sources:
        is_heredoc = bool(_HEREDOC_WORD.match(source))
        item = _inline_content(instruction, next(bodies), escape, path) if is_heredoc else source
        if groups and groups[-1][0] == is_heredoc:
            groups[-1][1].append(item)
        else:
            groups.append((is_heredoc, [item]))

    if len(groups) > 1 and not destination.endswith("/"):
        raise DockerfileError(
            path,
            instruction.line,
            f"{instruction.keyword} with more than one source needs a destination directory ending in /",
        )

    texts: list[str] = []
    images: list[InlineImage] = []
    for is_heredoc, items in groups:
        if not is_heredoc:
            kept = " ".join(flag.text for flag in flags.flags)
            texts.append(_join(instruction.keyword, kept, *items, destination))
            continue
        image = InlineImage(
            tuple((f"{number}/{name}", content) for number, (name, content) in enumerate(items))
        )
        images.append(image)
        kept = " ".join(flag.text for flag in flags.flags if flag.name not in _ADD_ONLY_FLAGS)
        sources_in_image = [f"/{file_path}" for file_path, _ in image.files]
        texts.append(
            _join("COPY", kept, f"--from={inline_reference}:{image.tag}", *sources_in_image, destination)
        )
    return LoweredInstruction(texts, images)


def _inline_content(instruction: Instruction, heredoc: Heredoc, escape: str, path: str) -> tuple[str, bytes]:
    body = _body(heredoc)
    if not heredoc.quoted and ("$" in body or escape in body):
        raise DockerfileError(
            path,
            instruction.line,
            f"the body of heredoc {heredoc.delimiter!r} has an unquoted delimiter and contains $ or "
            f"{escape}, which BuildKit expands from the stage's ARG and ENV values; the farm does not "
            f"expand them, so quote the delimiter (<<'{heredoc.delimiter}') to copy the body as written",
        )
    return heredoc.delimiter, body.encode("utf-8")


def _body(heredoc: Heredoc) -> str:
    if not heredoc.strip_tabs:
        return heredoc.body
    return "".join(line.lstrip("\t") for line in heredoc.body.splitlines(keepends=True))


def _join(*parts: str) -> str:
    return " ".join(part for part in parts if part)
