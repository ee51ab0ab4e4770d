"""`farm status`, `farm logs` and `farm cancel` against the session's real farm."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from farm import redis_keys as keys
from farm.build_store import BuildStore

from .metrics_scrape import sample, scrape

EXAMPLES = Path(__file__).parent.parent / "examples"
QUEUES = ("farm.stages.linux-amd64", "farm.stages.linux-amd64.native")
PLATFORM = "linux/amd64"


def _build_id(output: str) -> str:
    match = re.search(r"^build ([0-9a-f]+):", output, re.MULTILINE)
    assert match, f"no build id in output:\n{output}"
    return match.group(1)


def _wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _read_build_line(process: subprocess.Popen) -> str:
    line = process.stdout.readline()
    assert line.startswith("build "), f"unexpected first line of farm build: {line!r}"
    return _build_id(line)


def _buildah_processes(farm) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "buildah" and any(str(farm.directory) in part for part in cmdline):
            found.append(process)
    return found


def _worker_log_events(farm, build_id: str) -> list[dict]:
    events = []
    for path in sorted((farm.directory / "logs").glob("worker-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{") and json.loads(line).get("build_id") == build_id:
                events.append(json.loads(line))
    return events


def test_status_of_finished_build(farm) -> None:
    result = farm.cli("build", str(EXAMPLES / "two-builders"), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    build_id = _build_id(result.stdout)

    status = farm.cli("status", build_id, "--json")

    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["build_id"] == build_id
    assert data["status"] == "succeeded"
    assert {stage["state"] for stage in data["stages"]} == {"done"}
    for stage in data["stages"]:
        assert stage["worker"], stage
        assert stage["seconds"] is not None, stage
        assert stage["digest"].startswith("sha256:"), stage

    table = farm.cli("status", build_id)
    assert table.returncode == 0, table.stderr
    assert f"build {build_id}: succeeded" in table.stdout
    for stage in data["stages"]:
        assert stage["id"] in table.stdout

    listing = json.loads(farm.cli("status", "--json").stdout)
    assert build_id in [build["build_id"] for build in listing]


def test_logs_of_finished_stage(farm, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox AS greet\nRUN echo hello-from-greet-$((6*7))\n")
    result = farm.cli("build", "--no-cache", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    build_id = _build_id(result.stdout)

    logs = farm.cli("logs", build_id, "greet")
    as_json = farm.cli("logs", build_id, "--json")

    assert logs.returncode == 0, logs.stderr
    assert "hello-from-greet-42" in logs.stdout.splitlines()
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {"stage": "greet", "line": "hello-from-greet-42"} in lines


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["status", "0000deadbeef"], "build 0000deadbeef not found in Redis"),
        (["logs", "0000deadbeef"], "build 0000deadbeef not found in Redis"),
        (["cancel", "0000deadbeef"], "build 0000deadbeef not found in Redis"),
    ],
)
def test_unknown_build_is_an_error(farm, arguments: list[str], message: str) -> None:
    result = farm.cli(*arguments)
    assert result.returncode == 1
    assert message in result.stderr


def test_unknown_stage_and_finished_build(farm, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox AS only\nRUN true\n")
    result = farm.cli("build", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    build_id = _build_id(result.stdout)

    logs = farm.cli("logs", build_id, "nosuch")
    cancel = farm.cli("cancel", build_id)

    assert logs.returncode == 1
    assert f"build {build_id} has no stage 'nosuch'; its stages: only" in logs.stderr
    assert cancel.returncode == 1
    assert f"build {build_id} has already succeeded; there is nothing to cancel" in cancel.stderr


def test_follow_logs_then_cancel(farm, fleet_metrics, tmp_path: Path) -> None:
    """Two stages run, two wait; follow one running stage's output, then cancel the build."""
    marker = f"{time.time_ns()}"
    (tmp_path / "Dockerfile").write_text(
        f"FROM busybox AS one\nRUN echo started-one-{marker} && sleep 300\n\n"
        f"FROM busybox AS two\nRUN echo started-two-{marker} && sleep 300\n\n"
        f"FROM busybox AS three\nRUN echo started-three-{marker} && sleep 300\n\n"
        "FROM busybox\nCOPY --from=one /etc/hostname /one\nCOPY --from=two /etc/hostname /two\n"
        "COPY --from=three /etc/hostname /three\n"
    )
    build = farm.popen("build", str(tmp_path))
    try:
        build_id = _read_build_line(build)
        store = BuildStore(farm.redis)

        def running_stages() -> list[str]:
            return sorted(stage for stage, state in store.states(build_id).items() if state == "running")

        running = _wait_for(
            lambda: len(running_stages()) == 2 and running_stages(), what="two running stages"
        )
        queued = [stage for stage in ("one", "two", "three") if stage not in running]
        assert store.states(build_id)[queued[0]] == "queued"
        depth = sample(scrape(fleet_metrics), "farm_queue_depth", platform=PLATFORM)
        assert depth == 1

        follower = farm.popen("logs", build_id, running[0], "--follow")
        lines = []
        while f"started-{running[0]}-{marker}" not in lines and len(lines) < 50:
            lines.append(follower.stdout.readline().rstrip("\n"))
        assert lines[0] == "STEP 1/2: FROM busybox"
        assert f"started-{running[0]}-{marker}" in lines
        assert store.states(build_id)[running[0]] == "running"

        cancel = farm.cli("cancel", build_id, "--json", timeout=120)

        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        report = json.loads(cancel.stdout)
        assert sorted(report["dropped"]) == sorted([*queued, "3"])
        assert sorted(report["stopped"]) == running
        assert report["still_running"] == {}
        assert report["messages_removed"] == 1
        states = store.states(build_id)
        assert "running" not in states.values()
        assert set(states.values()) == {"cancelled"}
        assert sum(farm.redis.llen(queue) for queue in QUEUES) == 0
        assert sample(scrape(fleet_metrics), "farm_queue_depth", platform=PLATFORM) == 0

        follower.wait(timeout=30)
        assert follower.returncode == 0
        build.wait(timeout=60)
        output = build.stdout.read()
        assert build.returncode == 1
        assert f"cancelled build {build_id} (farm cancel)" in output
        assert store.status(build_id) == "cancelled"
    finally:
        for process in (build, locals().get("follower")):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    _wait_for(lambda: not _buildah_processes(farm), timeout=30, what="buildah processes to exit")
    events = _worker_log_events(farm, build_id)
    assert [event["event"] for event in events].count("stage stopped: its build was cancelled") == 2
    assert [event["event"] for event in events].count("build cancelled; stopping buildah") == 2
    for event in events:
        assert event["stage"] in running, event
        assert event["key"], event
        assert event["worker"], event
    again = farm.cli("build", "--no-cache", str(EXAMPLES / "two-builders"))
    assert again.returncode == 0, again.stdout + again.stderr


def test_no_stage_left_running(farm) -> None:
    """After every test above, no stage of any build is left running or queued."""
    assert sum(farm.redis.llen(queue) for queue in QUEUES) == 0
    for key in farm.redis.scan_iter(match=keys.states("*")):
        assert b"running" not in farm.redis.hvals(key), key


def test_specs_of_reads_named_stages(farm, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox AS one\nLABEL step=one\n\nFROM one AS two\nLABEL step=two\n\nFROM two\nLABEL step=three\n"
    )
    result = farm.cli("build", "--json", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    build_id = json.loads(result.stdout)["build_id"]

    specs = BuildStore(farm.redis).specs_of(build_id, ["two", "missing"])

    assert list(specs) == ["two"]
    assert specs["two"].parent == "one"
    assert specs["two"].descendants == ["2"]
