"""`RUN --mount ... from=`: refused where only Buildah 1.28 workers would build it wrongly."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm import redis_keys as keys
from farm.buildah_support import builds_mount_from, mount_from_line

CORPUS = Path(__file__).parent / "corpus"


@pytest.mark.parametrize(
    ("version", "able"),
    [
        ("1.28.2", False),
        ("1.28", False),
        ("1.27.0", False),
        ("1.29.0", True),
        ("1.39.3", True),
        (None, False),
    ],
)
def test_builds_mount_from_by_version(version: str | None, able: bool) -> None:
    assert builds_mount_from(version) is able


def test_mount_from_line_finds_the_step() -> None:
    rendered = (
        "ARG A=1\nFROM busybox\nRUN echo hi\n"
        "RUN --network=host --mount=type=bind,from=reg/stages:abc,target=/m cp /m/x /x\n"
    )
    assert mount_from_line(rendered, [3, 4, 9]) == 9


def test_mount_from_line_ignores_plain_mounts() -> None:
    rendered = "FROM busybox\nRUN --mount=type=cache,target=/var/cache echo hi\n"
    assert mount_from_line(rendered, [1, 2]) is None


def test_build_refused_on_old_buildah(farm) -> None:
    workers = farm.cli("workers", "--json")
    if '"buildah": "1.28' not in workers.stdout:
        pytest.skip("the workers run a Buildah newer than 1.28, which builds these stages")
    case = CORPUS / "mount-from-stage"
    before = set(farm.redis.scan_iter(match=keys.build("*")))

    result = farm.cli("build", "-f", str(case / "Dockerfile"), str(case))

    assert result.returncode == 1
    assert (
        f"{case / 'Dockerfile'}:5: RUN --mount with from= needs a worker whose Buildah is newer than 1.28"
        in (result.stderr)
    )
    assert set(farm.redis.scan_iter(match=keys.build("*"))) == before
