"""The deployment files: compose.yaml validates, the service units parse and run farm-worker."""

from __future__ import annotations

import plistlib
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "deploy" / "systemd" / "farm-worker.service"
PLIST = ROOT / "deploy" / "launchd" / "org.buildfarm.worker.plist"
WORKER_ENV = ROOT / "deploy" / "worker.env"
OPERATIONS = ROOT / "docs" / "operations.md"


def _compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    pytest.fail(
        "neither `docker compose` nor `docker-compose` is installed; scripts/setup installs docker-compose"
    )


def _entry_point() -> str:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["farm-worker"] == "workers.main:main"
    return "farm-worker"


def test_compose_file_validates() -> None:
    result = subprocess.run(
        [*_compose_command(), "-f", str(ROOT / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )

    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert set(services) == {"redis", "registry", "worker", "metrics", "producer"}
    assert "--appendonly" in services["redis"]["command"]
    worker = services["worker"]
    assert worker["command"][0] == _entry_point()
    assert any("/dev/fuse" in str(device) for device in worker["devices"])
    assert "ALL" in worker["cap_add"]
    assert "seccomp=unconfined" in worker["security_opt"]
    # Scaling with --scale worker=N needs no fixed name or host port, and
    # each replica its own (anonymous) storage volume.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert any("/var/lib/farm-worker" in str(volume) for volume in worker["volumes"])
    assert services["producer"]["profiles"] == ["producer"]
    assert services["producer"]["entrypoint"] == ["farm"]


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    farm_worker = Path(
        shutil.which("farm-worker") or Path(__import__("sys").executable).with_name("farm-worker")
    )
    text = UNIT.read_text()
    assert "ExecStart=/opt/farm/bin/farm-worker " in text
    # Verify checks that ExecStart is executable: point it at this venv's entry point.
    unit = tmp_path / "farm-worker.service"
    unit.write_text(
        text.replace("/opt/farm/bin/farm-worker", str(farm_worker)).replace(
            "/etc/farm/worker.env", str(WORKER_ENV)
        )
    )

    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert "farm-worker.service" not in result.stderr, result.stderr
    assert Path(farm_worker).name == _entry_point()


def test_launchd_plist_parses() -> None:
    plist = plistlib.loads(PLIST.read_bytes())

    assert plist["Label"] == "org.buildfarm.worker"
    assert Path(plist["ProgramArguments"][0]).name == _entry_point()
    assert plist["EnvironmentVariables"]["FARM_BUILDAH_MODE"] == "docker-with-fuse"


def test_worker_environment_documented() -> None:
    documented = OPERATIONS.read_text()
    names = [line.split("=", 1)[0] for line in WORKER_ENV.read_text().splitlines() if "=" in line]
    names += [name for name in plistlib.loads(PLIST.read_bytes())["EnvironmentVariables"] if name != "PATH"]
    for name in names:
        assert f"`{name}`" in documented, f"{name} is not documented in {OPERATIONS}"
