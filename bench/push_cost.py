"""Push cost: the share of a stage's time spent compressing and pushing its layer.

Builds a stage with one large layer (random data and `seq` text of
about the same size, so a bit more than --megabytes in all)
on a two-worker farm, once with the shared layer cache on (Buildah's
`--cache-to` pushes each step's layer with gzip while it builds) and,
with it off, once for each push compression the farm offers
(`FARM_PUSH_COMPRESSION`: gzip, zstd). Reports the stage time, the push
after the build within it, and the stored layer size. A dependant stage
on the other worker then pulls the layer (locality off), which gives the
pull side.

Then pushes the same kind of image with `buildah push` directly, once
per flag set, including gzip at level 0 (stored, not compressed) and
`--disable-compression`, which shows what compression itself costs:
Buildah compresses every push to a registry, so there is no truly
uncompressed push to compare with.

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

from _support import local_farm, machine_line, own_buildah, run_farm  # noqa: E402

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


# (label, FARM_LAYER_CACHE, FARM_PUSH_COMPRESSION)
SETTINGS = (
    ("layer cache on, gzip", "1", "gzip"),
    ("layer cache off, gzip", "0", "gzip"),
    ("layer cache off, zstd", "0", "zstd"),
)


def measure(layer_cache: str, compression: str, megabytes: int, rounds: int) -> dict[str, float]:
    os.environ["FARM_LAYER_CACHE"] = layer_cache
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


# (label, flags of `buildah push`)
DIRECT_PUSHES = (
    ("gzip", ["--compression-format", "gzip"]),
    ("gzip level 0", ["--compression-format", "gzip", "--compression-level", "0"]),
    ("zstd", ["--compression-format", "zstd"]),
    ("--disable-compression", ["--disable-compression"]),
)


def direct_pushes(megabytes: int) -> list[tuple[str, float, float, str]]:
    """Build the big stage with plain `buildah bud` once per flag set and time `buildah push`.

    Each push gets a freshly built image, so no layer is already in the
    registry. Returns (label, push seconds, layer MiB, layer media type).
    """
    rows = []
    with local_farm(0) as (local, state), own_buildah(local.registries_conf) as buildah:
        registry = RegistryClient(state.registry, insecure=True)
        for label, flags in DIRECT_PUSHES:
            (buildah.context / "Dockerfile").write_text(dockerfile(megabytes).split("\n\n")[0] + "\n")
            tag = uuid.uuid4().hex[:8]
            image = f"{state.registry}/bench/push:{tag}"
            buildah.run("bud", "--isolation", "chroot", "-t", image, str(buildah.context))
            seconds = buildah.run("push", "--tls-verify=false", *flags, image, f"docker://{image}")
            layer = registry.get_manifest("bench/push", tag).json()["layers"][-1]
            rows.append((label, seconds, layer["size"] / 2**20, layer["mediaType"].rsplit(".", 1)[-1]))
        registry.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--megabytes", type=int, default=64, help="approximate layer size in MiB (default: 64)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="builds per compression (default: 2)")
    args = parser.parse_args()

    results = {
        label: measure(layer_cache, compression, args.megabytes, args.rounds)
        for label, layer_cache, compression in SETTINGS
    }
    direct = direct_pushes(args.megabytes)

    print(machine_line())
    print(
        f"one stage writing ~{args.megabytes} MiB, median of {args.rounds} build(s); reader = dependant stage on another worker"
    )
    print(f"{'push':<22} {'stage s':>8} {'push s':>7} {'push share':>11} {'layer MiB':>10} {'reader s':>9}")
    for compression, row in results.items():
        share = row["push"] / row["stage"] if row["stage"] else 0.0
        print(
            f"{compression:<22} {row['stage']:>8.2f} {row['push']:>7.2f} {share:>11.0%} "
            f"{row['size']:>10.1f} {row['reader']:>9.2f}"
        )
    print()
    print("buildah push of the same kind of image, one freshly built image per row")
    print(f"{'buildah push':<24} {'push s':>7} {'layer MiB':>10} {'media type':>11}")
    for label, seconds, size, media_type in direct:
        print(f"{label:<24} {seconds:>7.2f} {size:>10.1f} {media_type:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
