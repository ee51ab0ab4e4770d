"""Credentials and trust: Redis with TLS and a password, a registry with TLS and basic auth, build secrets.

The end-to-end tests run one real worker against a Redis that accepts only
TLS with a password and a registry that accepts only TLS with basic
auth, both with certificates made by the test. They then look for the
passwords and the secret value in everything the farm wrote: the
output of `farm build` (with and without `--json`), the worker's log,
every command Redis received (MONITOR), every key left in Redis, and
every blob in the registry's storage.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from cryptography.fernet import Fernet

from farm import redis_keys as keys
from farm.base_images import make_busybox_image
from farm.build_secrets import open_secrets, parse_secret, seal_secrets, store_secrets
from farm.config import Settings
from farm.credentials import auth_file, registry_credentials
from farm.errors import FarmError

from .cli import run_farm
from .images import image_files
from .secure_services import REGISTRY_USER, SecureServices, start_secure_services, write_auth_file
from .worker_processes import WorkerProcess, start_worker

# Auth file parsing


def test_auth_file_entry_for_registry(tmp_path: Path) -> None:
    path = write_auth_file(tmp_path / "auth.json", "registry.example:5000", "alice", "pa:ss")

    credentials = registry_credentials(path, "registry.example:5000")

    assert credentials is not None
    assert credentials.username == "alice"
    assert credentials.password == "pa:ss"
    assert "pa:ss" not in repr(credentials)


def test_auth_file_docker_url_key(tmp_path: Path) -> None:
    token = base64.b64encode(b"bob:secret").decode()
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {"https://registry.example/v1/": {"auth": token}}}))

    credentials = registry_credentials(path, "registry.example")

    assert credentials is not None
    assert credentials.username == "bob"
    assert registry_credentials(path, "other.example") is None


def test_auth_file_invalid_entry_hides_value(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {"registry.example": {"auth": "not base64 at all!"}}}))

    with pytest.raises(FarmError) as raised:
        registry_credentials(path, "registry.example")

    assert str(path) in str(raised.value)
    assert "not base64" not in str(raised.value)


def test_auth_file_lookup_order(tmp_path: Path) -> None:
    docker = tmp_path / "home" / ".docker" / "config.json"
    docker.parent.mkdir(parents=True)
    docker.write_text("{}")
    containers = tmp_path / "run" / "containers" / "auth.json"
    containers.parent.mkdir(parents=True)
    containers.write_text("{}")
    explicit = tmp_path / "explicit.json"
    explicit.write_text("{}")
    env = {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path / "run")}

    assert auth_file({"HOME": env["HOME"]}) == docker
    assert auth_file(env) == containers
    assert auth_file({**env, "REGISTRY_AUTH_FILE": str(explicit)}) == explicit
    assert (
        auth_file({**env, "FARM_REGISTRY_AUTH_FILE": str(explicit), "REGISTRY_AUTH_FILE": "/x"}) == explicit
    )
    with pytest.raises(FarmError, match="REGISTRY_AUTH_FILE=/missing.json: file not found"):
        auth_file({"REGISTRY_AUTH_FILE": "/missing.json"})


# Settings


def test_settings_repr_hides_passwords(tmp_path: Path) -> None:
    password_file = tmp_path / "redis-password"
    password_file.write_text("from/file pw\n")
    key = Fernet.generate_key().decode()

    settings = Settings.from_env(
        {
            "FARM_REDIS_URL": "rediss://127.0.0.1:6380/0",
            "FARM_REDIS_PASSWORD_FILE": str(password_file),
            "FARM_SECRET_KEY": key,
        }
    )

    assert settings.redis_url == "rediss://:from%2Ffile%20pw@127.0.0.1:6380/0"
    assert settings.redis_address == "rediss://127.0.0.1:6380/0"
    assert "from" not in repr(settings)
    assert key not in repr(settings)


# Build secrets


def test_parse_secret_forms(tmp_path: Path) -> None:
    source = tmp_path / "token"
    source.write_bytes(b"file value")

    from_file = parse_secret(f"id=token,src={source}")
    from_env = parse_secret("id=api.key,env=API_KEY", {"API_KEY": "env value"})

    assert (from_file.id, from_file.value) == ("token", b"file value")
    assert (from_env.id, from_env.value) == ("api.key", b"env value")
    assert "value" not in repr(from_file)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("token", "expected id=ID,src=FILE"),
        ("id=../x,src=/etc/hostname", "the id must be"),
        ("id=token", "exactly one of src=FILE and env=VAR"),
        ("id=token,src=/nonexistent/token", "cannot read /nonexistent/token"),
        ("id=token,env=FARM_TEST_UNSET_VARIABLE", "FARM_TEST_UNSET_VARIABLE is not set"),
    ],
)
def test_parse_secret_errors(text: str, message: str) -> None:
    with pytest.raises(FarmError, match=re.escape(message)):
        parse_secret(text, {})


def test_seal_secrets_needs_valid_key() -> None:
    secret = parse_secret("id=token,env=V", {"V": "x"})

    with pytest.raises(FarmError, match="build secrets need FARM_SECRET_KEY"):
        seal_secrets([secret], None)
    with pytest.raises(FarmError, match="invalid FARM_SECRET_KEY") as raised:
        seal_secrets([secret], "short-key")
    assert "short-key" not in str(raised.value)


# Real servers with TLS and passwords


@dataclass
class SecureFarm:
    """The TLS servers, one worker using them, and the farm's environment."""

    services: SecureServices
    worker: WorkerProcess
    env: dict[str, str]
    secret_key: str


