"""Read Prometheus metrics from a running worker or `farm metrics` exporter."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int) -> list:
    """Return the samples served at http://127.0.0.1:PORT/metrics."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    return [sample for family in text_string_to_metric_families(response.text) for sample in family.samples]


def sample(samples: list, name: str, **labels: str) -> float:
    """Return the sum of the samples named `name` whose labels include `labels` (0 when none)."""
    return sum(
        item.value
        for item in samples
        if item.name == name and all(item.labels.get(key) == value for key, value in labels.items())
    )


def samples_of(samples: list, name: str) -> list:
    """Return every sample named `name`."""
    return [item for item in samples if item.name == name]
