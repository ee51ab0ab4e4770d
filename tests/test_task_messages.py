"""Task messages put on a queue by hand: a worker rejects and logs malformed ones."""

from __future__ import annotations

import json
import time

import pytest

from farm.celery_app import BUILD_STAGE_TASK, create_app, queue_for
from farm.config import Settings
from farm.stages import default_platform
from workers.messages import InvalidMessage, stage_message

MALFORMED = [
    ((), {"build_id": "../../etc", "stage_id": "a"}),
    ((), {"build_id": "0123456789ab"}),
    ((), {"build_id": "0123456789ab", "stage_id": "a", "command": "rm -rf /"}),
    (("0123456789ab", "a"), {}),
    ((), {"build_id": 12, "stage_id": "a"}),
    ((), {"build_id": "0123456789ab", "stage_id": "a\nb"}),
    ((), {"build_id": "0123456789ab", "stage_id": ["a"]}),
]


@pytest.mark.parametrize(("args", "kwargs"), MALFORMED)
def test_stage_message_rejects(args: tuple, kwargs: dict) -> None:
    with pytest.raises(InvalidMessage):
        stage_message(args, kwargs)


def test_stage_message_accepts_producer_shape() -> None:
    assert stage_message((), {"build_id": "0123456789ab", "stage_id": "app/build@linux/arm64"}) == (
        "0123456789ab",
        "app/build@linux/arm64",
    )


def _rejections(farm) -> list[dict]:
    entries = []
    for log_file in (farm.directory / "logs").glob("worker-*.log"):
        for line in log_file.read_text(errors="replace").splitlines():
            if "task message rejected" in line:
                entries.append(json.loads(line))
    return entries


def test_worker_rejects_hand_made_messages(farm) -> None:
    app = create_app(Settings.from_env(farm.env))
    before = len(_rejections(farm))
    marker = "0123456789ab"
    for args, kwargs in MALFORMED:
        app.send_task(BUILD_STAGE_TASK, args=args, kwargs=kwargs, queue=queue_for(default_platform()))

    deadline = time.monotonic() + 60
    while len(_rejections(farm)) < before + len(MALFORMED) and time.monotonic() < deadline:
        time.sleep(0.2)

    rejected = _rejections(farm)[before:]
    assert len(rejected) == len(MALFORMED)
    assert all(entry["level"] == "error" for entry in rejected)
    assert any("invalid build_id" in entry["reason"] for entry in rejected)
    assert any("positional" in entry["reason"] for entry in rejected)
    # Nothing was built: no stage of the made-up build id ever started.
    assert not farm.redis.exists(f"farm:build:{marker}:events")
