"""Run the installed `farm` command the way a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FARM = str(Path(sys.executable).with_name("farm"))


def run_farm(env: dict[str, str], *arguments: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `farm ARGUMENTS` with the process environment plus `env`; capture its output."""
    return subprocess.run(
        [FARM, *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
        check=False,
    )


def start_farm(env: dict[str, str], *arguments: str) -> subprocess.Popen:
    """Start `farm ARGUMENTS` in the background with its output piped."""
    return subprocess.Popen(
        [FARM, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
