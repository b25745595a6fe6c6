"""Shared pytest fixtures for every package of the workspace: real NATS JetStream, real PostgreSQL, keys.

Nothing is mocked. Each test that asks for NATS gets a fresh nats-server (JetStream store in its
``tmp_path``); PostgreSQL is one server per session (pgserver in a temporary directory, or the
server of ``SYMBI_DATABASE_URL`` when that is set) with a fresh database per test. Whole runtimes
(``symbi up`` and friends as real processes) get a free block of service ports and a private home.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from prometheus_client.parser import text_string_to_metric_families
from symbi_cli.infra import (
    DATABASE_URL_ENV,
    NatsServer,
    create_database,
    database_url_or_start,
    drop_database,
    provision_nats,
)
from symbi_cli.runtime import SERVICE_PORT_OFFSETS, RuntimeOptions
from symbi_cli.supervisor import RestartPolicy
from symbi_common.crypto import Signer
from symbi_common.datakeys import DataKeys, KvDataKeyStore
from symbi_common.eventstore import EventStore
from symbi_common.keyfiles import init_keyring, load_service_keys
from symbi_common.keyring import KeyRegistry
from symbi_common.operator_tokens import default_operator_dir, issue_token, load_issuer_key
from symbi_common.streams import provision_streams

# --- NATS ----------------------------------------------------------------------------------------


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
    # Tests fail fast instead of reconnecting forever.
    options.setdefault("allow_reconnect", False)
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


# --- PostgreSQL ----------------------------------------------------------------------------------


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


# --- keys ----------------------------------------------------------------------------------------


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    """A complete keyring: one directory per service (signing + wrap key), the signed registry.

    The root key is in ``tmp_path / "operator"``, outside the keyring.
    """
    path = tmp_path / "keys"
    init_keyring(path)
    return path


@pytest.fixture
def registry(keys_dir: Path) -> KeyRegistry:
    return KeyRegistry.load(keys_dir)


@pytest.fixture
def signer_for(keys_dir: Path) -> Callable[[str], Signer]:
    """``signer_for("lifecycle")``: that service's signing key from the keyring."""

    def load(service: str) -> Signer:
        return load_service_keys(keys_dir / service, service).signer

    return load


@pytest.fixture
def datakeys_for(keys_dir: Path, registry: KeyRegistry) -> Callable[[NatsClient, str], Awaitable[DataKeys]]:
    """``await datakeys_for(nc, "audit")``: that service's :class:`DataKeys` (its own wrap key) on ``DATAKEYS``."""

    async def make(client: NatsClient, service: str) -> DataKeys:
        keys = load_service_keys(keys_dir / service, service)
        return DataKeys(await KvDataKeyStore.open(client.jetstream()), keys.wrap, registry, service=service)

    return make


IssueOperatorToken = Callable[..., str]


@pytest.fixture
def issue_operator_token(keys_dir: Path) -> IssueOperatorToken:
    """``issue_operator_token(role="auditor", name="ann", ttl_s=60)``: an operator token from the keyring's issuer."""

    def issue(role: str = "admin", name: str = "test-admin", ttl_s: int = 3600) -> str:
        token, _ = issue_token(load_issuer_key(default_operator_dir(keys_dir)), name=name, role=role, ttl_s=ttl_s)
        return token

    return issue


@pytest.fixture
def operator_headers(issue_operator_token: IssueOperatorToken) -> dict[str, str]:
    """The ``Authorization`` header of an admin operator, for tests that call the services' APIs."""
    return {"Authorization": f"Bearer {issue_operator_token()}"}


MakeStore = Callable[..., Awaitable[EventStore]]
RegisterOperatorPolicies = Callable[[], Awaitable[None]]


@pytest.fixture
def register_operator_policies(make_store: MakeStore) -> RegisterOperatorPolicies:
    """``await register_operator_policies()``: policy set ``operators`` (the baseline's rules for the three
    operator roles), for tests that enforce policy without the baseline but call the APIs."""

    async def register() -> None:
        from symbi_common.operator_auth import OPERATOR_POLICIES
        from symbi_common.policy.events import AGGREGATE_TYPE, POLICY_SET_CODEC, PolicySetRegistered
        from symbi_common.sealing import NEW_AGGREGATE

        store = await make_store("policy")
        event = PolicySetRegistered(set_id="operators", cedar=OPERATOR_POLICIES)
        await store.append(AGGREGATE_TYPE, "operators", [event], POLICY_SET_CODEC, expected=NEW_AGGREGATE)

    return register


