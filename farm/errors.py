"""Errors the farm reports to its users.

Every error a user can cause derives from `FarmError`; the CLI prints its
message and exits non-zero, so each message names the file, line or
address involved and says what to do next.
"""

from __future__ import annotations


class FarmError(Exception):
    """Base class of the errors a user can cause or fix."""


class DockerfileError(FarmError):
    """A Dockerfile that cannot be built as written."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path = path
        self.line = line
        self.reason = message
        super().__init__(f"{path}:{line}: {message}")


class ContextError(FarmError):
    """A build context that cannot be packed or unpacked safely."""


class ConnectionFailed(FarmError):
    """A service (Redis or the registry) that cannot be reached."""


class RedisUnavailable(ConnectionFailed):
    """Redis cannot be reached or refused the connection."""


class RegistryError(FarmError):
    """The registry returned an error for a request."""


class RegistryUnavailable(RegistryError, ConnectionFailed):
    """The registry cannot be reached."""


class BuildFailed(FarmError):
    """A build finished without its target: a stage failed or was cancelled."""
