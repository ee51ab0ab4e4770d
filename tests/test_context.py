"""Packing build contexts: .dockerignore, reproducible tars and unsafe entries."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from farm.context import is_ignored, pack_context, read_dockerignore, unpack_context
from farm.errors import ContextError


def _names(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


def test_dockerignore_last_rule_wins(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("*.log\n!keep.log\nbuild/\n# comment\n")
    rules = read_dockerignore(tmp_path)
    assert is_ignored("debug.log", rules)
    assert not is_ignored("keep.log", rules)
    assert is_ignored("build/out/app", rules)
    assert not is_ignored("src/main.c", rules)


def test_double_star_matches_any_depth(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("**/*.tmp\n")
    rules = read_dockerignore(tmp_path)
    assert is_ignored("a.tmp", rules)
    assert is_ignored("a/b/c.tmp", rules)
    assert not is_ignored("a/b/c.txt", rules)


def test_pack_is_reproducible_and_filtered(tmp_path: Path) -> None:
    context = tmp_path / "context"
    (context / "src").mkdir(parents=True)
    (context / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (context / "notes.log").write_text("noise")
    (context / ".dockerignore").write_text("*.log\n")

    first = pack_context(context, tmp_path / "one.tar.gz")
    os.utime(context / "src" / "main.c", (1, 1))
    second = pack_context(context, tmp_path / "two.tar.gz")

    assert first.digest == second.digest
    assert _names(first.path) == [".dockerignore", "src", "src/main.c"]


def test_pack_keeps_modes_and_links(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    script = context / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    (context / "alias.sh").symlink_to("run.sh")

    packed = pack_context(context, tmp_path / "c.tar.gz")
    with tarfile.open(packed.path) as tar:
        assert tar.getmember("run.sh").mode == 0o755
        assert tar.getmember("alias.sh").linkname == "run.sh"


def test_link_leaving_context_is_refused(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "escape").symlink_to("../../etc/passwd")
    with pytest.raises(ContextError, match="leaves the build context"):
        pack_context(context, tmp_path / "c.tar.gz")


def test_absolute_link_is_refused(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(ContextError, match="absolute path"):
        pack_context(context, tmp_path / "c.tar.gz")


def test_missing_context_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ContextError, match="build context not found"):
        pack_context(tmp_path / "absent", tmp_path / "c.tar.gz")


@pytest.mark.parametrize("name", ["../outside", "/etc/evil"])
def test_unpack_refuses_paths_outside(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        member = tarfile.TarInfo(name)
        member.size = 4
        tar.addfile(member, io.BytesIO(b"evil"))
    with pytest.raises(ContextError, match="refusing context archive"):
        unpack_context(archive, tmp_path / "out")


def test_dockerignore_excluded_copy_source(farm, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\nCOPY secret.txt /app/\n")
    (tmp_path / "secret.txt").write_text("kept out\n")
    (tmp_path / ".dockerignore").write_text("# local files\n*.txt\n")
    before = set(farm.redis.scan_iter(match="farm:build:*"))

    result = farm.cli("build", str(tmp_path))

    assert result.returncode != 0
    assert f"{tmp_path / 'Dockerfile'}:2:" in result.stderr
    assert "'secret.txt' not found in the build context" in result.stderr
    assert "excluded by .dockerignore line 2 ('*.txt')" in result.stderr
    assert "Traceback" not in result.stderr
    assert set(farm.redis.scan_iter(match="farm:build:*")) == before
