"""Appends whose acknowledgement does not come in time: the server is frozen (SIGSTOP) mid-append.

The store must find out whether the event landed and never store it twice — also when its retry
meets JetStream's expected-sequence check, which runs before de-duplication.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client as NatsClient
from symbi_cli.nats_server import NatsServer
from symbi_common.errors import AppendFailed
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.sealing import NEW_AGGREGATE

MakeStore = Callable[..., Awaitable[EventStore]]


class Ticked(Event, tag="test.ticked"):
    n: int


codec: EventCodec[Ticked] = EventCodec([Ticked])


class CountingStore(EventStore):
    """Counts how often the store had to ask whether an append landed."""

    landed_checks = 0

    async def _landed(self, *args: object, **kwargs: object) -> list[int] | None:
        type(self).landed_checks += 1
        return await super()._landed(*args, **kwargs)  # type: ignore[arg-type]


async def _freeze(server: NatsServer, seconds: float) -> None:
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(server.pid, signal.SIGCONT)


async def test_append_through_a_frozen_server_lands_exactly_once(
    make_store: MakeStore, provisioned: NatsClient, nats_server: NatsServer
) -> None:
    CountingStore.landed_checks = 0
    store = await make_store(timeout=0.3, attempts=10, store_class=CountingStore)
    agg = uuid.uuid4().hex[:12]
    first = await store.append("agent", agg, [Ticked(n=1)], codec, expected=NEW_AGGREGATE)

    freeze = asyncio.create_task(_freeze(nats_server, 1.0))
    await asyncio.sleep(0.05)
    second = await store.append("agent", agg, [Ticked(n=2)], codec, expected=first[0].tip)
    await freeze
    assert CountingStore.landed_checks >= 1  # the ack really was missed

    loaded = await store.load("agent", agg, codec)
    assert [r.event.n for r in loaded] == [1, 2]
    assert [r.header.aggregate_version for r in loaded] == [1, 2]
    assert loaded[1].sequence == second[0].sequence
    assert loaded[1].header.event_id == second[0].header.event_id


async def test_append_that_cannot_be_confirmed_is_a_typed_error(
    make_store: MakeStore, provisioned: NatsClient, nats_server: NatsServer
) -> None:
    store = await make_store(timeout=0.2, attempts=2)
    agg = uuid.uuid4().hex[:12]
    first = await store.append("agent", agg, [Ticked(n=1)], codec, expected=NEW_AGGREGATE)
    freeze = asyncio.create_task(_freeze(nats_server, 1.5))
    await asyncio.sleep(0.05)
    try:
        with pytest.raises(AppendFailed, match="could not be confirmed"):
            await store.append("agent", agg, [Ticked(n=2)], codec, expected=first[0].tip)
    finally:
        await freeze
    # Once the server is back, the outcome is visible: stored at most once.
    await asyncio.sleep(0.2)
    loaded = await store.load("agent", agg, codec)
    assert [r.event.n for r in loaded] in ([1], [1, 2])
