"""The projection runner on real JetStream and PostgreSQL: exactly once, also with several replicas."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client as NatsClient
from symbi_common.errors import MalformedEvent, Timeout
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.follower import INACTIVE_THRESHOLD_S
from symbi_common.projection import ProjectionRunner
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.streams import RawMessage

MakeStore = Callable[..., Awaitable[EventStore]]


class Counted(Event, tag="test.counted"):
    n: int


codec: EventCodec[Counted] = EventCodec([Counted])


class Recorder:
    """Writes one row per applied event, tagged with the runner that applied it."""

    name = "recorder"
    filter_subjects = ("evt.agent.>",)
    schema = ("CREATE TABLE IF NOT EXISTS applied (sequence bigint NOT NULL, runner text NOT NULL)",)

    def __init__(self, runner: str, *, checks_before_writes: bool = True) -> None:
        self.runner = runner
        self.checks_before_writes = checks_before_writes

    async def apply(self, conn: Any, message: RawMessage) -> None:
        if message.data == b"poison":
            raise MalformedEvent("not an event", sequence=message.sequence, subject=message.subject)
        await conn.execute("INSERT INTO applied (sequence, runner) VALUES ($1, $2)", message.sequence, self.runner)


async def _append_many(store: EventStore, aggregates: int, per_aggregate: int) -> None:
    async def one(agg: str) -> None:
        tip = NEW_AGGREGATE
        for i in range(per_aggregate):
            (rec,) = await store.append("agent", agg, [Counted(n=i)], codec, expected=tip)
            tip = rec.tip

    await asyncio.gather(*(one(uuid.uuid4().hex[:10]) for _ in range(aggregates)))


class WritesThenRejects(Recorder):
    """Writes its row, then rejects a poison event: only a savepoint keeps that row out."""

    async def apply(self, conn: Any, message: RawMessage) -> None:
        await conn.execute("INSERT INTO applied (sequence, runner) VALUES ($1, $2)", message.sequence, self.runner)
        if message.data == b"poison":
            raise MalformedEvent("not an event", sequence=message.sequence, subject=message.subject)


@pytest.mark.parametrize("checks_before_writes", [True, False])
async def test_replicas_apply_every_event_exactly_once(
    make_store: MakeStore, provisioned: NatsClient, database_url: str, checks_before_writes: bool
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=6)
    assert pool is not None
    js = provisioned.jetstream()
    runners = [
        ProjectionRunner(js, pool, Recorder(f"r{i}", checks_before_writes=checks_before_writes), batch=7)
        for i in range(3)
    ]
    for r in runners:
        await r.setup()
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:
        store = await make_store()
        await _append_many(store, aggregates=8, per_aggregate=25)
        await provisioned.publish("evt.agent.garbage", b"poison")
        await _append_many(store, aggregates=2, per_aggregate=5)
        last = (await js.stream_info("EVENTS")).state.last_seq
        assert all([await r.wait_for(last, timeout=15) for r in runners])
        rows = await pool.fetch("SELECT sequence, runner FROM applied ORDER BY sequence")
        sequences = [row["sequence"] for row in rows]
        assert len(sequences) == 210
        assert len(set(sequences)) == 210  # no event applied twice ...
        rejected = await pool.fetchval("SELECT count(*) FROM symbi_projection_rejects WHERE code = 'malformed_event'")
        assert rejected == 1
        assert sorted([*sequences, last - 10]) == list(range(1, last + 1))  # ... and none lost
        position = await pool.fetchval("SELECT position FROM symbi_projection_positions WHERE name = 'recorder'")
        assert position == last
    finally:
        for r in runners:
            await r.stop()
        await asyncio.gather(*tasks)
        await pool.close()
    # Each runner had a consumer of its own, named for its service, that expires once nobody pulls from it
    # (services may not delete consumers).
    ours = {r.consumer_name for r in runners}
    assert len(ours) == 3
    assert all(n.startswith("symbi_recorder_") for n in ours)
    infos = [c for c in await js.consumers_info("EVENTS") if c.name in ours]
    assert [c.config.inactive_threshold for c in infos] == [INACTIVE_THRESHOLD_S] * 3


async def test_a_restarted_runner_resumes_after_the_stored_position(
    make_store: MakeStore, provisioned: NatsClient, database_url: str
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
    assert pool is not None
    js = provisioned.jetstream()
    store = await make_store()
    try:
        first = ProjectionRunner(js, pool, Recorder("first"))
        await first.setup()
        task = asyncio.create_task(first.run())
        await _append_many(store, aggregates=3, per_aggregate=4)
        assert await first.wait_for(12)
        task.cancel()  # like a crash: no clean stop
        await asyncio.gather(task, return_exceptions=True)

        await _append_many(store, aggregates=2, per_aggregate=3)
        second = ProjectionRunner(js, pool, Recorder("second"))
        await second.setup()
        assert second.position == 12
        task = asyncio.create_task(second.run())
        assert await second.wait_for(18)
        await second.stop()
        await task
        rows = await pool.fetch("SELECT sequence, runner FROM applied ORDER BY sequence")
        assert [(r["sequence"], r["runner"]) for r in rows] == [
            *((s, "first") for s in range(1, 13)),
            *((s, "second") for s in range(13, 19)),
        ]
    finally:
        await pool.close()


async def test_a_rejected_event_that_wrote_first_leaves_nothing_under_its_savepoint(
    make_store: MakeStore, provisioned: NatsClient, database_url: str
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
    assert pool is not None
    js = provisioned.jetstream()
    runner = ProjectionRunner(js, pool, WritesThenRejects("w", checks_before_writes=False), batch=4)
    await runner.setup()
    task = asyncio.create_task(runner.run())
    try:
        store = await make_store()
        await _append_many(store, aggregates=1, per_aggregate=2)
        await provisioned.publish("evt.agent.garbage", b"poison")
        await _append_many(store, aggregates=1, per_aggregate=2)
        assert await runner.wait_for(5, timeout=15)
        rows = await pool.fetch("SELECT sequence FROM applied ORDER BY sequence")
        assert [r["sequence"] for r in rows] == [1, 2, 4, 5]  # the poison's own row is gone with its savepoint
        assert await pool.fetchval("SELECT position FROM symbi_projection_positions WHERE name = 'recorder'") == 5
    finally:
        await runner.stop()
        await task
        await pool.close()


class FailsOnceThenApplies(Recorder):
    """The data key store away a moment: the first attempt at each event fails with an infrastructure error."""

    def __init__(self, runner: str) -> None:
        super().__init__(runner)
        self.failed: set[int] = set()

    async def apply(self, conn: Any, message: RawMessage) -> None:
        if message.sequence not in self.failed:
            self.failed.add(message.sequence)
            raise Timeout("data key read timed out")
        await super().apply(conn, message)


async def test_an_infrastructure_failure_rejects_nothing_and_the_batch_is_applied_again(
    make_store: MakeStore, provisioned: NatsClient, database_url: str
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
    assert pool is not None
    runner = ProjectionRunner(provisioned.jetstream(), pool, FailsOnceThenApplies("f"), batch=4)
    await runner.setup()
    task = asyncio.create_task(runner.run())
    try:
        await _append_many(await make_store(), aggregates=1, per_aggregate=3)
        assert await runner.wait_for(3, timeout=15)
        rows = await pool.fetch("SELECT sequence FROM applied ORDER BY sequence")
        assert [r["sequence"] for r in rows] == [1, 2, 3]
        assert await pool.fetchval("SELECT count(*) FROM symbi_projection_rejects") == 0
    finally:
        await runner.stop()
        await task
        await pool.close()
