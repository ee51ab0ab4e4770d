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
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import StageSpan, local_farm, machine_line, run_farm, stage_timeline  # noqa: E402


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


def overheads(
    spans: list[StageSpan], began: float, ended: float, seconds: float
) -> tuple[float, float, float | None, float]:
    """Split the time above the sleeps: before the first stage, per stage, the final stage, after the last.

    Per stage is the median of (run time - sleep) over the stages that
    sleep, which are the named ones. The wide graph's final stage has no
    name and no sleep, and its whole run time is returned apart (None
    for the deep graph).
    """
    before = spans[0].started / 1000 - began
    per_stage = statistics.median(span.ran / 1000 - seconds for span in spans if not span.stage.isdigit())
    final = next((span.ran / 1000 for span in spans if span.stage.isdigit()), None)
    after = ended - max(span.finished for span in spans) / 1000
    return before, per_stage, final, after


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
                    began = time.time()
                    seconds, result = run_farm(state, "build", "--json", scratch)
                    ended = time.time()
                if result.returncode != 0:
                    print(result.stdout, result.stderr, file=sys.stderr)
                    return 1
                spans = stage_timeline(state.redis_url, json.loads(result.stdout)["build_id"])
                bound = max(critical, work / workers)
                split = overheads(spans, began, ended, args.seconds)
                rows.append((name, workers, seconds, bound, seconds / bound, *split))

    print(machine_line())
    print(
        f"stages wait (sleep {args.seconds:g} s) rather than compute; the bound counts only the sleeps; "
        "'before' is from the farm command's start to the first stage's start, 'per stage' the median "
        "run time above the sleep, 'final' the wide graph's final stage (no sleep), 'after' from the "
        "last stage's end to the command's exit"
    )
    print(
        f"{'graph':<6} {'workers':>8} {'makespan s':>11} {'bound s':>8} {'ratio':>6} "
        f"{'before s':>9} {'per stage s':>12} {'final s':>8} {'after s':>8}"
    )
    for name, workers, seconds, bound, ratio, before, per_stage, final, after in rows:
        final_text = "-" if final is None else f"{final:.2f}"
        print(
            f"{name:<6} {workers:>8} {seconds:>11.1f} {bound:>8.1f} {ratio:>6.2f} "
            f"{before:>9.2f} {per_stage:>12.2f} {final_text:>8} {after:>8.2f}"
        )
    print("target: ratio <= 1.10")
    return 0


if __name__ == "__main__":
    sys.exit(main())
