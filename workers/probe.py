"""Probe the host a worker runs on: what Buildah needs and whether it works here.

Each fact is a `Check`: whether the capability works and the evidence
(the value read, the command run and its error). Capabilities are tried
for real, as the user that will build: a device is opened, a user
namespace is unshared, an overlay is mounted, an OCI runtime starts a
container. Marker files such as `/.dockerenv` are recorded but are not
evidence, because some VMs have them too.

The module imports and runs on macOS and Windows; the Linux-only probes
run only when the host is Linux. A `HostProfile` serialises to JSON, so
profiles recorded on other hosts load with `HostProfile.from_json` and go
through the same selection as a live probe.
"""

from __future__ import annotations

import getpass
import json
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import structlog

from farm.architectures import oci_architecture

log = structlog.get_logger(__name__)

RUNTIMES = ("crun", "runc")
CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv")
PROBE_TIMEOUT_SECONDS = 20


@dataclass
class Check:
    """One probed capability: whether it works, and the evidence for that answer."""

    ok: bool
    evidence: str


@dataclass
class HostProfile:
    """Everything the selection of a Buildah mode and storage driver depends on."""

    os: str
    arch: str
    kernel: str
    user: str
    uid: int | None
    container: Check = field(default_factory=lambda: Check(False, "not probed"))
    container_markers: list[str] = field(default_factory=list)
    max_user_namespaces: int | None = None
    unprivileged_userns_clone: int | None = None
    userns: Check = field(default_factory=lambda: Check(False, "not probed"))
    subids: Check = field(default_factory=lambda: Check(False, "not probed"))
    fuse_device: Check = field(default_factory=lambda: Check(False, "not probed"))
    tun_device: Check = field(default_factory=lambda: Check(False, "not probed"))
    fuse_overlayfs: Check = field(default_factory=lambda: Check(False, "not probed"))
    overlay_mount: Check = field(default_factory=lambda: Check(False, "not probed"))
    runtimes: dict[str, Check] = field(default_factory=dict)
    docker: Check = field(default_factory=lambda: Check(False, "not probed"))
    buildah: Check = field(default_factory=lambda: Check(False, "not probed"))

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    @property
    def kernel_version(self) -> tuple[int, int]:
        """Return (major, minor) of the kernel release, (0, 0) when it cannot be read."""
        numbers = []
        for part in self.kernel.split("-")[0].split(".")[:2]:
            digits = "".join(character for character in part if character.isdigit())
            numbers.append(int(digits) if digits else 0)
        while len(numbers) < 2:
            numbers.append(0)
        return numbers[0], numbers[1]

    @property
    def buildah_version(self) -> str | None:
        return self.buildah.evidence.split()[-1] if self.buildah.ok else None

    def working_runtimes(self) -> list[str]:
        return [name for name, check in self.runtimes.items() if check.ok]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> HostProfile:
        data = dict(data)
        for name in (
            "container",
            "userns",
            "subids",
            "fuse_device",
            "tun_device",
            "fuse_overlayfs",
            "overlay_mount",
            "docker",
            "buildah",
        ):
            if name in data:
                data[name] = Check(**data[name])
        data["runtimes"] = {name: Check(**check) for name, check in data.get("runtimes", {}).items()}
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> HostProfile:
        return cls.from_json(json.loads(path.read_text()))


def probe_host(scratch: Path, docker_command: list[str] | None = None) -> HostProfile:
    """Probe this host as the current user; `scratch` is where test mounts happen.

    `scratch` should be on the file system of the storage roots, because
    overlay cannot use every file system as its upper layer.
    """
    profile = HostProfile(
        os=platform.system().lower(),
        arch=oci_architecture(platform.machine()),
        kernel=platform.release(),
        user=_user_name(),
        uid=os.getuid() if hasattr(os, "getuid") else None,
    )
    profile.docker = probe_docker(docker_command or ["docker"])
    if profile.os != "linux":
        reason = f"not probed: {profile.os} is not Linux"
        for name in ("container", "userns", "subids", "fuse_device", "tun_device", "overlay_mount"):
            setattr(profile, name, Check(False, reason))
        profile.fuse_overlayfs = Check(False, reason)
        profile.buildah = Check(False, reason)
        return profile

    profile.container, profile.container_markers = probe_container()
    profile.max_user_namespaces = _read_int("/proc/sys/user/max_user_namespaces")
    profile.unprivileged_userns_clone = _read_int("/proc/sys/kernel/unprivileged_userns_clone")
    profile.userns = probe_userns(profile.max_user_namespaces, profile.unprivileged_userns_clone)
    profile.subids = probe_subids(profile.user, profile.uid)
    profile.fuse_device = probe_device("/dev/fuse", profile.user)
    profile.tun_device = probe_device("/dev/net/tun", profile.user)
    profile.fuse_overlayfs = probe_binary("fuse-overlayfs")
    scratch.mkdir(parents=True, exist_ok=True)
    profile.overlay_mount = probe_overlay_mount(scratch, rootless=not profile.is_root)
    profile.runtimes = {name: probe_runtime(name, scratch, rootless=not profile.is_root) for name in RUNTIMES}
    profile.buildah = probe_buildah()
    return profile


