"""Choose a Buildah mode and storage driver from a host profile.

`select_candidates` is a pure function of a `HostProfile` and the
requested mode, driver and overlay mount. It returns the candidates in
the order they should be tried, and every candidate the probe ruled out
with the probe result that ruled it out. The worker then proves the
first candidate with a real build and moves on to the next when that
build fails.

Isolation, OCI runtime and network are part of every candidate, so the
worker always passes them to Buildah rather than relying on its defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from farm.errors import FarmError

from .probe import HostProfile

MODES = ("native-chroot", "native-rootless", "docker-with-fuse")
DRIVERS = ("overlay", "vfs")
OVERLAY_MOUNTS = ("kernel", "fuse-overlayfs")

# Kernel overlayfs can be mounted in a user namespace from Linux 5.11.
ROOTLESS_OVERLAY_KERNEL = (5, 11)

# The runner image installs Debian's fuse-overlayfs there.
RUNNER_FUSE_OVERLAYFS = "/usr/bin/fuse-overlayfs"


class SelectionError(FarmError):
    """A requested mode or storage driver cannot work on this host."""


@dataclass(frozen=True)
class Candidate:
    """One way to run Buildah: mode, storage driver and the flags that go with them.

    `mount_program` is set for overlay through fuse-overlayfs. `runtime` is
    None with chroot isolation, which runs no OCI runtime.
    """

    mode: str
    driver: str
    mount_program: str | None
    isolation: str
    runtime: str | None
    network: str

    @property
    def driver_label(self) -> str:
        """Return `overlay`, `overlay (fuse-overlayfs)` or `vfs`."""
        return f"{self.driver} (fuse-overlayfs)" if self.mount_program else self.driver

    @property
    def storage_name(self) -> str:
        """Return the name of this driver's storage root: each driver gets its own."""
        return "overlay-fuse" if self.mount_program else self.driver

    @property
    def label(self) -> str:
        runtime = f", runtime {self.runtime}" if self.runtime else ""
        return (
            f"{self.mode} on {self.driver_label} "
            f"(isolation {self.isolation}{runtime}, network {self.network})"
        )

    def to_json(self) -> dict:
        return {**asdict(self), "label": self.label}


@dataclass(frozen=True)
class Rejection:
    """A mode, driver or candidate that was ruled out, and why."""

    candidate: str
    reason: str


@dataclass
class Selection:
    """Candidates to prove in order, and what was ruled out before any build."""

    candidates: list[Candidate]
    rejected: list[Rejection]

    def to_json(self) -> dict:
        return {
            "candidates": [candidate.to_json() for candidate in self.candidates],
            "rejected": [asdict(rejection) for rejection in self.rejected],
        }


def select_candidates(
    profile: HostProfile, mode: str = "auto", driver: str = "auto", overlay_mount: str = "auto"
) -> Selection:
    """Return the candidates for `profile`, best first, and the rejected ones with reasons.

    Raises SelectionError when an explicitly requested mode, driver or
    overlay mount cannot work here, naming what is missing and how to fix it.
    """
    _check_value("FARM_BUILDAH_MODE", mode, MODES)
    _check_value("FARM_BUILDAH_STORAGE_DRIVER", driver, DRIVERS)
    _check_value("FARM_BUILDAH_OVERLAY_MOUNT", overlay_mount, OVERLAY_MOUNTS)

    if overlay_mount != "auto" and driver == "auto":
        # Asking for a way to mount overlay asks for the overlay driver.
        driver = "overlay"

    rejected: list[Rejection] = []
    modes = []
    for name in _mode_order(profile) if mode == "auto" else [mode]:
        reason = mode_unavailable(profile, name)
        if reason is None:
            modes.append(name)
        else:
            rejected.append(Rejection(name, reason))
    if mode != "auto" and not modes:
        raise SelectionError(f"FARM_BUILDAH_MODE={mode} cannot work here: {rejected[-1].reason}")

    if "native-rootless" in modes:
        for runtime, check in profile.runtimes.items():
            if not check.ok:
                rejected.append(
                    Rejection(f"native-rootless with isolation rootless, runtime {runtime}", check.evidence)
                )

    candidates = []
    for name in modes:
        for storage in _storage_options(profile, name, driver, overlay_mount, rejected):
            candidates += _isolation_options(profile, name, *storage)

    if not candidates and (driver != "auto" or overlay_mount != "auto"):
        requested = driver if overlay_mount == "auto" else f"{driver} with {overlay_mount} mounts"
        reasons = "; ".join(f"{r.candidate}: {r.reason}" for r in rejected)
        raise SelectionError(f"storage driver {requested} cannot work here: {reasons}")
    return Selection(candidates, rejected)


