"""Locality: bytes pulled from the registry and makespan, with locality on and off.

A diamond-shaped Dockerfile whose shared parent is a large toolchain
stage (random data, so nothing compresses it away): two stages start
`FROM` it and a final stage copies from both. Then a chain: the same
toolchain stage and two stages each `FROM` the one before. With
locality on, a stage runs on the worker that built its `FROM` parent,
whose storage already has the layers. The registry's access log gives
the bytes served by blob downloads during the build.

    python bench/locality.py [--megabytes 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import local_farm, machine_line, run_farm  # noqa: E402

# Access log lines of the CNCF registry: ... "GET /v2/<name>/blobs/<digest> HTTP/1.1" 200 <bytes> ...
_BLOB_GET = re.compile(r'"GET /v2/\S+/blobs/sha256:[0-9a-f]+ HTTP/[0-9.]+" 200 (\d+)')


def _toolchain(megabytes: int) -> str:
    """Return a first stage `toolchain` of `megabytes` of random data, with a new token so it is never cached."""
    token = uuid.uuid4().hex[:8]
    return (
        "FROM busybox AS toolchain\n"
        f"RUN echo {token} > /token && dd if=/dev/urandom of=/toolchain bs=1M count={megabytes} 2>/dev/null\n"
    )


def diamond(megabytes: int) -> str:
    return _toolchain(megabytes) + (
        "\n"
        "FROM toolchain AS left\n"
        "RUN sleep 1 && head -c 1024 /toolchain > /left\n"
        "\n"
        "FROM toolchain AS right\n"
        "RUN sleep 1 && tail -c 1024 /toolchain > /right\n"
        "\n"
        "FROM busybox\n"
        "COPY --from=left /left /left\n"
        "COPY --from=right /right /right\n"
    )


def chain(megabytes: int) -> str:
    return _toolchain(megabytes) + (
        "\n"
        "FROM toolchain AS compile\n"
        "RUN sleep 1 && head -c 1024 /toolchain > /compiled\n"
        "\n"
        "FROM compile\n"
        "RUN sleep 1 && cp /compiled /linked\n"
    )


def pulled_bytes(log: Path, offset: int) -> int:
    with open(log, errors="replace") as stream:
        stream.seek(offset)
        return sum(int(match.group(1)) for match in _BLOB_GET.finditer(stream.read()))


def measure(shape, locality: bool, megabytes: int, rounds: int) -> tuple[float, float]:
    """Return the median makespan (s) and bytes pulled (MiB) over `rounds` builds of `shape`."""
    os.environ["FARM_LOCALITY"] = "1" if locality else "0"
    seconds_list, pulled_list = [], []
    with local_farm(2) as (local, state), tempfile.TemporaryDirectory(prefix="bench-locality-") as scratch:
        log = Path(next(s.log for s in local.load().services if s.name == "registry"))
        for _ in range(rounds):
            (Path(scratch) / "Dockerfile").write_text(shape(megabytes))
            offset = log.stat().st_size
            seconds, result = run_farm(state, "build", scratch)
            if result.returncode != 0:
                raise SystemExit(result.stdout + result.stderr)
            seconds_list.append(seconds)
            pulled_list.append(pulled_bytes(log, offset) / 2**20)
    return statistics.median(seconds_list), statistics.median(pulled_list)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=64, help="size of the toolchain layer (default: 64)")
    parser.add_argument("--rounds", type=int, default=3, help="builds per shape and setting (default: 3)")
    args = parser.parse_args()

    rows = [
        (name, setting, *measure(shape, setting == "on", args.megabytes, args.rounds))
        for name, shape in (("diamond", diamond), ("chain", chain))
        for setting in ("on", "off")
    ]

    print(machine_line())
    print(f"{args.megabytes} MiB toolchain parent, 2 workers, median of {args.rounds} build(s)")
    print(f"{'shape':<8} {'locality':<9} {'makespan s':>11} {'pulled MiB':>11}")
    for name, setting, seconds, pulled in rows:
        print(f"{name:<8} {setting:<9} {seconds:>11.1f} {pulled:>11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
