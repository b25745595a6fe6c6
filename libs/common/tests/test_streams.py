"""Stream provisioning and raw reads against a real JetStream server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType
from nats.js.errors import APIError, BadRequestError
from symbi_cli.nats_server import NatsServer
from symbi_common.consuming import BacklogFetch
from symbi_common.errors import InfrastructureError
from symbi_common.stream_provisioning import _placed, provision_streams
from symbi_common.streams import (
    AUDIT_STREAM,
    EVENTS_STREAM,
    SNAPSHOTS_STREAM,
    StreamSettings,
    last_on_subject,
    read_subject,
)


async def test_provisioning_is_idempotent(js: JetStreamContext) -> None:
    await provision_streams(js)
    before = {name: (await js.stream_info(name)).config for name in (EVENTS_STREAM, SNAPSHOTS_STREAM, AUDIT_STREAM)}
    await provision_streams(js)
    await provision_streams(js)
    after = {name: (await js.stream_info(name)).config for name in before}
    assert after == before
    names = sorted([s.config.name for s in await js.streams_info()])
    assert names == sorted(
        [
            AUDIT_STREAM,
            EVENTS_STREAM,
            SNAPSHOTS_STREAM,
            "WORK",
            "KV_DATAKEYS",
            "KV_HOSTS",
            "KV_SCHEDULER",
            "KV_OPERATOR_REVOCATIONS",
            "KV_SECRETS",  # the secrets store (symbi_common.secret_store)
            "REGISTRY",
            "MESSAGES",  # the bus between agents (symbi_common.bus_streams)
            "DEADLETTER",
            "DECISIONS",  # decision-log batches until the policy service stores them (symbi_common.decision_queue)
            "KV_AGENT_KEYS",
            "KV_BUS_DELIVERED",
        ]
    )

    events = after[EVENTS_STREAM]
    assert events.subjects == ["evt.>"]
    assert events.deny_delete
    assert events.deny_purge
    assert events.discard == DiscardPolicy.NEW
    assert events.storage == StorageType.FILE
    assert events.allow_direct
    assert events.duplicate_window == 300.0
    assert after[SNAPSHOTS_STREAM].max_msgs_per_subject == 1


async def test_provisioning_updates_changed_settings(js: JetStreamContext) -> None:
    await provision_streams(js)
    await js.publish("evt.agent.a1", b"kept")
    await provision_streams(js, StreamSettings(duplicate_window_s=60.0, events_max_bytes=1024**3))
    info = await js.stream_info(EVENTS_STREAM)
    assert info.config.duplicate_window == 60.0
    assert info.config.max_bytes == 1024**3
    assert info.state.messages == 1  # an update keeps the history


async def test_a_store_too_small_for_the_events_stream_is_refused_naming_the_setting(tmp_path: Path) -> None:
    """A server whose JetStream store cannot hold ``EVENTS``' byte limit (on a small disk, 75 % of the free
    space) gets an error that says which stream, how much, and which setting lowers it."""
    with NatsServer(tmp_path / "nats", config="jetstream { max_file_store: 3GB }") as server:
        nc = await nats.connect(server.url, allow_reconnect=False)
        try:
            with pytest.raises(
                InfrastructureError, match=r"stream EVENTS cannot reserve its 10 GiB.* 12 GiB in all.*events_max_bytes"
            ):
                await provision_streams(nc.jetstream())
            await provision_streams(nc.jetstream(), StreamSettings(events_max_bytes=512 * 1024**2))
            assert (await nc.jetstream().stream_info(EVENTS_STREAM)).config.max_bytes == 512 * 1024**2
        finally:
            await nc.drain()


async def test_provisioning_again_fits_a_store_that_holds_the_streams_once(tmp_path: Path) -> None:
    """The deployments' servers cap the store (deploy/nats/nats.conf: 20 GB) and the streams reserve 12 GiB of
    it: provisioning a second time — a restarted compose stack, a re-run job after an upgrade — must not ask for
    the reservations again, and a changed limit is still applied."""
    with NatsServer(tmp_path / "nats", config="jetstream { max_file_store: 20GB }") as server:
        nc = await nats.connect(server.url, allow_reconnect=False)
        try:
            await provision_streams(nc.jetstream())
            await provision_streams(nc.jetstream(), existing_store=True)
            await provision_streams(nc.jetstream(), StreamSettings(events_max_bytes=8 * 1024**3))
            assert (await nc.jetstream().stream_info(EVENTS_STREAM)).config.max_bytes == 8 * 1024**3
        finally:
            await nc.drain()


async def test_events_stream_denies_delete_and_purge(provisioned: NatsClient, js: JetStreamContext) -> None:
    ack = await js.publish("evt.agent.a1", b"history")
    with pytest.raises(APIError, match="purge not permitted"):
        await js.purge_stream(EVENTS_STREAM)
    with pytest.raises(APIError, match="purge not permitted"):
        await js.purge_stream(EVENTS_STREAM, subject="evt.agent.a1")
    with pytest.raises(APIError, match="delete not permitted"):
        await js.delete_msg(EVENTS_STREAM, ack.seq)
    info = await js.stream_info(EVENTS_STREAM)
    assert info.state.messages == 1
    raw = await last_on_subject(provisioned, EVENTS_STREAM, "evt.agent.a1")
    assert raw is not None
    assert raw.data == b"history"
    # The audit stream is just as append-only.
    ack = await js.publish("audit.checkpoint", b"entry")
    with pytest.raises(APIError):
        await js.purge_stream(AUDIT_STREAM)
    with pytest.raises(APIError):
        await js.delete_msg(AUDIT_STREAM, ack.seq)


async def test_snapshots_keep_one_message_per_subject(provisioned: NatsClient, js: JetStreamContext) -> None:
    for i in range(3):
        await js.publish("snap.agent.a1", f"s{i}".encode())
    info = await js.stream_info(SNAPSHOTS_STREAM)
    assert info.state.messages == 1
    raw = await last_on_subject(provisioned, SNAPSHOTS_STREAM, "snap.agent.a1")
    assert raw is not None
    assert raw.data == b"s2"


async def test_raw_reads(provisioned: NatsClient, js: JetStreamContext) -> None:
    assert await last_on_subject(provisioned, EVENTS_STREAM, "evt.agent.none") is None
    assert [b async for b in read_subject(provisioned, EVENTS_STREAM, "evt.agent.none")] == []
    seqs = []
    for i in range(10):
        seqs.append((await js.publish("evt.agent.r", str(i).encode(), headers={"X-I": str(i)})).seq)
        await js.publish("evt.agent.other", b"noise")
    batches = [b async for b in read_subject(provisioned, EVENTS_STREAM, "evt.agent.r", batch=4)]
    assert [len(b) for b in batches] == [4, 4, 2]
    msgs = [m for b in batches for m in b]
    assert [m.sequence for m in msgs] == seqs
    assert [m.data for m in msgs] == [str(i).encode() for i in range(10)]
    assert {m.subject for m in msgs} == {"evt.agent.r"}
    assert msgs[3].headers["X-I"] == "3"
    tail = [m async for b in read_subject(provisioned, EVENTS_STREAM, "evt.agent.r", after=seqs[6]) for m in b]
    assert [m.sequence for m in tail] == seqs[7:]
    last = await last_on_subject(provisioned, EVENTS_STREAM, "evt.agent.r")
    assert last is not None
    assert last.sequence == seqs[-1]


async def test_reads_without_stream_are_typed_errors(nc: NatsClient) -> None:
    await nc.jetstream().delete_stream(EVENTS_STREAM)  # the fixture's server is provisioned
    with pytest.raises(InfrastructureError):
        await last_on_subject(nc, EVENTS_STREAM, "evt.agent.a1", timeout=1.0)
    with pytest.raises(InfrastructureError):
        async for _ in read_subject(nc, EVENTS_STREAM, "evt.agent.a1", timeout=1.0):
            pass


async def test_backlog_fetch_asks_for_the_backlog_and_one_when_caught_up(
    provisioned: NatsClient, js: JetStreamContext
) -> None:
    for i in range(10):
        await js.publish(f"evt.test.{i}", b"x")
    await js.add_consumer(
        EVENTS_STREAM,
        ConsumerConfig(durable_name="bf", ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
    )
    fetch = BacklogFetch(await js.pull_subscribe_bind(durable="bf", stream=EVENTS_STREAM), limit=4)

    sizes = [len(await fetch(timeout=1.0)) for _ in range(4)]
    assert sizes == [1, 4, 4, 1]  # unknown backlog: 1; then the reported backlog (9, 5, 1) capped at the limit
    assert await fetch(timeout=0.2) == []  # caught up: nothing within the timeout

    # A message published while a fetch waits is handed over by that fetch, not held to its timeout.
    waiting = asyncio.create_task(fetch(timeout=5.0))
    await asyncio.sleep(0.1)
    await js.publish("evt.test.live", b"live")
    msgs = await asyncio.wait_for(waiting, timeout=4.0)
    assert [m.data for m in msgs] == [b"live"]


async def test_placement_waits_while_the_cluster_has_too_few_members_then_says_so() -> None:
    """A stream whose replicas cannot be placed yet (JetStream's 10005, as a cluster that just started answers
    until every member has joined) is created again until it can be, for a while; then a clear error. Any
    other refusal is not waited on. (The cluster tests provision through this on a real 3-member cluster.)"""
    tries: list[int] = []

    async def joins_on_the_third_try() -> None:
        tries.append(1)
        if len(tries) < 3:
            raise BadRequestError(code=400, err_code=10005, description="no suitable peers for placement")

    await _placed("EVENTS", joins_on_the_third_try, 30.0)
    assert len(tries) == 3

    async def never() -> None:
        raise BadRequestError(code=400, err_code=10005, description="no suitable peers for placement, peer offline")

    with pytest.raises(InfrastructureError, match=r"stream EVENTS cannot be placed: no suitable peers.*members up"):
        await _placed("EVENTS", never, 1.0)

    async def other() -> None:
        raise BadRequestError(code=400, err_code=10058, description="stream name already in use")

    with pytest.raises(BadRequestError):
        await asyncio.wait_for(_placed("EVENTS", other, 30.0), 1.0)
