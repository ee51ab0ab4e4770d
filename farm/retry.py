"""Retries with exponential backoff for registry outages.

A registry that restarts, or a network that drops for a while, must not
fail a build: each registry operation is tried again, with a growing
pause, until it succeeds or `FARM_REGISTRY_RETRY_SECONDS` have passed.
Only unavailability is retried (no connection, timeouts); an HTTP error
from a reachable registry is a real answer and comes back at once.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TypeVar

import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from .errors import RegistryUnavailable

log = structlog.get_logger(__name__)

# Long enough to ride out a registry restart; a build waits this long at
# most before it reports the registry unreachable.
DEFAULT_RETRY_SECONDS = 120.0
# The pause starts at half a second and doubles up to this.
MAX_PAUSE_SECONDS = 8.0

Result = TypeVar("Result")


def retry_seconds() -> float:
    """Return how long to retry an unreachable registry (`FARM_REGISTRY_RETRY_SECONDS`)."""
    value = os.environ.get("FARM_REGISTRY_RETRY_SECONDS", "").strip()
    return float(value) if value else DEFAULT_RETRY_SECONDS


def retrying(seconds: float, retry_on: tuple[type[BaseException], ...] = (RegistryUnavailable,)) -> Retrying:
    """Return a tenacity loop that retries `retry_on` with backoff for up to `seconds`."""
    return Retrying(
        retry=retry_if_exception_type(retry_on),
        wait=wait_exponential(multiplier=0.5, max=MAX_PAUSE_SECONDS),
        stop=stop_after_delay(seconds),
        before_sleep=_log_retry,
        reraise=True,
    )


def retry_unavailable(method: Callable[..., Result]) -> Callable[..., Result]:
    """Decorate a registry client method so it is retried while the registry is unreachable.

    The client's `retry_seconds` attribute bounds the retries; 0 disables them.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        seconds = getattr(self, "retry_seconds", 0)
        if not seconds:
            return method(self, *args, **kwargs)
        for attempt in retrying(seconds):
            with attempt:
                return method(self, *args, **kwargs)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    return wrapper


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning(
        "registry operation failed; retrying",
        operation=getattr(state.fn, "__qualname__", "?"),
        attempt=state.attempt_number,
        pause=round(state.upcoming_sleep, 2),
        error=str(error),
    )
