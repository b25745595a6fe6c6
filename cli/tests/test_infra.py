"""Local infrastructure helpers: real nats-server and PostgreSQL processes."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from pathlib import Path

import asyncpg
import httpx
import nats
import pytest
from symbi_cli.errors import InfraError
from symbi_cli.nats_server import NatsServer, find_nats_server
from symbi_cli.postgres_roles import with_database
from symbi_cli.postgres_server import (
    DATABASE_URL_ENV,
    PostgresServer,
    create_database,
    database_url_or_start,
    drop_database,
)
from symbi_fixtures.runtimes import take_free_port


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_nats_server_start_stop(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "js", log_file=tmp_path / "logs" / "nats.log")
    with pytest.raises(InfraError, match="not running"):
        _ = server.url
    server.start()
    try:
        assert server.running
        assert server.url.startswith("nats://127.0.0.1:")
        with pytest.raises(InfraError, match="already started"):
            server.start()
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            assert (await js.account_info()).streams == 0  # JetStream is on
        finally:
            await nc.drain()
        pid = server.pid
        assert pid is not None
    finally:
        server.stop()
    assert not server.running
    assert not _pid_alive(pid)
    server.stop()  # idempotent
    log = (tmp_path / "logs" / "nats.log").read_text()
    assert "Starting JetStream" in log
    assert (tmp_path / "js" / "jetstream").is_dir()


def test_nats_server_fixed_port_and_restart_keeps_data(tmp_path: Path) -> None:
    port = take_free_port()
    with NatsServer(tmp_path / "js", port=port) as server:
        assert server.url == f"nats://127.0.0.1:{port}"
        # A second server on the same port fails with the server's own explanation.
        with pytest.raises(InfraError, match="exited with status"):
            NatsServer(tmp_path / "js2", port=port).start()
    with NatsServer(tmp_path / "js", port=port) as again:
        assert again.url == f"nats://127.0.0.1:{port}"


def test_nats_server_bad_binary(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        NatsServer(tmp_path, binary=tmp_path / "no-such-binary").start()
    assert find_nats_server().name == "nats-server"


def test_with_database() -> None:
    assert (
        with_database("postgresql://postgres:@/postgres?host=/tmp/x", "db1")
        == "postgresql://postgres:@/db1?host=/tmp/x"
    )
    assert with_database("postgresql://u:p@h:5432/app", "db2") == "postgresql://u:p@h:5432/db2"
    assert with_database("postgresql://u@h", "db3") == "postgresql://u@h/db3"


async def test_create_and_drop_database(pg_server: str) -> None:
    name = f"test_{uuid.uuid4().hex}"
    url = await create_database(pg_server, name)
    assert await create_database(pg_server, name) == url  # idempotent
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("select current_database()") == name
    finally:
        await conn.close()
    await drop_database(pg_server, name)
    await drop_database(pg_server, name)  # idempotent
    with pytest.raises(InfraError, match="invalid database name"):
        await create_database(pg_server, 'x"; drop database postgres; --')


async def _current_and_kept(url: str) -> tuple[str, int]:
    conn = await asyncpg.connect(url)
    try:
        current = await conn.fetchval("select current_database()")
        kept = await conn.fetchval("select count(*) from pg_database where datname = 'kept'")
    finally:
        await conn.close()
    return current, kept


@pytest.mark.skipif(bool(os.environ.get(DATABASE_URL_ENV)), reason="uses its own local server")
def test_postgres_server_lifecycle() -> None:
    # Outside pytest's basetemp, like the pg_server fixture (see there).
    with tempfile.TemporaryDirectory(prefix="symbi-test-pg-") as tmp:
        data = Path(tmp) / "pg"
        # First start: initialise, create a database, stop and keep the data.
        with PostgresServer(data) as pg:
            assert pg.running
            assert pg.uri.startswith("postgresql://postgres:@/postgres?host=")
            kept = pg.create_database("kept")
            assert pg.create_database("kept") == kept  # idempotent
            with pytest.raises(InfraError, match="invalid database name"):
                pg.create_database("bad-name")
        assert not pg.running
        assert (data / "PG_VERSION").exists()
        with pytest.raises(InfraError, match="not running"):
            _ = pg.uri

        # Second start on the same data, through the helper `symbi up` uses; this time delete on stop.
        url, server = database_url_or_start(data, database="symbi", env={}, cleanup="delete")
        assert server is not None
        try:
            assert url == server.uri_for("symbi")
            assert asyncio.run(_current_and_kept(url)) == ("symbi", 1)
        finally:
            server.stop()
        assert not data.exists()


def test_database_url_from_environment(tmp_path: Path) -> None:
    url, server = database_url_or_start(tmp_path / "pg", env={DATABASE_URL_ENV: "postgresql://elsewhere/db"})
    assert (url, server) == ("postgresql://elsewhere/db", None)
    assert not (tmp_path / "pg").exists()


def test_nats_server_sync_always_in_its_generated_config(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "js", sync_interval="always", monitoring=True) as server:
        varz = httpx.get(server.monitoring_url + "/varz", timeout=5).json()
        assert varz["jetstream"]["config"]["sync_always"] is True
    with NatsServer(tmp_path / "js") as default, pytest.raises(InfraError, match="monitoring=True"):
        _ = default.monitoring_url
    clash = NatsServer(tmp_path / "js", sync_interval="always", extra_args=("--config", str(tmp_path / "x.conf")))
    with pytest.raises(InfraError, match="pass its text as config="):
        clash.start()
    assert not clash.running


def test_nats_server_max_procs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``max_procs`` is the server's GOMAXPROCS (as it reports it), unless the environment sets GOMAXPROCS."""
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    with NatsServer(tmp_path / "js", monitoring=True, max_procs=1) as server:
        assert httpx.get(f"{server.monitoring_url}/varz").json()["gomaxprocs"] == 1
    monkeypatch.setenv("GOMAXPROCS", "3")
    with NatsServer(tmp_path / "js", monitoring=True, max_procs=1) as server:
        assert httpx.get(f"{server.monitoring_url}/varz").json()["gomaxprocs"] == 3
