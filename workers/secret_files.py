"""Write a build's decrypted secrets to files that only `buildah bud --secret` reads.

The files live in a fresh 0700 directory, each file 0600, and are
deleted as soon as the stage's build ends. Native modes put them on
tmpfs (`/dev/shm`), so a value never reaches the worker's disk.
docker-with-fuse mode puts them below the worker's work directory,
because its Buildah container mounts that directory and not /dev/shm.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import redis

from farm.build_secrets import open_secrets

_TMPFS = Path("/dev/shm")


def write_secret_files(
    client: redis.Redis, build_id: str, key: str | None, fallback_directory: Path, tmpfs: bool
) -> dict[str, Path]:
    """Decrypt the build's secrets into files; return the file of each secret id.

    Returns an empty dict for a build without secrets. Raises FarmError
    when the secrets cannot be read (farm/build_secrets.py).
    """
    secrets = open_secrets(client, build_id, key)
    if not secrets:
        return {}
    parent = _TMPFS if tmpfs and _TMPFS.is_dir() else fallback_directory
    directory = Path(tempfile.mkdtemp(prefix="farm-secrets-", dir=parent))
    files = {}
    # File names are numbers: a secret id is the producer's input and never a path here.
    for number, (secret_id, value) in enumerate(sorted(secrets.items())):
        path = directory / str(number)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(value)
        files[secret_id] = path
    return files


def remove_secret_files(files: dict[str, Path]) -> None:
    """Delete the directory `write_secret_files` made."""
    directories = {path.parent for path in files.values()}
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)
