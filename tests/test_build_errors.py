"""Bad input to `farm build`: a clear message naming the file, line or address, and nothing queued."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from farm import redis_keys as keys


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def nothing_queued(farm):
    """Check after the test that no build and no task reached Redis."""
    before = set(farm.redis.scan_iter(match=keys.build("*")))
    yield
    assert set(farm.redis.scan_iter(match=keys.build("*"))) == before
    assert farm.redis.llen("farm.stages.linux-amd64") == 0


def test_missing_dockerfile(farm, nothing_queued, tmp_path: Path) -> None:
    result = farm.cli("build", "-f", str(tmp_path / "Missing.Dockerfile"), str(tmp_path))
    assert result.returncode == 1
    assert f"Dockerfile not found: {tmp_path}/Missing.Dockerfile" in result.stderr


def test_dockerfile_without_from(farm, nothing_queued, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("# only a comment\nARG VERSION=1\n")
    result = farm.cli("build", str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path}/Dockerfile:2: no FROM instruction" in result.stderr


def test_unknown_instruction(farm, nothing_queued, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN true\nRUNN echo typo\n")
    result = farm.cli("build", str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path}/Dockerfile:3: unknown instruction RUNN" in result.stderr


def test_missing_context(farm, nothing_queued, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    result = farm.cli("build", "-f", str(tmp_path / "Dockerfile"), str(tmp_path / "absent"))
    assert result.returncode == 1
    assert f"build context not found: {tmp_path}/absent" in result.stderr


def test_redis_unreachable(farm, nothing_queued, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    address = f"redis://127.0.0.1:{_closed_port()}/0"
    result = farm.cli("build", str(tmp_path), env={"FARM_REDIS_URL": address})
    assert result.returncode == 1
    assert f"Redis at {address} is unreachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_redis_password_not_shown(farm, nothing_queued, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    port = _closed_port()
    result = farm.cli("build", str(tmp_path), env={"FARM_REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0"})
    assert result.returncode == 1
    assert f"Redis at redis://127.0.0.1:{port}/0 is unreachable" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_registry_unreachable(farm, nothing_queued, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    address = f"127.0.0.1:{_closed_port()}"
    result = farm.cli("build", "-t", f"{address}/app:1", str(tmp_path), env={"FARM_REGISTRY": address})
    assert result.returncode == 1
    assert f"registry {address} is unreachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_tag_for_another_registry(farm, nothing_queued, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    result = farm.cli("build", "-t", "registry.example:5000/app:1", str(tmp_path))
    assert result.returncode == 1
    assert "names registry registry.example:5000" in result.stderr


def test_unknown_target(farm, nothing_queued, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox AS base\nRUN true\n")
    result = farm.cli("build", "--target", "release", str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path}/Dockerfile:1: target stage 'release' not found" in result.stderr


def test_context_over_limit(farm, nothing_queued, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\nCOPY data /data\n")
    (tmp_path / "data").write_bytes(bytes(3 * 1024**2))
    result = farm.cli("build", str(tmp_path), env={"FARM_CONTEXT_LIMIT": "1M"})
    assert result.returncode == 1
    assert f"build context {tmp_path} is 3.0 MiB" in result.stderr
    assert "over the limit of 1.0 MiB (FARM_CONTEXT_LIMIT)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            b"FROM busybox AS base\nRUN true\n\nFROM base\nRUN echo \xff\xfe\n",
            5,
            "the file is not valid UTF-8",
        ),
        (
            b"FROM busybox AS base\nRUN true\n\nFROM base\nRUN <<EOF\necho never closed\n",
            5,
            "unterminated heredoc",
        ),
        (b"FROM busybox AS base\nRUN true\n\nFROM 'base\nRUN true\n", 4, "No closing quotation"),
    ],
    ids=["invalid-utf8", "unterminated-heredoc", "unbalanced-quote"],
)
def test_mutated_dockerfile_queues_nothing(
    farm, nothing_queued, tmp_path: Path, text: bytes, line: int, message: str
) -> None:
    (tmp_path / "Dockerfile").write_bytes(text)
    result = farm.cli("build", str(tmp_path))
    assert result.returncode == 1
    assert f"farm: error: {tmp_path}/Dockerfile:{line}: " in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