@pytest.fixture(scope="module")
def secure_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureFarm]:
    """Start Redis and a registry that accept only TLS with credentials, and one worker."""
    for binary in ("buildah", "redis-server", "docker-registry", "openssl", "htpasswd"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed")
    directory = tmp_path_factory.mktemp("secure")
    services = start_secure_services(directory)
    worker = None
    try:
        with services.registry_client() as registry:
            make_busybox_image(registry, directory / "base-images")
        secret_key = Fernet.generate_key().decode()
        env = {**services.environment(), "FARM_SECRET_KEY": secret_key, "FARM_LOG_LEVEL": "DEBUG"}
        worker = start_worker(
            "secure",
            directory / "worker",
            {**os.environ, **env},
            directory / "worker.log",
            client=services.redis_client(),
        )
        yield SecureFarm(services, worker, env, secret_key)
    finally:
        if worker is not None:
            worker.stop()
        services.stop()


def test_build_through_tls_with_secret(secure_farm: SecureFarm, tmp_path: Path) -> None:
    services = secure_farm.services
    secret_value = "secret-" + secrets.token_hex(16)
    (tmp_path / "token").write_text(secret_value)
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM busybox\n"
        "RUN --mount=type=secret,id=token cat /run/secrets/token > /dev/null && echo used\n"
        "RUN echo after > /after\n"
    )
    tag = f"{services.registry}/secure/app:1"
    monitor_log = tmp_path / "monitor.log"

    with _redis_monitor(services, monitor_log):
        plain = run_farm(secure_farm.env, "build", "-t", tag, "--secret", f"id=token,src={tmp_path / 'token'}",
                         str(context))  # fmt: skip
        as_json = run_farm({**secure_farm.env, "FARM_TEST_SECRET": secret_value}, "--log-level", "DEBUG",
                           "build", "--json", "--no-cache", "-t", tag, "--secret", "id=token,env=FARM_TEST_SECRET",
                           str(context))  # fmt: skip

    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    client = services.redis_client()
    build_id = re.search(r"^build ([0-9a-f]+):", plain.stdout, re.MULTILINE).group(1)
    stage_log = [line.decode() for line in client.lrange(keys.stage_log(build_id, "0"), 0, -1)]
    assert "used" in stage_log
    assert not list(Path("/dev/shm").glob("farm-secrets-*"))
    monitored = monitor_log.read_text(errors="replace")
    for submitted in (build_id, json.loads(as_json.stdout)["build_id"]):
        assert not client.exists(keys.secrets(submitted))
        assert re.search(rf'"HSET" "{re.escape(keys.secrets(submitted))}" "token" "gAAAAA', monitored)

    forbidden = _forbidden(services, secret_value)
    with services.registry_client() as registry:
        files = image_files(registry, tag)
    assert files["/after"].content == b"after\n"
    texts = {
        "farm build output": plain.stdout + plain.stderr,
        "farm build --json output": as_json.stdout + as_json.stderr,
        "worker log": secure_farm.worker.output(),
        "Redis MONITOR": monitored,
        "Redis keys": _redis_dump(client),
        "image files": "\n".join(repr(file.content) for file in files.values()),
        "registry blobs": _registry_blobs(services.registry_data),
    }
    for where, text in texts.items():
        for name, value in forbidden.items():
            assert value not in text, f"{name} found in {where}"


