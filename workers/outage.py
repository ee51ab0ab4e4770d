"""Ride out registry outages on a worker: push again, and rebuild after a failed pull.

Buildah retries a push or pull three times, two seconds apart (its
`--retry` default on 1.28), which a registry restart outlasts. So a
failed push is tried again here with backoff while the registry is
unreachable, and a build that failed while the registry was unreachable
(its base image or a stage it copies from could not be pulled) is built
again once the registry answers, rather than reported as a Dockerfile
error. Pushing the same local image again gives the same manifest
digest, so a retried push never leaves a second digest behind.
"""

from __future__ import annotations

from pathlib import Path

import structlog
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_exponential

from farm.errors import RegistryUnavailable
from farm.registry import RegistryClient
from farm.retry import MAX_PAUSE_SECONDS, retry_seconds, retrying

from .buildah import Buildah, BuildahError

log = structlog.get_logger(__name__)


class RegistryDown(BuildahError):
    """A push failed because the registry stayed unreachable for the whole retry period."""


def registry_reachable(registry: RegistryClient) -> bool:
    try:
        registry.ping()
        return True
    except RegistryUnavailable:
        return False


def wait_out_outage(registry: RegistryClient, seconds: float | None = None) -> bool:
    """Return True if the registry was unreachable and answers again within `seconds`.

    Returns False at once when the registry answers, so the caller treats
    its failure as a real one; raises RegistryDown when it stays away.
    """
    if registry_reachable(registry):
        return False
    seconds = retry_seconds() if seconds is None else seconds
    log.warning("registry unreachable; waiting for it", registry=registry.registry, seconds=seconds)
    waiting = Retrying(
        retry=retry_if_result(lambda reachable: not reachable),
        wait=wait_exponential(multiplier=0.5, max=MAX_PAUSE_SECONDS),
        stop=stop_after_delay(seconds),
    )
    try:
        waiting(registry_reachable, registry)
    except RetryError:
        raise RegistryDown(f"registry {registry.registry} unreachable for {seconds:.0f} s") from None
    log.info("registry reachable again", registry=registry.registry)
    return True


def push_with_retry(
    buildah: Buildah, registry: RegistryClient, image: str, digest_file: Path, compression: str = "gzip"
) -> str:
    """Push `image` like `Buildah.push`, pushing again while the registry is unreachable."""
    for attempt in retrying(retry_seconds(), retry_on=(_PushDuringOutage,)):
        with attempt:
            try:
                return buildah.push(image, digest_file, compression)
            except BuildahError as error:
                if registry_reachable(registry):
                    raise
                raise _PushDuringOutage(str(error)) from error
    raise AssertionError("unreachable: tenacity re-raises the last error")


class _PushDuringOutage(BuildahError):
    """A push that failed while the registry did not answer, so it is worth another try."""
