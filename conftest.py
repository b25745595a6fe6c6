"""Shared pytest fixtures for every package of the workspace: real NATS JetStream, real PostgreSQL, keys.

Nothing is mocked. Each test that asks for NATS gets a fresh nats-server (JetStream store in its
``tmp_path``); PostgreSQL is one server per session (pgserver in a temporary directory, or the
server of ``SYMBI_DATABASE_URL`` when that is set) with a fresh database per test. Whole runtimes
(``symbi up`` and friends as real processes) get a free block of service ports and a private home.

The fixtures live in ``tests/plugins/symbi_fixtures/`` (one module per kind), loaded here as plugins: every
fixture keeps its name and scope, and is visible to every test of the workspace as before.
"""

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "tests" / "plugins"))

# Compiled bytecode is kept, outside the checkout. The tests start hundreds of Python processes (six services per
# runtime, every `symbi` command, the xdist workers); where the environment says PYTHONDONTWRITEBYTECODE and the
# virtualenv holds no .pyc files (`uv sync` compiles none), each of them compiled every module it imports from
# source, seconds of CPU per process. They share one cache instead (Python checks each cached file against its
# source), so what they run is unchanged and the tree gets no __pycache__ directories.
BYTECODE_CACHE = Path(tempfile.gettempdir()) / "symbi-test-pycache"
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ.setdefault("PYTHONPYCACHEPREFIX", str(BYTECODE_CACHE))
sys.dont_write_bytecode = False
sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"]

pytest_plugins = [
    "symbi_fixtures.messaging",
    "symbi_fixtures.database",
    "symbi_fixtures.keys",
    "symbi_fixtures.stores",
    "symbi_fixtures.runtimes",
    "symbi_fixtures.metrics",
]
