"""Workers that probe this host, prove a mode and build real stages: as root and as a build user."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from farm.build_store import BuildStore
from farm.celery_app import create_app, queue_for, send_stage
from farm.config import Settings
from farm.stages import default_platform
from workers.heartbeat import Heartbeat

from .images import image_files
from .worker_processes import FARM_WORKER, start_worker


def _redis_url(farm, database: int) -> str:
    return re.sub(r"/\d+$", f"/{database}", farm.env["FARM_REDIS_URL"])


def _user_env(farm, database: int, home: Path, run_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    """Return the environment of a worker on Redis database `database`, alone on its queue."""
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(run_dir),
        "LANG": "C.UTF-8",
        **farm.env,
        "FARM_REDIS_URL": _redis_url(farm, database),
        "FARM_LOG_LEVEL": "INFO",
        **extra,
    }


def _build_through(farm, database: int, worker_id: str, name: str, tmp_path: Path) -> str:
    """Build a stage with a RUN step on the farm of database `database`; return the tag."""
    (tmp_path / "Dockerfile").write_text(f"FROM busybox\nRUN echo {name} > /built-by && id -u > /uid\n")
    tag = f"{farm.registry_address}/hosts/{name}:1"
    result = farm.cli("build", "-t", tag, str(tmp_path), env={"FARM_REDIS_URL": _redis_url(farm, database)})
    assert result.returncode == 0, result.stdout + result.stderr
    build_id = re.search(r"^build ([0-9a-f]+):", result.stdout, re.MULTILINE).group(1)
    stage = BuildStore(redis.Redis.from_url(_redis_url(farm, database))).result(build_id, "0")
    assert stage.worker == worker_id
    return tag


def _fleet(farm, database: int) -> list[dict]:
    result = farm.cli("workers", "--json", env={"FARM_REDIS_URL": _redis_url(farm, database)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_root_workers_use_native_overlay(farm) -> None:
    workers = _fleet(farm, 0)

    assert len(workers) == 2
    for worker in workers:
        assert worker["mode"] == "native-chroot"
        assert worker["driver"] == "overlay"
        assert worker["isolation"] == "chroot"
        assert worker["network"] == "host"
        assert worker["user"] == "root"
        assert worker["os"] == "linux"
        assert worker["kernel"] == os.uname().release
        assert re.fullmatch(r"\d+\.\d+\.\d+", worker["buildah"])
        assert worker["platforms"] == [default_platform()]
        assert worker["disk_free"] > 0


def test_fleet_table_lists_workers(farm) -> None:
    result = farm.cli("workers")

    assert result.returncode == 0, result.stderr
    assert "native-chroot" in result.stdout
    assert socket.gethostname() in result.stdout


def test_probe_command_prints_this_host(tmp_path: Path) -> None:
    result = subprocess.run(
        [FARM_WORKER, "--probe", "--json", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["profile"]["user"] == "root"
    assert document["choice"]["mode"] == "native-chroot"
    rejected = {rejection["candidate"]: rejection["reason"] for rejection in document["rejected"]}
    assert "runs as root" in rejected["native-rootless"]
    assert not list(tmp_path.glob("probe/*")), "the probe left files behind"


def test_heartbeat_expiry_drops_worker(farm) -> None:
    client = redis.Redis.from_url(_redis_url(farm, 4))
    profile = {"id": "test-silent", "mode": "native-chroot", "platforms": ["linux/amd64"]}
    heartbeat = Heartbeat(client, "test-silent", profile, "/", expiry=1)

    heartbeat.beat()
    listed = [worker["id"] for worker in _fleet(farm, 4)]
    time.sleep(1.5)
    after = [worker["id"] for worker in _fleet(farm, 4)]

    assert listed == ["test-silent"]
    assert after == []


def test_impossible_mode_consumes_nothing(farm, tmp_path: Path) -> None:
    env = {
        **os.environ,
        **farm.env,
        "FARM_REDIS_URL": _redis_url(farm, 3),
        "FARM_BUILDAH_MODE": "native-rootless",
    }
    settings = Settings.from_env(env)
    client = redis.Redis.from_url(settings.redis_url)
    queue = queue_for(default_platform())
    client.delete(queue)
    send_stage(create_app(settings), "no-such-build", "0", queue)

    result = subprocess.run(
        [FARM_WORKER, "--name", "impossible", "--root", str(tmp_path / "worker")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )

    assert result.returncode == 1
    assert "FARM_BUILDAH_MODE=native-rootless cannot work here: runs as root" in result.stderr
    assert client.llen(queue) == 1
    assert not client.exists(f"farm:worker:{socket.gethostname()}-impossible")


# Rootless variants: environment, expected driver label in the profile.
ROOTLESS = [
    (
        "overlay",
        {"FARM_BUILDAH_STORAGE_DRIVER": "overlay", "FARM_BUILDAH_OVERLAY_MOUNT": "kernel"},
        "overlay",
    ),
    ("vfs", {"FARM_BUILDAH_STORAGE_DRIVER": "vfs"}, "vfs"),
]


def _run_rootless(farm, build_user, tmp_path: Path, name: str, extra: dict[str, str], driver: str) -> None:
    root = build_user.owned_directory(f"farm-{name}-")
    try:
        env = _user_env(farm, 2, build_user.home, root, extra)
        worker = start_worker(
            f"rootless-{name}", root / "worker", env, tmp_path / "worker.log", build_user.name
        )
        try:
            (profile,) = _fleet(farm, 2)
            assert profile["mode"] == "native-rootless", profile
            assert profile["driver"] == driver
            assert profile["user"] == build_user.name

            tag = _build_through(farm, 2, worker.worker_id, f"rootless-{name}", tmp_path)
            files = image_files(farm.registry, tag)
            assert files["/built-by"].content == f"rootless-{name}\n".encode()
            # Inside the build's user namespace the RUN step is root.
            assert files["/uid"].content == b"0\n"
        finally:
            worker.stop()
        assert '"worker stopped"' in worker.output()
        assert '"candidate rejected by the probe"' in worker.output()
    finally:
        subprocess.run(
            ["runuser", "-u", build_user.name, "--", "buildah", "unshare", "rm", "-rf", str(root)],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize(("name", "extra", "driver"), ROOTLESS, ids=[case[0] for case in ROOTLESS])
def test_rootless_worker_builds(
    farm, build_user, tmp_path: Path, name: str, extra: dict, driver: str
) -> None:
    _run_rootless(farm, build_user, tmp_path, name, extra, driver)


def test_rootless_worker_fuse_overlayfs(farm, build_user, fuse_device_open, tmp_path: Path) -> None:
    extra = {"FARM_BUILDAH_STORAGE_DRIVER": "overlay", "FARM_BUILDAH_OVERLAY_MOUNT": "fuse-overlayfs"}

    _run_rootless(farm, build_user, tmp_path, "fuse", extra, "overlay (fuse-overlayfs)")


def test_rootless_fuse_without_device_fails(farm, build_user, tmp_path: Path) -> None:
    root = build_user.owned_directory("farm-nofuse-")
    env = _user_env(farm, 2, build_user.home, root, {"FARM_BUILDAH_OVERLAY_MOUNT": "fuse-overlayfs"})
    try:
        result = subprocess.run(
            ["runuser", "-u", build_user.name, "--", FARM_WORKER, "--name", "nofuse", "--root", str(root)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)

    assert result.returncode == 1
    assert f"/dev/fuse cannot be opened by user {build_user.name}: Permission denied" in result.stderr
    assert "add --device /dev/fuse" in result.stderr


@pytest.mark.slow
def test_docker_with_fuse_worker_builds(farm, docker_daemon, runner_image, tmp_path: Path) -> None:
    env = {
        **os.environ,
        **farm.env,
        "FARM_REDIS_URL": _redis_url(farm, 5),
        "FARM_BUILDAH_MODE": "docker-with-fuse",
        "FARM_RUNNER_IMAGE": runner_image,
        "DOCKER_HOST": docker_daemon.host,
        "FARM_LOG_LEVEL": "INFO",
    }
    worker = start_worker("docker", tmp_path / "worker", env, tmp_path / "worker.log")
    try:
        (profile,) = _fleet(farm, 5)
        assert profile["mode"] == "docker-with-fuse"
        assert profile["isolation"] == "chroot"

        tag = _build_through(farm, 5, worker.worker_id, "docker-with-fuse", tmp_path)
        files = image_files(farm.registry, tag)
        assert files["/built-by"].content == b"docker-with-fuse\n"
    finally:
        worker.stop()
        docker_daemon.docker("volume", "rm", "--force", f"farm-worker-{worker.worker_id}")
    output = worker.output()
    assert '"worker stopped"' in output
    # This machine lacks a capability that --privileged grants; elsewhere it is accepted.
    if "--privileged rejected" in output:
        assert "using explicit capabilities instead" in output
    assert docker_daemon.docker("ps", "--all", "--quiet").stdout.strip() == ""
