"""Pick a storage driver that works on this host, proven by a real mount.

Each driver gets its own storage root, so switching drivers never makes
one read the other's layers.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import structlog

from .buildah import Buildah, BuildahError, Storage

log = structlog.get_logger(__name__)

DRIVERS = ("overlay", "vfs")


def storage_for(worker_root: Path, driver: str) -> Storage:
    """Return the storage layout of `driver` below `worker_root`."""
    return Storage(
        root=worker_root / f"storage-{driver}", run_root=worker_root / f"run-{driver}", driver=driver
    )


def check_storage(storage: Storage, registries_conf: Path) -> str | None:
    """Mount and unmount an empty working container; return the error, or None when it works."""
    buildah = Buildah(storage, registries_conf)
    try:
        container = buildah.run("from", "scratch").strip()
        try:
            buildah.run("mount", container)
            buildah.run("umount", container)
        finally:
            buildah.run("rm", container)
    except (BuildahError, subprocess.TimeoutExpired, OSError) as error:
        return str(error)
    return None


def choose_storage(worker_root: Path, registries_conf: Path, requested: str = "auto") -> Storage:
    """Return the first driver (overlay, then vfs) whose check passes.

    With `requested` set to a driver, only that one is tried. Raises
    RuntimeError naming every driver tried and why it failed.
    """
    candidates = DRIVERS if requested == "auto" else (requested,)
    reasons = []
    for driver in candidates:
        storage = storage_for(worker_root, driver)
        error = check_storage(storage, registries_conf)
        if error is None:
            log.info("storage driver selected", driver=driver, root=str(storage.root))
            return storage
        log.warning("storage driver rejected", driver=driver, reason=error)
        reasons.append(f"{driver}: {error}")
    raise RuntimeError("no storage driver works here: " + "; ".join(reasons))
