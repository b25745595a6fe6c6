"""The Follower on real JetStream and PostgreSQL: effect and position together, once each, fail closed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import asyncpg
import pytest
from nats.aio.client import Client as NatsClient
from prometheus_client import REGISTRY
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.follower import Delivery, Follower, FollowerHalted
from symbi_common.positions import MemoryPositions, PgPositions, Unit
from symbi_common.reader import read_event
from symbi_common.sealing import NEW_AGGREGATE

MakeStore = Callable[..., Awaitable[EventStore]]
SCHEMA = ("CREATE TABLE IF NOT EXISTS effects (sequence bigint NOT NULL, follower text NOT NULL)",)


class Counted(Event, tag="test.counted"):
    n: int


codec: EventCodec[Counted] = EventCodec([Counted])


class Crash(BaseException):
    """The process dies: nothing the follower may catch and retry."""


class Recorder:
    """One row per event in the unit's transaction; ``broken_at`` makes it fail on that sequence."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.broken_at: int | None = None

    async def __call__(self, unit: Unit, batch: list[Delivery]) -> None:
        for d in batch:
            if d.sequence == self.broken_at:
                raise RuntimeError(f"cannot apply {d.sequence}")
            await unit.conn.execute("INSERT INTO effects (sequence, follower) VALUES ($1, $2)", d.sequence, self.label)


class CrashAfterCommit(Follower):
    """Commits its first batch (effects and position), then dies before acknowledging it."""

    crashed_with: ClassVar[list[Any]] = []

    async def _apply_batch(self, msgs: list[Any]) -> None:
        await super()._apply_batch(msgs)
        CrashAfterCommit.crashed_with = msgs
        raise Crash


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


async def _positions(pool: asyncpg.Pool, name: str) -> PgPositions:
    positions = PgPositions(pool, name)
    await positions.setup(SCHEMA)
    return positions


def _follower(js: Any, positions: PgPositions, handler: Any, cls: type[Follower] = Follower, **kw: Any) -> Follower:
    return cls(
        js, service="test", name=positions.name, subjects=("evt.agent.>",), positions=positions, handler=handler, **kw
    )


async def _append(store: EventStore, count: int) -> int:
    tip = NEW_AGGREGATE
    agg = uuid.uuid4().hex[:10]
    for i in range(count):
        (rec,) = await store.append("agent", agg, [Counted(n=i)], codec, expected=tip)
        tip = rec.tip
    return tip.sequence


async def _effects(pool: asyncpg.Pool) -> list[tuple[int, str]]:
    return [(r["sequence"], r["follower"]) for r in await pool.fetch("SELECT * FROM effects ORDER BY sequence")]


async def _stop(follower: Follower, task: asyncio.Task[Any]) -> None:
    await follower.stop()
    await asyncio.wait_for(task, 15)


async def test_a_crash_between_commit_and_ack_applies_each_event_once(
    make_store: MakeStore, provisioned: NatsClient, pool: asyncpg.Pool
) -> None:
    js = provisioned.jetstream()
    store = await make_store()
    last = await _append(store, 12)
    positions = await _positions(pool, "crashing")
    first = _follower(js, positions, Recorder("first"), CrashAfterCommit, batch=5)
    with pytest.raises(Crash):
        await asyncio.wait_for(first.run(), 15)
    committed = [int(m.metadata.sequence.stream) for m in CrashAfterCommit.crashed_with]
    assert await positions.load() == committed[-1]
    assert [s for s, _ in await _effects(pool)] == committed

    second = _follower(js, positions, Recorder("second"), batch=5)
    task = asyncio.create_task(second.run())
    try:
        assert await second.wait_for(last, 15)
        # The unacknowledged batch is delivered again: at or below the stored position, it is a no-op.
        await second._apply_batch(CrashAfterCommit.crashed_with)
    finally:
        await _stop(second, task)
    rows = await _effects(pool)
    assert [s for s, _ in rows] == list(range(1, last + 1))  # each event once, none lost
    assert {f for s, f in rows if s in committed} == {"first"}
    assert await positions.load() == last


async def test_the_position_survives_a_restart(
    make_store: MakeStore, provisioned: NatsClient, pool: asyncpg.Pool
) -> None:
    js = provisioned.jetstream()
    store = await make_store()
    positions = await _positions(pool, "restarted")
    first = _follower(js, positions, Recorder("first"))
    task = asyncio.create_task(first.run())
    applied = await _append(store, 6)
    assert await first.wait_for(applied, 15)
    task.cancel()  # like a crash: no clean stop
    await asyncio.gather(task, return_exceptions=True)

    last = await _append(store, 4)
    again = PgPositions(pool, "restarted")  # a new process: nothing in memory
    assert await again.load() == applied
    second = _follower(js, again, Recorder("second"))
    task = asyncio.create_task(second.run())
    try:
        assert await second.wait_for(last, 15)
        assert second.consumer_name.startswith("test_restarted_")
        assert second.consumer_name != first.consumer_name
    finally:
        await _stop(second, task)
    assert await _effects(pool) == [
        *((s, "first") for s in range(1, applied + 1)),
        *((s, "second") for s in range(applied + 1, last + 1)),
    ]


