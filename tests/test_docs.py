"""Every runnable example in docs/ runs as written against the session's farm.

Shell blocks fenced as ```sh runnable run in order, one bash script per
page, in a directory holding a copy of examples/, with the farm's
variables set. The GitLab CI and GitHub Actions jobs of docs/ci.md run
their build steps the same way; every YAML block must parse.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
PAGES = sorted(DOCS.glob("*.md"))


def _blocks(page: Path) -> list[tuple[str, str, str]]:
    """Return (language, info, body) of each fenced block of `page`."""
    return [(match[1], match[2].strip(), match[3]) for match in FENCE.finditer(page.read_text())]


def _run_script(farm, script: str, workdir: Path) -> subprocess.CompletedProcess:
    shutil.copytree(ROOT / "examples", workdir / "examples", dirs_exist_ok=True)
    env = {**os.environ, **farm.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_docs_have_runnable_blocks() -> None:
    runnable = [page.name for page in PAGES if any(info == "runnable" for _l, info, _b in _blocks(page))]
    assert set(runnable) >= {"quickstart.md", "architecture.md", "worker-modes.md", "operations.md"}


@pytest.mark.parametrize(
    "page", [page for page in PAGES if "runnable" in page.read_text()], ids=lambda p: p.name
)
def test_runnable_shell_blocks(farm, page: Path, tmp_path: Path) -> None:
    script = "\n".join(
        body for language, info, body in _blocks(page) if language == "sh" and info == "runnable"
    )

    result = _run_script(farm, script, tmp_path)

    assert result.returncode == 0, f"{page.name}:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_yaml_blocks_parse(page: Path) -> None:
    for _language, _info, body in [block for block in _blocks(page) if block[0] == "yaml"]:
        assert list(yaml.safe_load_all(body)), body


def _ci_job(kind: str) -> dict:
    blocks = [yaml.safe_load(body) for language, info, body in _blocks(DOCS / "ci.md") if info == kind]
    assert len(blocks) == 1
    return blocks[0]


def test_gitlab_job_runs(farm, tmp_path: Path) -> None:
    job = _ci_job("gitlab-ci")["build-images"]
    # before_script installs the farm and jq, which this machine has already.
    result = _run_script(farm, "\n".join(job["script"]), tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "two-builders -> " in result.stdout
    assert (tmp_path / job["artifacts"]["paths"][0]).exists()


def test_github_job_runs(farm, tmp_path: Path) -> None:
    job = _ci_job("github-actions")["jobs"]["build-images"]
    steps = [step["run"] for step in job["steps"] if "run" in step and not step["name"].startswith("Install")]

    result = _run_script(farm, "\n".join(steps), tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert set(job["env"]) == {"FARM_REDIS_URL", "FARM_REGISTRY"}


def test_batch_example_matches_docs() -> None:
    shown = [
        yaml.safe_load(body)
        for language, info, body in _blocks(DOCS / "ci.md")
        if language == "yaml" and not info
    ]
    assert yaml.safe_load((ROOT / "examples" / "ci" / "batch.yaml").read_text()) in shown
