"""Each database service logs in to PostgreSQL as its own unprivileged role, never as the superuser.

Against real servers: a ``symbi up`` runtime (lifecycle and audit as processes, pgserver's PostgreSQL), and a
pgserver started the way the runtime starts it for the deployment's ``symbi deploy postgres-roles``.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg
import pytest
from symbi_cli.deploy_dir import DeployConfig, init_deploy_dir, parse_env
from symbi_cli.errors import InfraError
from symbi_cli.postgres_roles import with_database
from symbi_cli.postgres_server import PostgresServer
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import DATABASE_SERVICES, RuntimeOptions, database_name
from symbi_cli.supervisor import RestartPolicy

pytestmark = pytest.mark.timeout(240)


def _options(home: Path, base_port: int) -> RuntimeOptions:
    env = {k: v for k, v in os.environ.items() if k != "SYMBI_DATABASE_URL"}
    env["SYMBI_LOG_LEVEL"] = "warning"
    return RuntimeOptions(
        home=home,
        services=["lifecycle", "audit"],
        base_port=base_port,
        nats_port=None,
        grace_period=5.0,
        restart=RestartPolicy(initial_backoff=0.1),
        env=env,
    )


def _database_url_of(rt: LocalRuntime, service: str) -> str:
    """The SYMBI_DATABASE_URL the running service process was actually given."""
    assert rt.supervisor is not None
    pid = rt.supervisor.status(service).pid
    assert pid is not None
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = dict(e.decode().split("=", 1) for e in entries if b"=" in e)
    return env["SYMBI_DATABASE_URL"]


def _login(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return unquote(parts.username or ""), unquote(parts.password or "")


def with_login(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{quote(user)}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def _refused(url: str) -> type[BaseException]:
    """The error a login with ``url`` ends in (fails the test if the login succeeds)."""
    try:
        conn = await asyncpg.connect(url)
    except (asyncpg.PostgresError, OSError) as exc:
        return type(exc)
    await conn.close()
    pytest.fail(f"{_login(url)[0]} logged in to {urlsplit(url).path}")


async def _check_isolation(rt: LocalRuntime) -> dict[str, str]:
    """Each database service's role: its own database only, no privilege; returns service → URL."""
    urls = {s: _database_url_of(rt, s) for s in sorted(DATABASE_SERVICES)}
    for service, url in urls.items():
        role = database_name(service)
        assert _login(url)[0] == role, f"{service} logs in as {_login(url)[0]}"
        conn = await asyncpg.connect(url)
        try:
            attrs = await conn.fetchrow(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles"
                " WHERE rolname = current_user"
            )
            assert attrs is not None
            assert not any(attrs.values()), dict(attrs)
            assert await conn.fetchval("SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member"
                                       " WHERE r.rolname = current_user") == 0  # fmt: skip
            # Its migrations ran as itself: it owns the tables of its read model.
            owners = await conn.fetch(
                "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = $1", service.replace("-", "_")
            )
            assert [r[0] for r in owners] == [role], owners
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("COPY (SELECT 1) TO PROGRAM 'cat >/dev/null'")
        finally:
            await conn.close()
    # The lifecycle's role cannot reach the audit database (nor, therefore, read its tables), and vice versa.
    lifecycle, audit = urls["lifecycle"], urls["audit"]
    assert await _refused(with_database(lifecycle, "symbi_audit")) is asyncpg.InsufficientPrivilegeError
    assert await _refused(with_database(audit, "symbi_lifecycle")) is asyncpg.InsufficientPrivilegeError
    # Over the socket, no login without a password: not the roles', not the superuser's.
    assert rt.postgres is not None
    superuser = rt.postgres.uri
    assert _login(superuser)[0] == "postgres"
    for user in ("symbi_lifecycle", "postgres"):
        assert await _refused(with_login(lifecycle, user, "")) is asyncpg.InvalidPasswordError
    assert _login(superuser)[1] not in lifecycle + audit
    return urls


async def test_each_database_service_logs_in_as_its_own_role_and_a_restart_resets_its_password(
    runtime_home: Path, free_base_port: int
) -> None:
    rt = LocalRuntime(_options(runtime_home, free_base_port))
    try:
        await rt.start()
        await rt.wait_ready(timeout=60)
        first = await _check_isolation(rt)
        assert stat.S_IMODE((runtime_home / "operator" / "postgres.password").stat().st_mode) == 0o600
    finally:
        await rt.stop()

    # Again on the same home: the same roles and databases, each role's password reset to a fresh one.
    rt = LocalRuntime(_options(runtime_home, free_base_port))
    try:
        await rt.start()
        await rt.wait_ready(timeout=60)
        second = await _check_isolation(rt)
        assert second["lifecycle"] != first["lifecycle"]
        assert await _refused(first["lifecycle"]) is asyncpg.InvalidPasswordError
    finally:
        await rt.stop()


