"""Every benchmark runs end to end at a tiny size and prints its table.

The figures themselves are not checked: timings belong to the
benchmarks, and this only keeps each command working.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

# (script, arguments, a column header its table prints)
CASES = [
    ("planning.py", ["--dockerfiles", "20"], "dockerfiles/s"),
    ("dispatch.py", ["--stages", "4", "--chain", "2"], "p99 ms"),
    ("makespan.py", ["--seconds", "0.2", "--width", "2", "--depth", "2", "--workers", "1"], "ratio"),
    ("cached_batch.py", ["--dockerfiles", "2"], "buildah runs"),
    ("versus_buildah.py", ["--rounds", "1"], "farm/bud"),
    ("memory.py", ["--dockerfiles", "10"], "RSS MiB"),
    ("locality.py", ["--megabytes", "1", "--rounds", "1"], "pulled MiB"),
    ("push_cost.py", ["--megabytes", "2", "--rounds", "1"], "push share"),
    ("worker_profile.py", ["--builds", "1"], "farm ms/stage"),
]


@pytest.mark.parametrize(("script", "arguments", "header"), CASES, ids=[case[0] for case in CASES])
def test_benchmark_prints_table(script: str, arguments: list[str], header: str) -> None:
    for binary in ("buildah", "redis-server", "docker-registry"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed")
    if script == "worker_profile.py" and not Path(sys.executable).with_name("py-spy").exists():
        pytest.skip("py-spy is not installed (pip install -e '.[bench]')")

    result = subprocess.run(
        [sys.executable, str(BENCH / script), *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("machine: ")
    assert header in result.stdout
