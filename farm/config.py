"""Settings shared by the producer and the workers, read from the environment.

| variable | meaning | default |
| --- | --- | --- |
| `FARM_REDIS_URL` | Redis URL for the Celery broker and the build state; `rediss://` for TLS | `redis://127.0.0.1:6379/0` |
| `FARM_REDIS_PASSWORD_FILE` | file whose first line is the Redis password (instead of putting it in the URL) | none |
| `FARM_REDIS_CA_FILE` | CA certificate (PEM) that signed the Redis server's certificate, for `rediss://` | the system's CAs |
| `FARM_REDIS_CERT_FILE`, `FARM_REDIS_KEY_FILE` | client certificate and key, for Redis servers that require them | none |
| `FARM_REGISTRY` | `host:port` of the shared OCI registry | `127.0.0.1:5000` |
| `FARM_REGISTRY_INSECURE` | `1` for plain HTTP, `0` for HTTPS | `1` for loopback hosts, else `0` |
| `FARM_REGISTRY_CA_FILE` | CA certificate (PEM) that signed the registry's certificate | the system's CAs |
| `FARM_REGISTRY_AUTH_FILE` | containers `auth.json` or Docker `config.json` with the registry's credentials | see `farm.credentials` |
| `FARM_SECRET_KEY`, `FARM_SECRET_KEY_FILE` | Fernet key that encrypts build secrets in Redis (`farm build --secret`) | none |
| `FARM_NAMESPACE` | repository prefix for stage images and contexts | `farm` |
| `FARM_MIRROR_DOCKER_IO` | `1` makes the registry a mirror of docker.io for base images | `0` |
| `FARM_LAYER_CACHE` | `1` shares each build step's layer through `<namespace>/cache` | `1` |
| `FARM_PUSH_COMPRESSION` | layer compression of stage pushes: `gzip` or `zstd` (Buildah always compresses pushes to a registry) | `gzip` |
| `FARM_LOCALITY` | `1` keeps a stage on the worker that built the stage it starts `FROM` | `1` |
| `FARM_VISIBILITY_TIMEOUT` | seconds before Redis gives an unacknowledged stage message to another worker | `3600` |
| `FARM_CONTEXT_LIMIT` | largest build context, in bytes or with a suffix K, M, G, T (powers of 1024) | `2G` |
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from .credentials import auth_file
from .errors import FarmError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_REGISTRY = "127.0.0.1:5000"
DEFAULT_NAMESPACE = "farm"
# Kombu's own default. Lost workers are handled sooner by the reaper
# (workers/reaper.py); this only bounds how long a message lost between
# delivery and the stage's start waits.
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 3600
DEFAULT_CONTEXT_LIMIT = 2 * 1024**3

_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}

_LOOPBACK_HOSTS = ("127.", "localhost", "[::1]")


@dataclass(frozen=True)
class Settings:
    """The addresses of the farm's Redis and registry, and how to reach them."""

    # The URL may carry the Redis password, so it stays out of repr().
    redis_url: str = field(default=DEFAULT_REDIS_URL, repr=False)
    registry: str = DEFAULT_REGISTRY
    registry_insecure: bool = True
    namespace: str = DEFAULT_NAMESPACE
    mirror_docker_io: bool = False
    layer_cache: bool = True
    locality: bool = True
    push_compression: str = "gzip"
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT_SECONDS
    redis_ca_file: Path | None = None
    redis_cert_file: Path | None = None
    redis_key_file: Path | None = None
    registry_ca_file: Path | None = None
    registry_auth_file: Path | None = None
    secret_key: str | None = field(default=None, repr=False)
    context_limit: int = DEFAULT_CONTEXT_LIMIT

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read the settings from `environ` (default: the process environment)."""
        env = os.environ if environ is None else environ
        registry = env.get("FARM_REGISTRY", DEFAULT_REGISTRY).strip().rstrip("/")
        insecure_default = registry.startswith(_LOOPBACK_HOSTS)
        return cls(
            redis_url=_redis_url(env),
            registry=registry,
            registry_insecure=_flag(env.get("FARM_REGISTRY_INSECURE"), insecure_default),
            namespace=env.get("FARM_NAMESPACE", DEFAULT_NAMESPACE).strip("/"),
            mirror_docker_io=_flag(env.get("FARM_MIRROR_DOCKER_IO"), False),
            layer_cache=_flag(env.get("FARM_LAYER_CACHE"), True),
            locality=_flag(env.get("FARM_LOCALITY"), True),
            push_compression=_choice(env, "FARM_PUSH_COMPRESSION", ("gzip", "zstd"), "gzip"),
            visibility_timeout=_seconds(env, "FARM_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT_SECONDS),
            redis_ca_file=_file(env, "FARM_REDIS_CA_FILE"),
            redis_cert_file=_file(env, "FARM_REDIS_CERT_FILE"),
            redis_key_file=_file(env, "FARM_REDIS_KEY_FILE"),
            registry_ca_file=_file(env, "FARM_REGISTRY_CA_FILE"),
            registry_auth_file=auth_file(env),
            secret_key=_secret_key(env),
            context_limit=_size(env, "FARM_CONTEXT_LIMIT", DEFAULT_CONTEXT_LIMIT),
        )

    @property
    def redis_address(self) -> str:
        """Return the Redis URL without its password, for messages and logs."""
        return redact_url(self.redis_url)

    @property
    def stages_repository(self) -> str:
        """Return the repository (without registry) of stage images."""
        return f"{self.namespace}/stages"

    @property
    def layer_cache_repository(self) -> str | None:
        """Return the registry repository of shared step layers, or None when disabled."""
        return f"{self.registry}/{self.namespace}/cache" if self.layer_cache else None

    @property
    def contexts_repository(self) -> str:
        """Return the repository (without registry) of context blobs."""
        return f"{self.namespace}/contexts"


def redact_url(url: str) -> str:
    """Return `url` with any user name and password removed."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=host).geturl()


