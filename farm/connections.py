"""Connections to the farm's Redis and registry, checked before use.

Both are checked before a build touches either, so an unreachable
service fails the command with its address and nothing half-queued.
A `rediss://` URL connects with TLS, verified against
`FARM_REDIS_CA_FILE` (or the system's CAs); the registry is reached with
the credentials of the auth file (farm/credentials.py) and verified
against `FARM_REGISTRY_CA_FILE`. No message here includes a password.
"""

from __future__ import annotations

import ssl

import redis

from .config import Settings
from .credentials import registry_credentials
from .errors import RedisUnavailable
from .registry import RegistryClient


def redis_tls_options(settings: Settings) -> dict[str, object]:
    """Return the TLS options of a `rediss://` URL, named as redis-py and kombu name them.

    Empty for a plain `redis://` URL. The server's certificate is always verified.
    """
    if not settings.redis_url.startswith("rediss://"):
        return {}
    options: dict[str, object] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_ca_file:
        options["ssl_ca_certs"] = str(settings.redis_ca_file)
    if settings.redis_cert_file:
        options["ssl_certfile"] = str(settings.redis_cert_file)
    if settings.redis_key_file:
        options["ssl_keyfile"] = str(settings.redis_key_file)
    return options


def connect_redis(settings: Settings, check: bool = True) -> redis.Redis:
    """Return a Redis client for `settings.redis_url`, pinged when `check`."""
    try:
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=5,
            health_check_interval=30,
            **redis_tls_options(settings),
        )
    except ValueError as error:
        raise RedisUnavailable(f"invalid FARM_REDIS_URL {settings.redis_address}: {error}") from None
    if check:
        try:
            client.ping()
        except redis.AuthenticationError:
            raise RedisUnavailable(
                f"Redis at {settings.redis_address} rejected the credentials in FARM_REDIS_URL"
            ) from None
        except redis.RedisError as error:
            raise RedisUnavailable(
                f"Redis at {settings.redis_address} is unreachable ({error}); "
                "check FARM_REDIS_URL and that Redis is running"
            ) from None
    return client


def connect_registry(settings: Settings, check: bool = True) -> RegistryClient:
    """Return a registry client for `settings.registry`, pinged when `check`."""
    credentials = registry_credentials(settings.registry_auth_file, settings.registry)
    client = RegistryClient(
        settings.registry,
        insecure=settings.registry_insecure,
        ca_file=settings.registry_ca_file,
        credentials=credentials,
    )
    if check:
        try:
            client.ping()
        except Exception:
            client.close()
            raise
    return client
