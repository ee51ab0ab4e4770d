"""A worker whose disk is nearly full stops taking stages, prunes stage images, and resumes later.

The tests do not fill the real disk. They raise a worker's minimum free
space above what the file system has (the Redis override
`farm:min-free-disk:<worker id>`), or give a worker a small tmpfs as its
root, in a farm of their own.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm import redis_keys as keys
from farm.errors import FarmError
from workers.disk_guard import MinFree

from .chaos import ChaosFarm, start_chaos_farm, unique_token, unmount_below, write_context

# Far above the free space of any real file system, so the worker pauses.
FULL = "99.99%"
STATE_CHANGE_SECONDS = 30


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosFarm]:
    yield from start_chaos_farm(tmp_path_factory.mktemp("disk-guard-farm"), ["w1", "w2"], {})


def _worker_id(name: str) -> str:
    return f"{socket.gethostname()}-{name}"


def _profile(chaos: ChaosFarm, name: str) -> dict:
    result = chaos.cli("workers", "--json")
    assert result.returncode == 0, result.stderr
    return next(worker for worker in json.loads(result.stdout) if worker["id"] == _worker_id(name))


def _wait_accepting(chaos: ChaosFarm, name: str, accepting: bool) -> dict:
    deadline = time.monotonic() + STATE_CHANGE_SECONDS
    while time.monotonic() < deadline:
        profile = _profile(chaos, name)
        if profile.get("accepting") == accepting:
            return profile
        time.sleep(0.5)
    raise AssertionError(
        f"worker {name} accepting is not {accepting} after {STATE_CHANGE_SECONDS} s: {profile}"
    )


def _buildah(chaos: ChaosFarm, name: str, *arguments: str) -> str:
    """Run Buildah on the storage of worker `name` (its only storage root)."""
    root = next((chaos.local.directory / "workers" / name).glob("storage-*"))
    driver = root.name.removeprefix("storage-")
    flags = [
        "--root",
        str(root),
        "--runroot",
        str(root.with_name(f"run-{driver}")),
        "--storage-driver",
        driver,
    ]
    env = {
        "CONTAINERS_REGISTRIES_CONF": str(chaos.local.registries_conf),
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    completed = subprocess.run(
        ["buildah", *flags, *arguments], capture_output=True, text=True, env=env, check=True
    )
    return completed.stdout


def _started_on(chaos: ChaosFarm, build_id: str) -> list[str]:
    return [event["worker"] for event in chaos.events(build_id) if event["type"] == "started"]


def _build_id(output: str) -> str:
    return output.split("build ", 1)[1].split(":", 1)[0].strip()


def test_full_disk_pauses_and_prunes(chaos: ChaosFarm, tmp_path: Path) -> None:
    stage_image = f"{chaos.state.registry}/farm/stages:disk-guard-{unique_token()}"
    _buildah(chaos, "w2", "pull", "--tls-verify=false", f"{chaos.state.registry}/library/busybox:latest")
    _buildah(chaos, "w2", "tag", f"{chaos.state.registry}/library/busybox:latest", stage_image)
    override = keys.min_free_disk(_worker_id("w2"))
    chaos.redis.set(override, FULL)
    try:
        profile = _wait_accepting(chaos, "w2", False)
        assert "disk nearly full" in profile["reason"]
        assert f"below FARM_MIN_FREE_DISK={FULL}" in profile["reason"]
        assert stage_image not in _buildah(chaos, "w2", "images", "--format", "{{.Name}}:{{.Tag}}")
        table = chaos.cli("workers")
        assert "paused: disk nearly full" in table.stdout

        context = write_context(
            tmp_path / "context",
            "".join(f"FROM busybox AS s{n}\nRUN echo {unique_token()}\n\n" for n in range(3))
            + "FROM busybox\n"
            + "".join(f"COPY --from=s{n} /bin/true /s{n}\n" for n in range(3)),
        )
        result = chaos.cli("build", str(context))
        assert result.returncode == 0, result.stdout + result.stderr
        started = _started_on(chaos, _build_id(result.stdout))
        assert len(started) == 4
        assert set(started) == {_worker_id("w1")}
    finally:
        chaos.redis.delete(override)

    profile = _wait_accepting(chaos, "w2", True)
    assert profile.get("reason") is None
    chaos.local.stop_worker("w1")
    try:
        context = write_context(tmp_path / "again", f"FROM busybox\nRUN echo {unique_token()}\n")
        result = chaos.cli("build", str(context))
        assert result.returncode == 0, result.stdout + result.stderr
        assert _started_on(chaos, _build_id(result.stdout)) == [_worker_id("w2")]
    finally:
        chaos.add_worker("w1")


@pytest.fixture
def small_disk_worker(chaos: ChaosFarm) -> Iterator[str]:
    """Start worker w3 with its root on a 200 MiB tmpfs; stop it and unmount afterwards."""
    root = chaos.local.directory / "workers" / "w3"
    root.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "farm-test-small-disk", str(root)], check=True)
    try:
        chaos.local.add_worker("w3", {"FARM_MIN_FREE_DISK": "1M"})
        yield "w3"
    finally:
        if any(service.name == "worker-w3" for service in chaos.local.load().services):
            chaos.local.stop_worker("w3")
        unmount_below(root)
        subprocess.run(["umount", "--lazy", str(root)], check=False)


def test_out_of_space_stage_requeued(chaos: ChaosFarm, small_disk_worker: str, tmp_path: Path) -> None:
    overrides = [keys.min_free_disk(_worker_id(name)) for name in ("w1", "w2")]
    for override in overrides:
        chaos.redis.set(override, FULL)
    try:
        _wait_accepting(chaos, "w1", False)
        _wait_accepting(chaos, "w2", False)
        # The sleep leaves time to let w1 take stages again before the step fills w3's disk.
        context = write_context(
            tmp_path / "context",
            f"FROM busybox\nRUN echo {unique_token()} && sleep 15 && dd if=/dev/zero of=/fill bs=1M count=300\n",
        )
        build = chaos.popen("build", str(context))
        build_id, stage_id, worker = chaos.wait_running()
        assert worker == small_disk_worker
        chaos.redis.delete(overrides[0])
        _wait_accepting(chaos, "w1", True)

        output, errors = build.communicate(timeout=300)
        assert build.returncode == 0, output + errors
        events = [event for event in chaos.events(build_id) if event["type"] in ("started", "requeued")]
        assert [(event["type"], event["worker"]) for event in events] == [
            ("started", _worker_id("w3")),
            ("requeued", _worker_id("w3")),
            ("started", _worker_id("w1")),
        ]
        assert events[1]["reason"] == f"no space left on device on worker {_worker_id('w3')}"
        assert "Dockerfile:2" not in output
    finally:
        for override in overrides:
            chaos.redis.delete(override)


@pytest.mark.parametrize(
    ("text", "total", "minimum"),
    [("10%", 1000, 100), ("99.99%", 10**6, 999900), ("5G", 1, 5 * 1024**3), ("1048576", 1, 1048576)],
)
def test_min_free_disk_values(text: str, total: int, minimum: int) -> None:
    assert MinFree.parse(text).bytes_of(total) == minimum


@pytest.mark.parametrize("text", ["100%", "ten", "-5%", "5Q"])
def test_min_free_disk_invalid(text: str) -> None:
    with pytest.raises(FarmError, match=f"invalid FARM_MIN_FREE_DISK='{re.escape(text)}'"):
        MinFree.parse(text)
