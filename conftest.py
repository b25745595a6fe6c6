"""Shared pytest fixtures for every package of the workspace: real NATS JetStream, real PostgreSQL, keys.

Nothing is mocked. Each test that asks for NATS gets a fresh nats-server (JetStream store in its
``tmp_path``); PostgreSQL is one server per session (pgserver in a temporary directory, or the
server of ``SYMBI_DATABASE_URL`` when that is set) with a fresh database per test. Whole runtimes
(``symbi up`` and friends as real processes) get a free block of service ports and a private home.

The fixtures live in ``tests/plugins/symbi_fixtures/`` (one module per kind), loaded here as plugins: every
fixture keeps its name and scope, and is visible to every test of the workspace as before.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "tests" / "plugins"))

pytest_plugins = [
    "symbi_fixtures.messaging",
    "symbi_fixtures.database",
    "symbi_fixtures.keys",
    "symbi_fixtures.stores",
    "symbi_fixtures.runtimes",
    "symbi_fixtures.metrics",
]
