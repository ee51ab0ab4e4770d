"""Check stage task messages before a worker acts on them.

Anyone who can write to the farm's Redis can put a message on a queue.
So a worker builds only messages of the one shape the producer sends: no
positional arguments, and exactly `build_id` (12 lowercase hex digits, as
`farm.submit` makes them) and `stage_id` (up to 400 characters, no control
characters). Anything else is rejected and logged, and its message is
acknowledged so it is not delivered again.
"""

from __future__ import annotations

import re

BUILD_ID = re.compile(r"^[0-9a-f]{12}$")
STAGE_ID = re.compile(r"^[^\x00-\x1f\x7f]{1,400}$")


class InvalidMessage(ValueError):
    """A task message that does not match the stage task's schema."""


def stage_message(args: tuple, kwargs: dict) -> tuple[str, str]:
    """Return `(build_id, stage_id)` from a task's arguments; raise InvalidMessage if they are malformed."""
    if args:
        raise InvalidMessage(f"unexpected positional arguments ({len(args)})")
    if set(kwargs) != {"build_id", "stage_id"}:
        raise InvalidMessage(
            f"expected keyword arguments build_id and stage_id, got {sorted(map(str, kwargs))}"
        )
    build_id, stage_id = kwargs["build_id"], kwargs["stage_id"]
    if not isinstance(build_id, str) or not BUILD_ID.match(build_id):
        raise InvalidMessage(f"invalid build_id {build_id!r:.80}")
    if not isinstance(stage_id, str) or not STAGE_ID.match(stage_id):
        raise InvalidMessage(f"invalid stage_id {stage_id!r:.80}")
    return build_id, stage_id
