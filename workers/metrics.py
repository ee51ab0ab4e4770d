"""Prometheus metrics of one worker process, served over HTTP when asked for.

The stage runner counts every stage it ends (built, cached, failed,
cancelled) and times the ones it built; the disk free below the worker's
root is read at each scrape. `FARM_METRICS_PORT` turns the HTTP server on
(off by default); `FARM_METRICS_ADDRESS` picks the address it listens on.
Fleet-wide counters and queue depths come from `farm metrics` instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import structlog
from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

log = structlog.get_logger(__name__)

DEFAULT_ADDRESS = "0.0.0.0"

STAGES_BUILT = Counter("farm_worker_stages_built", "Stages this worker built with Buildah", ["worker"])
STAGES_CACHED = Counter(
    "farm_worker_stages_cached", "Stages this worker found pushed already and did not build", ["worker"]
)
STAGES_FAILED = Counter("farm_worker_stages_failed", "Stages that failed on this worker", ["worker"])
STAGES_CANCELLED = Counter(
    "farm_worker_stages_cancelled",
    "Running stages this worker stopped because their build was cancelled",
    ["worker"],
)
STAGE_SECONDS = Histogram(
    "farm_worker_stage_duration_seconds",
    "Time from a stage's start on this worker to its push, for stages built with Buildah",
    ["worker"],
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
DISK_FREE = Gauge(
    "farm_worker_disk_free_bytes", "Free bytes on the file system of the worker's root", ["worker"]
)
WORKER = Info("farm_worker", "The worker's id, host, mode, storage driver and platforms")


def metrics_port(environ: dict[str, str] | None = None) -> int | None:
    """Return the port from `FARM_METRICS_PORT`, or None when metrics are off."""
    env = os.environ if environ is None else environ
    value = env.get("FARM_METRICS_PORT", "").strip()
    if not value:
        return None
    try:
        port = int(value)
    except ValueError:
        raise RuntimeError(f"invalid FARM_METRICS_PORT {value!r}: expected a port number") from None
    if not 0 < port < 65536:
        raise RuntimeError(f"invalid FARM_METRICS_PORT {value!r}: expected a port number from 1 to 65535")
    return port


def serve_metrics(profile: dict, root: Path) -> int | None:
    """Describe the worker, and start the metrics server if `FARM_METRICS_PORT` is set; return its port."""
    worker_id = profile["id"]
    WORKER.info(
        {
            "worker": worker_id,
            "host": str(profile.get("host", "")),
            "mode": str(profile.get("mode", "")),
            "driver": str(profile.get("driver", "")),
            "platforms": ",".join(profile.get("platforms", [])),
        }
    )
    DISK_FREE.labels(worker_id).set_function(lambda: psutil.disk_usage(str(root)).free)
    for counter in (STAGES_BUILT, STAGES_CACHED, STAGES_FAILED, STAGES_CANCELLED):
        counter.labels(worker_id)

    port = metrics_port()
    if port is None:
        return None
    address = os.environ.get("FARM_METRICS_ADDRESS", "").strip() or DEFAULT_ADDRESS
    start_http_server(port, addr=address)
    log.info("metrics server started", worker=worker_id, address=address, port=port)
    return port