async def test_a_home_from_before_the_roles_is_handed_over_to_them(runtime_home: Path, free_base_port: int) -> None:
    """A home whose PostgreSQL let anyone in and whose read models the superuser created: the roles take them over."""
    runtime_home.mkdir(parents=True)  # noqa: ASYNC240 (before anything runs)
    with PostgresServer(runtime_home / "pg") as pg:
        conn = await asyncpg.connect(pg.create_database("symbi_lifecycle"))
        try:
            await conn.execute("CREATE SCHEMA lifecycle; CREATE TABLE lifecycle.kept (id bigserial PRIMARY KEY)")
            await conn.execute("INSERT INTO lifecycle.kept DEFAULT VALUES")
        finally:
            await conn.close()
    rt = LocalRuntime(_options(runtime_home, free_base_port))
    try:
        await rt.start()
        await rt.wait_ready(timeout=60)
        await _check_isolation(rt)
        conn = await asyncpg.connect(_database_url_of(rt, "lifecycle"))
        try:
            assert await conn.fetchval("INSERT INTO lifecycle.kept DEFAULT VALUES RETURNING id") == 2
        finally:
            await conn.close()
    finally:
        await rt.stop()


@pytest.fixture
def pg_data() -> Iterator[Path]:
    # Outside pytest's basetemp, like the pg_server fixture (see there).
    with tempfile.TemporaryDirectory(prefix="symbi-test-pg-") as tmp:
        yield Path(tmp)


def test_a_server_that_requires_passwords_refuses_a_start_without_the_superusers(pg_data: Path) -> None:
    secret = pg_data / "operator" / "postgres.password"
    with PostgresServer(pg_data / "pg", password_file=secret) as pg:
        assert _login(pg.uri) == ("postgres", secret.read_text().strip())
    secret.unlink()
    with pytest.raises(InfraError, match="requires passwords, but the superuser's"):
        PostgresServer(pg_data / "pg", password_file=secret).start()
    assert not secret.exists()


async def test_the_deployments_roles_get_the_passwords_of_the_deployment_directory(pg_data: Path) -> None:
    """``symbi deploy postgres-roles`` (deploy/postgres/start.sh) with the files ``symbi deploy init`` writes:
    each service's env file then logs in as its role, to its database only; running it again changes nothing."""
    directory = pg_data / "deploy"
    init_deploy_dir(directory, DeployConfig(), uid=os.getuid())
    superuser = (directory / "postgres" / "password").read_text().strip()
    for service in sorted(DATABASE_SERVICES):
        url = parse_env((directory / "env" / f"{service}.env").read_text())["SYMBI_DATABASE_URL"]
        assert _login(url)[0] == database_name(service)
        assert superuser not in url
    with PostgresServer(pg_data / "pg", password_file=pg_data / "operator" / "superuser.password") as pg:
        symbi = str(Path(sys.executable).parent / "symbi")
        command = [symbi, "deploy", "postgres-roles", "--admin-url", pg.uri, "--passwords", str(directory / "postgres")]
        for _ in range(2):
            done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            assert done.stdout.count(": ready") == len(DATABASE_SERVICES), done.stdout
        for service in sorted(DATABASE_SERVICES):
            role = database_name(service)
            deployed = parse_env((directory / "env" / f"{service}.env").read_text())["SYMBI_DATABASE_URL"]
            local = with_login(pg.uri_for(role), role, _login(deployed)[1])  # the same role, via the local socket
            conn = await asyncpg.connect(local)
            try:
                assert await conn.fetchval("SELECT current_user") == role
                assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            finally:
                await conn.close()
            other = next(database_name(s) for s in DATABASE_SERVICES if s != service)
            assert await _refused(with_database(local, other)) is asyncpg.InsufficientPrivilegeError


async def test_a_role_that_shares_privileges_with_another_role_is_refused(pg_server: str) -> None:
    """Made a member of a privileged role (here the one that may run programs), a service's role is not set up
    again as if nothing happened: the error names the membership."""
    from symbi_cli.postgres_roles import ensure_service_database, new_password

    name = f"symbi_test_{uuid.uuid4().hex[:12]}"
    url = await ensure_service_database(pg_server, name, new_password())
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'GRANT pg_execute_server_program TO "{name}"')
        conn = await asyncpg.connect(url)
        try:  # what the membership gives it
            await conn.execute("COPY (SELECT 1) TO PROGRAM 'cat >/dev/null'")
        finally:
            await conn.close()
        with pytest.raises(InfraError, match=f"{name} is a member of pg_execute_server_program"):
            await ensure_service_database(pg_server, name, new_password())
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        await admin.close()
