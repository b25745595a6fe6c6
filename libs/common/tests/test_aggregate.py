"""Repository and snapshots against a real JetStream server: racing writers, retries, snapshot + tail."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from symbi_common.aggregate import Repository
from symbi_common.crypto import Signer
from symbi_common.errors import ConcurrencyConflict, IllegalTransition
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore, Recorded
from symbi_common.keyring import KeyRegistry
from symbi_common.sealing import ChainTip
from symbi_common.snapshots import SnapshotStore, snapshot_subject

MakeStore = Callable[..., Awaitable[EventStore]]


# --- a small test aggregate ----------------------------------------------------------------------


class Counted(Event, tag="counter.counted"):
    value: int
    by: str


class Stopped(Event, tag="counter.stopped"):
    pass


class CounterState(msgspec.Struct):
    id: str
    value: int = 0
    by: list[str] = msgspec.field(default_factory=list)
    stopped: bool = False


@dataclass(frozen=True)
class Increment:
    by: str
    times: int = 1


@dataclass(frozen=True)
class Stop:
    pass


class Counter:
    aggregate_type = "agent"  # the lifecycle service's key may write evt.agent.>
    codec: EventCodec[Event] = EventCodec([Counted, Stopped])
    state_type = CounterState

    def initial(self, aggregate_id: str) -> CounterState:
        return CounterState(id=aggregate_id)

    def apply(self, state: CounterState, event: Event) -> CounterState:
        if isinstance(event, Counted):
            return CounterState(id=state.id, value=event.value, by=[*state.by, event.by], stopped=state.stopped)
        return CounterState(id=state.id, value=state.value, by=state.by, stopped=True)

    def decide(self, state: CounterState, command: Increment | Stop) -> list[Event]:
        if state.stopped:
            raise IllegalTransition(state="stopped", command=type(command).__name__.lower())
        if isinstance(command, Stop):
            return [Stopped()]
        return [Counted(value=state.value + i + 1, by=command.by) for i in range(command.times)]


class CountingStore(EventStore):
    """An event store that counts conflicts and how many events its loads returned."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conflicts = 0
        self.appended = 0
        self.loaded: list[int] = []

    async def append(self, *args: Any, **kwargs: Any) -> list[Recorded[Any]]:
        try:
            recs = await super().append(*args, **kwargs)
        except ConcurrencyConflict:
            self.conflicts += 1
            raise
        self.appended += 1
        return recs

    async def load(self, *args: Any, **kwargs: Any) -> list[Recorded[Any]]:
        recs = await super().load(*args, **kwargs)
        self.loaded.append(len(recs))
        return recs


def new_id() -> str:
    return uuid.uuid4().hex[:12]


# --- write path ----------------------------------------------------------------------------------


async def test_execute_appends_and_caches(make_store: MakeStore) -> None:
    store = await make_store(store_class=CountingStore)
    repo: Repository[CounterState, Any, Event] = Repository(store, Counter())
    agg = new_id()
    loaded, recs = await repo.execute(agg, Increment("me", times=3), correlation_id="c1")
    assert loaded.state.value == 3
    assert loaded.exists
    assert [r.header.aggregate_version for r in recs] == [1, 2, 3]
    assert {r.header.correlation_id for r in recs} == {"c1"}
    assert store.loaded == [0]
    again = await repo.load(agg)  # cached: no read
    assert again == loaded
    assert store.loaded == [0]
    fresh = await repo.load(agg, fresh=True)
    assert fresh == loaded
    assert store.loaded == [0, 3]
    assert not (await repo.load(new_id())).exists


async def test_assume_new_skips_the_read_and_is_safe_when_wrong(
    make_store: MakeStore, nats_connect: Callable[..., Awaitable[NatsClient]]
) -> None:
    """A new aggregate is written without a read; one another process wrote meanwhile is a conflict, caught up."""
    store = await make_store(store_class=CountingStore)
    repo: Repository[CounterState, Any, Event] = Repository(store, Counter())
    agg = new_id()
    repo.assume_new(agg)
    loaded, _ = await repo.execute(agg, Increment("me"))
    assert loaded.state.value == 1
    assert store.loaded == []  # no read of the empty subject
    other = await make_store(nc=await nats_connect(), store_class=CountingStore)
    late: Repository[CounterState, Any, Event] = Repository(other, Counter())
    late.assume_new(agg)  # wrong: it exists
    loaded, recs = await late.execute(agg, Increment("late"))
    assert other.conflicts == 1  # refused by the stream, then decided again on the caught-up state
    assert loaded.state.value == 2
    assert loaded.state.by == ["me", "late"]
    assert [r.header.aggregate_version for r in recs] == [2]
    repo.assume_new(agg)  # cached already: changes nothing
    assert (await repo.load(agg)).state.value == 1


