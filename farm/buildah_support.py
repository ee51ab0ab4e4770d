"""What a Buildah release can build correctly, where the farm knows it cannot.

Buildah 1.28 (Debian 12) runs `RUN --mount=type=bind,from=<image>` but
drops what the step writes: the stage's layer holds only the mount
points, so the image differs from BuildKit's. Stages with such a step go
to workers whose Buildah is newer, through a queue of their own.
"""

from __future__ import annotations

import re

# NOTE: 1.28 is the release this was measured on; releases between 1.28
# and the newest ones were not tested, so every release after 1.28 counts
# as able.
_MOUNT_FROM_BROKEN_UP_TO = (1, 28)

_RUN_MOUNT_FROM = re.compile(r"^RUN\s+(?:--\S+\s+)*--mount=\S*\bfrom=", re.IGNORECASE)


def builds_mount_from(version: str | None) -> bool:
    """Return whether Buildah `version` (such as `1.39.3`) keeps the changes of a `RUN --mount from=` step."""
    if not version:
        return False
    numbers = re.findall(r"\d+", version)
    if len(numbers) < 2:
        return False
    return (int(numbers[0]), int(numbers[1])) > _MOUNT_FROM_BROKEN_UP_TO


def mount_from_line(rendered_dockerfile: str, step_lines: list[int]) -> int | None:
    """Return the Dockerfile line of the first `RUN --mount ... from=` step of a rendered stage, or None."""
    for number, line in enumerate(_steps_after_from(rendered_dockerfile)):
        if _RUN_MOUNT_FROM.match(line):
            return step_lines[number] if number < len(step_lines) else step_lines[0]
    return None


def _steps_after_from(rendered_dockerfile: str) -> list[str]:
    """Return the instruction lines from the `FROM` on (heredoc bodies are lowered away by rendering)."""
    lines = rendered_dockerfile.splitlines()
    for index, line in enumerate(lines):
        if line.upper().startswith("FROM "):
            return [line for line in lines[index:] if line and not line.startswith((" ", "\t", "#"))]
    return []
