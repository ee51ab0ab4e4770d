"""Stage reuse: shared stages built once, cached batches, narrow rebuilds, concurrent builds."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from farm import redis_keys as keys
from farm.base_images import make_busybox_image
from farm.local import LocalFarm
from farm.registry import RegistryClient

from .images import image_files


def _write_batch(root: Path, token: str, registry: str) -> Path:
    for name in ("alpha", "beta"):
        context = root / name
        context.mkdir(parents=True, exist_ok=True)
        (context / "app.txt").write_text(f"{name} app\n")
        (context / "notes.md").write_text("not copied by any stage\n")
        (context / "Dockerfile").write_text(
            "FROM busybox AS toolchain\n"
            f"RUN echo toolchain {token} > /toolchain\n"
            "\n"
            "FROM toolchain AS build\n"
            "COPY app.txt /app.txt\n"
            "RUN cat /toolchain /app.txt > /out\n"
            "\n"
            "FROM busybox\n"
            "COPY --from=build /out /out\n"
        )
    batch = root / "batch.yaml"
    batch.write_text(
        "target:\n"
        "  alpha:\n"
        "    context: alpha\n"
        f"    tags: [{registry}/reuse/alpha:{token}]\n"
        "  beta:\n"
        "    context: beta\n"
        f"    tags: [{registry}/reuse/beta:{token}]\n"
    )
    return batch


def _build_json(farm, *arguments: str) -> dict:
    result = farm.cli("build", "--json", *arguments)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def _states(outcome: dict) -> dict[str, dict[str, str]]:
    """Return entry -> stage id -> state (built or cached)."""
    return {
        entry["entry"]: {stage["id"]: stage["state"] for stage in entry["stages"]}
        for entry in outcome["entries"]
    }


def test_shared_stage_built_once(farm, tmp_path: Path) -> None:
    token = uuid.uuid4().hex[:8]
    batch = _write_batch(tmp_path, token, farm.registry_address)

    outcome = _build_json(farm, "-f", str(batch))

    states = _states(outcome)
    assert states["alpha"]["alpha/toolchain"] == "built"
    assert states["beta"]["alpha/toolchain"] == "built"
    assert "beta/toolchain" not in states["beta"]
    built = {
        stage["id"] for entry in outcome["entries"] for stage in entry["stages"] if stage["state"] == "built"
    }
    assert built == {"alpha/toolchain", "alpha/build", "alpha/2", "beta/build", "beta/2"}
    alpha = image_files(farm.registry, f"{farm.registry_address}/reuse/alpha:{token}")
    beta = image_files(farm.registry, f"{farm.registry_address}/reuse/beta:{token}")
    assert alpha["/out"].content == f"toolchain {token}\nalpha app\n".encode()
    assert beta["/out"].content == f"toolchain {token}\nbeta app\n".encode()


def test_resubmitted_batch_runs_no_buildah(farm, tmp_path: Path) -> None:
    token = uuid.uuid4().hex[:8]
    batch = _write_batch(tmp_path, token, farm.registry_address)
    _build_json(farm, "-f", str(batch))

    again = _build_json(farm, "-f", str(batch))

    for entry in again["entries"]:
        assert {stage["state"] for stage in entry["stages"]} == {"cached"}
        assert all(stage["worker"] == "" for stage in entry["stages"])
    for name in ("alpha", "beta"):
        assert farm.registry.get_manifest(f"reuse/{name}", token) is not None


def test_changed_file_rebuilds_only_its_readers(farm, tmp_path: Path) -> None:
    token = uuid.uuid4().hex[:8]
    batch = _write_batch(tmp_path, token, farm.registry_address)
    _build_json(farm, "-f", str(batch))
    (tmp_path / "beta" / "app.txt").write_text("beta app, changed\n")
    (tmp_path / "alpha" / "notes.md").write_text("changed, but no stage copies it\n")

    outcome = _build_json(farm, "-f", str(batch))

    states = _states(outcome)
    assert set(states["alpha"].values()) == {"cached"}
    assert states["beta"] == {"alpha/toolchain": "cached", "beta/build": "built", "beta/2": "built"}


def test_concurrent_builds_build_each_stage_once(farm, tmp_path: Path) -> None:
    token = uuid.uuid4().hex[:8]
    (tmp_path / "Dockerfile").write_text(
        f"FROM busybox AS slow\nRUN sleep 2 && echo {token} > /slow\n\nFROM busybox\nCOPY --from=slow /slow /slow\n"
    )
    processes = [farm.popen("build", "--json", str(tmp_path)) for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]

    assert [process.returncode for process in processes] == [0, 0], outputs
    results = [json.loads(stdout) for stdout, _ in outputs]
    for stage_id in ("slow", "1"):
        states = [
            stage["state"]
            for result in results
            for stage in result["entries"][0]["stages"]
            if stage["id"] == stage_id
        ]
        assert sorted(states) == ["built", "cached"], stage_id


def test_unserved_platform_fails_fast(farm, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN true\n")
    before = set(farm.redis.scan_iter(match=keys.build("*")))

    result = farm.cli("build", "--platform", "linux/s390x", str(tmp_path), timeout=30)

    assert result.returncode == 1
    assert "no live worker serves linux/s390x" in result.stderr
    assert "linux/amd64" in result.stderr
    assert set(farm.redis.scan_iter(match=keys.build("*"))) == before


@pytest.fixture
def solo_farm(tmp_path_factory: pytest.TempPathFactory):
    """A farm of one worker, so a test can replace it by one with empty storage."""
    local = LocalFarm(tmp_path_factory.mktemp("solo-farm"))
    state = local.start(workers=1)
    try:
        with RegistryClient(state.registry, insecure=True) as registry:
            make_busybox_image(registry, local.directory / "base-images")
        yield local, state
    finally:
        local.stop()


def test_changed_last_step_reuses_layer_cache(solo_farm, tmp_path: Path) -> None:
    local, state = solo_farm
    env = {**state.environment()}
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM busybox\nRUN echo first step > /first\nRUN echo last v1 > /last\n")
    first = _run_farm(env, "build", str(tmp_path))
    assert first.returncode == 0, first.stdout + first.stderr

    local.stop_worker("w1")
    local.add_worker("fresh")
    dockerfile.write_text("FROM busybox\nRUN echo first step > /first\nRUN echo last v2 > /last\n")
    second = _run_farm(env, "build", "--json", str(tmp_path))

    assert second.returncode == 0, second.stdout + second.stderr
    outcome = json.loads(second.stdout)
    stage = outcome["entries"][0]["stages"][0]
    assert stage["worker"].endswith("-fresh")
    import redis

    client = redis.Redis.from_url(state.redis_url)
    lines = [line.decode() for line in client.lrange(keys.stage_log(outcome["build_id"], stage["id"]), 0, -1)]
    step_two = lines.index(next(line for line in lines if line.startswith("STEP 2/3")))
    step_three = lines.index(next(line for line in lines if line.startswith("STEP 3/3")))
    assert any("Using cache" in line for line in lines[step_two:step_three]), "\n".join(lines)
    assert not any("Using cache" in line for line in lines[step_three:]), "\n".join(lines)


def _run_farm(env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess:
    import os
    import sys

    command = [str(Path(sys.executable).with_name("farm")), *arguments]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, timeout=600)


def test_chain_stays_on_one_worker(farm, tmp_path: Path) -> None:
    token = uuid.uuid4().hex[:8]
    (tmp_path / "Dockerfile").write_text(
        f"FROM busybox AS one\nRUN echo {token} > /one\n\n"
        "FROM one AS two\nRUN echo two > /two\n\n"
        "FROM two AS three\nRUN echo three > /three\n\n"
        "FROM three\nRUN cat /one /two /three > /all\n"
    )

    outcome = _build_json(farm, str(tmp_path))

    workers = {stage["id"]: stage["worker"] for stage in outcome["entries"][0]["stages"]}
    assert len(set(workers.values())) == 1, workers


def test_no_cache_runs_every_step_again(farm, tmp_path: Path) -> None:
    """--no-cache skips the registry's stage images and Buildah's step layers alike."""
    token = uuid.uuid4().hex[:8]
    tag = f"{farm.registry_address}/reuse/no-cache:{token}"
    (tmp_path / "Dockerfile").write_text(
        f"FROM busybox\nRUN echo {token} > /token && cat /proc/sys/kernel/random/uuid > /run-id\n"
    )
    _build_json(farm, "-t", tag, str(tmp_path))
    first = image_files(farm.registry, tag)["/run-id"].content

    again = _build_json(farm, "--no-cache", "-t", tag, str(tmp_path))

    stage = again["entries"][0]["stages"][0]
    assert stage["state"] == "built"
    assert image_files(farm.registry, tag)["/run-id"].content != first
