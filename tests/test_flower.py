"""Celery's Flower, started against the farm's Celery app, lists the farm's workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

CELERY = str(Path(sys.executable).with_name("celery"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_flower_lists_workers(farm, tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, **farm.env, "FLOWER_UNAUTHENTICATED_API": "true"}
    command = [CELERY, "-A", "farm.celery_app", "flower", f"--port={port}", "--address=127.0.0.1"]
    command.append(f"--db={tmp_path / 'flower.db'}")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        names: set[str] = set()
        deadline = time.monotonic() + 60
        while len(names) < 2 and time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read()
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/api/workers?refresh=1", timeout=15)
                if response.status_code == 200:
                    names = set(response.json())
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=15)

    host = socket.gethostname()
    assert names == {f"{host}-w1@{host}", f"{host}-w2@{host}"}
