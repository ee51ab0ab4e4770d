"""Worker logs: JSON lines off a terminal, each line of a stage naming its build, stage, key and worker."""

from __future__ import annotations

import json
import re
from pathlib import Path


def _json_lines(path: Path) -> list[dict]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def test_stage_lines_carry_ids(farm, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        f"FROM busybox AS first\nRUN echo {tmp_path.name} > /f\n\nFROM first\nRUN cat /f\n"
    )
    result = farm.cli("build", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    build_id = re.search(r"^build ([0-9a-f]+):", result.stdout, re.MULTILINE).group(1)

    events = []
    for log in sorted((farm.directory / "logs").glob("worker-*.log")):
        events += [event for event in _json_lines(log) if event.get("build_id") == build_id]

    messages = [event["event"] for event in events]
    assert messages.count("stage started") == 2
    assert messages.count("stage done") == 2
    for event in events:
        assert event["stage"] in ("first", "1"), event
        assert re.fullmatch(r"[0-9a-f]{64}", event["key"]), event
        assert re.fullmatch(r".+-w[12]", event["worker"]), event
