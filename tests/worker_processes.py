"""Start `farm-worker` processes for a test, as root or as another user, and stop them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from farm import redis_keys as keys

FARM_WORKER = str(Path(sys.executable).with_name("farm-worker"))
START_TIMEOUT_SECONDS = 180


@dataclass
class WorkerProcess:
    """A running farm-worker and where its output goes."""

    worker_id: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """Stop the worker's process group (runuser and the worker) and wait for it."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def worker_command(name: str, root: Path, user: str | None) -> list[str]:
    command = [FARM_WORKER, "--name", name, "--root", str(root)]
    return ["runuser", "-u", user, "--", *command] if user else command


def start_worker(
    name: str,
    root: Path,
    env: dict[str, str],
    log: Path,
    user: str | None = None,
    client: redis.Redis | None = None,
) -> WorkerProcess:
    """Start farm-worker `name` and wait until its heartbeat is in Redis.

    `client` reads the heartbeat (default: a client for `FARM_REDIS_URL`,
    which cannot verify a TLS server against a test CA). Raises
    AssertionError with the worker's output when it exits first.
    """
    with open(log, "wb") as output:
        process = subprocess.Popen(
            worker_command(name, root, user),
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    worker = WorkerProcess(f"{socket.gethostname()}-{name}", process, log)
    client = client or redis.Redis.from_url(env["FARM_REDIS_URL"])
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not client.exists(keys.worker(worker.worker_id)):
        if process.poll() is not None:
            raise AssertionError(f"worker {name} exited with {process.returncode}:\n{worker.output()}")
        if time.monotonic() > deadline:
            worker.stop()
            raise AssertionError(f"worker {name} did not start:\n{worker.output()}")
        time.sleep(0.2)
    return worker