async def test_a_failing_handler_halts_and_does_not_advance(
    make_store: MakeStore, provisioned: NatsClient, pool: asyncpg.Pool
) -> None:
    js = provisioned.jetstream()
    store = await make_store()
    good = await _append(store, 3)
    handler = Recorder("only")
    handler.broken_at = good + 2
    positions = await _positions(pool, "halting")
    follower = _follower(js, positions, handler, batch=4)
    task = asyncio.create_task(follower.run())
    try:
        assert await follower.wait_for(good, 15)
        last = await _append(store, 3)
        for _ in range(100):
            if follower.halted is not None:
                break
            await asyncio.sleep(0.1)
        assert isinstance(follower.halted, FollowerHalted)
        assert follower.halted.code == "follower_halted"
        assert "cannot apply" in follower.halted.message
        assert not follower.healthy
        assert REGISTRY.get_sample_value("symbi_follower_halted", {"follower": "halting"}) == 1
        await asyncio.sleep(1.0)  # it keeps retrying, and keeps failing: nothing moves
        assert follower.position < handler.broken_at
        assert await positions.load() < handler.broken_at
        assert max(s for s, _ in await _effects(pool)) < handler.broken_at  # the failed unit left nothing

        handler.broken_at = None  # fixed (a deployment, the database back): it goes on from where it stopped
        assert await follower.wait_for(last, 15)
        assert follower.halted is None
        assert REGISTRY.get_sample_value("symbi_follower_halted", {"follower": "halting"}) == 0
    finally:
        await _stop(follower, task)
    assert [s for s, _ in await _effects(pool)] == list(range(1, last + 1))


class NotedV1(Event, tag="test.noted"):
    """As the previous version wrote it: one ``text`` field."""

    text: str


class Noted(Event, tag="test.noted"):
    """The current version: the text split into ``title`` and ``body``."""

    schema_version: ClassVar[int] = 2
    title: str
    body: str


def _v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    title, _, body = payload.pop("text").partition("\n")
    return {**payload, "title": title, "body": body}


async def test_an_old_version_event_is_upcast_by_the_reader(make_store: MakeStore, provisioned: NatsClient) -> None:
    old_store = await make_store()
    (written,) = await old_store.append(
        "agent", "noted-1", [NotedV1(text="hello\nworld")], EventCodec([NotedV1]), expected=NEW_AGGREGATE
    )
    assert written.header.schema_version == 1
    reader = await make_store()  # another process, reading with the current codec
    current: EventCodec[Noted] = EventCodec([Noted], upcasters={("test.noted", 1): _v1_to_v2})
    read: list[Noted] = []

    async def handle(unit: Unit, batch: list[Delivery]) -> None:
        for d in batch:
            rec = await read_event(
                d.data,
                subject=d.subject,
                sequence=d.sequence,
                registry=reader.registry,
                datakeys=reader.datakeys,
                codec=current,
            )
            read.append(rec.event)

    follower = Follower(
        provisioned.jetstream(),
        service="test",
        name="upcast",
        subjects=("evt.agent.noted-1",),
        positions=MemoryPositions(),
        handler=handle,
        acks=False,
    )
    task = asyncio.create_task(follower.run())
    try:
        assert await follower.wait_for(written.sequence, 15)
    finally:
        await _stop(follower, task)
    assert read == [Noted(title="hello", body="world")]


async def test_a_delivery_taken_by_another_client_is_read_again(
    make_store: MakeStore, provisioned: NatsClient, pool: asyncpg.Pool
) -> None:
    """Another client pulling from the follower's consumer takes an event away from it; the gap in the
    consumer's delivery sequence makes the follower read again from its stored position, so nothing is lost."""
    js = provisioned.jetstream()
    store = await make_store()
    first = await _append(store, 2)
    held = False
    positions = await _positions(pool, "robbed")
    follower = _follower(js, positions, Recorder("only"), hold=lambda: held)
    task = asyncio.create_task(follower.run())
    try:
        assert await follower.wait_for(first, 15)
        held = True
        await asyncio.sleep(2.5)  # the follower's last fetch is over; it fetches nothing while held
        thief = await js.pull_subscribe_bind(durable=follower.consumer_name, stream="EVENTS")
        taken_seq = await _append(store, 1)
        (taken,) = await thief.fetch(1, timeout=10)
        assert taken.metadata.sequence.stream == taken_seq
        await thief.unsubscribe()
        last = await _append(store, 2)
        held = False
        assert await follower.wait_for(last, 20)
    finally:
        await _stop(follower, task)
    assert [s for s, _ in await _effects(pool)] == list(range(1, last + 1))
