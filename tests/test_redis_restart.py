"""Redis restarts: with its data kept the batch completes, with its data lost `farm build` reports it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .chaos import ChaosFarm, start_chaos_farm, unique_token, write_context
from .images import image_files

DOWN_SECONDS = 5.0


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosFarm]:
    yield from start_chaos_farm(tmp_path_factory.mktemp("redis-restart-farm"), ["w1", "w2"], {})


def _dockerfile(token: str) -> str:
    return (
        "FROM busybox AS first\n"
        f"RUN sleep 3 && echo {token} > /marker\n"
        "\n"
        "FROM first AS second\n"
        "RUN sleep 1 && cat /marker > /copy\n"
        "\n"
        "FROM busybox\n"
        "COPY --from=second /copy /copy\n"
    )


def test_redis_restart_keeps_batch(chaos: ChaosFarm, tmp_path: Path) -> None:
    token = unique_token()
    context = write_context(tmp_path / "context", _dockerfile(token))
    tag = f"{chaos.state.registry}/redis/kept:{token}"
    build = chaos.popen("build", "-t", tag, str(context))

    chaos.wait_running()
    # SHUTDOWN SAVE writes dump.rdb, which Redis loads when it starts again.
    chaos.redis.shutdown(save=True)
    restart = threading.Thread(target=chaos.local.restart_server, args=("redis", DOWN_SECONDS))
    restart.start()
    stdout, stderr = build.communicate(timeout=300)
    restart.join()

    assert build.returncode == 0, stdout + stderr
    assert "lost connection to Redis" in stdout
    assert "reconnected to Redis" in stdout
    assert image_files(chaos.registry, tag)["/copy"].content == f"{token}\n".encode()


def test_redis_data_loss_reported(chaos: ChaosFarm, tmp_path: Path) -> None:
    token = unique_token()
    context = write_context(tmp_path / "context", _dockerfile(token))
    tag = f"{chaos.state.registry}/redis/lost:{token}"
    build = chaos.popen("build", "-t", tag, str(context))

    build_id, _stage, _worker = chaos.wait_running()
    chaos.wait_event(build_id, "built", timeout=120)
    chaos.local.restart_server("redis")
    stdout, stderr = build.communicate(timeout=300)

    assert build.returncode != 0
    assert f"build {build_id} is no longer in Redis" in stderr
    assert "Traceback" not in stderr

    again = chaos.cli("build", "-t", tag, str(context))

    assert again.returncode == 0, again.stdout + again.stderr
    # The first stage was pushed before Redis lost the build, so it is reused.
    assert "cached    stage" in again.stdout
    assert "building  stage first" not in again.stdout
    assert image_files(chaos.registry, tag)["/copy"].content == f"{token}\n".encode()
