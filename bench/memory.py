"""Memory: peak RSS of the producer for a 1,000-Dockerfile batch, and of an idle and a busy worker.

The producer figure is this process planning, rendering and keying the
batch (what `farm build` holds before it queues). The worker figures
are the `farm-worker` process alone, sampled every 50 ms while idle and
while it builds a stage (Buildah runs in child processes, reported
apart).

    python bench/memory.py [--dockerfiles 1000]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import local_farm, machine_line, run_farm  # noqa: E402
from planning import _DOCKERFILE  # noqa: E402

from farm.batch import BuildEntry  # noqa: E402
from farm.config import Settings  # noqa: E402
from farm.context import pack_context  # noqa: E402
from farm.graph import StageGraphBuilder  # noqa: E402
from farm.plan import plan_dockerfile  # noqa: E402
from farm.submit import BuildUnit  # noqa: E402

MIB = 1024 * 1024


def producer_peak(count: int) -> tuple[float, float]:
    """Plan `count` Dockerfiles; return (RSS before, peak RSS) in MiB."""
    before = psutil.Process().memory_info().rss / MIB
    settings = Settings(registry="127.0.0.1:5000", mirror_docker_io=False)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        root = Path(scratch) / "context"
        root.mkdir()
        (root / "main.c").write_text("int main(void) { return 0; }\n")
        context = pack_context(root, Path(scratch) / "context.tar.gz")
        builder = StageGraphBuilder(
            settings, registry=None, naming=lambda unit, stage: f"{unit.entry.name}/{stage}"
        )
        for number in range(count):
            path = Path(scratch) / f"Dockerfile.{number}"
            path.write_text(_DOCKERFILE.format(number=number))
            unit = BuildUnit(BuildEntry(f"app{number}", root, path), "linux/amd64", plan_dockerfile(path))
            builder.add(unit, context)
    return before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Sampler:
    """Samples the RSS of one process, and of its children, from a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0.0
        self.children_peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss / MIB)
                children = sum(child.memory_info().rss for child in self.process.children(recursive=True))
                self.children_peak = max(self.children_peak, children / MIB)
            except psutil.Error:
                continue


def worker_figures() -> tuple[float, float, float]:
    """Return a worker's idle RSS, busy peak RSS and its Buildah children's peak, in MiB."""
    with local_farm(1) as (local, state), tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        worker = next(service for service in local.load().services if service.name.startswith("worker-"))
        time.sleep(2)
        with Sampler(worker.pid) as idle:
            time.sleep(2)
        (Path(scratch) / "Dockerfile").write_text(
            f"FROM busybox\nRUN echo {time.time()} > /stamp && sleep 2\nRUN dd if=/dev/zero of=/blob bs=1M count=32\n"
        )
        with Sampler(worker.pid) as busy:
            _, result = run_farm(state, "build", "--no-cache", scratch)
        if result.returncode != 0:
            raise SystemExit(result.stdout + result.stderr)
    return idle.peak, busy.peak, busy.children_peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dockerfiles", type=int, default=1000, help="Dockerfiles in the batch (default: 1000)"
    )
    args = parser.parse_args()

    before, peak = producer_peak(args.dockerfiles)
    idle, busy, buildah = worker_figures()

    print(machine_line())
    print(f"{'process':<40} {'RSS MiB':>8}")
    print(f"{'producer before planning':<40} {before:>8.1f}")
    print(f"{f'producer peak, {args.dockerfiles} Dockerfiles planned':<40} {peak:>8.1f}")
    print(f"{'worker idle':<40} {idle:>8.1f}")
    print(f"{'worker busy (peak)':<40} {busy:>8.1f}")
    print(f"{'worker Buildah children (peak, summed)':<40} {buildah:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
