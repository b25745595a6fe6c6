"""A 3-node JetStream cluster (R3, fsync on every write) loses members under append load; nothing acknowledged is lost.

Six writers append through the real write path (``Repository.execute`` → ``EventStore.append``: sealed,
signed, hash-chained, conditional on the aggregate's last sequence; every fourth command is a two-event
atomic batch), each to its own aggregate, each on its own connection that starts on one member and
knows the others only from the cluster (credentials for every member: ``nats_client.server_options``).
Under that load, one after the other:

1. ``kill -9`` of a member that does not lead ``EVENTS``, restarted after a few seconds;
2. ``kill -9`` of the ``EVENTS`` leader, restarted after a few seconds;
3. ``SIGSTOP`` of the (new) leader for longer than the Raft election timeout (4 to 9 s), then ``SIGCONT``.

After each, writes resume without anyone touching a client, and the stream is whole again (a leader,
three current replicas). At the end every acknowledged event is stored exactly once, no event is
stored twice, the whole stream verifies with the audit rules of ``symbi_tlog`` (signatures, key
authorisation, sequences, every aggregate's hash chain and versions) and every aggregate loads with
as many events as its state counts. The time without any acknowledged append (the cluster's write
failover) and the longest pause of a single writer (its client's failover) are printed per fault.
Takes about 1.5 minutes on two cores (most of it the cluster's start-up and the Raft timeouts).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from symbi_cli.nats_cluster import stream_leader
from symbi_common.aggregate import Repository
from symbi_common.crypto import Signer
from symbi_common.datakeys import DataKeys
from symbi_common.errors import IntegrityError, SymbiError
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.keyring import KeyRegistry
from symbi_common.natsauth import ADMIN, OPERATOR
from symbi_common.streams import EVENTS_STREAM, read_subject
from symbi_tlog.rules import LogVerifier, authenticate

from .conftest import REPLICAS, Cluster

pytestmark = [
    pytest.mark.timeout(420),
    # nats-py leaves the socket of a reconnect attempt open when the member it reached accepts the TCP
    # connection but never sends its INFO (a SIGSTOPped server: the kernel still completes the handshake);
    # the client gives up on it and moves on, and the socket is closed when collected, with this warning.
    pytest.mark.filterwarnings("ignore:unclosed <StreamWriter:ResourceWarning"),
]

WRITERS = 6
#: Each writer's pause between appends: load enough to keep every member busy, not so much that the two
#: shared cores starve the Raft heartbeats.
PACE_S = 0.02
#: Longer than the Raft election timeout (at most 9 s in nats-server), so the cluster elects a new leader.
FREEZE_S = 11.0
DOWN_S = 4.0
#: A bound that only a stuck client or a lost quorum exceeds (the measured figures are printed).
RESUME_WITHIN_S = 45.0


# --- the aggregate the writers append to -------------------------------------------------------------


class Counted(Event, tag="cluster.counted"):
    value: int
    by: str


class CounterState(msgspec.Struct):
    id: str
    value: int = 0


@dataclass(frozen=True)
class Increment:
    by: str
    times: int = 1


class Counter_:
    aggregate_type = "agent"  # the lifecycle service's key may write evt.agent.>
    codec: EventCodec[Event] = EventCodec([Counted])
    state_type = CounterState

    def initial(self, aggregate_id: str) -> CounterState:
        return CounterState(id=aggregate_id)

    def apply(self, state: CounterState, event: Event) -> CounterState:
        assert isinstance(event, Counted)
        return CounterState(id=state.id, value=event.value)

    def decide(self, state: CounterState, command: Increment) -> list[Event]:
        return [Counted(value=state.value + i + 1, by=command.by) for i in range(command.times)]


# --- load -------------------------------------------------------------------------------------------


@dataclass
class Load:
    """What the writers saw: acknowledged event ids, when each writer's appends were acknowledged, failures."""

    acked: list[str] = field(default_factory=list)
    ack_times: dict[int, list[float]] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    integrity_failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def all_ack_times(self) -> list[float]:
        return sorted(t for times in self.ack_times.values() for t in times)


