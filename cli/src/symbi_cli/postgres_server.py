"""A local PostgreSQL server as a child process, from the ``pgserver`` wheel, and its databases::

    url, pg = database_url_or_start(Path(".symbi/pg"), database="symbi")
    try:
        ...
    finally:
        if pg is not None:
            pg.stop()

``SYMBI_DATABASE_URL`` names an existing server to use instead of starting one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from symbi_cli.errors import InfraError
from symbi_cli.processes import pid_alive

#: Environment variable naming an existing PostgreSQL server to use instead of starting one.
DATABASE_URL_ENV = "SYMBI_DATABASE_URL"

_DB_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


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
