"""Where a stage's time goes on a worker: Buildah's own commands or the farm's Python.

Starts a one-worker farm and samples the worker process with py-spy
while it builds the 3-stage BusyBox file several times (with --debian,
also the Debian + gcc example). The samples of the thread that runs
stages are split three ways: `buildah bud` running, `buildah push`
running, and the rest, which is the farm's own Redis, registry and
Celery work. Also times the imports of the `farm` command, which every
build pays before it submits.

Then times Buildah alone on the first stage of each Dockerfile, in its
own storage, three ways: `buildah bud` as a user runs it, `buildah bud`
as a worker runs it, and `buildah push` of the image that the first way
built. A worker adds `--layers` and `--cache-to`, which pushes each
step's layer to the layer cache.

Each table names how many builds or runs its figures come from, which
`--builds` sets.

Needs py-spy (`pip install py-spy`, or the project's `bench` extra).

    python bench/worker_profile.py [--builds 5] [--debian]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import local_farm, machine_line, own_buildah, run_farm  # noqa: E402
from versus_buildah import BUSYBOX  # noqa: E402

from farm.base_images import make_debian_image  # noqa: E402
from farm.registry import RegistryClient  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_SAMPLES_PER_SECOND = 250

# A sample belongs to a stage when the stage runner is on its stack, so
# Celery's own handling of the task message is not counted. The first of
# these frames found on the same stack names what the stage was doing:
# relaying a line of Buildah's output to Redis is the farm's work, even
# while `buildah bud` runs.
_STAGE_FRAME = "StageRunner.run "
_PARTS = (
    ("farm (Python)", "StageRunner._record_line "),
    ("buildah bud", "Buildah._stream "),
    ("buildah push", "Buildah.push "),
)


def split_samples(raw: Path) -> collections.Counter[str]:
    """Count py-spy raw samples of stage work by part: Buildah's commands or the farm's own code."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if _STAGE_FRAME not in stack:
            continue
        part = next((name for name, frame in _PARTS if frame in stack), "farm (Python)")
        counts[part] += int(number)
    return counts


def buildah_alone(local, state, first_stage: str, rounds: int) -> dict[str, float]:
    """Time `buildah bud` plain, `buildah bud` as a worker runs it, and `buildah push`; return medians."""
    times: dict[str, list[float]] = {"bud": [], "worker bud": [], "push": []}
    cache = f"{state.registry}/bench/cache"
    worker_flags = ["--layers", "--cache-from", cache, "--cache-to", cache]
    with own_buildah(local.registries_conf) as buildah:
        bud = ["bud", "--isolation", "chroot", "--network", "host", "--tls-verify=false"]
        dockerfile = buildah.context / "Dockerfile"
        for _ in range(rounds):
            image = f"{state.registry}/bench/alone:{uuid.uuid4().hex[:8]}"
            dockerfile.write_text(_with_token(first_stage))
            times["bud"].append(buildah.run(*bud, "-t", image, str(buildah.context)))
            times["push"].append(buildah.run("push", "--tls-verify=false", image, f"docker://{image}"))

            dockerfile.write_text(_with_token(first_stage))
            times["worker bud"].append(
                buildah.run(*bud, *worker_flags, "-t", f"{image}-w", str(buildah.context))
            )
    return {name: statistics.median(values) for name, values in times.items()}


def first_stage(dockerfile: str) -> str:
    """Return the first stage of a Dockerfile without its name, comments and blank lines."""
    lines = dockerfile.split("\n\nFROM ")[0].splitlines()
    instructions = [line for line in lines if line.strip() and not line.startswith("#")]
    instructions[0] = instructions[0].split(" AS ")[0]
    return "\n".join(instructions) + "\n"


def _with_token(stage: str) -> str:
    """Insert a RUN with a new token after the FROM line, so that no step is ever cached."""
    from_line, rest = stage.split("\n", 1)
    return f"{from_line}\nRUN echo {uuid.uuid4().hex} > /token\n{rest}"


def import_seconds() -> float:
    """Time the imports of the `farm build` path in a fresh interpreter."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import farm.cli, farm.submit, farm.follow"], check=True, capture_output=True
    )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=5, help="builds of each Dockerfile (default: 5)")
    parser.add_argument("--debian", action="store_true", help="also the Debian + gcc example (minutes)")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 1

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as scratch, local_farm(1) as (local, state):
        worker = next(service for service in state.services if service.name.startswith("worker"))
        contexts = [("3-stage busybox", Path(scratch) / "busybox")]
        contexts[0][1].mkdir()
        if args.debian:
            with RegistryClient(state.registry, insecure=True) as registry:
                make_debian_image(registry, local.directory / "base-images")
            contexts.append(("debian + gcc", EXAMPLES / "hello-c"))

        for name, context in contexts:
            raw = Path(scratch) / f"{uuid.uuid4().hex}.txt"
            sampler = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    "--rate",
                    str(_SAMPLES_PER_SECOND),
                ]
                + ["--idle", "--threads", "--pid", str(worker.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)  # py-spy attaches
            stages = 0
            for _ in range(args.builds):
                if name.startswith("3-stage"):
                    (context / "Dockerfile").write_text(BUSYBOX.format(token=uuid.uuid4().hex[:8]))
                _, result = run_farm(state, "build", "--no-cache", str(context))
                if result.returncode != 0:
                    raise SystemExit(result.stdout + result.stderr)
                stages += 3
            sampler.send_signal(signal.SIGINT)
            sampler.wait()
            rows.append((name, stages, split_samples(raw)))

        alone = []
        for name, context in contexts:
            text = (context / "Dockerfile").read_text()
            alone.append((name, buildah_alone(local, state, first_stage(text), args.builds)))

    print(machine_line())
    print(
        f"py-spy samples ({_SAMPLES_PER_SECOND}/s) of the worker thread that builds stages, --no-cache builds"
    )
    print(f"{'dockerfile':<16} {'stages':>7} {'bud %':>6} {'push %':>7} {'farm %':>7} {'farm ms/stage':>14}")
    for name, stages, counts in rows:
        total = sum(counts.values()) or 1
        farm_ms = counts["farm (Python)"] / _SAMPLES_PER_SECOND * 1000 / stages
        print(
            f"{name:<16} {stages:>7} {counts['buildah bud'] / total:>6.0%} {counts['buildah push'] / total:>7.0%} "
            f"{counts['farm (Python)'] / total:>7.0%} {farm_ms:>14.1f}"
        )
    print(f"imports of the farm command's build path: {import_seconds():.2f} s per build")
    print()
    print(f"Buildah alone on the first stage of each Dockerfile, medians of {args.builds} runs")
    print(f"{'first stage of':<16} {'bud s':>6} {'worker bud s':>13} {'push s':>7}")
    for name, figures in alone:
        print(f"{name:<16} {figures['bud']:>6.2f} {figures['worker bud']:>13.2f} {figures['push']:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
