"""How each Buildah mode runs a Buildah command.

`native-chroot` and `native-rootless` run `buildah` directly as the
worker's own user, with storage below the worker's root. `docker-with-fuse`
runs every Buildah command in a fresh container of the runner image
(`workers/runner/Dockerfile`, built by the farm itself) with `/dev/fuse`.
Its storage is a Docker volume per worker, so layers survive between
stages. The context, the stage Dockerfile and the registries.conf reach
the container through bind mounts at the same paths.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import structlog

from .buildah import Buildah, Storage
from .selection import Candidate

log = structlog.get_logger(__name__)

# Storage paths inside the runner container.
_CONTAINER_STORAGE = PurePosixPath("/var/lib/farm-storage")
_CONTAINER_RUN = PurePosixPath("/run/farm-storage")

# Flags for hosts that reject `--privileged` because they lack a
# capability Docker grants with it. They give Buildah every capability
# the host has, no seccomp or AppArmor filter, and /dev/fuse.
PRIVILEGED_FLAGS = ["--privileged", "--device", "/dev/fuse"]
EXPLICIT_CAPABILITY_FLAGS = [
    "--cap-add",
    "ALL",
    "--cap-drop",
    "SYS_RESOURCE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--device",
    "/dev/fuse",
]


class DockerModeError(Exception):
    """The runner container cannot be started."""


@dataclass
class DockerLauncher:
    """Wraps Buildah commands in `docker run` of the runner image."""

    docker: list[str]
    image: str
    volume: str
    mounts: list[tuple[Path, bool]]
    security_flags: list[str] = field(default_factory=lambda: list(PRIVILEGED_FLAGS))

    def wrap(self, command: list[str], env: dict[str, str]) -> list[str]:
        """Return `command` as a `docker run` of the runner image."""
        wrapped = [*self.docker, "run", "--rm", "--network", "host", *self.security_flags]
        wrapped += ["-v", f"{self.volume}:{_CONTAINER_STORAGE}"]
        for path, writable in self.mounts:
            wrapped += ["-v", f"{path}:{path}{'' if writable else ':ro'}"]
        for name, value in sorted(env.items()):
            wrapped += ["-e", f"{name}={value}"]
        return [*wrapped, self.image, *command]

    def prepare(self) -> None:
        """Pull the runner image and find the security flags this Docker host accepts.

        `--privileged` is tried first; where the host refuses it, the
        explicit capability flags are used instead and a warning is logged.

        NOTE: `docker pull` uses the Docker daemon's own credentials and CAs
        (`docker login`, /etc/docker/certs.d), not FARM_REGISTRY_AUTH_FILE or
        FARM_REGISTRY_CA_FILE; only the Buildah commands in the container get those.
        """
        pulled = _docker(self.docker + ["pull", "--quiet", self.image], timeout=600)
        if pulled.returncode != 0:
            raise DockerModeError(
                f"cannot pull the runner image {self.image}: {_last_line(pulled.stderr)}; build and push it "
                f"with: farm build -t {self.image} workers/runner"
            )

        privileged = self._try(PRIVILEGED_FLAGS)
        if privileged is None:
            self.security_flags = list(PRIVILEGED_FLAGS)
            return
        explicit = self._try(EXPLICIT_CAPABILITY_FLAGS)
        if explicit is None:
            log.warning(
                "docker run --privileged rejected by this host; using explicit capabilities instead",
                error=privileged,
                flags=" ".join(EXPLICIT_CAPABILITY_FLAGS),
            )
            self.security_flags = list(EXPLICIT_CAPABILITY_FLAGS)
            return
        raise DockerModeError(
            f"the runner container does not start: with --privileged: {privileged}; "
            f"with explicit capabilities: {explicit}"
        )

    def remove_volume(self) -> None:
        _docker(self.docker + ["volume", "rm", "--force", self.volume], timeout=120)

    def _try(self, flags: list[str]) -> str | None:
        command = [
            *self.docker,
            "run",
            "--rm",
            "--network",
            "host",
            *flags,
            self.image,
            "buildah",
            "--version",
        ]
        result = _docker(command, timeout=300)
        return None if result.returncode == 0 else _last_line(result.stderr)


def make_buildah(
    candidate: Candidate,
    worker_id: str,
    root: Path,
    registries_conf: Path,
    docker: list[str],
    runner_image: str,
    mounts: list[tuple[Path, bool]],
    registry_flags: list[str] | None = None,
) -> Buildah:
    """Return the Buildah runner for `candidate`, with the storage root of its driver.

    `mounts` lists the host paths (and whether they are writable) that
    Buildah reads or writes in docker-with-fuse mode, including the auth
    file and CA directory that `registry_flags` name.
    """
    launcher = None
    storage_root, run_root = (
        root / f"storage-{candidate.storage_name}",
        root / f"run-{candidate.storage_name}",
    )
    if candidate.mode == "docker-with-fuse":
        storage_root = _CONTAINER_STORAGE / candidate.storage_name
        run_root = _CONTAINER_RUN / candidate.storage_name
        launcher = DockerLauncher(
            docker=docker,
            image=runner_image,
            volume=docker_volume(worker_id),
            mounts=[(registries_conf, False), *mounts],
        )

    storage = Storage(
        root=storage_root,
        run_root=run_root,
        driver=candidate.driver,
        mount_program=candidate.mount_program,
    )
    return Buildah(
        storage,
        registries_conf,
        isolation=candidate.isolation,
        runtime=candidate.runtime,
        network=candidate.network,
        launcher=launcher,
        registry_flags=registry_flags,
    )


def docker_volume(worker_id: str) -> str:
    """Return the name of the worker's storage volume (every driver has its own folder in it)."""
    return f"farm-worker-{worker_id}"


def _docker(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(
            command, 1, "", f"{' '.join(command[:3])} timed out after {timeout} s"
        )
    except FileNotFoundError:
        return subprocess.CompletedProcess(command, 1, "", f"{command[0]} not found")


def _last_line(text: str) -> str:
    """Return Docker's error line (`docker: Error response ...`), else the last line of `text`."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    if errors:
        return errors[-1]
    return lines[-1] if lines else "(no output)"
