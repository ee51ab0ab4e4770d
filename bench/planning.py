"""Planning rate: Dockerfiles parsed, planned, rendered and keyed per second, on one core.

Runs the producer's planning path in this process, without Redis or a
registry (the base image is not looked up), over generated multi-stage
Dockerfiles that share one small context. Target: 500 Dockerfiles/s.

    python bench/planning.py [--dockerfiles 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import machine_line  # noqa: E402

from farm.batch import BuildEntry  # noqa: E402
from farm.config import Settings  # noqa: E402
from farm.context import pack_context  # noqa: E402
from farm.graph import StageGraphBuilder  # noqa: E402
from farm.plan import plan_dockerfile  # noqa: E402
from farm.submit import BuildUnit  # noqa: E402

_DOCKERFILE = """\
# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM ${{BASE}} AS toolchain
RUN echo toolchain {number} > /toolchain \\
    && mkdir -p /src

FROM toolchain AS build
WORKDIR /src
COPY main.c .
RUN <<EOT
echo building {number}
cat main.c > /src/app
EOT

FROM busybox AS docs
RUN echo docs {number} > /docs

FROM busybox
COPY --from=build /src/app /usr/local/bin/app
COPY --from=docs /docs /usr/share/doc/app
ENTRYPOINT ["/usr/local/bin/app"]
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dockerfiles", type=int, default=1000, help="Dockerfiles to plan (default: 1000)")
    args = parser.parse_args()

    settings = Settings(registry="127.0.0.1:5000", mirror_docker_io=False)
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as scratch:
        root = Path(scratch) / "context"
        root.mkdir()
        (root / "main.c").write_text("int main(void) { return 0; }\n")
        paths = []
        for number in range(args.dockerfiles):
            path = Path(scratch) / f"Dockerfile.{number}"
            path.write_text(_DOCKERFILE.format(number=number))
            paths.append(path)
        context = pack_context(root, Path(scratch) / "context.tar.gz")

        started = time.process_time()
        builder = StageGraphBuilder(
            settings, registry=None, naming=lambda unit, stage: f"{unit.entry.name}/{stage}"
        )
        for number, path in enumerate(paths):
            entry = BuildEntry(name=f"app{number}", context=root, dockerfile=path)
            unit = BuildUnit(entry, "linux/amd64", plan_dockerfile(path, platform="linux/amd64"))
            builder.add(unit, context)
        seconds = time.process_time() - started

    print(machine_line())
    print(f"{'dockerfiles':>11} {'stages':>7} {'cpu s':>7} {'dockerfiles/s':>14}")
    print(
        f"{args.dockerfiles:>11} {len(builder.specs):>7} {seconds:>7.2f} {args.dockerfiles / seconds:>14.0f}"
    )
    print("target: 500 Dockerfiles/s or more on one core (CPU time of this process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
