"""One Dockerfile on the farm (one worker) against plain `buildah bud` on the same machine.

Alternates the two for several rounds, each build from scratch for its
stages (the farm with --no-cache, Buildah without --layers) but with the
base images already local, and reports the median time of each and
their ratio. Also runs `buildah bud --jobs 2`, Buildah's own parallel
stages on one host, and `buildah bud` followed by a push of the result
to the same registry, which is what a CI job on one machine does to
deliver its image. Target: farm / buildah <= 1.10.

    python bench/versus_buildah.py [--rounds 3] [--debian]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import OwnBuildah, local_farm, machine_line, own_buildah, run_farm  # noqa: E402

from farm.base_images import make_debian_image  # noqa: E402
from farm.registry import RegistryClient  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

BUSYBOX = """\
FROM busybox AS fetch
RUN echo fetched {token} > /fetched

FROM busybox AS compile
RUN echo compiled {token} > /compiled

FROM busybox
COPY --from=fetch /fetched /out/fetched
COPY --from=compile /compiled /out/compiled
"""


def buildah_bud(buildah: OwnBuildah, context: Path, jobs: int | None, push_to: str | None) -> float:
    """Time `buildah bud` of `context`; with `push_to`, also the push of its result there."""
    bud = ["bud", "--isolation", "chroot"]
    if jobs:
        bud += ["--jobs", str(jobs)]
    if push_to:
        bud += ["-t", push_to]
    seconds = buildah.run(*bud, str(context))
    if push_to:
        seconds += buildah.run("push", "--tls-verify=false", push_to, f"docker://{push_to}")
    return seconds


def compare(name: str, context: Path, rounds: int, state, buildah: OwnBuildah, rewrite) -> tuple:
    """Alternate the farm and the three Buildah runs `rounds` times; return the medians."""
    times: dict[str, list[float]] = {"farm": [], "bud": [], "jobs": [], "push": []}
    for _ in range(rounds):
        rewrite()
        seconds, result = run_farm(state, "build", "--no-cache", str(context))
        if result.returncode != 0:
            raise SystemExit(result.stdout + result.stderr)
        times["farm"].append(seconds)
        rewrite()
        times["bud"].append(buildah_bud(buildah, context, None, None))
        rewrite()
        times["jobs"].append(buildah_bud(buildah, context, 2, None))
        rewrite()
        tag = f"{state.registry}/bench/versus:{uuid.uuid4().hex[:8]}"
        times["push"].append(buildah_bud(buildah, context, None, tag))
    return name, *(statistics.median(times[key]) for key in ("farm", "bud", "jobs", "push"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (default: 3)")
    parser.add_argument(
        "--debian", action="store_true", help="also the Debian + gcc example (debootstrap, minutes)"
    )
    args = parser.parse_args()

    rows = []
    with local_farm(1) as (local, state), own_buildah(local.registries_conf) as buildah:
        context = buildah.context

        def rewrite_busybox() -> None:
            (context / "Dockerfile").write_text(BUSYBOX.format(token=uuid.uuid4().hex[:8]))

        rows.append(compare("3-stage busybox", context, args.rounds, state, buildah, rewrite_busybox))
        if args.debian:
            with RegistryClient(state.registry, insecure=True) as registry:
                make_debian_image(registry, local.directory / "base-images")
            rows.append(
                compare("debian + gcc", EXAMPLES / "hello-c", args.rounds, state, buildah, lambda: None)
            )

    print(machine_line())
    print(
        "one farm worker (overlay, chroot) against buildah bud on the same machine; medians of alternated rounds"
    )
    print(
        f"{'dockerfile':<16} {'farm s':>7} {'bud s':>7} {'bud --jobs 2 s':>15} {'bud + push s':>13} "
        f"{'farm/bud':>9} {'farm/(bud + push)':>18}"
    )
    for name, farm, bud, jobs, pushed in rows:
        print(
            f"{name:<16} {farm:>7.2f} {bud:>7.2f} {jobs:>15.2f} {pushed:>13.2f} "
            f"{farm / bud:>9.2f} {farm / pushed:>18.2f}"
        )
    print(
        "target: farm/bud <= 1.10; the farm's time includes the farm command's own start-up and the "
        "push of every stage; 'bud + push' also pushes the final image to the farm's registry"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
