"""Build contexts fetched from the registry and kept by digest.

A context is downloaded and unpacked once per worker; later stages of
any build that use the same context digest reuse the unpacked copy.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import structlog

from farm.context import unpack_context
from farm.registry import RegistryClient

log = structlog.get_logger(__name__)


class ContextCache:
    """Unpacked build contexts below `directory`, one folder per digest."""

    def __init__(
        self, directory: Path, registry: RegistryClient, repository: str, limit: int | None = None
    ) -> None:
        self.directory = directory
        self.registry = registry
        self.repository = repository
        self.limit = limit
        directory.mkdir(parents=True, exist_ok=True)

    def get(self, digest: str) -> Path:
        """Return the unpacked context `digest`, downloading it the first time."""
        target = self.directory / digest.replace(":", "-")
        if target.is_dir():
            return target

        # A file lock keeps two processes of one worker from unpacking the
        # same context at once; the rename makes a half-unpacked folder
        # impossible to see.
        with open(self.directory / ".lock", "w") as lock:
            _lock_exclusive(lock)
            if target.is_dir():
                return target
            scratch = Path(tempfile.mkdtemp(prefix="unpack-", dir=self.directory))
            try:
                archive = scratch / "context.tar.gz"
                # NOTE: the archive's size is checked after the download,
                # so an oversized blob still takes its size on disk briefly.
                self.registry.fetch_blob(self.repository, digest, archive)
                unpacked = scratch / "context"
                unpacked.mkdir()
                unpack_context(archive, unpacked, self.limit)
                unpacked.rename(target)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        log.info("context fetched", digest=digest)
        return target

    def empty(self) -> Path:
        """Return an empty folder, the context of stages that read no files."""
        path = self.directory / "empty"
        path.mkdir(exist_ok=True)
        return path


def _lock_exclusive(lock_file) -> None:
    """Lock `lock_file` until it is closed; fcntl exists only on POSIX, msvcrt only on Windows."""
    try:
        import fcntl
    except ImportError:
        import msvcrt

        msvcrt.locking(lock_file.fileno(), msvcrt.LK_LOCK, 1)
        return
    fcntl.flock(lock_file, fcntl.LOCK_EX)
