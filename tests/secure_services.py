"""Redis with TLS and a password, and a registry with TLS and basic auth, for tests.

The certificates are made with openssl for this test run: a CA, and a
server certificate for IP 127.0.0.1 signed by it. The registry checks
passwords against an htpasswd file (bcrypt, the only hash it accepts).
Each server runs in its own process group and is stopped by PID.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from farm.errors import FarmError
from farm.registry import RegistryClient

REGISTRY_USER = "farm"
_READY_SECONDS = 30


@dataclass
class Certificates:
    """A CA and a server certificate and key for 127.0.0.1, as PEM files."""

    ca: Path
    certificate: Path
    key: Path


@dataclass
class SecureServices:
    """The running servers, their passwords and the files a client needs."""

    directory: Path
    certificates: Certificates
    redis_port: int
    redis_password: str = field(repr=False)
    registry_port: int
    registry_password: str = field(repr=False)
    registry_data: Path
    auth_file: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    @property
    def redis_url(self) -> str:
        return f"rediss://:{self.redis_password}@127.0.0.1:{self.redis_port}/0"

    def environment(self) -> dict[str, str]:
        """Return the variables that point `farm` and `farm-worker` at these servers."""
        return {
            "FARM_REDIS_URL": self.redis_url,
            "FARM_REDIS_CA_FILE": str(self.certificates.ca),
            "FARM_REGISTRY": self.registry,
            "FARM_REGISTRY_INSECURE": "0",
            "FARM_REGISTRY_CA_FILE": str(self.certificates.ca),
            "REGISTRY_AUTH_FILE": str(self.auth_file),
            "FARM_MIRROR_DOCKER_IO": "1",
        }

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, ssl_ca_certs=str(self.certificates.ca))

    def registry_client(self) -> RegistryClient:
        from farm.credentials import Credentials

        credentials = Credentials(REGISTRY_USER, self.registry_password, self.auth_file)
        return RegistryClient(
            self.registry, insecure=False, ca_file=self.certificates.ca, credentials=credentials
        )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=30)


def make_certificates(directory: Path) -> Certificates:
    """Make a CA and a server certificate for IP 127.0.0.1 that it signs, valid for one day."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    certificate, key = directory / "server.crt", directory / "server.key"
    request, extensions = directory / "server.csr", directory / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=farm test CA",
             "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", str(key), "-out", str(request))  # fmt: skip
    _openssl("x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "1", "-extfile", str(extensions), "-out", str(certificate))  # fmt: skip
    return Certificates(ca, certificate, key)


def write_auth_file(path: Path, registry: str, user: str, password: str) -> Path:
    """Write a containers auth.json with `user:password` for `registry`, mode 0600."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {registry: {"auth": token}}}))
    path.chmod(0o600)
    return path


def start_secure_services(directory: Path) -> SecureServices:
    """Start Redis (TLS only, with a password) and a registry (TLS, htpasswd), and wait for both."""
    certificates = make_certificates(directory / "tls")
    services = SecureServices(
        directory=directory,
        certificates=certificates,
        redis_port=_free_port(),
        redis_password="redis-" + secrets.token_hex(16),
        registry_port=_free_port(),
        registry_password="registry-" + secrets.token_hex(16),
        registry_data=directory / "registry",
        auth_file=directory / "auth.json",
    )
    write_auth_file(services.auth_file, services.registry, REGISTRY_USER, services.registry_password)
    try:
        services.processes.append(_start_redis(services))
        services.processes.append(_start_registry(services))
        _wait_for_redis(services)
        _wait_for_registry(services)
    except BaseException:
        services.stop()
        raise
    return services


def _start_redis(services: SecureServices) -> subprocess.Popen:
    # A config file keeps the password out of the process's command line.
    config = services.directory / "redis.conf"
    tls = services.certificates
    config.write_text(
        "bind 127.0.0.1\n"
        "port 0\n"
        f"tls-port {services.redis_port}\n"
        f"tls-cert-file {tls.certificate}\n"
        f"tls-key-file {tls.key}\n"
        f"tls-ca-cert-file {tls.ca}\n"
        "tls-auth-clients no\n"
        f"requirepass {services.redis_password}\n"
        f"dir {services.directory}\n"
        'save ""\n'
        "appendonly no\n"
    )
    config.chmod(0o600)
    return _spawn(["redis-server", str(config)], services.directory / "redis.log")


def _start_registry(services: SecureServices) -> subprocess.Popen:
    htpasswd = services.directory / "htpasswd"
    result = subprocess.run(
        ["htpasswd", "-Bbn", REGISTRY_USER, services.registry_password],
        capture_output=True,
        text=True,
        check=True,
    )
    htpasswd.write_text(result.stdout)
    config = services.directory / "registry.yml"
    tls = services.certificates
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {services.registry_data}\n"
        f"http:\n  addr: 127.0.0.1:{services.registry_port}\n"
        f"  tls:\n    certificate: {tls.certificate}\n    key: {tls.key}\n"
        f"auth:\n  htpasswd:\n    realm: farm-test\n    path: {htpasswd}\n"
    )
    return _spawn(["docker-registry", "serve", str(config)], services.directory / "registry.log")


def _spawn(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as output:
        return subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


def _wait_for_redis(services: SecureServices) -> None:
    client = services.redis_client()
    deadline = time.monotonic() + _READY_SECONDS
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                log = (services.directory / "redis.log").read_text()
                raise RuntimeError(f"Redis with TLS did not start: {log}") from None
            time.sleep(0.1)


def _wait_for_registry(services: SecureServices) -> None:
    deadline = time.monotonic() + _READY_SECONDS
    with services.registry_client() as client:
        while True:
            try:
                client.ping()
                return
            except FarmError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"registry with TLS did not start: {(services.directory / 'registry.log').read_text()}"
                    ) from None
                time.sleep(0.1)


def _openssl(*arguments: str) -> None:
    subprocess.run(["openssl", *arguments], capture_output=True, check=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