async def test_domain_errors_and_no_op_commands(make_store: MakeStore, js: JetStreamContext) -> None:
    repo: Repository[CounterState, Any, Event] = Repository(await make_store(), Counter())
    agg = new_id()
    await repo.execute(agg, Stop())
    with pytest.raises(IllegalTransition, match="in state stopped"):
        await repo.execute(agg, Increment("me"))
    loaded, recs = await repo.execute(new_id(), Increment("me", times=0))
    assert recs == []
    assert not loaded.exists
    assert (await js.stream_info("EVENTS")).state.messages == 1


async def test_racing_writers_one_wins_the_other_retries(
    make_store: MakeStore, nats_connect: Callable[..., Awaitable[NatsClient]]
) -> None:
    """Two processes (own connection, store, key cache, repository) run a command on one aggregate at once."""
    stores: Sequence[CountingStore] = [
        await make_store(nc=await nats_connect(), store_class=CountingStore),  # type: ignore[misc]
        await make_store(nc=await nats_connect(), store_class=CountingStore),  # type: ignore[misc]
    ]
    repos = [Repository(s, Counter()) for s in stores]
    agg = new_id()
    rounds = 8
    for n in range(rounds):
        for repo in repos:  # both start the round from the same tip
            assert (await repo.load(agg, fresh=True)).tip.version == 2 * n
        conflicts_before = sum(s.conflicts for s in stores)
        results = await asyncio.gather(repos[0].execute(agg, Increment("a")), repos[1].execute(agg, Increment("b")))
        # Exactly one wrote on its first try; the other conflicted once, caught up and wrote after it.
        assert sum(s.conflicts for s in stores) - conflicts_before == 1
        versions = sorted(recs[0].header.aggregate_version for _, recs in results)
        assert versions == [2 * n + 1, 2 * n + 2]
        winner = 0 if results[0][1][0].header.aggregate_version == 2 * n + 1 else 1
        assert results[1 - winner][0].state.value == 2 * n + 2  # the loser decided again on the caught-up state
    assert sum(s.appended for s in stores) == 2 * rounds

    history = await (await make_store()).load("agent", agg, Counter.codec)
    assert [r.header.aggregate_version for r in history] == list(range(1, 2 * rounds + 1))
    assert [r.event.value for r in history] == list(range(1, 2 * rounds + 1))  # type: ignore[attr-defined]
    assert sorted(r.event.by for r in history) == ["a"] * rounds + ["b"] * rounds  # type: ignore[attr-defined]
    assert len({r.header.event_id for r in history}) == 2 * rounds


async def test_many_concurrent_commands_in_one_process(make_store: MakeStore) -> None:
    store = await make_store(store_class=CountingStore)
    repo: Repository[CounterState, Any, Event] = Repository(store, Counter())
    agg = new_id()
    await asyncio.gather(*(repo.execute(agg, Increment(str(i))) for i in range(20)))
    assert store.conflicts == 0  # serialised per aggregate within the process
    assert (await repo.load(agg, fresh=True)).state.value == 20


async def test_conflicts_give_up_after_max_attempts(make_store: MakeStore) -> None:
    writer: Repository[CounterState, Any, Event] = Repository(await make_store(), Counter())
    stale_store = await make_store(store_class=CountingStore)
    stale: Repository[CounterState, Any, Event] = Repository(stale_store, Counter(), max_attempts=1)
    agg = new_id()
    await stale.load(agg)
    await writer.execute(agg, Increment("w"))
    with pytest.raises(ConcurrencyConflict):
        await stale.execute(agg, Increment("s"))
    assert stale_store.conflicts == 1
    # The stale cache entry was dropped: the next command reads the history and succeeds.
    loaded, _ = await stale.execute(agg, Increment("s"))
    assert loaded.state.by == ["w", "s"]


# --- snapshots -----------------------------------------------------------------------------------


def snapshot_store(store: EventStore, signer: Signer, registry: KeyRegistry) -> SnapshotStore:
    return SnapshotStore(store.nc, signer=signer, registry=registry, datakeys=store.datakeys)


