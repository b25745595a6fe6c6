"""PostgreSQL roles for the services: each service logs in as its own role, with no privilege, owning only its
own database (:func:`ensure_service_database`), with a password PostgreSQL keeps only as a SCRAM-SHA-256
verifier (:func:`scram_verifier`). Also the URL and name helpers the server module shares."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
import secrets
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from symbi_cli.errors import InfraError

_DB_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


#: The passwords this module makes (:func:`new_password`) and accepts from files: URL-safe, at least 128 bits.
_PASSWORD_RE = re.compile(r"^[A-Za-z0-9_-]{22,200}\Z")


#: The attributes of a service's login role: it may log in, and nothing else.
SERVICE_ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"


def with_database(url: str, database: str) -> str:
    """``url`` (a ``postgresql://`` URI) pointing at ``database`` instead of its own database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def with_login(url: str, user: str, password: str) -> str:
    """``url`` (a ``postgresql://`` URI) logging in as ``user`` with ``password`` instead of its own login."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_db_name(name: str) -> str:
    if not _DB_NAME_RE.match(name):
        raise InfraError(f"invalid database name {name!r}: use letters, digits and _ (at most 63)")
    return name


def new_password() -> str:
    """A fresh random password for a database role (192 bits, URL-safe characters)."""
    return secrets.token_urlsafe(24)


def check_password(password: str, source: str = "password") -> str:
    """``password`` if it is one this module could have made (URL-safe, 22 to 200 characters), else InfraError."""
    if not _PASSWORD_RE.match(password):
        raise InfraError(f"{source}: not a usable password (22 to 200 characters of A-Z, a-z, 0-9, '-' and '_')")
    return password


def read_password(path: Path) -> str:
    """The password kept in ``path`` (one line), checked with :func:`check_password`."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InfraError(f"cannot read the password file {path}: {exc.strerror or exc}") from exc
    return check_password(text.strip(), str(path))


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 7677), with a fresh salt.

    Roles are given this instead of the password itself, so the password never reaches the server (nor its
    logs), whatever the server's ``password_encryption``.
    """
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


#: ``ALTER … OWNER TO`` for what in the current database is not owned by role ``$1``: schemas, tables, views,
#: sequences that belong to no column, routines (system schemas and extensions' objects left alone).
_NOT_OWNED_SQL = r"""
WITH role AS (SELECT oid FROM pg_roles WHERE rolname = $1::text),
user_schemas AS (
    SELECT oid, nspname, nspowner FROM pg_namespace
    WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema'
)
SELECT format('ALTER SCHEMA %I OWNER TO %I', nspname, $1::text) FROM user_schemas
WHERE nspowner <> (SELECT oid FROM role) AND nspname <> 'public'
UNION ALL
SELECT format('ALTER %s %s OWNER TO %I',
              CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
              c.oid::regclass, $1::text)
FROM pg_class c JOIN user_schemas n ON n.oid = c.relnamespace
WHERE c.relowner <> (SELECT oid FROM role) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype IN ('a', 'i', 'e'))
UNION ALL
SELECT format('ALTER ROUTINE %s OWNER TO %I', p.oid::regprocedure, $1::text)
FROM pg_proc p JOIN user_schemas n ON n.oid = p.pronamespace
WHERE p.proowner <> (SELECT oid FROM role)
  AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                  AND d.deptype = 'e')
"""


async def ensure_service_database(admin_url: str, name: str, password: str) -> str:
    """Login role ``name`` and its own database ``name``, for one service; returns the URL the service uses.

    ``admin_url`` logs in as a superuser (or a role with CREATEROLE and CREATEDB). The role may log in
    with ``password`` — given to the server as a SCRAM verifier; an existing role's password is reset to
    it — and holds nothing else: NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS, member of
    no role. It owns its database and everything in it (what an earlier version created as the admin is
    handed over), so the service's migrations run; CONNECT and TEMPORARY on the database are revoked from
    PUBLIC, so no other role without privileges connects to it. Idempotent.
    """
    check_db_name(name)
    check_password(password)
    conn = await asyncpg.connect(admin_url)
    try:
        if await conn.fetchval("SELECT current_user") == name:
            raise InfraError(f"the admin URL logs in as {name!r}, the role being made for the service: use another")
        try:
            await _ensure_role(conn, name, password)
            await _ensure_owned_database(conn, name)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise InfraError(
                f"cannot set up role and database {name}: {exc}; the admin URL needs a superuser"
                " (or a role with CREATEROLE and CREATEDB)"
            ) from exc
    finally:
        await conn.close()
    database_url = with_database(admin_url, name)
    conn = await asyncpg.connect(database_url)
    try:
        for (statement,) in await conn.fetch(_NOT_OWNED_SQL, name):
            await conn.execute(statement)
    finally:
        await conn.close()
    return with_login(database_url, name, password)


async def _ensure_role(conn: asyncpg.Connection, name: str, password: str) -> None:
    if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
        with contextlib.suppress(asyncpg.DuplicateObjectError):  # created concurrently
            await conn.execute(f'CREATE ROLE "{name}"')
    # The name matched _DB_NAME_RE and the verifier is base64 and '$:': both can be spliced into the SQL.
    await conn.execute(f"ALTER ROLE \"{name}\" WITH {SERVICE_ROLE_ATTRIBUTES} PASSWORD '{scram_verifier(password)}'")
    # A membership either way would share privileges with another role: refused, not silently revoked.
    shared = await conn.fetch(
        "SELECT m.roleid::regrole::text, m.member::regrole::text FROM pg_auth_members m"
        " WHERE m.roleid = $1::text::regrole OR m.member = $1::text::regrole",
        name,
    )
    if shared:
        pairs = ", ".join(f"{member} is a member of {role}" for role, member in shared)
        raise InfraError(
            f"{pairs}: a service's role shares nothing with another role; revoke that membership (REVOKE …)"
        )


async def create_database_if_missing(conn: asyncpg.Connection, name: str, owner: str | None = None) -> None:
    """Create database ``name`` (owned by role ``owner``, if given) on ``conn``'s server unless it exists."""
    check_db_name(name)
    if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
        return
    # Both names matched _DB_NAME_RE, so they can be spliced into the SQL.
    owned = f' OWNER "{check_db_name(owner)}"' if owner is not None else ""
    with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # created concurrently
        await conn.execute(f'CREATE DATABASE "{name}"{owned}')


async def _ensure_owned_database(conn: asyncpg.Connection, name: str) -> None:
    await create_database_if_missing(conn, name, owner=name)
    await conn.execute(f'ALTER DATABASE "{name}" OWNER TO "{name}"')
    await conn.execute(f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC')
