"""Makespan against its lower bound for graphs of stages with known durations.

Each synthetic stage waits (`RUN sleep D`) instead of computing, so
several workers on one 2-core machine do not slow each other down and the
ideal schedule is known: the lower bound is max(critical path, total
work / workers). Reports makespan / bound for a wide graph (independent
stages and a final stage that copies from all) and a deep one (a chain),
on 1, 2 and 4 workers. Target: <= 1.10.

Each stage also pays the farm's fixed cost (a Buildah run and a push,
about half a second here), which the bound leaves out; longer sleeps
make that share smaller.

    python bench/makespan.py [--seconds 3] [--width 8] [--depth 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import local_farm, machine_line, run_farm  # noqa: E402


def wide(width: int, seconds: float, token: str) -> tuple[str, float, float]:
    """Return a Dockerfile of `width` independent stages and a final one; its work and critical path."""
    parts = [f"FROM busybox AS w{n}\nRUN sleep {seconds} && echo {token} {n} > /w{n}\n" for n in range(width)]
    copies = "".join(f"COPY --from=w{n} /w{n} /w{n}\n" for n in range(width))
    parts.append(f"FROM busybox\n{copies}")
    return "\n".join(parts), width * seconds, seconds


def deep(depth: int, seconds: float, token: str) -> tuple[str, float, float]:
    """Return a chain of `depth` stages; its work equals its critical path."""
    parts = [f"FROM busybox AS d0\nRUN sleep {seconds} && echo {token} > /d0\n"]
    for n in range(1, depth):
        parts.append(f"FROM d{n - 1} AS d{n}\nRUN sleep {seconds} && echo {n} > /d{n}\n")
    return "\n".join(parts), depth * seconds, depth * seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="sleep of each stage (default: 3)")
    parser.add_argument(
        "--width", type=int, default=8, help="independent stages of the wide graph (default: 8)"
    )
    parser.add_argument("--depth", type=int, default=4, help="stages of the deep chain (default: 4)")
    parser.add_argument("--workers", default="1,2,4", help="worker counts to try (default: 1,2,4)")
    args = parser.parse_args()

    rows = []
    for workers in [int(item) for item in args.workers.split(",")]:
        with local_farm(workers) as (_, state):
            for name, make in (
                ("wide", lambda t: wide(args.width, args.seconds, t)),
                ("deep", lambda t: deep(args.depth, args.seconds, t)),
            ):
                dockerfile, work, critical = make(uuid.uuid4().hex[:8])
                with tempfile.TemporaryDirectory(prefix="bench-makespan-") as scratch:
                    (Path(scratch) / "Dockerfile").write_text(dockerfile)
                    seconds, result = run_farm(state, "build", scratch)
                if result.returncode != 0:
                    print(result.stdout, result.stderr, file=sys.stderr)
                    return 1
                bound = max(critical, work / workers)
                rows.append((name, workers, seconds, bound, seconds / bound))

    print(machine_line())
    print(
        f"stages wait (sleep {args.seconds} s) rather than compute; the bound excludes per-stage Buildah cost"
    )
    print(f"{'graph':<6} {'workers':>8} {'makespan s':>11} {'bound s':>8} {'ratio':>6}")
    for name, workers, seconds, bound, ratio in rows:
        print(f"{name:<6} {workers:>8} {seconds:>11.1f} {bound:>8.1f} {ratio:>6.2f}")
    print("target: ratio <= 1.10")
    return 0


if __name__ == "__main__":
    sys.exit(main())