def probe_container() -> tuple[Check, list[str]]:
    """Return whether this is a container, judged by namespaces rather than marker files.

    The evidence is kernel state a container cannot hide: the kernel
    thread daemon (PID 2, kthreadd) is visible only in the initial PID
    namespace, and the initial user namespace maps the full 32-bit range.
    """
    markers = [marker for marker in CONTAINER_MARKERS if os.path.exists(marker)]
    pid_two = _read_text("/proc/2/status").splitlines()[:1]
    initial_pid_namespace = pid_two == ["Name:\tkthreadd"]
    uid_map = _read_text("/proc/self/uid_map").split()
    initial_user_namespace = uid_map == ["0", "0", "4294967295"]

    facts = [
        "kthreadd visible as PID 2" if initial_pid_namespace else "no kthreadd at PID 2 (own PID namespace)",
        "initial user namespace"
        if initial_user_namespace
        else f"uid_map {' '.join(uid_map) or 'unreadable'}",
    ]
    if markers:
        facts.append(f"markers {', '.join(markers)} present (not evidence)")
    in_container = not (initial_pid_namespace and initial_user_namespace)
    return Check(in_container, "; ".join(facts)), markers


def probe_userns(max_namespaces: int | None, unprivileged_clone: int | None) -> Check:
    """Unshare a user namespace for real; the sysctls explain a failure."""
    settings = [f"user.max_user_namespaces={max_namespaces}"]
    if unprivileged_clone is not None:
        settings.append(f"kernel.unprivileged_userns_clone={unprivileged_clone}")
    result = _run(["unshare", "--user", "--map-root-user", "true"])
    if result.ok:
        return Check(True, f"unshare --user works; {', '.join(settings)}")
    return Check(False, f"unshare --user failed: {result.evidence}; {', '.join(settings)}")


def probe_subids(user: str, uid: int | None) -> Check:
    """Return the user's ranges in /etc/subuid and /etc/subgid (needed only when not root)."""
    if uid == 0:
        return Check(True, "root needs no subordinate ids")
    found = {}
    for name in ("subuid", "subgid"):
        ranges = []
        for line in _read_text(f"/etc/{name}").splitlines():
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[0] in (user, str(uid)):
                ranges.append(f"{parts[1]}+{parts[2]}")
        found[name] = ranges
    evidence = "; ".join(f"/etc/{name}: {', '.join(ranges) or 'no range'}" for name, ranges in found.items())
    return Check(bool(found["subuid"] and found["subgid"]), f"{evidence} for {user}")


def probe_device(path: str, user: str) -> Check:
    """Open `path` read-write as this process's user, which is the user that builds."""
    try:
        descriptor = os.open(path, os.O_RDWR)
    except OSError as error:
        return Check(False, f"{path} cannot be opened by user {user}: {error.strerror}")
    os.close(descriptor)
    return Check(True, f"{path} opens read-write for user {user}")


def probe_binary(name: str) -> Check:
    path = shutil.which(name)
    return Check(True, path) if path else Check(False, f"{name} not found on PATH")


def probe_overlay_mount(scratch: Path, rootless: bool) -> Check:
    """Mount a test overlay in a private mount namespace (and a user namespace when not root).

    The namespace ends with the `mount` process, so nothing stays mounted.
    """
    with tempfile.TemporaryDirectory(prefix="probe-overlay-", dir=scratch) as directory:
        base = Path(directory)
        for name in ("lower", "upper", "work", "merged"):
            (base / name).mkdir()
        options = f"lowerdir={base / 'lower'},upperdir={base / 'upper'},workdir={base / 'work'}"
        command = ["unshare", "--mount", "--propagation", "private"]
        if rootless:
            command += ["--user", "--map-root-user"]
        command += ["mount", "-t", "overlay", "overlay", "-o", options, str(base / "merged")]
        result = _run(command)
    where = "in a user namespace" if rootless else "as root"
    if result.ok:
        return Check(True, f"test overlay mount {where} works on {scratch}")
    return Check(False, f"test overlay mount {where} failed on {scratch}: {result.evidence}")


