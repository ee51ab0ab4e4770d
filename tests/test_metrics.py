"""Prometheus metrics scraped from the session's running workers and `farm metrics`."""

from __future__ import annotations

import re
from pathlib import Path

from .metrics_scrape import sample, samples_of, scrape

FLEET_COUNTERS = (
    "farm_stages_built_total",
    "farm_stages_cached_total",
    "farm_stages_failed_total",
    "farm_builds_submitted_total",
)
WORKER_COUNTERS = (
    "farm_worker_stages_built_total",
    "farm_worker_stages_cached_total",
    "farm_worker_stages_failed_total",
    "farm_worker_stage_duration_seconds_count",
)


def _snapshot(farm, fleet_metrics: int) -> dict[str, float]:
    fleet = scrape(fleet_metrics)
    workers = [scrape(port) for port in farm.worker_metrics_ports]
    counts = {name: sample(fleet, name) for name in FLEET_COUNTERS}
    for name in WORKER_COUNTERS:
        counts[name] = sum(sample(samples, name) for samples in workers)
    return counts


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before}


def _three_stages(directory: Path, marker: str, fail: bool = False) -> None:
    (directory / "Dockerfile").write_text(
        f"FROM busybox AS a\nRUN echo a-{marker} > /a\n\n"
        f"FROM busybox AS b\nRUN echo b-{marker} > /b\n\n"
        "FROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n" + ("RUN false\n" if fail else "")
    )


def test_counts_after_builds(farm, fleet_metrics, tmp_path: Path) -> None:
    marker = tmp_path.name
    _three_stages(tmp_path, marker)
    before = _snapshot(farm, fleet_metrics)

    built = farm.cli("build", str(tmp_path))
    after_build = _snapshot(farm, fleet_metrics)
    cached = farm.cli("build", str(tmp_path))
    after_cached = _snapshot(farm, fleet_metrics)
    failing = tmp_path / "failing"
    failing.mkdir()
    _three_stages(failing, marker, fail=True)
    failed = farm.cli("build", str(failing))
    after_failed = _snapshot(farm, fleet_metrics)

    assert built.returncode == 0, built.stdout + built.stderr
    assert _delta(before, after_build) == {
        "farm_stages_built_total": 3,
        "farm_stages_cached_total": 0,
        "farm_stages_failed_total": 0,
        "farm_builds_submitted_total": 1,
        "farm_worker_stages_built_total": 3,
        "farm_worker_stages_cached_total": 0,
        "farm_worker_stages_failed_total": 0,
        "farm_worker_stage_duration_seconds_count": 3,
    }
    assert cached.returncode == 0, cached.stdout + cached.stderr
    # Only the target counts: the stages it was built from are not planned.
    assert _delta(after_build, after_cached) == {
        "farm_stages_built_total": 0,
        "farm_stages_cached_total": 1,
        "farm_stages_failed_total": 0,
        "farm_builds_submitted_total": 1,
        "farm_worker_stages_built_total": 0,
        "farm_worker_stages_cached_total": 0,
        "farm_worker_stages_failed_total": 0,
        "farm_worker_stage_duration_seconds_count": 0,
    }
    assert failed.returncode == 1
    assert _delta(after_cached, after_failed) == {
        "farm_stages_built_total": 0,
        "farm_stages_cached_total": 2,
        "farm_stages_failed_total": 1,
        "farm_builds_submitted_total": 1,
        "farm_worker_stages_built_total": 0,
        "farm_worker_stages_cached_total": 0,
        "farm_worker_stages_failed_total": 1,
        "farm_worker_stage_duration_seconds_count": 0,
    }


def test_fleet_gauges(farm, fleet_metrics) -> None:
    fleet = scrape(fleet_metrics)
    workers = samples_of(fleet, "farm_workers")
    disk = samples_of(fleet, "farm_worker_disk_free_bytes")
    depth = samples_of(fleet, "farm_queue_depth")

    assert sum(item.value for item in workers) == 2
    assert {item.labels["mode"] for item in workers} == {"native-chroot"}
    assert {item.labels["driver"] for item in workers} <= {"overlay", "vfs"}
    assert len(disk) == 2
    assert all(item.value > 0 for item in disk)
    queues = {item.labels["queue"]: item for item in depth}
    assert "farm.stages.linux-amd64" in queues
    assert queues["farm.stages.linux-amd64.native"].labels == {
        "queue": "farm.stages.linux-amd64.native",
        "platform": "linux/amd64",
        "native": "true",
    }


def test_worker_gauges(farm) -> None:
    for port in farm.worker_metrics_ports:
        samples = scrape(port)
        info = samples_of(samples, "farm_worker_info")
        assert len(info) == 1
        assert re.fullmatch(r".+-w[12]", info[0].labels["worker"])
        assert info[0].labels["mode"] == "native-chroot"
        assert sample(samples, "farm_worker_disk_free_bytes") > 0
