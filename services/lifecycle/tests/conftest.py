"""Fixtures of the lifecycle tests: the real service app (in-process) and its settings.

NATS, PostgreSQL and the keyring come from the workspace's root ``conftest.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from symbi_common.commands import CommandClient
from symbi_common.settings import Settings, load_settings
from symbi_lifecycle.application import LifecycleService
from symbi_lifecycle.main import build_app


def service_env(nats_url: str, database_url: str, keys_dir: Path, port: int = 0) -> dict[str, str]:
    """The ``SYMBI_*`` environment of a lifecycle service for the test's servers."""
    env = {
        "SYMBI_NATS_URL": nats_url,
        "SYMBI_DATABASE_URL": database_url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_LOG_LEVEL": "warning",
        "SYMBI_POLICY__ENFORCEMENT": "allow-all",
    }
    if port:
        env["SYMBI_HTTP_PORT"] = str(port)
    return env


@pytest.fixture
def settings(nats_url: str, database_url: str, keys_dir: Path) -> Settings:
    return load_settings(env=service_env(nats_url, database_url, keys_dir))


@dataclass
class Running:
    """The lifecycle service running in this test's event loop."""

    app: FastAPI
    http: httpx.AsyncClient
    service: LifecycleService
    client: CommandClient


@pytest.fixture
async def running(settings: Settings, operator_headers: dict[str, str]) -> AsyncIterator[Running]:
    """The real app with its lifespan run (NATS, PostgreSQL, projection, command server)."""
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://lifecycle", headers=operator_headers
        ) as http:
            runtime = app.state.runtime
            yield Running(app, http, app.state.lifecycle, CommandClient(runtime.nc, timeout=5.0))
