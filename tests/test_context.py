"""Packing build contexts: .dockerignore, reproducible tars and unsafe entries."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from farm.config import Settings, parse_size
from farm.context import is_ignored, pack_context, read_dockerignore, unpack_context
from farm.errors import ContextError, FarmError
from workers.context_cache import ContextCache


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


def _zeros_context(root: Path, size: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text("FROM busybox\nCOPY zeros /zeros\n")
    (root / "zeros").write_bytes(bytes(size))
    return root


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1048576),
        ("512M", 512 * 1024**2),
        ("2G", 2 * 1024**3),
        ("2GiB", 2 * 1024**3),
        ("4 kb", 4096),
    ],
)
def test_parse_size_suffixes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "1.5G", "-1", "2X"])
def test_parse_size_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_context_limit_setting() -> None:
    assert Settings.from_env({}).context_limit == 2 * 1024**3
    assert Settings.from_env({"FARM_CONTEXT_LIMIT": "512M"}).context_limit == 512 * 1024**2
    with pytest.raises(FarmError, match="FARM_CONTEXT_LIMIT: invalid size '2 apples'"):
        Settings.from_env({"FARM_CONTEXT_LIMIT": "2 apples"})


def test_pack_over_limit_rejected(tmp_path: Path) -> None:
    context = _zeros_context(tmp_path / "context", 8192)
    archive = tmp_path / "c.tar.gz"
    with pytest.raises(ContextError) as raised:
        pack_context(context, archive, limit=4096)
    message = str(raised.value)
    assert f"build context {context} is 8.0 KiB (8223 bytes)" in message
    assert "over the limit of 4.0 KiB (FARM_CONTEXT_LIMIT)" in message
    assert not archive.exists()


def test_pack_at_limit_accepted(tmp_path: Path) -> None:
    context = _zeros_context(tmp_path / "context", 100)
    packed = pack_context(
        context, tmp_path / "c.tar.gz", limit=100 + len("FROM busybox\nCOPY zeros /zeros\n")
    )
    assert sorted(packed.index) == ["Dockerfile", "zeros"]


def test_unpack_over_uncompressed_limit(tmp_path: Path) -> None:
    # A megabyte of zeros packs to about a kilobyte, below the limit.
    packed = pack_context(_zeros_context(tmp_path / "context", 1024**2), tmp_path / "c.tar.gz")
    assert packed.size < 64 * 1024
    with pytest.raises(ContextError, match="its files add up to more than the context limit of 64.0 KiB"):
        unpack_context(packed.path, tmp_path / "out", limit=64 * 1024)
    unpack_context(packed.path, tmp_path / "all", limit=2 * 1024**2)
    assert (tmp_path / "all" / "zeros").stat().st_size == 1024**2


def test_unpack_over_compressed_limit(tmp_path: Path) -> None:
    packed = pack_context(_zeros_context(tmp_path / "context", 10), tmp_path / "c.tar.gz")
    with pytest.raises(ContextError, match=r"it is \d+ B \(\d+ bytes\), over the context limit of 16 B"):
        unpack_context(packed.path, tmp_path / "out", limit=16)
    assert not (tmp_path / "out").exists()


def test_worker_rejects_oversized_context(farm, tmp_path: Path) -> None:
    packed = pack_context(_zeros_context(tmp_path / "context", 1024**2), tmp_path / "c.tar.gz")
    farm.registry.push_blob("farm/contexts", packed.path, packed.digest)
    cache = ContextCache(tmp_path / "cache", farm.registry, "farm/contexts", limit=64 * 1024)
    with pytest.raises(ContextError, match="context limit of 64.0 KiB"):
        cache.get(packed.digest)
    assert [path.name for path in (tmp_path / "cache").iterdir()] == [".lock"]