async def test_snapshot_every_n_and_load_equals_full_replay(
    make_store: MakeStore, signer_for: Callable[[str], Signer], registry: KeyRegistry
) -> None:
    store = await make_store()
    snaps = snapshot_store(store, signer_for("lifecycle"), registry)
    repo: Repository[CounterState, Any, Event] = Repository(store, Counter(), snapshots=snaps, snapshot_every=5)
    agg = new_id()
    for _ in range(4):
        await repo.execute(agg, Increment("x"))
    await repo.drain()
    assert await snaps.load("agent", agg, CounterState) is None
    await repo.execute(agg, Increment("x"))
    await repo.drain()
    snap = await snaps.load("agent", agg, CounterState)
    assert snap is not None
    assert snap[1].version == 5
    assert snap[0].value == 5
    # A command whose events cross a multiple of N snapshots its end state.
    await repo.execute(agg, Increment("y", times=7))  # 5 -> 12
    await repo.drain()
    snap = await snaps.load("agent", agg, CounterState)
    assert snap is not None
    assert snap[1].version == 12
    await repo.execute(agg, Increment("z", times=2))  # 12 -> 14: no new snapshot
    await repo.drain()
    snap = await snaps.load("agent", agg, CounterState)
    assert snap is not None
    assert snap[1].version == 12

    reader_store = await make_store(store_class=CountingStore)
    from_snapshot = await Repository(
        reader_store, Counter(), snapshots=snapshot_store(reader_store, signer_for("lifecycle"), registry)
    ).load(agg)
    assert reader_store.loaded == [2]  # only the tail after the snapshot was read
    full = await Repository(await make_store(), Counter()).load(agg)
    assert from_snapshot == full
    assert full.state.value == 14
    assert full.tip.version == 14


@pytest.mark.parametrize("who", ["policy", "stranger"])
async def test_snapshot_signed_by_the_wrong_key_is_ignored(
    who: str, make_store: MakeStore, signer_for: Callable[[str], Signer], registry: KeyRegistry
) -> None:
    store = await make_store()
    agg = new_id()
    repo: Repository[CounterState, Any, Event] = Repository(store, Counter())
    loaded, _ = await repo.execute(agg, Increment("x", times=3))
    # A forged snapshot claiming a much later, different state.
    signer = signer_for("policy") if who == "policy" else Signer.generate()
    forged = CounterState(id=agg, value=1000, by=["forger"])
    await snapshot_store(store, signer, registry).save(
        "agent", agg, ChainTip(loaded.tip.sequence, 3, loaded.tip.hash), forged
    )
    honest = snapshot_store(store, signer_for("lifecycle"), registry)
    assert await honest.load("agent", agg, CounterState) is None
    reader: Repository[CounterState, Any, Event] = Repository(await make_store(), Counter(), snapshots=honest)
    assert await reader.load(agg) == loaded


async def test_corrupt_or_misplaced_snapshots_are_ignored(
    make_store: MakeStore, provisioned: NatsClient, signer_for: Callable[[str], Signer], registry: KeyRegistry
) -> None:
    store = await make_store()
    snaps = snapshot_store(store, signer_for("lifecycle"), registry)
    repo: Repository[CounterState, Any, Event] = Repository(store, Counter(), snapshots=snaps, snapshot_every=2)
    a, b = new_id(), new_id()
    await repo.execute(a, Increment("x", times=2))
    await repo.execute(b, Increment("x", times=4))
    await repo.drain()
    js = provisioned.jetstream()
    snap_b = await js.get_last_msg("SNAPSHOTS", snapshot_subject("agent", b))
    # b's genuine snapshot copied under a's subject.
    await js.publish(snapshot_subject("agent", a), snap_b.data)
    assert await snaps.load("agent", a, CounterState) is None
    expected = await Repository(await make_store(), Counter()).load(a)
    assert await Repository(await make_store(), Counter(), snapshots=snaps).load(a) == expected
    # Garbage, and a one-byte flip anywhere in a genuine snapshot.
    assert snap_b.data is not None
    bad_utf8_header = msgspec.msgpack.encode([b"\x81\xaeaggregate_type\xa2\xff\xfe", b"", bytes(64)])
    candidates = [b"garbage", bad_utf8_header]
    candidates += [
        bytes(snap_b.data[:i]) + bytes([snap_b.data[i] ^ 0x41]) + bytes(snap_b.data[i + 1 :])
        for i in range(0, len(snap_b.data), 7)
    ]
    for data in candidates:
        await js.publish(snapshot_subject("agent", b), data)
        assert await snaps.load("agent", b, CounterState) is None, data
