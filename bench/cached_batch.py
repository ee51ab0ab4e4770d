"""A fully cached batch: wall time of `farm build` and Buildah runs when every stage is in the registry.

Builds a batch of N Dockerfiles once to fill the cache, then submits the
same batch again and reports the second run. Target: under 2 s wall time
and zero Buildah runs for 100 Dockerfiles.

    python bench/cached_batch.py [--dockerfiles 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import local_farm, machine_line, run_farm  # noqa: E402


def write_batch(root: Path, count: int) -> Path:
    """Write `count` Dockerfiles that share a toolchain stage, and a batch file naming them all."""
    lines = ["target:"]
    for number in range(count):
        context = root / f"app{number:03d}"
        context.mkdir(parents=True)
        (context / "main.txt").write_text(f"application {number}\n")
        (context / "Dockerfile").write_text(
            "FROM busybox AS toolchain\n"
            "RUN echo shared toolchain > /toolchain\n"
            "\n"
            "FROM toolchain AS build\n"
            "COPY main.txt /src/main.txt\n"
            "RUN cat /toolchain /src/main.txt > /app\n"
            "\n"
            "FROM busybox\n"
            "COPY --from=build /app /app\n"
        )
        lines += [
            f"  app{number:03d}:",
            f"    context: app{number:03d}",
            f"    tags: [bench/app{number:03d}:1]",
        ]
    batch = root / "batch.yaml"
    batch.write_text("\n".join(lines) + "\n")
    return batch


def buildah_runs(outcome: dict) -> int:
    """Count the stages a worker built (not cached or reused) in a `farm build --json` result."""
    built = {
        stage["id"] for entry in outcome["entries"] for stage in entry["stages"] if stage["state"] == "built"
    }
    return len(built)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dockerfiles", type=int, default=100, help="Dockerfiles in the batch (default: 100)"
    )
    parser.add_argument("--workers", type=int, default=2, help="workers that fill the cache (default: 2)")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="bench-batch-") as scratch,
        local_farm(args.workers) as (_, state),
    ):
        batch = write_batch(Path(scratch), args.dockerfiles)
        fill_seconds, fill = run_farm(state, "build", "--json", "-f", str(batch))
        if fill.returncode != 0:
            print(fill.stdout, fill.stderr, file=sys.stderr)
            return 1
        cached_seconds, cached = run_farm(state, "build", "--json", "-f", str(batch))
        if cached.returncode != 0:
            print(cached.stdout, cached.stderr, file=sys.stderr)
            return 1

    first, second = json.loads(fill.stdout), json.loads(cached.stdout)
    print(machine_line())
    print(f"{'run':<22} {'dockerfiles':>11} {'wall s':>8} {'buildah runs':>13}")
    print(
        f"{'first (fills cache)':<22} {args.dockerfiles:>11} {fill_seconds:>8.2f} {buildah_runs(first):>13}"
    )
    print(
        f"{'second (all cached)':<22} {args.dockerfiles:>11} {cached_seconds:>8.2f} {buildah_runs(second):>13}"
    )
    print("target: second run under 2 s with 0 Buildah runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