def probe_runtime(name: str, scratch: Path, rootless: bool) -> Check:
    """Start a container with OCI runtime `name` and run `true` in it.

    The bundle's root file system is an empty directory with the host's
    /usr, /bin, /lib and /sbin bind-mounted read-only, so no image is needed.
    """
    binary = shutil.which(name)
    if binary is None:
        return Check(False, f"{name} not found on PATH")
    with tempfile.TemporaryDirectory(prefix=f"probe-{name}-", dir=scratch) as directory:
        bundle = Path(directory)
        spec = ["spec", "--rootless"] if rootless else ["spec"]
        made = _run([binary, *spec], cwd=bundle)
        if not made.ok:
            return Check(False, f"{name} spec failed: {made.evidence}")
        _prepare_bundle(bundle)
        state = bundle / "state"
        state.mkdir()
        container_id = f"farm-probe-{os.getpid()}"
        result = _run([binary, "--root", str(state), "run", "--bundle", str(bundle), container_id])
        _run([binary, "--root", str(state), "delete", "--force", container_id])
    if result.ok:
        return Check(True, f"{binary} started a container")
    return Check(False, f"{binary} could not start a container: {result.evidence}")


def probe_docker(command: list[str]) -> Check:
    """Ask the Docker daemon for its version; DOCKER_HOST chooses the daemon as for `docker`."""
    if shutil.which(command[0]) is None:
        return Check(False, f"{command[0]} not found on PATH")
    result = _run([*command, "version", "--format", "{{.Server.Version}}"])
    if result.ok:
        return Check(True, f"Docker daemon {result.output.strip()} reachable")
    return Check(False, f"Docker daemon not reachable: {result.evidence}")


def probe_buildah() -> Check:
    if shutil.which("buildah") is None:
        return Check(False, "buildah not found on PATH; install the buildah package")
    result = _run(["buildah", "--version"])
    if not result.ok:
        return Check(False, f"buildah --version failed: {result.evidence}")
    # `buildah version 1.28.2 (image-spec ...)`: keep the version number last.
    words = result.output.split()
    version = words[2] if len(words) > 2 else result.output.strip()
    return Check(True, f"buildah {version}")


def _prepare_bundle(bundle: Path) -> None:
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    rootfs = bundle / "rootfs"
    rootfs.mkdir()
    config["root"] = {"path": str(rootfs), "readonly": True}
    config["process"]["args"] = ["true"]
    config["process"]["terminal"] = False
    config["process"]["env"] = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    for name in ("usr", "bin", "sbin", "lib", "lib32", "lib64"):
        host = Path("/") / name
        if host.is_symlink():
            (rootfs / name).symlink_to(os.readlink(host))
        elif host.is_dir():
            (rootfs / name).mkdir()
            config["mounts"].append(
                {"destination": f"/{name}", "type": "bind", "source": str(host), "options": ["rbind", "ro"]}
            )
    config_path.write_text(json.dumps(config))


@dataclass
class _Result:
    ok: bool
    output: str
    evidence: str


def _run(command: list[str], cwd: Path | None = None) -> _Result:
    try:
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            errors="replace",
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            timeout=PROBE_TIMEOUT_SECONDS,
            check=False,
        )
    except FileNotFoundError:
        return _Result(False, "", f"{command[0]} not found")
    except subprocess.TimeoutExpired:
        return _Result(False, "", f"{' '.join(command[:2])} timed out after {PROBE_TIMEOUT_SECONDS} s")
    if completed.returncode == 0:
        return _Result(True, completed.stdout, "exit 0")
    message = (completed.stderr.strip() or completed.stdout.strip())[-500:]
    return _Result(False, completed.stdout, f"exit {completed.returncode}: {message}")


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError, ImportError):
        # Windows has no pwd module when USERNAME is unset.
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _read_int(path: str) -> int | None:
    text = _read_text(path).strip()
    return int(text) if text.lstrip("-").isdigit() else None
