"""Mode and driver selection for hosts recorded as profiles (a Mac, old kernels, containers).

The profiles in host_profiles/ are `farm-worker --probe --json` documents
of hosts this machine cannot be; they go through the same selection as a
live probe.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workers.probe import HostProfile
from workers.selection import SelectionError, select_candidates

PROFILES = Path(__file__).parent / "host_profiles"

# profile, expected choice, (rejected candidate, words of its reason)...
EXPECTED = [
    (
        "macos-apple-silicon",
        "docker-with-fuse on overlay (isolation chroot, network host)",
        [
            ("native-chroot", "Buildah runs natively only on Linux and this host is darwin"),
            ("native-rootless", "Buildah runs natively only on Linux and this host is darwin"),
        ],
    ),
    (
        "linux-5.4-nonroot",
        "native-rootless on overlay (fuse-overlayfs) (isolation rootless, runtime crun, network host)",
        [
            (
                "native-rootless on overlay",
                "kernel 5.4.0-182-generic cannot mount overlayfs in a user namespace",
            ),
            ("native-chroot", "needs root outside a container and runs as user builder (uid 1000)"),
        ],
    ),
    (
        "linux-5.4-nonroot-no-fuse",
        "native-rootless on vfs (isolation rootless, runtime crun, network host)",
        [
            ("native-rootless on overlay", "needs Linux 5.11 or later"),
            (
                "native-rootless on overlay (fuse-overlayfs)",
                "/dev/fuse cannot be opened by user builder: No such file or directory; add --device /dev/fuse",
            ),
        ],
    ),
    (
        "userns-disabled-by-sysctl",
        "docker-with-fuse on overlay (isolation chroot, network host)",
        [
            ("native-rootless", "kernel.unprivileged_userns_clone=0"),
            ("native-rootless", "user namespaces do not work for user builder"),
            ("native-chroot", "needs root outside a container"),
        ],
    ),
    (
        "container-no-fuse-seccomp",
        "native-chroot on vfs (isolation chroot, network host)",
        [
            ("native-chroot on overlay", "test overlay mount as root failed"),
            ("native-chroot on overlay (fuse-overlayfs)", "/dev/fuse cannot be opened by user root"),
            ("native-rootless", "runs as root"),
            ("docker-with-fuse", "Docker daemon not reachable"),
        ],
    ),
    (
        "crun-fails-runc-works",
        "native-rootless on overlay (isolation rootless, runtime runc, network host)",
        [("native-rootless with isolation rootless, runtime crun", "cgroups in hybrid mode not supported")],
    ),
    (
        "vm-with-dockerenv",
        "native-rootless on overlay (isolation rootless, runtime runc, network host)",
        [("docker-with-fuse", "Docker daemon not reachable")],
    ),
]


def _profile(name: str) -> HostProfile:
    return HostProfile.load(PROFILES / f"{name}.json")


@pytest.mark.parametrize(("name", "choice", "rejections"), EXPECTED, ids=[case[0] for case in EXPECTED])
def test_recorded_profile_selection(name: str, choice: str, rejections: list[tuple[str, str]]) -> None:
    selection = select_candidates(_profile(name))

    assert selection.candidates[0].label == choice
    reasons = {}
    for rejection in selection.rejected:
        reasons.setdefault(rejection.candidate, []).append(rejection.reason)
    for candidate, words in rejections:
        assert candidate in reasons, f"{candidate} not rejected; rejected: {sorted(reasons)}"
        assert any(words in reason for reason in reasons[candidate]), reasons[candidate]


def test_every_profile_has_a_case() -> None:
    recorded = {path.stem for path in PROFILES.glob("*.json")}

    assert recorded == {case[0] for case in EXPECTED}


def test_dockerenv_marker_is_not_a_container() -> None:
    profile = _profile("vm-with-dockerenv")

    assert profile.container_markers == ["/.dockerenv"]
    assert not profile.container.ok
    assert "not evidence" in profile.container.evidence


def test_candidates_fall_back_in_order() -> None:
    labels = [
        candidate.label for candidate in select_candidates(_profile("crun-fails-runc-works")).candidates
    ]

    assert labels == [
        "native-rootless on overlay (isolation rootless, runtime runc, network host)",
        "native-rootless on overlay (isolation chroot, network host)",
        "native-rootless on overlay (fuse-overlayfs) (isolation rootless, runtime runc, network host)",
        "native-rootless on overlay (fuse-overlayfs) (isolation chroot, network host)",
        "native-rootless on vfs (isolation rootless, runtime runc, network host)",
        "native-rootless on vfs (isolation chroot, network host)",
    ]


def test_explicit_fuse_overlay_without_device_fails() -> None:
    with pytest.raises(SelectionError) as raised:
        select_candidates(
            _profile("container-no-fuse-seccomp"), driver="overlay", overlay_mount="fuse-overlayfs"
        )

    message = str(raised.value)
    assert "/dev/fuse cannot be opened by user root" in message
    assert "add --device /dev/fuse" in message
    assert "chmod" in message


def test_explicit_native_mode_on_mac_fails() -> None:
    with pytest.raises(SelectionError) as raised:
        select_candidates(_profile("macos-apple-silicon"), mode="native-chroot")

    assert "FARM_BUILDAH_MODE=native-chroot cannot work here" in str(raised.value)
    assert "use docker-with-fuse" in str(raised.value)


def test_explicit_rootless_without_subids_fails() -> None:
    profile = _profile("vm-with-dockerenv")
    profile.subids.ok = False
    profile.subids.evidence = "/etc/subuid: no range; /etc/subgid: no range for builder"

    with pytest.raises(SelectionError) as raised:
        select_candidates(profile, mode="native-rootless")

    assert "no subordinate id ranges" in str(raised.value)
    assert "usermod --add-subuids" in str(raised.value)


def test_explicit_vfs_keeps_mode_order() -> None:
    selection = select_candidates(_profile("linux-5.4-nonroot"), driver="vfs")

    assert {candidate.driver for candidate in selection.candidates} == {"vfs"}
    assert selection.candidates[0].mode == "native-rootless"


def test_invalid_mode_value_fails() -> None:
    with pytest.raises(SelectionError) as raised:
        select_candidates(_profile("vm-with-dockerenv"), mode="podman")

    assert "invalid FARM_BUILDAH_MODE value 'podman'" in str(raised.value)


def test_profile_json_round_trip() -> None:
    profile = _profile("crun-fails-runc-works")

    assert HostProfile.from_json(json.loads(json.dumps(profile.to_json()))) == profile


def _farm_worker(*arguments: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("farm-worker")), *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_probe_command_reads_recorded_profile() -> None:
    result = _farm_worker("--probe", "--profile", str(PROFILES / "macos-apple-silicon.json"))

    assert result.returncode == 0, result.stderr
    assert "host: darwin/arm64, kernel 23.4.0" in result.stdout
    assert "choice: docker-with-fuse on overlay (isolation chroot, network host)" in result.stdout
    assert "  native-chroot: Buildah runs natively only on Linux" in result.stdout


def test_probe_command_json_for_recorded_profile() -> None:
    result = _farm_worker("--probe", "--json", "--profile", str(PROFILES / "container-no-fuse-seccomp.json"))

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["choice"]["mode"] == "native-chroot"
    assert document["choice"]["driver"] == "vfs"
    assert document["profile"]["container"]["ok"] is True
    rejected = {rejection["candidate"] for rejection in document["rejected"]}
    assert "native-chroot on overlay (fuse-overlayfs)" in rejected


def test_probe_command_explicit_mode_error() -> None:
    result = _farm_worker(
        "--probe", "--mode", "native-rootless", "--profile", str(PROFILES / "container-no-fuse-seccomp.json")
    )

    assert result.returncode == 1
    assert "error: FARM_BUILDAH_MODE=native-rootless cannot work here: runs as root" in result.stdout


# Imports the worker package and runs the probe with the Linux- and
# POSIX-only parts of the standard library taken away, as on Windows.
# Celery picks its own platform code by sys.platform, so it is imported first.
_FOREIGN_HOST = """
import json, os, platform, sys, tempfile
import celery.app.base, celery.worker, celery.concurrency.thread
sys.modules["fcntl"] = None
sys.modules["pwd"] = None
platform.system = lambda: {system!r}
platform.machine = lambda: {machine!r}
for name in ("getuid", "geteuid", "getgid"):
    if hasattr(os, name):
        delattr(os, name)
import workers.main, workers.probe, workers.context_cache, workers.modes, workers.proof
from workers.selection import select_candidates
profile = workers.probe.probe_host(__import__("pathlib").Path(tempfile.mkdtemp()), ["farm-no-such-docker"])
print(json.dumps({{"profile": profile.to_json(), "rejected": [r.reason for r in select_candidates(profile).rejected]}}))
"""


@pytest.mark.parametrize(("system", "machine"), [("Windows", "AMD64"), ("Darwin", "arm64")])
def test_probe_runs_without_linux(system: str, machine: str) -> None:
    script = _FOREIGN_HOST.format(system=system, machine=machine)

    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["profile"]["os"] == system.lower()
    assert document["profile"]["uid"] is None
    assert document["profile"]["userns"]["evidence"] == f"not probed: {system.lower()} is not Linux"
    assert any("farm-no-such-docker not found" in reason for reason in document["rejected"])
