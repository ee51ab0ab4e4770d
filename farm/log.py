"""structlog set-up: key-value lines on a terminal, JSON lines elsewhere."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(level: str | None = None, stream=None) -> None:
    """Configure structlog and the standard library's logging (Celery's) alike.

    The level comes from `level`, else `FARM_LOG_LEVEL`, else INFO. Logs go
    to standard error so that command output on standard output stays clean.
    """
    stream = stream or sys.stderr
    level_name = (level or os.environ.get("FARM_LOG_LEVEL") or "INFO").upper()
    renderer = (
        structlog.dev.ConsoleRenderer(colors=True) if stream.isatty() else structlog.processors.JSONRenderer()
    )
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_name)
