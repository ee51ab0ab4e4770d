"""The Buildah flags that give a worker's Buildah the farm's registry credentials and CA.

Buildah reads the same auth file as the farm (`--authfile`, see
farm/credentials.py), so pulls of `FROM` images, layer cache pushes and
stage pushes authenticate with the credentials the worker itself uses.
The registry's CA certificate goes into a directory of its own, passed
as `--cert-dir`, because Buildah reads every `*.crt` file there as a CA.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from farm.config import Settings


@dataclass(frozen=True)
class RegistryAccess:
    """Buildah flags for the registry, and the host paths they name (for docker-with-fuse mounts)."""

    flags: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)


def registry_access(settings: Settings, root: Path) -> RegistryAccess:
    """Return the `--authfile` and `--cert-dir` flags for `settings`, copying the CA below `root`."""
    flags: list[str] = []
    paths: list[Path] = []
    if settings.registry_auth_file:
        flags += ["--authfile", str(settings.registry_auth_file)]
        paths.append(settings.registry_auth_file)
    if settings.registry_ca_file:
        cert_dir = root / "registry-certs"
        cert_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(settings.registry_ca_file, cert_dir / "ca.crt")
        flags += ["--cert-dir", str(cert_dir)]
        paths.append(cert_dir)
    return RegistryAccess(flags, paths)
