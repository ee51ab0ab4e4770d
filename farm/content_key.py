"""Content keys: equal keys mean the same stage, wherever it is built.

A stage's key hashes its rendered instructions (in which the stages it
reads from appear by their own keys), the build args it can see, its
base image's digest, its platform, and the fingerprints of the context
files its `COPY` and `ADD` sources match. A change anywhere else in the
context leaves the key, and so the cached stage, as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex

from .context import PackedContext, compile_pattern
from .dockerfile import Instruction
from .errors import DockerfileError
from .stages import Stage, StageGraph, stage_reads

KEY_VERSION = 2

# The whole context is used when a stage's reads cannot be narrowed.
WHOLE_CONTEXT = "*"

_LEADING_FLAGS = re.compile(r"^(?:--\S+\s+)*")


def stage_key(
    rendered_dockerfile: str,
    build_args: dict[str, str],
    platform: str,
    base_digest: str | None,
    context_files: dict[str, str],
) -> str:
    """Return the hex content key of one rendered stage.

    `context_files` maps the context paths the stage reads to their
    fingerprints. `base_digest` is None when the base is another stage
    (its key is in the rendered file) or cannot be resolved; then the
    key uses the base reference as written.
    """
    document = {
        "version": KEY_VERSION,
        "dockerfile": rendered_dockerfile,
        "build_args": sorted(build_args.items()),
        "platform": platform,
        "base_digest": base_digest,
        "context_files": sorted(context_files.items()),
    }
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def visible_build_args(graph: StageGraph, stage: Stage, build_args: dict[str, str]) -> dict[str, str]:
    """Return the build args a stage can read: those its global or own `ARG`s declare."""
    declared = set()
    for instruction in [*graph.global_args, *stage.instructions]:
        if instruction.keyword == "ARG":
            for word in instruction.arguments.split():
                declared.add(word.partition("=")[0])
    return {name: value for name, value in build_args.items() if name in declared}


def context_files(graph: StageGraph, stage: Stage, context: PackedContext) -> dict[str, str]:
    """Return the fingerprints of the context entries `stage` reads.

    Raises DockerfileError, naming the line, for a `COPY` or `ADD` source
    that matches nothing in the context, and names the `.dockerignore`
    line that excluded it.
    """
    files: dict[str, str] = {}
    for instruction in stage.instructions:
        if _binds_context(instruction):
            return {WHOLE_CONTEXT: context.digest}
        if instruction.keyword not in ("COPY", "ADD") or stage_reads(instruction, graph.path):
            continue
        for source in _sources(instruction, graph.path):
            if "$" in source:
                # A source built from ARG or ENV values is only known at build time.
                return {WHOLE_CONTEXT: context.digest}
            matched = _match(source, context)
            if not matched:
                raise DockerfileError(graph.path, instruction.line, _missing_source(source, context))
            files.update(matched)
    return files


def _sources(instruction: Instruction, path: str) -> list[str]:
    """Return the local sources of a `COPY` or `ADD` (no destination, heredoc or URL)."""
    arguments = _LEADING_FLAGS.sub("", instruction.arguments, count=1)
    words = _json_words(arguments)
    if words is None:
        try:
            words = shlex.split(arguments)
        except ValueError as error:
            raise DockerfileError(
                path, instruction.line, f"cannot read {instruction.keyword}: {error}"
            ) from None
    if len(words) < 2 and not instruction.heredocs:
        raise DockerfileError(
            path, instruction.line, f"{instruction.keyword} needs a source and a destination"
        )
    return [
        source
        for source in words[:-1]
        if not source.startswith("<<") and "://" not in source and not source.startswith("git@")
    ]


def _json_words(arguments: str) -> list[str] | None:
    """Return the words of a JSON-form argument list, or None for the shell form."""
    if not arguments.lstrip().startswith("["):
        return None
    try:
        values = json.loads(arguments)
    except json.JSONDecodeError:
        return None
    if isinstance(values, list) and all(isinstance(value, str) for value in values):
        return values
    return None


def _match(source: str, context: PackedContext) -> dict[str, str]:
    pattern = os.path.normpath(source.lstrip("/"))
    if pattern in (".", ""):
        return dict(context.index)
    regex = compile_pattern(pattern)
    matched = {}
    for path, fingerprint in context.index.items():
        parts = path.split("/")
        prefixes = ["/".join(parts[: end + 1]) for end in range(len(parts))]
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            matched[path] = fingerprint
    return matched


def _missing_source(source: str, context: PackedContext) -> str:
    message = f"source {source!r} not found in the build context"
    pattern = os.path.normpath(source.lstrip("/"))
    excluding = [rule for rule in context.rules if not rule.negated and rule.regex.fullmatch(pattern)]
    if excluding:
        message += f"; it is excluded by .dockerignore line {excluding[-1].line} ({excluding[-1].pattern!r})"
    return message


def _binds_context(instruction: Instruction) -> bool:
    """Return whether a `RUN` bind-mounts the build context (a mount with no `from`)."""
    if instruction.keyword != "RUN":
        return False
    for word in instruction.arguments.split():
        if not word.startswith("--"):
            return False
        if word.startswith("--mount="):
            options = dict(option.partition("=")[::2] for option in word[len("--mount=") :].split(","))
            if options.get("type", "bind") == "bind" and "from" not in options:
                return True
    return False
