"""The farm's image of each BusyBox corpus case against `buildah bud` of the whole file.

Files (path, content, mode) and the config fields a user sees must match.
Where Buildah 1.28 cannot build the file itself (heredocs), the case's
`files` in expected.json lists what BuildKit makes instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from .images import image_config, image_files
from .test_plan_corpus import CASES, CORPUS

CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts", "Volumes")

SKIPPED = {
    "platform-flag": "starts from golang and debian-slim images, which the farm cannot make offline",
    "copy-from-external-image": "copies from debian:bookworm and an image app2 that does not exist",
    "global-arg-in-from": "starts from busybox:1.36, a tag the offline base images do not have",
}

# Measured with Buildah 1.28 and chroot isolation: a RUN with
# --mount=type=bind,from=<image> keeps none of its changes (the layer has
# only mount points). The farm therefore refuses such stages unless a
# worker with a newer Buildah is live (tests/test_mount_from.py).
BUILDAH_1_28_MOUNT_BUG = {
    "mount-from-stage": "the farm refuses RUN --mount from= on Buildah 1.28, which drops its changes",
    "mount-options-any-case": "the farm refuses RUN --mount from= on Buildah 1.28, which drops its changes",
}


def _fidelity_cases() -> list:
    cases = []
    for name in CASES:
        expected = json.loads((CORPUS / name / "expected.json").read_text())
        if "error" in expected:
            continue
        marks = [pytest.mark.skip(reason=SKIPPED[name])] if name in SKIPPED else []
        if name in BUILDAH_1_28_MOUNT_BUG and _buildah_version() == (1, 28):
            marks.append(pytest.mark.skip(reason=BUILDAH_1_28_MOUNT_BUG[name]))
        cases.append(pytest.param(name, marks=marks))
    return cases


def _buildah_version() -> tuple[int, ...]:
    try:
        output = subprocess.run(["buildah", "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return (0,)
    match = re.search(r"version (\d+)\.(\d+)", output)
    return (int(match.group(1)), int(match.group(2))) if match else (0,)


def _inputs(expected: dict) -> list[str]:
    given = expected.get("input", {})
    arguments = []
    if given.get("target") is not None:
        arguments += ["--target", str(given["target"])]
    for name, value in given.get("build_args", {}).items():
        arguments += ["--build-arg", f"{name}={value}"]
    return arguments


def _buildah_bud(
    farm, tmp_path: Path, dockerfile: Path, context: Path, arguments: list[str], tag: str
) -> None:
    """Build with plain `buildah bud` in its own storage and push the result to the farm's registry."""
    storage = [
        "buildah",
        "--root",
        str(tmp_path / "storage"),
        "--runroot",
        str(tmp_path / "run"),
        "--storage-driver",
        "vfs",
    ]
    env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(farm.registries_conf)}
    build = subprocess.run(
        [
            *storage,
            "bud",
            "--isolation",
            "chroot",
            "-f",
            str(dockerfile),
            "-t",
            tag,
            *arguments,
            str(context),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    push = subprocess.run(
        [*storage, "push", tag, f"docker://{tag}"], capture_output=True, text=True, env=env, check=False
    )
    assert push.returncode == 0, push.stdout + push.stderr


def _files_by_path(files: dict) -> dict:
    return {path: (file.mode & 0o7777, file.content, file.linkname) for path, file in files.items()}


@pytest.mark.parametrize("name", _fidelity_cases())
def test_farm_image_matches_buildah(farm, tmp_path: Path, name: str) -> None:
    case = CORPUS / name
    expected = json.loads((case / "expected.json").read_text())
    dockerfile = case / "Dockerfile"
    arguments = _inputs(expected)
    farm_tag = f"{farm.registry_address}/fidelity/farm:{name}-{uuid.uuid4().hex[:6]}"

    result = farm.cli("build", "-t", farm_tag, "-f", str(dockerfile), *arguments, str(case))

    assert result.returncode == 0, result.stdout + result.stderr
    farm_files = image_files(farm.registry, farm_tag)
    if "files" in expected:
        for path, expected_file in expected["files"].items():
            assert path in farm_files, f"{path} missing from the farm's image"
            assert farm_files[path].content == expected_file["content"].encode(), path
            assert farm_files[path].mode & 0o7777 == int(expected_file["mode"], 8), path
        return

    reference_tag = f"{farm.registry_address}/fidelity/buildah:{name}-{uuid.uuid4().hex[:6]}"
    _buildah_bud(farm, tmp_path, dockerfile, case, arguments, reference_tag)
    reference_files = image_files(farm.registry, reference_tag)
    assert _files_by_path(farm_files) == _files_by_path(reference_files)
    farm_config = image_config(farm.registry, farm_tag)
    reference_config = image_config(farm.registry, reference_tag)
    for field in CONFIG_FIELDS:
        assert farm_config.get(field) == reference_config.get(field), field
