"""Read-after-write when a replica that is behind answers the direct get.

A follower of a replicated stream stores what the leader committed a moment later, and any replica may answer
a direct get. Here the lagging replica is a real one, made to lag for good: a mirror of ``EVENTS`` that copies
one aggregate only. A mirror of a stream with direct get answers the stream's direct gets as a follower does;
``EVENTS`` itself stops answering them, so every direct get is served by the replica that is behind. What the
store wrote, or learnt from a conflict, must still come back from a load; what no replica has is a typed
error, never a short history.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import StreamConfig, StreamSource
from symbi_common.envelope import subject_for
from symbi_common.errors import ConcurrencyConflict, StaleRead
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.fenced_read import KnownSequences, read_subject_at_least
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.streams import EVENTS_STREAM, StreamSettings, events_config, last_on_subject, read_subject

MakeStore = Callable[..., Awaitable[EventStore]]
LAGGING = "EVENTS_LAGGING"


class Noted(Event, tag="test.noted"):
    n: int


codec: EventCodec[Noted] = EventCodec([Noted])


def new_id() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
async def lagging_replica(make_store: MakeStore, provisioned: NatsClient, js: JetStreamContext) -> str:
    """The only direct-get responder of ``EVENTS`` is now a mirror that copies one aggregate (returned) only."""
    copied = new_id()
    store = await make_store()
    await store.append("agent", copied, [Noted(n=0)], codec, expected=NEW_AGGREGATE)
    source = StreamSource(name=EVENTS_STREAM, filter_subject=subject_for("agent", copied))
    await js.add_stream(StreamConfig(name=LAGGING, mirror=source))
    for _ in range(200):  # the mirror answers direct gets once it has caught up with its first message
        if (await js.stream_info(LAGGING)).state.messages == 1:
            break
        await asyncio.sleep(0.02)
    await js.update_stream(dataclasses.replace(events_config(StreamSettings()), allow_direct=False))
    await asyncio.sleep(0.1)
    assert (await last_on_subject(provisioned, EVENTS_STREAM, subject_for("agent", copied))) is not None
    return copied


async def test_the_writer_reads_its_own_write(
    make_store: MakeStore, provisioned: NatsClient, lagging_replica: str
) -> None:
    store = await make_store()
    agg = new_id()
    written = await store.append("agent", agg, [Noted(n=1)], codec, expected=NEW_AGGREGATE)
    # The replica that answers direct gets does not have it: a plain read comes back empty.
    assert [m async for m in read_subject(provisioned, EVENTS_STREAM, subject_for("agent", agg))] == []
    loaded = await store.load("agent", agg, codec)
    assert [(r.event, r.sequence) for r in loaded] == [(Noted(n=1), written[0].sequence)]


async def test_the_loser_of_a_conflict_catches_up_to_the_winner(make_store: MakeStore, lagging_replica: str) -> None:
    winner, loser = await make_store(), await make_store()
    agg = new_id()
    won = await winner.append("agent", agg, [Noted(n=1)], codec, expected=NEW_AGGREGATE)
    with pytest.raises(ConcurrencyConflict) as conflict:
        await loser.append("agent", agg, [Noted(n=2)], codec, expected=NEW_AGGREGATE)
    assert conflict.value.actual == won[0].sequence
    caught_up = await loser.load("agent", agg, codec)
    assert [r.header.event_id for r in caught_up] == [won[0].header.event_id]
    # ... and appends after it.
    await loser.append("agent", agg, [Noted(n=2)], codec, expected=caught_up[-1].tip)
    assert [r.event.n for r in await loser.load("agent", agg, codec)] == [1, 2]


async def test_the_rest_comes_from_the_leader_in_batches(
    make_store: MakeStore, provisioned: NatsClient, lagging_replica: str
) -> None:
    store = await make_store()
    agg = new_id()
    written = await store.append("agent", agg, [Noted(n=i) for i in range(5)], codec, expected=NEW_AGGREGATE)
    subject = subject_for("agent", agg)
    batches = [
        [m.sequence for m in batch]
        async for batch in read_subject_at_least(
            provisioned, EVENTS_STREAM, subject, at_least=written[-1].sequence, batch=2
        )
    ]
    assert batches == [[r.sequence for r in written[i : i + 2]] for i in (0, 2, 4)]
    # The leader's copy is the stored message: its headers (event id) and bytes as a direct get returns them.
    tail = [m async for b in read_subject_at_least(provisioned, EVENTS_STREAM, subject, at_least=1) for m in b]
    assert [m.headers["Nats-Msg-Id"] for m in tail] == [r.header.event_id for r in written]
    assert all(m.subject == subject for m in tail)


async def test_what_no_replica_has_is_a_typed_error(
    make_store: MakeStore, provisioned: NatsClient, lagging_replica: str
) -> None:
    store = await make_store()
    agg = new_id()
    written = await store.append("agent", agg, [Noted(n=1)], codec, expected=NEW_AGGREGATE)
    started = time.monotonic()
    with pytest.raises(StaleRead):
        async for _ in read_subject_at_least(
            provisioned, EVENTS_STREAM, subject_for("agent", agg), at_least=written[0].sequence + 100, timeout=0.3
        ):
            pass
    assert 0.25 < time.monotonic() - started < 2.0


def test_known_sequences_keep_the_highest_of_the_subjects_used_last() -> None:
    known = KnownSequences(kept=2)
    known.saw("a", 5)
    known.saw("a", 3)  # never goes back
    known.saw("b", 1)
    assert (known.of("a"), known.of("b"), known.of("c")) == (5, 1, 0)
    known.saw("a", 6)  # "a" used last: "b" is the one forgotten
    known.saw("c", 2)
    assert (known.of("a"), known.of("b"), known.of("c")) == (6, 0, 2)
