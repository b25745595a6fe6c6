"""NATS: a fresh JetStream nats-server per test (streams and KV buckets provisioned), and clients of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from symbi_cli.nats_server import NatsServer
from symbi_cli.provisioning import provision_nats
from symbi_common.nats_client import with_credentials
from symbi_common.natsauth import ADMIN, authorization_config, nats_users
from symbi_common.stream_provisioning import provision_streams


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh JetStream-enabled nats-server for this test; its log is ``tmp_path/nats.log``.

    Its streams and KV buckets are provisioned, as the admin does before any service starts
    (services never create them).
    """
    with NatsServer(tmp_path / "nats", log_file=tmp_path / "nats.log") as server:
        provision_nats(server.url)
        yield server


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


async def _connect(url: str, **options: Any) -> NatsClient:
    # Tests fail fast instead of reconnecting forever, and a drain at teardown that is stuck behind a pull
    # subscription's outstanding request (seen once under load: 30 s, nats-py's default) gives up after 5 s.
    options.setdefault("allow_reconnect", False)
    options.setdefault("drain_timeout", 5)
    options.setdefault("connect_timeout", 5)
    return await nats.connect(url, **options)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    """A connected NATS client, drained at teardown."""
    client = await _connect(nats_url)
    try:
        yield client
    finally:
        if not client.is_closed:
            await client.drain()


@pytest.fixture
async def nats_connect(nats_url: str) -> AsyncIterator[Callable[..., Awaitable[NatsClient]]]:
    """``await nats_connect()``: another client of the test's server (e.g. a second "process"); drained at teardown."""
    clients: list[NatsClient] = []

    async def connect(**options: Any) -> NatsClient:
        client = await _connect(nats_url, **options)
        clients.append(client)
        return client

    try:
        yield connect
    finally:
        for client in clients:
            if not client.is_closed:
                await client.drain()


@pytest.fixture
def js(nc: NatsClient) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture
async def provisioned(nc: NatsClient, js: JetStreamContext) -> NatsClient:
    """``nc`` on a server with the Symbi streams (EVENTS, SNAPSHOTS, AUDIT) provisioned."""
    await provision_streams(js)
    return nc


#: A password for each of the deployment's NATS users (the only users a ``secured_nats`` server knows).
DEPLOYMENT_PASSWORDS = {user: f"pw-{user}-{i}" for i, user in enumerate(nats_users())}


@pytest.fixture
def secured_nats(tmp_path: Path) -> Iterator[str]:
    """A nats-server that knows only the deployment's users, provisioned by ``admin``; its plain URL."""
    conf = tmp_path / "auth.conf"
    conf.write_text(authorization_config(DEPLOYMENT_PASSWORDS))
    with NatsServer(tmp_path / "nats", log_file=tmp_path / "nats.log", extra_args=["-c", str(conf)]) as server:
        provision_nats(with_credentials(server.url, ADMIN, DEPLOYMENT_PASSWORDS[ADMIN]))
        yield server.url
