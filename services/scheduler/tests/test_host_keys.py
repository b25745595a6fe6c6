"""A sandbox host's own signing key reports only on the attempts placed on that host.

With host keys (``symbi keys add-host``), a host taken over can still sign execution events, but the scheduler
takes them only for tasks it placed on that host: another host's word that a task ended, or what it printed,
changes nothing. The forged event stays in the stream, signed, for the audit trail.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from schedkit import App, FakeHost, eventually, register_agent, task_view, until_status
from symbi_common.datakeys import DataKeys
from symbi_common.eventstore import EventStore
from symbi_common.key_material import load_signer
from symbi_common.keyfiles import add_host_key, host_dir, init_keyring, revoke_key
from symbi_common.keyring import KeyRegistry
from symbi_contracts.sandbox_agent.events import ExecutionExited, OutputChunk, OutputDigest, Usage

HOSTS = ("h1", "h2")


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    """The keyring, with a key of its own for each of :data:`HOSTS`."""
    path = tmp_path / "keys"
    init_keyring(path)
    for host in HOSTS:
        add_host_key(path, host)
    return path


@pytest.fixture
async def host_of_key(
    keys_dir: Path,
    registry: KeyRegistry,
    nats_connect: Callable[..., Awaitable[NatsClient]],
    datakeys_for: Callable[[NatsClient, str], Awaitable[DataKeys]],
    scheduler_settings: Any,
) -> Any:
    """``await host_of_key("h1", signs_as="h2", hold=True)``: a sandbox host whose events are signed with the
    key of host ``signs_as`` (its own by default), started unless ``start=False``."""
    started: list[FakeHost] = []
    clients: list[NatsClient] = []

    async def make(host_id: str, *, signs_as: str | None = None, start: bool = True, **options: Any) -> FakeHost:
        nc = await nats_connect()
        signer = load_signer(host_dir(keys_dir, signs_as or host_id) / "signing.key")
        store = EventStore(
            nc,
            signer=signer,
            producer="sandbox-agent",
            registry=registry,
            datakeys=await datakeys_for(nc, "sandbox-agent"),
        )
        host = FakeHost(host_id, nc, store, **options)
        if start:
            await host.start(scheduler_settings())
            started.append(host)
        else:
            clients.append(nc)
        return host

    yield make
    for host in started:
        await host.stop()
    for nc in clients:
        await nc.close()


async def test_another_hosts_key_cannot_end_a_task_nor_write_its_output(
    lifecycle: App, start_scheduler: Any, host_of_key: Any
) -> None:
    await register_agent(lifecycle, "worker")
    h1 = await host_of_key("h1", hold=True)  # runs the task and holds it
    forger = await host_of_key("h1", signs_as="h2", start=False)  # host h2's key, writing about h1's task
    async with start_scheduler() as s:
        await s.json("POST", "/v1/tasks", {"agent_id": "worker", "input": "hi", "task_id": "t1"}, status=201)
        await until_status(s, "t1", "assigned")
        assert (await task_view(s, "t1"))["host_id"] == "h1"

        forged = b"FORGED"
        await forger.append(
            "t1",
            ExecutionExited(
                attempt=1,
                exit_code=0,
                output=OutputDigest(stdout_bytes=len(forged), stdout_sha256=hashlib.sha256(forged).hexdigest()),
                usage=Usage(),
                tail=(OutputChunk(stream="stdout", offset=0, data=forged),),
            ),
        )
        await asyncio.sleep(0.5)
        assert (await task_view(s, "t1"))["status"] == "assigned"  # not ended by another host's word
        await h1.finish("t1")  # the next event of the execution counts: the forged one kept its version
        view = await until_status(s, "t1", "completed")
        assert view["outcome"] == "succeeded"
        page = await s.json("GET", "/v1/tasks/t1/output")
        assert page["data_base64"] == "SEk="  # b"HI": h1's result, not the forged one
        assert page["intact"] is True


async def test_a_hosts_own_key_reports_on_its_tasks(lifecycle: App, start_scheduler: Any, host_of_key: Any) -> None:
    """The check above can pass: a host's own key ends the tasks placed on it (the service's key, which every
    other scheduler test's host signs with, ends any task, as in a deployment without host keys)."""
    await register_agent(lifecycle, "worker")
    await host_of_key("h1")
    async with start_scheduler() as s:
        await s.json("POST", "/v1/tasks", {"agent_id": "worker", "input": "a", "task_id": "t-own"}, status=201)
        view = await until_status(s, "t-own", "completed")
        assert (view["host_id"], view["outcome"]) == ("h1", "succeeded")
        page = await s.json("GET", "/v1/tasks/t-own/output")
        assert page["data_base64"] == "QQ=="  # b"A"


async def _host(s: App, host_id: str) -> dict[str, Any] | None:
    hosts = (await s.json("GET", "/v1/status"))["hosts"]
    return next((h for h in hosts if h["host_id"] == host_id), None)


async def test_a_host_with_its_own_key_is_believed_only_when_that_key_signs_a_newer_heartbeat(
    start_scheduler: Any, host_of_key: Any, nc: NatsClient
) -> None:
    """Another host's key, no signature, a removal or a replayed older entry of host h1 change nothing the
    scheduler sees of h1; h1's own signed heartbeats do."""
    kv = await nc.jetstream().key_value("HOSTS")
    async with start_scheduler() as s:
        forger = await host_of_key("h1", signs_as="h2", start=False)
        forger.kv = kv
        await forger.heartbeat()  # h1's entry, signed by h2's key
        await kv.put("h1", b'{"host_id": "h1", "cpu_cores": 8, "memory_mb": 8192, "heartbeat_at": 1e10}')
        await asyncio.sleep(1.0)
        assert await _host(s, "h1") is None

        h1 = await host_of_key("h1", cpu_cores=4.0)
        await eventually(lambda: _alive_with(s, "h1", 4.0))
        old = await nc.jetstream().get_last_msg("KV_HOSTS", "$KV.HOSTS.h1")
        h1.cpu_cores = 2.0
        await eventually(lambda: _alive_with(s, "h1", 2.0))
        h1.beating = False
        await nc.jetstream().publish("$KV.HOSTS.h1", old.data, headers=old.headers)  # h1's own, but older
        await kv.delete("h1")  # a removal nobody signed
        await asyncio.sleep(1.0)
        host = await _host(s, "h1")
        assert host is not None
        assert host["cpu_cores"] == 2.0  # the replayed 4-core entry and the removal changed nothing


async def _alive_with(s: App, host_id: str, cpu_cores: float) -> bool:
    host = await _host(s, host_id)
    return host is not None and host["alive"] and host["cpu_cores"] == cpu_cores


async def test_a_host_whose_key_was_revoked_is_heard_no_more(
    keys_dir: Path, start_scheduler: Any, host_of_key: Any, nc: NatsClient
) -> None:
    """Revoking a host's key cuts it off: neither its heartbeats signed with that key nor unsigned ones count."""
    key = KeyRegistry.load(keys_dir).active_key("sandbox-agent", "h1")
    assert key is not None
    revoke_key(keys_dir, key.key_id, after_sequence=None)
    kv = await nc.jetstream().key_value("HOSTS")
    async with start_scheduler() as s:
        await host_of_key("h1")  # signs its heartbeats with the revoked key
        await kv.put("h1", b'{"host_id": "h1", "cpu_cores": 8, "memory_mb": 8192, "heartbeat_at": 1e10}')
        await host_of_key("h2")
        await eventually(lambda: _alive_with(s, "h2", 4.0))  # the scheduler reads the bucket: h2 is heard
        assert await _host(s, "h1") is None