def mode_unavailable(profile: HostProfile, mode: str) -> str | None:
    """Return why `mode` cannot work on `profile`, with the fix, or None when it may."""
    if mode == "docker-with-fuse":
        if not profile.docker.ok:
            return f"{profile.docker.evidence}; start Docker or set DOCKER_HOST to a reachable daemon"
        return None

    if profile.os != "linux":
        return f"Buildah runs natively only on Linux and this host is {profile.os}; use docker-with-fuse"
    if not profile.buildah.ok:
        return profile.buildah.evidence

    if mode == "native-chroot":
        if profile.is_root:
            return None
        if not profile.container.ok:
            return (
                f"needs root outside a container and runs as user {profile.user} (uid {profile.uid}); "
                "run farm-worker as root, or use native-rootless"
            )
        # Buildah run by another user enters a user namespace even for chroot isolation.
        return _user_namespace_problem(profile)

    if profile.is_root:
        return "runs as root; native-rootless is for a non-root build user (run farm-worker as that user)"
    return _user_namespace_problem(profile)


def _user_namespace_problem(profile: HostProfile) -> str | None:
    if not profile.userns.ok:
        fix = "enable user namespaces (sysctl user.max_user_namespaces=15000"
        if profile.unprivileged_userns_clone is not None:
            fix += ", kernel.unprivileged_userns_clone=1"
        fix += "; in a container, allow unshare in its seccomp profile)"
        return f"user namespaces do not work for user {profile.user}: {profile.userns.evidence}; {fix}"
    if not profile.subids.ok:
        return (
            f"no subordinate id ranges: {profile.subids.evidence}; "
            f"add them with usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {profile.user}"
        )
    return None


def _mode_order(profile: HostProfile) -> list[str]:
    if profile.os != "linux":
        return ["docker-with-fuse", "native-chroot", "native-rootless"]
    if profile.is_root or profile.container.ok:
        return ["native-chroot", "native-rootless", "docker-with-fuse"]
    return ["native-rootless", "native-chroot", "docker-with-fuse"]


def _storage_options(
    profile: HostProfile, mode: str, driver: str, overlay_mount: str, rejected: list[Rejection]
) -> list[tuple[str, str | None]]:
    """Return (driver, mount program) pairs for `mode`, best first, recording the rejected ones."""
    if driver == "vfs":
        return [("vfs", None)]
    mounts = OVERLAY_MOUNTS if overlay_mount == "auto" else (overlay_mount,)
    options = []
    for mount in mounts:
        reason = _overlay_unavailable(profile, mode, mount)
        if reason is None:
            program = _mount_program(profile, mode) if mount == "fuse-overlayfs" else None
            options.append(("overlay", program))
        else:
            label = "overlay" if mount == "kernel" else "overlay (fuse-overlayfs)"
            rejected.append(Rejection(f"{mode} on {label}", reason))
    if driver == "auto":
        options.append(("vfs", None))
    return options


def _overlay_unavailable(profile: HostProfile, mode: str, mount: str) -> str | None:
    if mode == "docker-with-fuse":
        # Overlay support inside the runner container cannot be probed from
        # the host (on a Mac it is Docker's VM kernel): the proof build decides.
        return None
    if mount == "kernel":
        if not profile.is_root and profile.kernel_version < ROOTLESS_OVERLAY_KERNEL:
            return (
                f"kernel {profile.kernel} cannot mount overlayfs in a user namespace "
                "(needs Linux 5.11 or later); use fuse-overlayfs or vfs"
            )
        if not profile.overlay_mount.ok:
            return profile.overlay_mount.evidence
        return None
    if not profile.fuse_device.ok:
        return (
            f"{profile.fuse_device.evidence}; add --device /dev/fuse (in a container) "
            "or chmod it so the build user can open it (chmod 0666 /dev/fuse)"
        )
    if not profile.fuse_overlayfs.ok:
        return f"{profile.fuse_overlayfs.evidence}; install the fuse-overlayfs package"
    return None


def _mount_program(profile: HostProfile, mode: str) -> str:
    return RUNNER_FUSE_OVERLAYFS if mode == "docker-with-fuse" else profile.fuse_overlayfs.evidence


def _isolation_options(
    profile: HostProfile,
    mode: str,
    driver: str,
    mount_program: str | None,
) -> list[Candidate]:
    """Return the candidates of one mode and driver, one per isolation to try.

    Chroot isolation shares the host network and rejects any other, so
    every candidate uses host networking; it also reaches a registry on
    the host's loopback address.
    """
    chroot = Candidate(mode, driver, mount_program, "chroot", None, "host")
    if mode != "native-rootless":
        return [chroot]
    # Rootless isolation runs an OCI runtime. crun fails on hosts whose
    # cgroup2 mount still holds controllers while runc works, so only the
    # runtimes that started a container in the probe are offered.
    runtimes = profile.working_runtimes()
    candidates = [Candidate(mode, driver, mount_program, "rootless", runtime, "host") for runtime in runtimes]
    return candidates + [chroot]


def _check_value(variable: str, value: str, allowed: tuple[str, ...]) -> None:
    if value != "auto" and value not in allowed:
        raise SelectionError(f"invalid {variable} value {value!r}: expected auto, {', '.join(allowed)}")
