"""Run Buildah with a worker's own storage and explicit isolation.

Every invocation passes the storage root, run root and driver as global
flags (before the verb), and every build passes the isolation, OCI
runtime and network explicitly, so that the host's defaults never decide
how a stage is built. A launcher (see workers/modes.py) may wrap each
command, for example in `docker run`.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Protocol

import psutil
import structlog

log = structlog.get_logger(__name__)

_STEP = re.compile(r"^(?:\[\d+/\d+\] )?STEP (\d+)/(\d+): (.*)$")
_OUTPUT_LINES_KEPT = 400
_TRANSIENT_MARKERS = ("sealing memfd copy",)


@dataclass(frozen=True)
class Storage:
    """A worker's image storage: its root, run root and storage driver."""

    root: PurePath
    run_root: PurePath
    driver: str
    mount_program: str | None = None

    def global_flags(self) -> list[str]:
        flags = ["--root", str(self.root), "--runroot", str(self.run_root), "--storage-driver", self.driver]
        if self.mount_program:
            flags += ["--storage-opt", f"overlay.mount_program={self.mount_program}"]
        return flags


@dataclass
class BuildOutput:
    """The result of one `buildah bud`: exit code, last step and output tail."""

    returncode: int
    last_step: int | None = None
    last_step_text: str | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def transient_error(self) -> str | None:
        """Return the output line of a known transient Buildah failure, worth one more try, or None.

        Seen with Buildah 1.28 and chroot isolation on a loaded host:
        "Close_Fd sealing memfd copy: Device or resource busy" before a RUN.
        """
        for line in self.lines:
            if any(marker in line for marker in _TRANSIENT_MARKERS):
                return line
        return None

    @property
    def error_line(self) -> str | None:
        """Return Buildah's last `Error: ...` line, the reason it gives for failing."""
        for line in reversed(self.lines):
            if line.startswith("Error: ") or line.startswith("error "):
                return line
        return None


def leftover_mounts(root: PurePath) -> list[str]:
    """Return the mount points below a storage root (not the root itself) in this mount namespace.

    The overlay driver mounts its root on itself; anything deeper is a
    working container or layer still mounted.
    NOTE: in docker-with-fuse mode the storage is mounted inside the
    runner container, so this sees nothing there.
    """
    prefix = str(root).rstrip("/") + "/"
    return sorted(
        {part.mountpoint for part in psutil.disk_partitions(all=True) if part.mountpoint.startswith(prefix)}
    )


class BuildahError(Exception):
    """A Buildah command other than the build itself failed."""


class Launcher(Protocol):
    """Turns a Buildah command line into the command that runs it somewhere else."""

    def wrap(self, command: list[str], env: dict[str, str]) -> list[str]: ...


