"""Push cost: the share of a stage's time spent compressing and pushing its layer.

Builds a stage with one large layer (half random, half text-like data)
on a one-worker farm for each push compression the farm offers
(`FARM_PUSH_COMPRESSION`: gzip, zstd, none) and reports the stage time,
the push time within it, and the stored layer size. A dependant stage on
a second worker then pulls the layer (locality off), which gives the
pull side.

    python bench/push_cost.py [--megabytes 64] [--rounds 2]
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

from _support import local_farm, machine_line, run_farm  # noqa: E402

from farm.registry import RegistryClient  # noqa: E402


def dockerfile(megabytes: int) -> str:
    half = max(1, megabytes // 2)
    return (
        "FROM busybox AS big\n"
        f"RUN echo {uuid.uuid4().hex} > /token"
        f" && dd if=/dev/urandom of=/random bs=1M count={half} 2>/dev/null"
        f" && seq 1 $(({half} * 140000)) > /text\n"
        "\n"
        "FROM big AS reader\n"
        "RUN wc -c /random /text > /sizes\n"
    )


def layer_megabytes(registry: RegistryClient, repository: str, digest: str) -> float:
    manifest = registry.get_manifest(repository, digest)
    return sum(layer["size"] for layer in manifest.json()["layers"]) / 2**20


def measure(compression: str, megabytes: int, rounds: int) -> dict[str, float]:
    os.environ["FARM_PUSH_COMPRESSION"] = compression
    os.environ["FARM_LOCALITY"] = "0"
    rows: dict[str, list[float]] = {"stage": [], "push": [], "reader": [], "size": []}
    with local_farm(2) as (_, state), tempfile.TemporaryDirectory(prefix="bench-push-") as scratch:
        registry = RegistryClient(state.registry, insecure=True)
        for _ in range(rounds):
            (Path(scratch) / "Dockerfile").write_text(dockerfile(megabytes))
            _, result = run_farm(state, "build", "--json", scratch)
            if result.returncode != 0:
                raise SystemExit(result.stdout + result.stderr)
            stages = {stage["id"]: stage for stage in json.loads(result.stdout)["entries"][0]["stages"]}
            rows["stage"].append(stages["big"]["seconds"])
            rows["push"].append(stages["big"]["push_seconds"])
            rows["reader"].append(stages["reader"]["seconds"])
            rows["size"].append(layer_megabytes(registry, "farm/stages", stages["big"]["digest"]))
        registry.close()
    return {name: statistics.median(values) for name, values in rows.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--megabytes", type=int, default=64, help="approximate layer size in MiB (default: 64)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="builds per compression (default: 2)")
    args = parser.parse_args()

    results = {
        compression: measure(compression, args.megabytes, args.rounds)
        for compression in ("gzip", "zstd", "none")
    }

    print(machine_line())
    print(
        f"one stage writing ~{args.megabytes} MiB, medians of {args.rounds} builds; reader = dependant stage on another worker"
    )
    print(
        f"{'compression':<12} {'stage s':>8} {'push s':>7} {'push share':>11} {'layer MiB':>10} {'reader s':>9}"
    )
    for compression, row in results.items():
        share = row["push"] / row["stage"] if row["stage"] else 0.0
        print(
            f"{compression:<12} {row['stage']:>8.2f} {row['push']:>7.2f} {share:>11.0%} "
            f"{row['size']:>10.1f} {row['reader']:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
