"""Every corpus case through `farm plan --json`, as a user would run it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farm.cli import main

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(path.name for path in CORPUS.iterdir() if (path / "expected.json").exists())


def _plan_arguments(case: Path, expected: dict) -> list[str]:
    arguments = ["plan", "--json", "-f", str(case / "Dockerfile"), str(case)]
    given = expected.get("input", {})
    if given.get("target") is not None:
        arguments += ["--target", str(given["target"])]
    for name, value in given.get("build_args", {}).items():
        arguments += ["--build-arg", f"{name}={value}"]
    return arguments


@pytest.mark.parametrize("name", CASES)
def test_corpus_case(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    case = CORPUS / name
    expected = json.loads((case / "expected.json").read_text())

    status = main(_plan_arguments(case, expected))
    captured = capsys.readouterr()

    if "error" in expected:
        assert status != 0
        assert f"{case / 'Dockerfile'}:{expected['error']['line']}:" in captured.err
        for fragment in expected["error"]["contains"]:
            assert fragment in captured.err
        return
    assert status == 0, captured.err
    plan = json.loads(captured.out)
    assert plan["target"] == expected["target"]
    stages = [{key: stage[key] for key in ("id", "index", "base", "needs")} for stage in plan["stages"]]
    assert stages == expected["stages"]
