"""What the local runtime runs and where: its services and their ports, ``symbi up``'s options, how each
service is started (its package and command), whether this machine can run it, and the progress reporter.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from symbi_common.errors import ConfigError
from symbi_common.settings import load_settings

from symbi_cli.errors import StartError
from symbi_cli.supervisor import EventKind, RestartPolicy

#: Every service of the runtime, in start order, with its HTTP port as an offset from the base port; the ones
#: in :data:`DATABASE_SERVICES` start once PostgreSQL is up, after the others.
#: Policy starts first: it registers the baseline policy set every other service's decisions need.
SERVICE_PORT_OFFSETS: Mapping[str, int] = {
    "policy": 2,
    "lifecycle": 1,
    "scheduler": 3,
    "audit": 4,
    "sandbox-agent": 5,
    "context": 6,
}
ALL_SERVICES: tuple[str, ...] = tuple(SERVICE_PORT_OFFSETS)
#: The services with a PostgreSQL read model (each gets its own database); the others keep none.
DATABASE_SERVICES: frozenset[str] = frozenset({"lifecycle", "audit"})
DEFAULT_BASE_PORT = 8080
DEFAULT_NATS_PORT = 4222


def local_nats_procs() -> int:
    """Threads running Go code for the local nats-server: half the cores (at least one). It shares the host
    with the six services and the containers; on 2 cores one thread spent 15 % less CPU per task than two
    (fewer hand-offs between threads, each a wake-up), at the same throughput (bench/RESULTS.md)."""
    return max(1, (os.cpu_count() or 2) // 2)


def package_of(service: str) -> str:
    """The import name of a service's package: ``sandbox-agent`` → ``symbi_sandbox_agent``."""
    return "symbi_" + service.replace("-", "_")


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def check_installed(services: Sequence[str]) -> None:
    """Refuse to start when a requested service's package (its ``main`` module) is not installed."""
    missing = [s for s in services if not _has_module(f"{package_of(s)}.main")]
    if missing:
        packages = ", ".join(package_of(s) for s in missing)
        raise StartError(f"service(s) {', '.join(missing)} not installed (no {packages}); run `uv sync`")


def service_command(service: str) -> list[str]:
    """How to start a service as its own process: ``python -m <package>`` (or its ``main`` module)."""
    pkg = package_of(service)
    if _has_module(f"{pkg}.__main__"):
        return [sys.executable, "-m", pkg]
    return [sys.executable, "-c", f"from {pkg}.main import main; main()"]


def docker_reachable(env: Mapping[str, str]) -> bool:
    """Whether a Docker engine answers on ``$DOCKER_HOST`` (a unix socket) or ``/var/run/docker.sock``."""
    host = env.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True  # a remote engine: the sandbox-agent itself reports whether it answers
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(host.removeprefix("unix://"))
            sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return sock.recv(12).startswith(b"HTTP/1.")
        except OSError:
            return False


#: The environment variable naming the sandbox-agent's host (``[sandbox] host_id``).
SANDBOX_HOST_ID_ENV = "SYMBI_SANDBOX__HOST_ID"


def sandbox_host_id(home: Path, env: Mapping[str, str]) -> str | None:
    """The sandbox host id ``symbi up`` gives its sandbox-agent: ``<hostname>-<hash of the home>``.

    A sandbox-agent's start-up removes every container labelled with its host id. With the bare hostname
    (the service's own default), a second runtime on the same Docker engine would remove the first one's
    running sandboxes; one id per home keeps them apart and stays the same across restarts of a home, so
    its own leftovers are still found. ``None`` when the environment or the config file names one.
    """
    try:
        configured = load_settings(env=env).sandbox.host_id
    except ConfigError:
        return None  # the sandbox-agent reports the broken configuration itself
    if configured:
        return None
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:8]
    hostname = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:55] or "host"
    return f"{hostname}-{digest}"


def database_name(service: str) -> str:
    return package_of(service)


def parse_services(text: str | None) -> list[str]:
    """``"lifecycle,policy"`` → the named services in start order; ``None``/``""``/``"all"`` → every service."""
    if not text or text.strip() == "all":
        return list(ALL_SERVICES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVICE_PORT_OFFSETS]
    if unknown:
        raise StartError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(ALL_SERVICES)}")
    return [n for n in ALL_SERVICES if n in names]


class Reporter(Protocol):
    """Where the runtime reports progress; the CLI prints, tests collect."""

    def step(self, message: str) -> None: ...

    def output(self, service: str, line: str) -> None: ...

    def event(self, service: str, message: str, kind: EventKind) -> None: ...


class SilentReporter:
    """Reports nothing (the default when a test or script drives the runtime)."""

    def step(self, message: str) -> None:
        pass

    def output(self, service: str, line: str) -> None:
        pass

    def event(self, service: str, message: str, kind: EventKind) -> None:
        pass


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """What to run and where: ``symbi up``'s options."""

    home: Path = Path(".symbi")
    services: Sequence[str] = ALL_SERVICES
    base_port: int = DEFAULT_BASE_PORT
    #: ``None`` lets nats-server pick a free port.
    nats_port: int | None = DEFAULT_NATS_PORT
    host: str = "127.0.0.1"
    grace_period: float = 10.0
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    #: The environment the services inherit (``os.environ`` if ``None``); ``SYMBI_DATABASE_URL`` here
    #: names an existing PostgreSQL server to use instead of starting one.
    env: Mapping[str, str] | None = None

    def port_of(self, service: str) -> int:
        return self.base_port + SERVICE_PORT_OFFSETS[service]
