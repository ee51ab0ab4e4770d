"""Content keys: equal keys mean the same stage, wherever it is built.

A stage's key hashes its rendered instructions (in which other stages
appear by their own keys), the build args, its platform and, when it
reads the build context, the context's digest.
"""

from __future__ import annotations

import hashlib
import json

from .dockerfile import Instruction
from .stages import Stage, stage_reads

KEY_VERSION = 1


def reads_context(stage: Stage, path: str) -> bool:
    """Return whether any instruction of `stage` reads files from the build context."""
    for instruction in stage.instructions:
        if instruction.keyword in ("COPY", "ADD") and not stage_reads(instruction, path):
            return True
        if instruction.keyword == "RUN" and _binds_context(instruction):
            return True
    return False


def stage_key(
    rendered_dockerfile: str,
    build_args: dict[str, str],
    platform: str,
    context_digest: str | None,
) -> str:
    """Return the hex content key of one rendered stage.

    NOTE: the base image enters the key by its reference as written, not
    by its digest, and the whole context's digest stands in for the
    digests of the files the stage copies; both make keys change more
    often than they must, never less.
    """
    document = {
        "version": KEY_VERSION,
        "dockerfile": rendered_dockerfile,
        "build_args": sorted(build_args.items()),
        "platform": platform,
        "context": context_digest,
    }
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def _binds_context(instruction: Instruction) -> bool:
    for word in instruction.arguments.split():
        if not word.startswith("--"):
            return False
        if word.startswith("--mount=") and "type=bind" in word and "from=" not in word:
            return True
    return False
