"""Dispatch latency: from a stage's `queued` event to its `started` event on a worker.

Builds chains of trivial stages (each `FROM` the previous one plus a
`LABEL`), one chain after the other, so every stage after the first of
a chain is released by a worker and picked up by an idle one: the time
between the two events is the farm's own dispatch path (Lua release,
Celery publish, broker, worker, start script). Locality is off, so a
released stage goes through the shared queue to whichever worker takes
it first, rather than back to the worker that built its parent. The
first stage of each chain is queued by the `farm` command and left out. Both events carry Redis
stream ids, which are millisecond times from the same clock. Chains are
kept short because Buildah's time per stage grows with the depth of the
image history (about 2 s at a depth of 1,000 here), which would make
the benchmark slow without changing what it measures.
Targets: p50 <= 20 ms, p99 <= 100 ms.

    python bench/dispatch.py [--stages 1000] [--chain 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import local_farm, machine_line, run_farm, stage_timeline  # noqa: E402


def write_chain(root: Path, stages: int) -> None:
    token = uuid.uuid4().hex[:8]
    lines = [f"FROM busybox AS s0\nLABEL bench.token={token} bench.step=0\n"]
    for number in range(1, stages):
        lines.append(f"FROM s{number - 1} AS s{number}\nLABEL bench.step={number}\n")
    (root / "Dockerfile").write_text("\n".join(lines))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=1000, help="stages in all (default: 1000)")
    parser.add_argument(
        "--chain",
        type=int,
        default=100,
        help="measured stages per chain, which has one more to start it (default: 100)",
    )
    parser.add_argument("--workers", type=int, default=2, help="workers (default: 2)")
    args = parser.parse_args()

    os.environ["FARM_LOCALITY"] = "0"
    with (
        tempfile.TemporaryDirectory(prefix="bench-dispatch-") as scratch,
        local_farm(args.workers) as (_, state),
    ):
        delays: list[int] = []
        moves = 0
        seconds = 0.0
        while len(delays) < args.stages:
            write_chain(Path(scratch), min(args.chain, args.stages - len(delays)) + 1)
            build_seconds, result = run_farm(state, "build", "--json", scratch)
            if result.returncode != 0:
                print(result.stdout, result.stderr, file=sys.stderr)
                return 1
            build_id = json.loads(result.stdout)["build_id"]
            spans = stage_timeline(state.redis_url, build_id)
            delays += [span.waited for span in spans[1:]]
            moves += sum(
                1 for parent, child in zip(spans, spans[1:], strict=False) if parent.worker != child.worker
            )
            seconds += build_seconds

    print(machine_line())
    print(
        "locality off; 'moved' counts stages that ran on another worker than their parent, "
        "'builds s' is the wall time of all chain builds"
    )
    print(
        f"{'stages':>7} {'chain':>6} {'workers':>8} {'moved':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'mean ms':>8} {'builds s':>9}"
    )
    print(
        f"{len(delays):>7} {args.chain:>6} {args.workers:>8} {moves:>6} {percentile(delays, 0.5):>7.0f} "
        f"{percentile(delays, 0.99):>7.0f} {max(delays):>7.0f} {statistics.mean(delays):>8.1f} {seconds:>9.1f}"
    )
    print("targets: p50 <= 20 ms, p99 <= 100 ms (stream ids have millisecond resolution)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
