"""Builds for several platforms: routing to workers by platform, emulation, image indexes.

The two-platform build runs for real: qemu-user-static's `qemu-aarch64`
emulator is registered in binfmt_misc (and unregistered afterwards when
this module registered it), and a worker started after that offers
linux/arm64 as an emulated platform.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from farm import redis_keys as keys
from farm.base_images import BUSYBOX_REPOSITORY, busybox_binary, host_platform, make_busybox_image
from farm.celery_app import queue_for
from farm.errors import FarmError
from farm.fleet import live_workers, require_platforms, route_platform
from farm.local import LocalFarm
from farm.registry import OCI_INDEX, RegistryClient
from workers.heartbeat import EXPIRY_SECONDS
from workers.platforms import BINFMT_DIR, emulated_platforms

from .conftest import FarmHandle
from .images import image_config_blob, image_files

AMD64 = "linux/amd64"
ARM64 = "linux/arm64"
UNSERVED = "linux/s390x"

PROFILES = Path(__file__).parent / "data" / "worker-profiles"

# The registration line (`:name:type:offset:magic:mask:interpreter:flags`)
# that Debian's qemu-user-static installs for systemd-binfmt.
QEMU_AARCH64_REGISTRATION = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
QEMU_AARCH64_ENTRY = "qemu-aarch64"

# e_machine of an ELF header (bytes 18-19, little endian) for AArch64.
ELF_MACHINE_AARCH64 = 0xB7


@contextlib.contextmanager
def qemu_aarch64_emulation() -> Iterator[None]:
    """Make the kernel run arm64 binaries through qemu, and undo only what this changed.

    binfmt_misc is mounted if it is not, and the qemu-aarch64 entry is
    registered if it is missing, with the `F` flag so that the emulator is
    found from inside a chroot. On exit the entry is removed and the file
    system unmounted only if they were added here.
    """
    mounted = False
    registered = False
    entry = BINFMT_DIR / QEMU_AARCH64_ENTRY
    try:
        if not (BINFMT_DIR / "register").exists():
            subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], check=True)
            mounted = True
        if not entry.exists():
            (BINFMT_DIR / "register").write_text(_registration_with_fix_binary())
            registered = True
        if ARM64 not in emulated_platforms(host_platform()):
            pytest.skip(f"{entry} exists but is disabled or lacks the F flag; leaving it as it is")
        yield
    finally:
        if registered:
            entry.write_text("-1")
        if mounted:
            subprocess.run(["umount", str(BINFMT_DIR)], check=True)


def _registration_with_fix_binary() -> str:
    line = QEMU_AARCH64_REGISTRATION.read_text().strip()
    head, _, flags = line.rpartition(":")
    return f"{head}:{flags if 'F' in flags else flags + 'F'}\n"


def _require_emulation_tools() -> None:
    for binary in ("buildah", "redis-server", "docker-registry"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed")
    if os.geteuid() != 0:
        pytest.skip("registering an emulator in binfmt_misc needs root")
    if host_platform() != AMD64:
        pytest.skip(f"the emulation test builds arm64 on an amd64 host, and this host is {host_platform()}")
    if shutil.which("qemu-aarch64-static") is None or not QEMU_AARCH64_REGISTRATION.is_file():
        pytest.skip("qemu-user-static is not installed (apt-get install qemu-user-static)")


@pytest.fixture(scope="module")
def emulating_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmHandle]:
    """Start a farm with one amd64 worker and one that also offers linux/arm64 under emulation.

    The first worker starts before qemu-aarch64 is registered, so it
    offers arm64 only if the machine already emulated it. The farm is
    separate from the session's, whose busybox image stays single-platform.
    """
    _require_emulation_tools()
    directory = tmp_path_factory.mktemp("platform-farm")
    base_images = directory / "base-images"
    try:
        busybox_binary(ARM64, base_images)
    except FarmError as error:
        pytest.skip(f"no arm64 busybox: {error}")

    with contextlib.ExitStack() as cleanup:
        local = LocalFarm(directory)
        state = local.start(workers=1)
        cleanup.callback(local.stop)
        cleanup.enter_context(qemu_aarch64_emulation())
        # ExitStack unwinds in reverse, so this stop runs before binfmt_misc
        # is restored, and the first one finds nothing left to stop.
        cleanup.callback(local.stop)
        local.add_worker("emulator")

        registry = RegistryClient(state.registry, insecure=True)
        cleanup.callback(registry.close)
        make_busybox_image(registry, base_images, [AMD64, ARM64])
        yield FarmHandle(
            directory=directory,
            env=state.environment(),
            registry_address=state.registry,
            registries_conf=local.registries_conf,
            redis=redis.Redis.from_url(state.redis_url),
            registry=registry,
        )


@pytest.fixture
def fleet_redis(farm: FarmHandle) -> Iterator[redis.Redis]:
    """A database of the session's Redis with no live workers, for recorded worker profiles."""
    connection = farm.redis.connection_pool.connection_kwargs
    client = redis.Redis(host=connection["host"], port=connection["port"], db=1)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def record_profile(client: redis.Redis, name: str) -> dict:
    """Publish a recorded worker profile as a worker's heartbeat does."""
    profile = json.loads((PROFILES / f"{name}.json").read_text())
    client.set(keys.worker(profile["id"]), json.dumps(profile), ex=EXPIRY_SECONDS)
    return profile


