"""A local PostgreSQL server as a child process, from the ``pgserver`` wheel, and its databases::

    url, pg = database_url_or_start(Path(".symbi/pg"), database="symbi")
    try:
        ...
    finally:
        if pg is not None:
            pg.stop()

``SYMBI_DATABASE_URL`` names an existing server to use instead of starting one.

Services never log in as the superuser: :func:`ensure_service_database` gives each service a login role
with no privilege that owns its own database, and a server started with ``password_file`` requires every
role's password (SCRAM-SHA-256), over its unix socket too.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import asyncpg
from symbi_common.key_material import write_atomically

from symbi_cli.errors import InfraError
from symbi_cli.postgres_roles import (
    check_db_name,
    create_database_if_missing,
    new_password,
    read_password,
    scram_verifier,
    with_database,
    with_login,
)
from symbi_cli.private_files import private_dir
from symbi_cli.processes import pid_alive

#: Environment variable naming an existing PostgreSQL server to use instead of starting one.
DATABASE_URL_ENV = "SYMBI_DATABASE_URL"

#: pg_hba.conf of a server started with a ``password_file``: no login without the role's password.
SCRAM_ONLY_HBA = """\
# Written by symbi (symbi_cli.postgres_server): every login needs its role's password, checked with
# SCRAM-SHA-256, over the unix socket too. The server listens on no TCP address.
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


def _import_pgserver() -> Any:
    # pgserver computes a runtime directory at import time; platformdirs warns when XDG_RUNTIME_DIR is unset.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    return pgserver


async def create_database(url: str, name: str) -> str:
    """Create database ``name`` on the server of ``url`` unless it exists; returns its URI."""
    conn = await asyncpg.connect(url)
    try:
        await create_database_if_missing(conn, name)
    finally:
        await conn.close()
    return with_database(url, name)


async def drop_database(url: str, name: str) -> None:
    """Drop database ``name`` on the server of ``url`` if it exists, disconnecting its sessions."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{check_db_name(name)}" WITH (FORCE)')
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

    pgserver lets anyone who reaches the socket log in as any role (``trust``). With ``password_file``,
    every login needs its role's password instead (:data:`SCRAM_ONLY_HBA`), the superuser's kept in that
    file (created 0600 on the first start; a server that already requires passwords and has lost it is
    refused), and :attr:`uri` carries it. Without, the server is left as pgserver makes it (tests).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        cleanup: Literal["stop", "delete"] | None = "stop",
        password_file: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.cleanup = cleanup
        self.password_file = password_file
        self._server: Any = None
        self._password: str | None = None

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
        if self.password_file is not None:
            try:
                self._password = self._require_passwords(self.password_file)
            except BaseException:
                self.stop()
                raise
        return self

    def _require_passwords(self, password_file: Path) -> str:
        """Make every login need its role's password; returns the superuser's (from ``password_file``)."""
        open_to_all = self._psql("SELECT 1", password=None)
        if password_file.exists():
            password = read_password(password_file)
        elif open_to_all.returncode == 0:
            password = new_password()
            private_dir(password_file.parent)
            write_atomically(password_file, (password + "\n").encode(), 0o600)
        else:
            raise InfraError(
                f"PostgreSQL in {self.data_dir} requires passwords, but the superuser's ({password_file}) is"
                f" missing: restore that file, or start over with a new data directory ({open_to_all.stderr.strip()})"
            )
        if open_to_all.returncode == 0:  # still pgserver's trust: give the superuser its password first
            self._psql_ok(f"ALTER ROLE postgres PASSWORD '{scram_verifier(password)}'", password=None)
        else:
            self._psql_ok("SELECT 1", password=password)
        hba = self.data_dir / "pg_hba.conf"
        if hba.read_text() != SCRAM_ONLY_HBA:
            # keeps the data directory's owner (pgserver's user, run as root): the server must still read it
            write_atomically(hba, SCRAM_ONLY_HBA.encode(), stat.S_IMODE(hba.stat().st_mode))
            self._psql_ok("SELECT pg_reload_conf()", password=password)
        for _ in range(100):  # the server reloads its configuration asynchronously
            if self._psql("SELECT 1", password=None).returncode != 0:
                return password
            time.sleep(0.1)
        raise InfraError(f"PostgreSQL in {self.data_dir} still lets logins in without a password after a reload")

    def _psql(self, sql: str, *, password: str | None, database: str = "postgres") -> subprocess.CompletedProcess[str]:
        """Run ``sql`` with psql as the superuser; the password, if any, goes in the environment, not argv."""
        _import_pgserver()
        from pgserver._commands import POSTGRES_BIN_PATH

        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSFILE"] = os.devnull
        if password is not None:
            env["PGPASSWORD"] = password
        return subprocess.run(
            [str(Path(POSTGRES_BIN_PATH) / "psql"), "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1",
             "-d", str(self._server.get_uri(database))],
            input=sql,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )  # fmt: skip

    def _psql_ok(self, sql: str, *, password: str | None) -> None:
        done = self._psql(sql, password=password)
        if done.returncode != 0:
            raise InfraError(f"PostgreSQL in {self.data_dir}: {done.stderr.strip()}")

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
        uri = str(self._server.get_uri(database))
        return uri if self._password is None else with_login(uri, "postgres", self._password)

    def create_database(self, name: str) -> str:
        """Create database ``name`` if missing (synchronously, with psql); returns its URI."""
        if self._server is None:
            raise InfraError("the PostgreSQL server is not running")
        check_db_name(name)
        # The name matched _DB_NAME_RE, so it can be spliced into the SQL.
        exists = f"SELECT FROM pg_database WHERE datname = '{name}'"
        sql = f"SELECT 'CREATE DATABASE \"{name}\"' WHERE NOT EXISTS ({exists})\\gexec\n"
        proc = self._psql(sql, password=self._password)
        if proc.returncode != 0:
            raise InfraError(f"creating database {name} failed: {proc.stderr.strip()}")
        return self.uri_for(name)

    def stop(self) -> None:
        """Release the server according to ``cleanup`` (stop it, stop and delete it, or leave it running)."""
        server, self._server = self._server, None
        self._password = None
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