def _redis_url(env) -> str:
    """Return FARM_REDIS_URL, with the password of FARM_REDIS_PASSWORD_FILE put in when that is set."""
    url = env.get("FARM_REDIS_URL", DEFAULT_REDIS_URL)
    password_file = _file(env, "FARM_REDIS_PASSWORD_FILE")
    if password_file is None:
        return url
    password = _first_line(password_file, "FARM_REDIS_PASSWORD_FILE")
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = quote(parts.username or "", safe="")
    return parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}").geturl()


def _secret_key(env) -> str | None:
    key = env.get("FARM_SECRET_KEY", "").strip()
    if key:
        return key
    key_file = _file(env, "FARM_SECRET_KEY_FILE")
    return _first_line(key_file, "FARM_SECRET_KEY_FILE") if key_file else None


def _file(env, name: str) -> Path | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise FarmError(f"{name}={value}: file not found")
    return path.resolve()


def _first_line(path: Path, name: str) -> str:
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise FarmError(f"cannot read {name} {path}: {error.strerror}") from None
    if not lines or not lines[0].strip():
        raise FarmError(f"{name} {path} is empty")
    return lines[0].strip()


def parse_size(text: str) -> int:
    """Parse a size in bytes: `1048576`, `512M`, `2G` or `2GiB` (K, M, G and T are powers of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid size {text!r}: expected bytes or a number with K, M, G or T")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def format_size(size: int) -> str:
    """Format a byte count with the largest binary unit that keeps it at 1 or more (`1.5 GiB`)."""
    for unit in ("T", "G", "M", "K"):
        if size >= _SIZE_UNITS[unit]:
            return f"{size / _SIZE_UNITS[unit]:.1f} {unit}iB"
    return f"{size} B"


def _size(env, name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        size = parse_size(value)
    except ValueError as error:
        raise FarmError(f"{name}: {error}") from None
    if size <= 0:
        raise FarmError(f"{name}={value!r} must be a positive size")
    return size


def _choice(env, name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name, default).strip().lower() or default
    if value not in choices:
        raise FarmError(f"invalid {name}={value!r}: expected one of {', '.join(choices)}")
    return value


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _seconds(env, name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        seconds = int(value)
    except ValueError:
        raise FarmError(f"{name}={value!r} is not a whole number of seconds") from None
    if seconds <= 0:
        raise FarmError(f"{name}={value!r} must be a positive number of seconds")
    return seconds