def test_busybox_index_holds_both_platforms(emulating_farm: FarmHandle) -> None:
    registry = emulating_farm.registry
    reference = f"{emulating_farm.registry_address}/{BUSYBOX_REPOSITORY}:latest"

    index = registry.get_manifest(BUSYBOX_REPOSITORY, "latest")

    assert index is not None
    assert index.media_type == OCI_INDEX
    listed = sorted(entry["platform"]["architecture"] for entry in index.json()["manifests"])
    assert listed == ["amd64", "arm64"]
    assert image_config_blob(registry, reference, ARM64)["architecture"] == "arm64"
    assert image_config_blob(registry, reference, AMD64)["architecture"] == "amd64"
    arm64_busybox = image_files(registry, reference, ARM64)["/bin/busybox"].content
    assert arm64_busybox[:4] == b"\x7fELF"
    assert int.from_bytes(arm64_busybox[18:20], "little") == ELF_MACHINE_AARCH64


def test_busybox_unsupported_platform_rejected(farm: FarmHandle, tmp_path: Path) -> None:
    before = farm.registry.get_manifest(BUSYBOX_REPOSITORY, "latest")

    with pytest.raises(FarmError, match="unsupported platform 'linux/mips64le' for the busybox image"):
        make_busybox_image(farm.registry, tmp_path, [AMD64, "linux/mips64le"])

    after = farm.registry.get_manifest(BUSYBOX_REPOSITORY, "latest")
    assert before is not None
    assert after is not None
    assert after.digest == before.digest
    assert not any(tmp_path.iterdir())


def test_two_platform_build_uses_emulating_worker(emulating_farm: FarmHandle, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox AS probe\nRUN uname -m > /arch\n\nFROM probe\nRUN cp /arch /arch-of-final-stage\n"
    )
    repository = "platforms/uname"
    tag = f"{emulating_farm.registry_address}/{repository}:1"

    result = emulating_farm.cli("build", "--platform", f"{AMD64},{ARM64}", "-t", tag, "--json", str(tmp_path))

    assert result.returncode == 0, result.stdout + result.stderr
    stages = json.loads(result.stdout)["entries"][0]["stages"]
    workers = {worker["id"]: worker for worker in live_workers(emulating_farm.redis)}
    arm64_stages = [stage for stage in stages if stage["platform"] == ARM64]
    amd64_stages = [stage for stage in stages if stage["platform"] == AMD64]
    assert [stage["stage"] for stage in arm64_stages] == ["probe", "1"]
    assert [stage["stage"] for stage in amd64_stages] == ["probe", "1"]
    for stage in arm64_stages:
        assert stage["state"] == "built", stage
        assert ARM64 in workers[stage["worker"]]["emulated"], stage
    for stage in amd64_stages:
        assert stage["state"] == "built", stage
        assert AMD64 in workers[stage["worker"]]["platforms"], stage
        assert AMD64 not in workers[stage["worker"]]["emulated"], stage

    index = emulating_farm.registry.get_manifest(repository, "1")
    assert index is not None
    assert index.media_type == OCI_INDEX
    listed = sorted(
        (entry["platform"]["os"], entry["platform"]["architecture"]) for entry in index.json()["manifests"]
    )
    assert listed == [("linux", "amd64"), ("linux", "arm64")]

    arm64_files = image_files(emulating_farm.registry, tag, ARM64)
    amd64_files = image_files(emulating_farm.registry, tag, AMD64)
    assert arm64_files["/arch"].content == b"aarch64\n"
    assert arm64_files["/arch-of-final-stage"].content == b"aarch64\n"
    assert amd64_files["/arch"].content == b"x86_64\n"
    assert image_config_blob(emulating_farm.registry, tag, ARM64)["architecture"] == "arm64"
    assert image_config_blob(emulating_farm.registry, tag, AMD64)["architecture"] == "amd64"


@pytest.mark.parametrize("platforms", [UNSERVED, f"{AMD64},{UNSERVED}"])
def test_unserved_platform_fails_at_once(farm: FarmHandle, tmp_path: Path, platforms: str) -> None:
    served = {platform for worker in live_workers(farm.redis) for platform in worker["platforms"]}
    assert UNSERVED not in served, "a live worker serves the platform this test expects to be unserved"
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN true\n")
    builds_before = set(farm.redis.scan_iter(match=keys.build("*")))

    # The timeout turns a build that waits for a worker into a failure.
    result = farm.cli(
        "build", "--platform", platforms, "-t", "platforms/unserved:1", str(tmp_path), timeout=60
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"no live worker serves {UNSERVED}" in result.stderr
    for platform in served:
        assert platform in result.stderr
    assert set(farm.redis.scan_iter(match=keys.build("*"))) == builds_before
    assert farm.redis.llen(queue_for(UNSERVED)) == 0
    assert farm.registry.get_manifest("platforms/unserved", "1") is None


def test_route_prefers_native_worker(fleet_redis: redis.Redis) -> None:
    """A stage goes to the `.native` queue while a native worker is live, else to the shared one.

    Native workers serve both queues of their platform and emulating
    workers only the shared one, so sending to `.native` keeps emulating
    workers out whenever a native worker is live.
    """
    record_profile(fleet_redis, "amd64-native")
    emulating = record_profile(fleet_redis, "amd64-emulating-arm64")

    assert route_platform(fleet_redis, ARM64) == queue_for(ARM64)
    assert route_platform(fleet_redis, AMD64) == queue_for(AMD64, native=True)
    require_platforms(fleet_redis, {AMD64, ARM64})

    native = record_profile(fleet_redis, "arm64-native")
    assert route_platform(fleet_redis, ARM64) == queue_for(ARM64, native=True)

    fleet_redis.delete(keys.worker(native["id"]))
    assert route_platform(fleet_redis, ARM64) == queue_for(ARM64)

    fleet_redis.delete(keys.worker(emulating["id"]))
    with pytest.raises(FarmError, match=f"no live worker serves {ARM64}; the live workers serve: {AMD64}"):
        require_platforms(fleet_redis, {ARM64})
