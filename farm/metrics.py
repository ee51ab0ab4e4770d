"""`farm metrics`: fleet-wide Prometheus metrics, read from Redis at each scrape.

| metric | type | labels | source |
| --- | --- | --- | --- |
| `farm_queue_depth` | gauge | queue, platform, native | `LLEN` of each Celery queue |
| `farm_workers` | gauge | mode, driver | live heartbeat profiles |
| `farm_worker_disk_free_bytes` | gauge | worker | live heartbeat profiles |
| `farm_builds_submitted_total`, `farm_builds_cancelled_total` | counter | | `farm:stats` |
| `farm_stages_built_total`, `_cached_total`, `_failed_total`, `_cancelled_total` | counter | | `farm:stats` |

Queue depth per platform is the autoscaling signal: a stage waits in its
platform's queue until a worker for that platform takes it. A queue that
live workers serve is reported at 0 when empty (Redis drops empty lists).
"""

from __future__ import annotations

import time

import redis
import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import redis_keys as keys
from .celery_app import QUEUE_PREFIX, queue_for
from .fleet import live_workers

log = structlog.get_logger(__name__)

_NATIVE_SUFFIX = ".native"

_COUNTERS = {
    "builds_submitted": "Builds submitted to the farm",
    "builds_cancelled": "Builds cancelled with farm cancel",
    "stages_built": "Stages built with Buildah by any worker",
    "stages_cached": "Stages found in the registry, at submission or while waiting, and not built",
    "stages_failed": "Stages whose build failed",
    "stages_cancelled": "Stages cancelled: dependants of a failed stage, or stages of a cancelled build",
}


class FleetCollector:
    """A Prometheus collector that reads the farm's queues, workers and counters from Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self):
        workers = live_workers(self.client)
        yield self._queue_depth(workers)
        yield from self._workers(workers)
        yield from self._counters()

    def _queue_depth(self, workers: list[dict]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "farm_queue_depth",
            "Stage messages waiting in a platform queue",
            labels=["queue", "platform", "native"],
        )
        for queue in sorted(_queues(self.client, workers)):
            platform, native = queue_platform(queue)
            family.add_metric([queue, platform, "true" if native else "false"], self.client.llen(queue))
        return family

    def _workers(self, workers: list[dict]):
        count = GaugeMetricFamily(
            "farm_workers", "Live workers by mode and storage driver", labels=["mode", "driver"]
        )
        tally: dict[tuple[str, str], int] = {}
        for worker in workers:
            pair = (str(worker.get("mode", "unknown")), str(worker.get("driver", "unknown")))
            tally[pair] = tally.get(pair, 0) + 1
        for (mode, driver), number in sorted(tally.items()):
            count.add_metric([mode, driver], number)
        yield count

        disk = GaugeMetricFamily(
            "farm_worker_disk_free_bytes", "Free bytes below each live worker's root", labels=["worker"]
        )
        for worker in workers:
            if "disk_free" in worker:
                disk.add_metric([str(worker.get("id", "?"))], worker["disk_free"])
        yield disk

    def _counters(self):
        raw = self.client.hgetall(keys.stats())
        stats = {name.decode(): int(value) for name, value in raw.items()}
        for name, documentation in _COUNTERS.items():
            yield CounterMetricFamily(f"farm_{name}", documentation, value=stats.get(name, 0))


def queue_platform(queue: str) -> tuple[str, bool]:
    """Return the platform (`linux/amd64`) of a queue name and whether it is a native queue."""
    name = queue.removeprefix(QUEUE_PREFIX)
    native = name.endswith(_NATIVE_SUFFIX)
    name = name.removesuffix(_NATIVE_SUFFIX)
    return name.replace("-", "/"), native


def _queues(client: redis.Redis, workers: list[dict]) -> set[str]:
    queues = {key.decode() for key in client.scan_iter(match=QUEUE_PREFIX + "*", _type="list")}
    for worker in workers:
        emulated = set(worker.get("emulated", []))
        for platform in worker.get("platforms", []):
            queues.add(queue_for(platform))
            if platform not in emulated:
                queues.add(queue_for(platform, native=True))
    return queues


def serve(client: redis.Redis, port: int, address: str) -> None:
    """Serve the fleet metrics on `address:port` until interrupted."""
    registry = CollectorRegistry()
    registry.register(FleetCollector(client))
    start_http_server(port, addr=address, registry=registry)
    log.info("metrics server started", address=address, port=port)
    while True:
        time.sleep(3600)
