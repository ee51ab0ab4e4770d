"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from farm.local import unmount_below
from farm.registry import RegistryClient

from .cli import run_farm, start_farm


@dataclass
class FarmHandle:
    """A local farm started for the test session, and ways to use it as a user does."""

    directory: Path
    env: dict[str, str]
    registry_address: str
    registries_conf: Path
    redis: redis.Redis
    registry: RegistryClient
    worker_metrics_ports: list[int] = field(default_factory=list)

    def cli(
        self, *arguments: str, env: dict[str, str] | None = None, timeout: float = 900
    ) -> subprocess.CompletedProcess:
        """Run the `farm` command with this farm's environment (plus `env`)."""
        return run_farm({**self.env, **(env or {})}, *arguments, timeout=timeout)

    def popen(self, *arguments: str) -> subprocess.Popen:
        """Start the `farm` command in the background with this farm's environment."""
        return start_farm(self.env, *arguments)


@pytest.fixture(scope="session")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmHandle]:
    """Start Redis, a registry and two workers on loopback, with a busybox base image.

    Each worker serves Prometheus metrics on its own loopback port.

    Skips when Buildah, Redis or the registry is not installed.
    """
    from farm.base_images import make_busybox_image
    from farm.local import LocalFarm

    for binary in ("buildah", "redis-server", "docker-registry"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed")

    directory = tmp_path_factory.mktemp("farm")
    local = LocalFarm(directory)
    state = local.start(workers=2, metrics=True)
    try:
        registry = RegistryClient(state.registry, insecure=True)
        make_busybox_image(registry, directory / "base-images")
        yield FarmHandle(
            directory=directory,
            env=state.environment(),
            worker_metrics_ports=[s.metrics_port for s in state.services if s.metrics_port],
            registry_address=state.registry,
            registries_conf=local.registries_conf,
            redis=redis.Redis.from_url(state.redis_url),
            registry=registry,
        )
    finally:
        local.stop()


@pytest.fixture(scope="session")
def debian_image(farm: FarmHandle) -> str:
    """Make and push debian:bookworm (debootstrap from Debian's mirror, about 30 s)."""
    from farm.base_images import make_debian_image

    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed")
    return make_debian_image(farm.registry, farm.directory / "base-images")


@dataclass
class BuildUser:
    """A non-root user made for the test session, with subordinate id ranges."""

    name: str
    uid: int
    home: Path

    def owned_directory(self, prefix: str) -> Path:
        """Return a new directory below /tmp owned by this user (pytest's tmp_path is root-only)."""
        directory = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        os.chown(directory, self.uid, self.uid)
        return directory


@pytest.fixture(scope="session")
def build_user() -> Iterator[BuildUser]:
    """Create the user `farm-build-test` with subuid/subgid ranges; remove it afterwards.

    The directories above this Python and the worktree that the user
    cannot enter get o+x for the session and their modes back afterwards.
    """
    import pwd

    if os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("runuser") is None:
        pytest.skip("needs root, useradd and runuser")
    name = "farm-build-test"
    subprocess.run(["userdel", "--remove", name], capture_output=True, check=False)
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    ranges = "400000-465535"
    subprocess.run(["usermod", "--add-subuids", ranges, "--add-subgids", ranges, name], check=True)
    changed = _open_parents([Path(sys.executable).resolve(), Path(sys.executable), Path(__file__).resolve()])
    try:
        entry = pwd.getpwnam(name)
        yield BuildUser(name, entry.pw_uid, Path(entry.pw_dir))
    finally:
        for path, mode in reversed(changed):
            path.chmod(mode)
        subprocess.run(["usermod", "--del-subuids", ranges, "--del-subgids", ranges, name], check=False)
        subprocess.run(["userdel", "--remove", name], capture_output=True, check=False)
        # Rootless Buildah keeps its run directories here when XDG_RUNTIME_DIR is unset.
        for leftover in (f"/tmp/containers-user-{entry.pw_uid}", f"/tmp/podman-run-{entry.pw_uid}"):
            shutil.rmtree(leftover, ignore_errors=True)


def _open_parents(paths: list[Path]) -> list[tuple[Path, int]]:
    """Give o+x to each parent directory of `paths` that lacks it; return the old modes."""
    import stat

    changed = []
    for path in paths:
        for parent in reversed(path.parents):
            mode = stat.S_IMODE(parent.stat().st_mode)
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)
                changed.append((parent, mode))
    return changed


@pytest.fixture
def fuse_device_open() -> Iterator[None]:
    """Make /dev/fuse openable by every user (mode 0666) and restore its mode afterwards."""
    import stat

    device = Path("/dev/fuse")
    if not device.exists():
        pytest.skip("/dev/fuse does not exist")
    mode = stat.S_IMODE(device.stat().st_mode)
    device.chmod(0o666)
    try:
        yield
    finally:
        device.chmod(mode)


@dataclass
class DockerDaemon:
    """A dockerd started for the test session, with its own data root and socket."""

    host: str
    directory: Path

    def docker(self, *arguments: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["docker", "-H", self.host, *arguments],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="session")
def docker_daemon(farm: FarmHandle) -> Iterator[DockerDaemon]:
    """Start Debian's dockerd without iptables or a bridge; stop it and remove its files afterwards.

    Containers need `--network host` to reach the farm's registry on 127.0.0.1.
    """
    import signal
    import time

    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        pytest.skip("dockerd is not installed (Debian's docker.io package)")
    # A short path: the socket path must fit in 108 bytes.
    directory = Path(tempfile.mkdtemp(prefix="farm-dockerd-", dir="/tmp"))
    socket_path = directory / "docker.sock"
    command = [
        "dockerd",
        "--iptables=false",
        "--bridge=none",
        "--data-root",
        str(directory / "data"),
        "--exec-root",
        str(directory / "exec"),
        "--pidfile",
        str(directory / "docker.pid"),
        "-H",
        f"unix://{socket_path}",
        "--insecure-registry",
        farm.registry_address,
    ]
    with open(directory / "dockerd.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    daemon = DockerDaemon(f"unix://{socket_path}", directory)
    try:
        deadline = time.monotonic() + 60
        while daemon.docker("version", timeout=10).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start:\n{(directory / 'dockerd.log').read_text()}")
            time.sleep(0.5)
        yield daemon
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        unmount_below(directory)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def runner_image(farm: FarmHandle, debian_image: str) -> str:
    """Build the docker-with-fuse runner image with the farm itself (apt-get inside, about a minute)."""
    tag = f"{farm.registry_address}/farm/runner:latest"
    runner = Path(__file__).parent.parent / "workers" / "runner"
    result = farm.cli("build", "-t", tag, str(runner))
    assert result.returncode == 0, result.stdout + result.stderr
    return tag


@pytest.fixture(scope="session")
def fleet_metrics(farm: FarmHandle) -> Iterator[int]:
    """Run `farm metrics` on a free loopback port for the session; yield the port."""
    import socket
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = farm.popen("metrics", "--port", str(port), "--address", "127.0.0.1")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"farm metrics did not start: {process.stderr.read()}") from None
                time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
