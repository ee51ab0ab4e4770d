"""End-to-end builds through real Redis, a real registry and real Buildah workers."""

from __future__ import annotations

import re
from pathlib import Path

from farm import redis_keys as keys
from farm.build_store import BuildStore

from .images import image_files, run_image

EXAMPLES = Path(__file__).parent.parent / "examples"


def _build_id(output: str) -> str:
    match = re.search(r"^build ([0-9a-f]+):", output, re.MULTILINE)
    assert match, f"no build id in output:\n{output}"
    return match.group(1)


def test_independent_stages_on_two_workers(farm, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox AS fetch\n"
        "RUN sleep 2 && echo fetched > /fetched\n"
        "\n"
        "FROM busybox AS compile\n"
        "RUN sleep 2 && echo compiled > /compiled\n"
        "\n"
        "FROM busybox\n"
        "COPY --from=fetch /fetched /out/fetched\n"
        "COPY --from=compile /compiled /out/compiled\n"
    )
    tag = f"{farm.registry_address}/e2e/three:1"

    result = farm.cli("build", "-t", tag, str(tmp_path))

    assert result.returncode == 0, result.stdout + result.stderr
    store = BuildStore(farm.redis)
    build_id = _build_id(result.stdout)
    fetch = store.result(build_id, "fetch")
    compile_ = store.result(build_id, "compile")
    assert fetch.worker != compile_.worker
    files = image_files(farm.registry, tag)
    assert files["/out/fetched"].content == b"fetched\n"
    assert files["/out/compiled"].content == b"compiled\n"
    assert "building  stage fetch on worker" in result.stdout
    assert f"tagged    {tag}@" in result.stdout


def test_failing_stage_stops_its_dependants(farm, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox AS broken\n"
        "RUN echo about to fail\n"
        "RUN false\n"
        "\n"
        "FROM broken AS after\n"
        "RUN echo should not run\n"
    )

    result = farm.cli("build", "-t", f"{farm.registry_address}/e2e/broken:1", str(tmp_path))

    assert result.returncode != 0
    assert f"{tmp_path}/Dockerfile:3: RUN false" in result.stdout
    assert "about to fail" in result.stdout
    assert "stage broken failed" in result.stdout
    assert "cancelled stages" in result.stdout
    build_id = _build_id(result.stdout)
    store = BuildStore(farm.redis)
    assert store.states(build_id) == {"broken": "failed", "after": "cancelled"}
    started = [event.stage for event in store.events(build_id, block_ms=0) if event.type == "started"]
    assert started == ["broken"]

    again = farm.cli("build", str(EXAMPLES / "two-builders"))
    assert again.returncode == 0, again.stdout + again.stderr


def test_debian_gcc_example_runs(farm, debian_image) -> None:
    tag = f"{farm.registry_address}/examples/hello-c:1"

    result = farm.cli("build", "-t", tag, str(EXAMPLES / "hello-c"))

    assert result.returncode == 0, result.stdout + result.stderr
    output = run_image(farm.registry_address, farm.registries_conf, tag, ["/usr/local/bin/hello"])
    assert output == "Hello from a C program built on the farm\n"


def test_two_builders_example_holds_both_outputs(farm) -> None:
    tag = f"{farm.registry_address}/examples/two-builders:1"

    result = farm.cli("build", "-t", tag, "--build-arg", "PORT=9090", str(EXAMPLES / "two-builders"))

    assert result.returncode == 0, result.stdout + result.stderr
    files = image_files(farm.registry, tag)
    assert b"Welcome to the farm." in files["/srv/www/index.html"].content
    assert files["/etc/httpd.conf"].content == b"H:/srv/www\nP:9090\n"
    assert not any(path.endswith(".txt") for path in files if path.startswith("/srv/www"))


def test_nothing_left_queued_after_builds(farm) -> None:
    assert farm.redis.llen("farm.stages.linux-amd64") == 0
    for key in farm.redis.scan_iter(match=keys.build("*")):
        if key.count(b":") == 2:
            assert farm.redis.hget(key, "status") in (b"succeeded", b"failed")
