"""Registry credentials from a containers `auth.json` or a Docker `config.json`.

Both formats keep credentials under `auths.<registry>.auth` as base64 of
`user:password` (containers-auth.json(5); Docker's `config.json`). The
farm reads the same file as Buildah, so the producer, the workers and
Buildah's pushes and pulls use one set of credentials. The file is found
the way Buildah finds it: `REGISTRY_AUTH_FILE`, else
`${XDG_RUNTIME_DIR}/containers/auth.json`, else `~/.docker/config.json`;
`FARM_REGISTRY_AUTH_FILE` takes precedence over all three.

Credentials never go into task messages or Redis, and `Credentials`
hides the password from `repr`, so it cannot reach a log line or a
traceback by accident.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FarmError


@dataclass(frozen=True)
class Credentials:
    """A user name and password for one registry, read from `source`."""

    username: str
    password: str = field(repr=False)
    source: Path


def auth_file(env: dict[str, str] | os._Environ) -> Path | None:
    """Return the auth file the farm and Buildah use, or None when there is none.

    An explicitly named file (`FARM_REGISTRY_AUTH_FILE`, `REGISTRY_AUTH_FILE`)
    must exist; the default locations are used only when they do.
    """
    for name in ("FARM_REGISTRY_AUTH_FILE", "REGISTRY_AUTH_FILE"):
        value = env.get(name, "").strip()
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise FarmError(f"{name}={value}: file not found")
            return path.resolve()

    candidates = []
    runtime_dir = env.get("XDG_RUNTIME_DIR", "").strip()
    if runtime_dir:
        candidates.append(Path(runtime_dir) / "containers" / "auth.json")
    home = env.get("HOME", "").strip()
    if home:
        candidates.append(Path(home) / ".docker" / "config.json")
    for path in candidates:
        if path.is_file():
            return path.resolve()
    return None


def registry_credentials(path: Path | None, registry: str) -> Credentials | None:
    """Return the credentials for `registry` (`host:port`) in the auth file `path`, or None.

    Entries may be written as `host:port` or as a URL (`https://host:port/v1/`,
    as `docker login` writes for Docker Hub). An entry without `auth`
    (a credential helper) has no usable credentials here.
    """
    if path is None:
        return None
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FarmError(f"cannot read the registry auth file {path}: {error}") from None
    auths = document.get("auths") if isinstance(document, dict) else None
    if not isinstance(auths, dict):
        return None

    for key, entry in auths.items():
        if _registry_of(key) != registry or not isinstance(entry, dict) or not entry.get("auth"):
            continue
        return _decode(entry["auth"], path, key)
    return None


def _registry_of(key: str) -> str:
    """Return the `host:port` of an `auths` key, which may be a URL."""
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key.split("/", 1)[0]


def _decode(value: str, path: Path, key: str) -> Credentials:
    # The message names the file and entry, never the value, which contains the password.
    try:
        text = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise FarmError(f"invalid auth entry for {key} in {path}: expected base64 of USER:PASSWORD") from None
    username, separator, password = text.partition(":")
    if not separator or not username:
        raise FarmError(f"invalid auth entry for {key} in {path}: expected base64 of USER:PASSWORD")
    return Credentials(username, password, path)