async def write(writer: int, repo: Repository[CounterState, Any, Event], aggregate: str, load: Load) -> None:
    """Append until told to stop; an append whose outcome is unknown is simply not counted as acknowledged."""
    times = load.ack_times.setdefault(writer, [])
    i = 0
    while not load.stop.is_set():
        i += 1
        try:
            _, records = await repo.execute(aggregate, Increment(by=f"w{writer}", times=2 if i % 4 == 0 else 1))
        except IntegrityError as exc:  # a stored event that does not verify: the test fails on it
            load.integrity_failures.append(f"writer {writer}: {exc!r}")
            await asyncio.sleep(0.1)
            continue
        except (SymbiError, nats.errors.Error, TimeoutError) as exc:
            load.failures[type(exc).__name__] += 1
            await asyncio.sleep(0.1)
            continue
        load.acked.extend(r.header.event_id for r in records)
        times.append(time.monotonic())
        await asyncio.sleep(PACE_S)


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest interval in [start, end] with no time of ``times`` in it."""
    points = [start, *(t for t in times if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(points))


async def acked_after(load: Load, since: float, *, writers: int, timeout: float) -> None:
    """Wait until each of ``writers`` writers had an append acknowledged after ``since``."""
    deadline = time.monotonic() + timeout
    while True:
        resumed = sum(1 for times in load.ack_times.values() if times and times[-1] > since)
        if resumed >= writers:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"only {resumed} of {writers} writers had an append acknowledged within {timeout:g} s "
                f"(failures so far: {dict(load.failures)})"
            )
        await asyncio.sleep(0.1)


@dataclass(frozen=True)
class Outcome:
    fault: str
    cluster_failover_s: float
    worst_writer_pause_s: float
    acked_during: int


async def survive(
    name: str,
    load: Load,
    admin_js: Any,
    fault: Callable[[], None],
    recover: Callable[[], Any],
    *,
    hold: float,
) -> Outcome:
    """Inject ``fault`` under load, ``recover`` after ``hold`` seconds; wait until every writer appended
    again and ``EVENTS`` has a leader and all replicas current."""
    acked_before = len(load.acked)
    t0 = time.monotonic()
    fault()
    await asyncio.sleep(hold)
    await asyncio.to_thread(recover)
    await acked_after(load, time.monotonic(), writers=WRITERS, timeout=RESUME_WITHIN_S)
    await stream_leader(admin_js, EVENTS_STREAM, replicas=REPLICAS, timeout=RESUME_WITHIN_S)
    end = time.monotonic()
    outcome = Outcome(
        fault=name,
        cluster_failover_s=longest_gap(load.all_ack_times(), t0, end),
        worst_writer_pause_s=max(longest_gap(times, t0, end) for times in load.ack_times.values()),
        acked_during=len(load.acked) - acked_before,
    )
    print(
        f"{name}: no append acknowledged for {outcome.cluster_failover_s:.2f} s at most; "
        f"longest pause of one writer {outcome.worst_writer_pause_s:.2f} s; "
        f"{outcome.acked_during} events acknowledged meanwhile"
    )
    return outcome


# --- the test ---------------------------------------------------------------------------------------


async def test_acknowledged_appends_survive_node_loss(
    nats_cluster: Cluster,
    registry: KeyRegistry,
    signer_for: Callable[[str], Signer],
    datakeys_for: Callable[[NatsClient, str], Awaitable[DataKeys]],
) -> None:
    servers = nats_cluster.servers
    admin = await nats_cluster.connect(ADMIN)
    admin_js = admin.jetstream(timeout=5)
    clients: list[NatsClient] = []
    load = Load()
    tasks: list[asyncio.Task[None]] = []
    aggregates = [uuid.uuid4().hex[:12] for _ in range(WRITERS)]
    try:
        for i in range(WRITERS):
            client = await nats_cluster.connect("lifecycle", [i % servers.size])
            clients.append(client)
            store = EventStore(
                client,
                signer=signer_for("lifecycle"),
                producer="lifecycle",
                registry=registry,
                datakeys=await datakeys_for(client, "lifecycle"),
                timeout=2.0,
            )
            repo: Repository[CounterState, Any, Event] = Repository(store, Counter_())
            tasks.append(asyncio.create_task(write(i, repo, aggregates[i], load)))
        await acked_after(load, 0.0, writers=WRITERS, timeout=30)
        await asyncio.sleep(1.0)

        outcomes = []
        leader = servers.index_of(await stream_leader(admin_js, EVENTS_STREAM, replicas=REPLICAS))
        follower = (leader + 1) % servers.size
        outcomes.append(
            await survive(
                f"kill -9 of follower n{follower}",
                load,
                admin_js,
                lambda: servers.kill(follower),
                lambda: servers.restart(follower),
                hold=DOWN_S,
            )
        )
        leader = servers.index_of(await stream_leader(admin_js, EVENTS_STREAM, replicas=REPLICAS))
        outcomes.append(
            await survive(
                f"kill -9 of leader n{leader}",
                load,
                admin_js,
                lambda: servers.kill(leader),
                lambda: servers.restart(leader),
                hold=DOWN_S,
            )
        )
        frozen = servers.index_of(await stream_leader(admin_js, EVENTS_STREAM, replicas=REPLICAS))
        outcomes.append(
            await survive(
                f"SIGSTOP of leader n{frozen} for {FREEZE_S:g} s",
                load,
                admin_js,
                lambda: servers.freeze(frozen),
                lambda: servers.thaw(frozen),
                hold=FREEZE_S,
            )
        )
        await asyncio.sleep(1.0)
    finally:
        load.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            await client.close()
        await admin.close()

    assert not load.integrity_failures, load.integrity_failures
    assert all(o.acked_during > 0 for o in outcomes), outcomes
    print(f"acknowledged {len(load.acked)} events; failed or unconfirmed appends (retried): {dict(load.failures)}")
    await check_stream(nats_cluster, load, aggregates, registry, signer_for, datakeys_for)


async def check_stream(
    cluster: Cluster,
    load: Load,
    aggregates: list[str],
    registry: KeyRegistry,
    signer_for: Callable[[str], Signer],
    datakeys_for: Callable[[NatsClient, str], Awaitable[DataKeys]],
) -> None:
    """Every acknowledged event exactly once, nothing twice, the log verifies, every aggregate loads whole."""
    reader = await cluster.connect(OPERATOR, allow_reconnect=False)
    try:
        js = reader.jetstream(timeout=5)
        await stream_leader(js, EVENTS_STREAM, replicas=REPLICAS, timeout=RESUME_WITHIN_S)
        state = (await js.stream_info(EVENTS_STREAM)).state
        verifier = LogVerifier()
        stored: Counter[str] = Counter()
        count = 0
        async for batch in read_subject(reader, EVENTS_STREAM, "evt.>", timeout=10):
            for message in batch:
                count += 1
                stored[message.headers["Nats-Msg-Id"]] += 1
                checked = verifier.check(message, authenticate(message, registry))
                assert not checked.findings, checked.findings
        assert count == state.messages == state.last_seq, (count, state)
        twice = [event_id for event_id, n in stored.items() if n > 1]
        assert not twice, f"events stored more than once: {twice}"
        lost = [event_id for event_id in load.acked if event_id not in stored]
        assert not lost, f"{len(lost)} acknowledged events are missing: {lost[:5]}"
        assert len(set(load.acked)) == len(load.acked)

        store = EventStore(
            reader,
            signer=signer_for("lifecycle"),
            producer="lifecycle",
            registry=registry,
            datakeys=await datakeys_for(reader, "lifecycle"),
        )
        for aggregate in aggregates:
            records = await store.load("agent", aggregate, Counter_.codec)
            values = [r.event.value for r in records if isinstance(r.event, Counted)]
            assert values == list(range(1, len(records) + 1)), f"aggregate {aggregate} does not count up"
        print(f"stream verified: {count} events, {len(load.acked)} acknowledged, none lost, none twice")
    finally:
        await reader.close()
