"""Connections to the farm's Redis and registry, checked before use.

Both are checked before a build touches either, so an unreachable
service fails the command with its address and nothing half-queued.
"""

from __future__ import annotations

import redis

from .config import Settings
from .errors import RedisUnavailable
from .registry import RegistryClient


def connect_redis(settings: Settings, check: bool = True) -> redis.Redis:
    """Return a Redis client for `settings.redis_url`, pinged when `check`."""
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, health_check_interval=30)
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
    client = RegistryClient(settings.registry, insecure=settings.registry_insecure)
    if check:
        try:
            client.ping()
        except Exception:
            client.close()
            raise
    return client