class Buildah:
    """Buildah commands bound to one storage configuration, isolation, runtime and network.

    `runtime` is None for chroot isolation, which runs no OCI runtime.
    `registry_flags` (`--authfile`, `--cert-dir`) go to every verb that
    talks to a registry: `bud` and `push`.
    """

    def __init__(
        self,
        storage: Storage,
        registries_conf: Path,
        isolation: str = "chroot",
        runtime: str | None = None,
        network: str = "host",
        launcher: Launcher | None = None,
        registry_flags: list[str] | None = None,
    ) -> None:
        self.storage = storage
        self.registry_flags = list(registry_flags or [])
        self.registries_conf = registries_conf
        self.isolation = isolation
        self.runtime = runtime
        self.network = network
        self.launcher = launcher

    def build(
        self,
        dockerfile: Path,
        context: Path,
        image: str,
        build_args: dict[str, str],
        platform: str | None = None,
        layer_cache: str | None = None,
        no_cache: bool = False,
        on_line: Callable[[str], None] | None = None,
        on_start: Callable[[subprocess.Popen], None] | None = None,
        secrets: dict[str, Path] | None = None,
    ) -> BuildOutput:
        """Build `dockerfile` in `context` and tag the result `image`.

        With `layer_cache` (a repository), each step's layer is looked up
        there before it runs and pushed there after, so any worker can
        reuse the steps another one built. With `no_cache` every step runs
        again, and only the push to `layer_cache` remains. `on_start`
        receives the Buildah process as soon as it runs, so a caller can
        stop it. `secrets` maps secret ids to the files
        `RUN --mount=type=secret,id=ID` reads.
        """
        command = [*self._base(), "bud", *self.isolation_flags(), *self.registry_flags]
        command += ["-f", str(dockerfile), "-t", image]
        if platform:
            command += ["--platform", platform]
        if layer_cache and no_cache:
            command += ["--layers", "--no-cache", "--cache-to", layer_cache]
        elif layer_cache:
            command += ["--layers", "--cache-from", layer_cache, "--cache-to", layer_cache]
        elif no_cache:
            command += ["--no-cache"]
        for name, value in sorted(build_args.items()):
            command += ["--build-arg", f"{name}={value}"]
        for secret_id, path in sorted((secrets or {}).items()):
            command += ["--secret", f"id={secret_id},src={path}"]
        command.append(str(context))
        return self._stream(command, on_line, on_start)

    def isolation_flags(self) -> list[str]:
        """Return the isolation, runtime and network flags of `bud` and `run`."""
        flags = ["--isolation", self.isolation]
        if self.runtime:
            flags += ["--runtime", self.runtime]
        return [*flags, "--network", self.network]

    def push(self, image: str, digest_file: Path, compression: str = "gzip") -> str:
        """Push `image` to its registry and return the manifest digest.

        `compression` is `gzip` or `zstd`; every Buildah and container
        engine in use must be able to read what it produces. There is no
        uncompressed choice, because Buildah compresses every layer it
        pushes to a registry: with Buildah 1.28, `--disable-compression`
        still produced gzip layers (measured by bench/push_cost.py).
        """
        self.run(
            "push",
            "--compression-format",
            compression,
            *self.registry_flags,
            "--digestfile",
            str(digest_file),
            image,
            f"docker://{image}",
        )
        return digest_file.read_text().strip()

    def run(self, *arguments: str, timeout: float = 600) -> str:
        """Run one Buildah verb and return its standard output; raise BuildahError on failure."""
        command = self._wrap([*self._base(), *arguments])
        completed = subprocess.run(
            command, capture_output=True, text=True, env=self._env(), timeout=timeout, check=False
        )
        if completed.returncode != 0:
            raise BuildahError(
                f"buildah {arguments[0]} failed (exit {completed.returncode}): {completed.stderr.strip()[-2000:]}"
            )
        return completed.stdout

    def remove_containers(self) -> None:
        """Remove every working container, which also releases their mounts."""
        try:
            self.run("rm", "--all", timeout=120)
        except (BuildahError, subprocess.TimeoutExpired) as error:
            log.warning("buildah cleanup failed", error=str(error))

    def _base(self) -> list[str]:
        return ["buildah", *self.storage.global_flags()]

    def _buildah_env(self) -> dict[str, str]:
        return {"CONTAINERS_REGISTRIES_CONF": str(self.registries_conf)}

    def _env(self) -> dict[str, str]:
        if self.launcher:
            return dict(os.environ)
        return {**os.environ, **self._buildah_env()}

    def _wrap(self, command: list[str]) -> list[str]:
        return self.launcher.wrap(command, self._buildah_env()) if self.launcher else command

    def _stream(
        self,
        command: list[str],
        on_line: Callable[[str], None] | None,
        on_start: Callable[[subprocess.Popen], None] | None = None,
    ) -> BuildOutput:
        output = BuildOutput(returncode=-1)
        kept: deque[str] = deque(maxlen=_OUTPUT_LINES_KEPT)
        process = subprocess.Popen(
            self._wrap(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=self._env(),
        )
        assert process.stdout is not None
        if on_start:
            on_start(process)
        for raw in process.stdout:
            line = raw.rstrip("\n")
            kept.append(line)
            step = _STEP.match(line)
            if step:
                output.last_step, output.last_step_text = int(step.group(1)), step.group(3)
            if on_line:
                on_line(line)
        output.returncode = process.wait()
        output.lines = list(kept)
        return output