def test_wrong_registry_password_rejected(secure_farm: SecureFarm, tmp_path: Path) -> None:
    services = secure_farm.services
    wrong = "wrong-" + secrets.token_hex(8)
    auth = write_auth_file(tmp_path / "auth.json", services.registry, REGISTRY_USER, wrong)
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN true\n")

    result = run_farm({**secure_farm.env, "REGISTRY_AUTH_FILE": str(auth)}, "build", str(tmp_path))

    assert result.returncode == 1
    assert f"on {services.registry} was refused: authentication required or the credentials" in result.stderr
    assert "Traceback" not in result.stderr
    assert wrong not in result.stdout + result.stderr


def test_wrong_redis_password_rejected(secure_farm: SecureFarm, tmp_path: Path) -> None:
    services = secure_farm.services
    wrong = "wrong-" + secrets.token_hex(8)
    url = f"rediss://:{wrong}@127.0.0.1:{services.redis_port}/0"
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN true\n")

    result = run_farm({**secure_farm.env, "FARM_REDIS_URL": url}, "build", str(tmp_path))

    assert result.returncode == 1
    assert f"Redis at rediss://127.0.0.1:{services.redis_port}/0 rejected the credentials" in result.stderr
    assert wrong not in result.stdout + result.stderr


def test_redis_certificate_verified(secure_farm: SecureFarm, tmp_path: Path) -> None:
    services = secure_farm.services
    env = {key: value for key, value in secure_farm.env.items() if key != "FARM_REDIS_CA_FILE"}
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN true\n")

    result = run_farm(env, "build", str(tmp_path))

    assert result.returncode == 1
    assert "certificate verify failed" in result.stderr
    assert services.redis_password not in result.stdout + result.stderr


def test_secret_without_key_queues_nothing(secure_farm: SecureFarm, tmp_path: Path) -> None:
    client = secure_farm.services.redis_client()
    builds_before = client.zcard(keys.builds())
    env = {key: value for key, value in secure_farm.env.items() if key != "FARM_SECRET_KEY"}
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN true\n")

    result = run_farm(env, "build", "--secret", "id=token,env=HOME", str(tmp_path))

    assert result.returncode == 1
    assert "build secrets need FARM_SECRET_KEY" in result.stderr
    assert client.zcard(keys.builds()) == builds_before


def test_other_key_cannot_decrypt(secure_farm: SecureFarm) -> None:
    client = secure_farm.services.redis_client()
    build_id = "0123456789ab"
    other_key = Fernet.generate_key().decode()
    client.hset(keys.build(build_id), "status", "running")
    try:
        store_secrets(client, build_id, seal_secrets([parse_secret("id=token,env=V", {"V": "x"})], other_key))

        with pytest.raises(FarmError, match="this worker's FARM_SECRET_KEY differs from the producer's"):
            open_secrets(client, build_id, secure_farm.secret_key)
    finally:
        client.delete(keys.build(build_id), keys.secrets(build_id))


# Helpers


def _forbidden(services: SecureServices, secret_value: str) -> dict[str, str]:
    """Return every form in which a credential or the secret could leak, by name."""
    basic = base64.b64encode(f"{REGISTRY_USER}:{services.registry_password}".encode()).decode()
    return {
        "the Redis password": services.redis_password,
        "the registry password": services.registry_password,
        "the registry's basic auth header": basic,
        "the secret value": secret_value,
        "the secret value in base64": base64.b64encode(secret_value.encode()).decode(),
    }


class _redis_monitor:
    """Record every command Redis receives, with redis-cli MONITOR, while the block runs."""

    def __init__(self, services: SecureServices, output: Path) -> None:
        self.command = ["redis-cli", "--tls", "--cacert", str(services.certificates.ca), "-h", "127.0.0.1",
                        "-p", str(services.redis_port), "monitor"]  # fmt: skip
        # REDISCLI_AUTH keeps the password off redis-cli's command line.
        self.env = {**os.environ, "REDISCLI_AUTH": services.redis_password}
        self.output = output

    def __enter__(self) -> None:
        self.stream = open(self.output, "wb")
        self.process = subprocess.Popen(
            self.command, stdout=self.stream, stderr=subprocess.STDOUT, env=self.env
        )

    def __exit__(self, *exc_info: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.stream.close()


def _redis_dump(client: redis.Redis) -> str:
    """Return every key and value in Redis as text: strings, hashes, lists, sets, sorted sets, streams."""
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = kind
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


def _registry_blobs(data: Path) -> str:
    """Return every blob in the registry's storage, gzip layers decompressed, as text."""
    parts = []
    for path in data.rglob("data"):
        content = path.read_bytes()
        if content[:2] == b"\x1f\x8b":
            content = gzip.decompress(content)
        parts.append(content.decode("latin-1"))
    return "\n".join(parts)
