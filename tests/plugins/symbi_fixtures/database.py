"""PostgreSQL: one server per session, a fresh database per test."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from symbi_cli.postgres_server import DATABASE_URL_ENV, create_database, database_url_or_start, drop_database


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """Admin URL of the session's PostgreSQL server.

    The server of ``SYMBI_DATABASE_URL`` if set, else a pgserver started in a temporary directory
    (and deleted at the end of the session).
    """
    external = os.environ.get(DATABASE_URL_ENV)
    if external:
        yield external
        return
    # Not under pytest's basetemp: when running as root the server runs as user "pgserver", which needs
    # to traverse every parent directory, and a concurrently starting pytest session chmods
    # /tmp/pytest-of-<user> back to 0700 (initdb then fails with "Permission denied").
    base = Path(tempfile.mkdtemp(prefix="symbi-test-pg-"))
    try:
        url, server = database_url_or_start(base / "data", env={}, cleanup="delete")
        try:
            yield url
        finally:
            if server is not None:
                server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def database_url(pg_server: str) -> AsyncIterator[str]:
    """URL of a fresh, empty database for this test (``test_<uuid>``), dropped at teardown."""
    name = f"test_{uuid.uuid4().hex}"
    url = await create_database(pg_server, name)
    try:
        yield url
    finally:
        await drop_database(pg_server, name)