@pytest.fixture
def make_store(
    provisioned: NatsClient,
    signer_for: Callable[[str], Signer],
    registry: KeyRegistry,
    datakeys_for: Callable[[NatsClient, str], Awaitable[DataKeys]],
) -> MakeStore:
    """``await make_store("lifecycle")``: an :class:`EventStore` signing as that service.

    Every call has its own :class:`DataKeys` (own cache) over the shared ``DATAKEYS`` KV bucket,
    like a separate process would. ``nc=`` uses another connection, ``store_class=`` a subclass,
    other keyword arguments go to the store.
    """

    async def make(
        service: str = "lifecycle",
        *,
        nc: NatsClient | None = None,
        store_class: type[EventStore] = EventStore,
        **options: Any,
    ) -> EventStore:
        client = nc if nc is not None else provisioned
        return store_class(
            client,
            signer=signer_for(service),
            producer=service,
            registry=registry,
            datakeys=await datakeys_for(client, service),
            **options,
        )

    return make


# --- whole runtimes as real processes (``symbi up``, ``symbi run``, end-to-end tests) -------------


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def free_base_port() -> int:
    """A base port whose service ports (base + 1 … base + 6) were all free a moment ago. It is drawn below
    the kernel's ephemeral range (32768 and up), so outgoing connections cannot take one meanwhile."""
    last = max(SERVICE_PORT_OFFSETS.values())
    for _ in range(500):
        base = random.randrange(20_000, 32_000 - last)
        if all(_port_free(base + offset) for offset in range(1, last + 1)):
            return base
    raise RuntimeError("no free block of service ports between 20000 and 32000")


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (e.g. a data directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.fixture
def alive() -> Callable[[int], bool]:
    return process_alive


@pytest.fixture
def mentioning() -> Callable[[str], list[int]]:
    return processes_mentioning


@pytest.fixture
def symbi_exe() -> str:
    """The installed ``symbi`` console script of this environment."""
    exe = Path(sys.executable).parent / "symbi"
    assert exe.exists(), f"{exe} is missing; run `uv sync`"
    return str(exe)


@pytest.fixture
def cli_env() -> dict[str, str]:
    """The environment for a ``symbi`` subprocess: a private PostgreSQL, wide output, quiet services."""
    env = {k: v for k, v in os.environ.items() if k not in ("SYMBI_DATABASE_URL", "SYMBI_HOME", "SYMBI_KEYS_DIR")}
    env.update({"COLUMNS": "200", "SYMBI_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1"})
    return env


@pytest.fixture
def runtime_home() -> Iterator[Path]:
    """A fresh ``--home`` for a runtime, removed afterwards together with anything still running from it.

    Deliberately not under ``tmp_path``: every pytest session that starts resets ``/tmp/pytest-of-<user>``
    to mode 0700, and PostgreSQL (which pgserver runs as the unprivileged ``pgserver`` user when we are
    root) must be able to traverse the path to its data directory.
    """
    with tempfile.TemporaryDirectory(prefix="symbi-cli-test-") as tmp:
        home = Path(tmp) / "home"
        try:
            yield home
        finally:
            # Safety net for a failed test: nothing it started may outlive it.
            for pid in processes_mentioning(str(home)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def runtime_options(runtime_home: Path, free_base_port: int, cli_env: dict[str, str]) -> RuntimeOptions:
    """A whole runtime in ``runtime_home`` on free ports (NATS too), restarting crashed services at once, with a
    short grace period and an audit checkpoint every second; ``options.env`` is also the environment for
    ``symbi`` commands run against it."""
    return RuntimeOptions(
        home=runtime_home,
        base_port=free_base_port,
        nats_port=None,
        grace_period=5.0,
        restart=RestartPolicy(initial_backoff=0.1),
        # SYMBI_HOME: `symbi` commands run with this environment find the home's operator token.
        env=dict(cli_env, SYMBI_AUDIT__CHECKPOINT_INTERVAL_S="1", SYMBI_HOME=str(runtime_home)),
    )


# --- metrics (a service's ``/metrics``, scraped before and after what a test does) ----------------------


class MetricSamples(dict[tuple[str, tuple[tuple[str, str], ...]], float]):
    """One scrape of ``/metrics``: each sample's value by name and sorted labels."""

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 for a sample not (yet) exposed."""
        return self.get((name, tuple(sorted(labels.items()))), 0.0)

    def since(self, before: MetricSamples, name: str, **labels: str) -> float:
        """How much the sample moved since ``before``."""
        return self.value(name, **labels) - before.value(name, **labels)


ScrapeMetrics = Callable[[httpx.AsyncClient], Awaitable[MetricSamples]]


@pytest.fixture
def scrape_metrics() -> ScrapeMetrics:
    """``await scrape_metrics(http)``: the samples on ``/metrics`` of the service ``http`` talks to."""

    async def scrape(http: httpx.AsyncClient) -> MetricSamples:
        r = await http.get("/metrics")
        assert r.status_code == 200, r.text
        return MetricSamples(
            ((s.name, tuple(sorted(s.labels.items()))), s.value)
            for family in text_string_to_metric_families(r.text)
            for s in family.samples
        )

    return scrape
