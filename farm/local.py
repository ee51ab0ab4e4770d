"""A whole farm on one machine: Redis, a registry and N workers on loopback.

Each service runs as its own process group, started from the binaries of
Debian's `redis-server` and `docker-registry` packages and from
`farm-worker`; their PIDs, with their start times so that a reused PID is
never signalled, are kept in `<directory>/state.json` for `stop`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import redis
import structlog

from . import redis_keys as keys
from .errors import FarmError
from .registries_conf import registries_conf

log = structlog.get_logger(__name__)

_READY_TIMEOUT_SECONDS = 60.0


@dataclass
class Service:
    """One process of the local farm."""

    name: str
    pid: int
    started: float
    log: str
    metrics_port: int | None = None


@dataclass
class LocalFarmState:
    """What `stop` needs: the services and the addresses they serve."""

    redis_url: str
    registry: str
    services: list[Service] = field(default_factory=list)

    def environment(self) -> dict[str, str]:
        """Return the variables that point `farm` and `farm-worker` at this farm."""
        return {
            "FARM_REDIS_URL": self.redis_url,
            "FARM_REGISTRY": self.registry,
            "FARM_REGISTRY_INSECURE": "1",
            "FARM_MIRROR_DOCKER_IO": "1",
        }


class LocalFarm:
    """Starts and stops a local farm whose files live below `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.state_file = self.directory / "state.json"

    # Start

    def start(
        self, workers: int = 2, redis_port: int = 0, registry_port: int = 0, metrics: bool = False
    ) -> LocalFarmState:
        """Start Redis, the registry and `workers` workers; wait until all are ready.

        With `metrics`, each worker serves Prometheus metrics on its own
        free loopback port, recorded as the service's `metrics_port`.
        """
        if self.state_file.exists():
            raise FarmError(
                f"a local farm already runs from {self.directory} (state in {self.state_file}); "
                "stop it first with: farm local down"
            )
        for binary in ("redis-server", "docker-registry", "buildah"):
            if shutil.which(binary) is None:
                raise FarmError(f"{binary} not found on PATH; install Debian's {_package(binary)} package")
        (self.directory / "logs").mkdir(parents=True, exist_ok=True)

        redis_port = redis_port or _free_port()
        registry_port = registry_port or _free_port()
        state = LocalFarmState(f"redis://127.0.0.1:{redis_port}/0", f"127.0.0.1:{registry_port}")
        try:
            state.services.append(self._start_redis(redis_port))
            self._save(state)
            state.services.append(self._start_registry(registry_port))
            self._save(state)
            _wait_for_redis(state.redis_url)
            _wait_for_registry(state.registry)
            # Workers prove their Buildah mode with a build FROM this base before they start.
            _push_busybox(state.registry, self.directory / "base-images")
            for number in range(1, workers + 1):
                state.services.append(self.start_worker(state, f"w{number}", metrics=metrics))
                self._save(state)
            self.wait_for_workers(state, [f"w{n}" for n in range(1, workers + 1)])
        except BaseException:
            self.stop()
            raise
        (self.directory / "farm.env").write_text(
            "".join(f"export {name}={value}\n" for name, value in state.environment().items())
        )
        # For the user's own Buildah: pull the farm's images and its base images.
        self.registries_conf.write_text(registries_conf(state.registry, insecure=True, mirror_docker_io=True))
        return state

    @property
    def registries_conf(self) -> Path:
        """Return the registries.conf that points Buildah at this farm's registry."""
        return self.directory / "registries.conf"

    def start_worker(
        self,
        state: LocalFarmState,
        name: str,
        extra_env: dict[str, str] | None = None,
        metrics: bool = False,
    ) -> Service:
        """Start one more worker with its own root below the farm's directory."""
        root = self.directory / "workers" / name
        command = [_farm_worker(), "--name", name, "--root", str(root)]
        env = {**os.environ, **state.environment(), **(extra_env or {})}
        port = _free_port() if metrics else None
        if port:
            env.update({"FARM_METRICS_PORT": str(port), "FARM_METRICS_ADDRESS": "127.0.0.1"})
        service = self._spawn(f"worker-{name}", command, env)
        service.metrics_port = port
        return service

    def add_worker(self, name: str, extra_env: dict[str, str] | None = None) -> Service:
        """Start one more worker on the running farm, record it for `stop`, and wait for its heartbeat.

        A worker probes its host when it starts, so one added later detects
        what changed since, such as an emulator registered in binfmt_misc.
        """
        state = self.load()
        if state is None:
            raise FarmError(f"no local farm runs from {self.directory}; start one with: farm local up")
        if any(service.name == f"worker-{name}" for service in state.services):
            raise FarmError(f"the local farm in {self.directory} already has a worker named {name!r}")
        service = self.start_worker(state, name, extra_env)
        state.services.append(service)
        self._save(state)
        self.wait_for_workers(state, [name])
        return service

    def wait_for_workers(self, state: LocalFarmState, names: list[str]) -> None:
        """Wait until each named worker has published its heartbeat."""
        client = redis.Redis.from_url(state.redis_url)
        host = socket.gethostname()
        deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
        for name in names:
            while not client.exists(keys.worker(f"{host}-{name}")):
                service = next(s for s in state.services if s.name == f"worker-{name}")
                if not _alive(service):
                    raise FarmError(
                        f"worker {name} exited during start; see {service.log}:\n{_tail(service.log)}"
                    )
                if time.monotonic() > deadline:
                    raise FarmError(
                        f"worker {name} did not start within {_READY_TIMEOUT_SECONDS:.0f} s; see {service.log}"
                    )
                time.sleep(0.2)

    # Stop

    def stop_worker(self, name: str) -> None:
        """Stop one worker (warm shutdown) and drop it from the farm's state."""
        state = self.load()
        if state is None:
            raise FarmError(f"no local farm runs from {self.directory}")
        service = next((s for s in state.services if s.name == f"worker-{name}"), None)
        if service is None:
            raise FarmError(f"no worker {name!r} in the local farm at {self.directory}")
        _terminate([service], timeout=120)
        state.services.remove(service)
        self._save(state)

    def signal_service(self, name: str, signum: int, group: bool = False) -> Service:
        """Send `signum` to one recorded service (its whole process group when `group`).

        Used to simulate faults: SIGKILL to a worker's group is a host that
        loses power mid-stage, SIGTERM to its main process a warm shutdown.
        """
        service = self._service(name)
        if _alive(service):
            if group:
                os.killpg(service.pid, signum)
            else:
                os.kill(service.pid, signum)
        return service

    def wait_stopped(self, name: str, timeout: float = 120) -> bool:
        """Wait until a recorded service has exited; drop it from the state and return True if it did."""
        service = self._service(name)
        deadline = time.monotonic() + timeout
        while _alive(service) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(service):
            return False
        _reap(service.pid)
        self._forget(service)
        return True

    def restart_server(self, name: str, pause: float = 0.0) -> Service:
        """Stop the `redis` or `registry` service, wait `pause` seconds, and start it on the same port and data.

        Redis is started without snapshots, so its data survives only when
        the caller saved it first (`SHUTDOWN SAVE` writes `dump.rdb`, which
        Redis loads again at start).
        """
        state = self._require_state()
        service = self._service(name)
        if name not in ("redis", "registry"):
            raise FarmError(f"only redis and registry can be restarted, not {name!r}")
        _terminate([service], timeout=15)
        time.sleep(pause)
        if name == "redis":
            port = int(state.redis_url.rsplit(":", 1)[1].split("/")[0])
            replacement = self._start_redis(port)
        else:
            replacement = self._start_registry(int(state.registry.rsplit(":", 1)[1]))
        state = self._require_state()
        state.services = [replacement if s.name == name else s for s in state.services]
        self._save(state)
        if name == "redis":
            _wait_for_redis(state.redis_url)
        else:
            _wait_for_registry(state.registry)
        return replacement

    def stop(self) -> None:
        """Stop every service of the farm, workers first, and forget its state."""
        state = self.load()
        if state is None:
            return
        workers = [s for s in state.services if s.name.startswith("worker-")]
        others = [s for s in state.services if not s.name.startswith("worker-")]
        # Workers finish their current stage on SIGTERM (Celery's warm
        # shutdown), so they get longer than the servers.
        _terminate(workers, timeout=120)
        _terminate(list(reversed(others)), timeout=15)
        # A worker killed in the middle of a stage leaves Buildah's
        # overlay mounts behind, which would keep its storage from being removed.
        unmount_below(self.directory)
        self.state_file.unlink(missing_ok=True)
        (self.directory / "farm.env").unlink(missing_ok=True)

    def load(self) -> LocalFarmState | None:
        if not self.state_file.exists():
            return None
        data = json.loads(self.state_file.read_text())
        services = [Service(**service) for service in data.pop("services")]
        return LocalFarmState(**data, services=services)

    # Internals

    def _require_state(self) -> LocalFarmState:
        state = self.load()
        if state is None:
            raise FarmError(f"no local farm runs from {self.directory}; start one with: farm local up")
        return state

    def _service(self, name: str) -> Service:
        service = next((s for s in self._require_state().services if s.name == name), None)
        if service is None:
            raise FarmError(f"no service {name!r} in the local farm at {self.directory}")
        return service

    def _forget(self, service: Service) -> None:
        state = self._require_state()
        state.services = [s for s in state.services if s.pid != service.pid]
        self._save(state)

    def _start_redis(self, port: int) -> Service:
        data = self.directory / "redis"
        data.mkdir(exist_ok=True)
        command = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ]
        return self._spawn("redis", command, dict(os.environ))

    def _start_registry(self, port: int) -> Service:
        data = self.directory / "registry"
        data.mkdir(exist_ok=True)
        config = self.directory / "registry.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {data}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
        )
        return self._spawn("registry", ["docker-registry", "serve", str(config)], dict(os.environ))

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> Service:
        log_path = self.directory / "logs" / f"{name}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        started = psutil.Process(process.pid).create_time()
        log.info("service started", service=name, pid=process.pid)
        return Service(name, process.pid, started, str(log_path))

    def _save(self, state: LocalFarmState) -> None:
        self.state_file.write_text(json.dumps(asdict(state), indent=2))


def unmount_below(directory: Path) -> None:
    """Unmount every mount point below `directory`, deepest first."""
    prefix = str(directory) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", point], capture_output=True, check=False)


def _terminate(services: list[Service], timeout: float) -> None:
    for service in services:
        if _alive(service):
            os.kill(service.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for service in services:
        while _alive(service) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(service):
            log.warning("service did not stop in time; killing it", service=service.name, pid=service.pid)
            os.killpg(service.pid, signal.SIGKILL)
        _reap(service.pid)


def _alive(service: Service) -> bool:
    """Return whether the process is still the one we started and not a zombie."""
    try:
        process = psutil.Process(service.pid)
        if abs(process.create_time() - service.started) > 1.0:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _wait_for_redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise FarmError(f"Redis did not start at {url}") from None
            time.sleep(0.1)


def _wait_for_registry(address: str) -> None:
    from .errors import RegistryUnavailable
    from .registry import RegistryClient

    deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
    with RegistryClient(address, insecure=True, timeout=2) as client:
        while True:
            try:
                client.ping()
                return
            except RegistryUnavailable:
                if time.monotonic() > deadline:
                    raise FarmError(f"the registry did not start at {address}") from None
                time.sleep(0.1)


def _push_busybox(address: str, workdir: Path) -> None:
    from .base_images import make_busybox_image
    from .registry import RegistryClient

    with RegistryClient(address, insecure=True) as client:
        make_busybox_image(client, workdir)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _farm_worker() -> str:
    beside = Path(sys.executable).with_name("farm-worker")
    return str(beside) if beside.exists() else (shutil.which("farm-worker") or "farm-worker")


def _package(binary: str) -> str:
    return {"redis-server": "redis-server", "docker-registry": "docker-registry"}.get(binary, binary)


def _tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
