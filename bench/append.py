"""Append throughput: EventStore.append vs raw nats-py conditional JetStream publish.

Both sides run against the same throwaway nats-server, each on its own stream with the EVENTS
configuration (file storage, de-duplication window, discard=new, ...), over the same number of
aggregates (subjects) appended to concurrently, each aggregate appending sequentially and waiting
for each ack before the next append.

* baseline (the RESULT's): raw conditional publishes sent the way ``EventStore`` sends them — the same
  concurrency, one wildcard reply subscription with a counter token per publish and a future per ack,
  the ack decoded by a msgspec Struct —, of a payload of the same size as our sealed events with
  ``Nats-Msg-Id`` and ``Nats-Expected-Last-Subject-Sequence``. Everything ours does beyond that
  (sealing, signing, hashing, clear headers, trace context, retries and timeouts) is its cost.
* baseline ``nc.request`` (printed for reference, the figure before 2026-12-04): the same publishes
  through ``nc.request`` (a NUID inbox token, ``wait_for`` and a timer per publish), ack parsed with
  ``json.loads``: slower per publish than our send path, so it flattered our ratio.
* ours: ``EventStore.append`` of one small realistic event (encode, encrypt with the aggregate's
  data key, sign, hash-chain, conditional publish), tracking the aggregate's ChainTip from the
  returned Recorded.

Rounds rotate the order of the three sides (a gc.collect() before each) so that stream growth,
disk state and noise from other processes affect both alike; figures are totals over all rounds.

    uv run python bench/append.py [--quick] [--events N] [--aggregates K] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import itertools
import json
import os
import time
from typing import Any

import _common
import msgspec
from nats.aio.client import Client as NatsClient
from symbi_common.eventstore import EventStore
from symbi_common.sealing import NEW_AGGREGATE, ChainTip, seal
from symbi_common.streams import StreamSettings, events_config

RAW_STREAM = "RAWBENCH"
TARGET = 0.5


async def raw_stream(nc: NatsClient) -> None:
    cfg = dataclasses.replace(events_config(StreamSettings()), name=RAW_STREAM, subjects=["raw.>"])
    await nc.jetstream().add_stream(cfg)


class Ack(msgspec.Struct):
    seq: int = 0
    error: dict[str, Any] | None = None


class RawSender:
    """Raw conditional publishes with EventStore's send path: one wildcard reply subscription, a counter
    token per publish, a future per ack, acks decoded with msgspec (no timeouts: cheaper still)."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox() + "."
        self.tokens = itertools.count()
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.decode = msgspec.json.Decoder(Ack).decode

    async def start(self) -> None:
        offset, pending = len(self.prefix), self.pending

        async def on_reply(msg: Any) -> None:
            future = pending.pop(msg.subject[offset:], None)
            if future is not None and not future.done():
                future.set_result(msg)

        await self.nc.subscribe(self.prefix + "*", cb=on_reply)

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> Ack:
        token = str(next(self.tokens))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[token] = future
        await self.nc.publish(subject, payload, reply=self.prefix + token, headers=headers)
        return self.decode((await future).data)


async def pipelined_round(sender: RawSender, seqs: dict[str, int], per_agg: int, payload: bytes, tag: str) -> float:
    """Raw conditional publishes through :class:`RawSender`: each subject appends ``per_agg`` sequentially."""

    async def worker(subject: str) -> None:
        last = seqs[subject]
        for i in range(per_agg):
            headers = {"Nats-Msg-Id": f"{subject}-{tag}-{i}", "Nats-Expected-Last-Subject-Sequence": str(last)}
            ack = await sender.publish(subject, payload, headers)
            if ack.error is not None:
                raise RuntimeError(f"raw publish refused: {ack.error}")
            last = ack.seq
        seqs[subject] = last

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(s) for s in seqs))
    return time.perf_counter() - t0


async def baseline_round(nc: NatsClient, seqs: dict[str, int], per_agg: int, payload: bytes, tag: str) -> float:
    """Raw conditional publishes through ``nc.request``: each subject appends ``per_agg`` messages sequentially."""

    async def worker(subject: str) -> None:
        last = seqs[subject]
        for i in range(per_agg):
            headers = {"Nats-Msg-Id": f"{subject}-{tag}-{i}", "Nats-Expected-Last-Subject-Sequence": str(last)}
            msg = await nc.request(subject, payload, timeout=10, headers=headers)
            ack = json.loads(msg.data)
            if "error" in ack:
                raise RuntimeError(f"raw publish refused: {ack['error']}")
            last = ack["seq"]
        seqs[subject] = last

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(s) for s in seqs))
    return time.perf_counter() - t0


async def ours_round(store: EventStore, tips: dict[str, ChainTip], per_agg: int, offset: int) -> float:
    """EventStore.append: each aggregate appends ``per_agg`` events sequentially, tracking its tip."""

    async def worker(agg_id: str) -> None:
        tip = tips[agg_id]
        for i in range(per_agg):
            recs = await store.append(
                _common.AGGREGATE_TYPE, agg_id, [_common.heartbeat(agg_id, offset + i)], _common.CODEC, expected=tip
            )
            tip = recs[-1].tip
        tips[agg_id] = tip

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(a) for a in tips))
    return time.perf_counter() - t0


async def sealed_size(store: EventStore, agg_id: str) -> int:
    """The stored size of one of our events (sealed exactly as append seals it)."""
    key = await store.datakeys.current(f"{_common.AGGREGATE_TYPE}.{agg_id}")
    data, _ = seal(
        signer=store.signer,
        producer=store.producer,
        data_key=key,
        aggregate_type=_common.AGGREGATE_TYPE,
        aggregate_id=agg_id,
        aggregate_version=1,
        event_type="agent.heartbeat",
        schema_version=1,
        payload=_common.CODEC.encode(_common.heartbeat(agg_id, 0)),
        prev_hash=bytes(32),
    )
    return len(data)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (a few seconds)")
    ap.add_argument("--events", type=int, help="measured events per side (default 48000, quick 3200)")
    ap.add_argument("--aggregates", type=int, default=64, help="concurrent aggregates (default 64)")
    ap.add_argument("--rounds", type=int, help="alternating measured rounds per side (default 8, quick 2)")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up appends per aggregate and side")
    args = ap.parse_args()
    total = args.events or (3200 if args.quick else 48000)
    rounds = args.rounds or (2 if args.quick else 8)
    k = args.aggregates
    per_agg = max(1, total // (k * rounds))
    total = per_agg * k * rounds

    print(_common.machine_summary())
    print(
        f"append: {k} concurrent aggregates, {rounds} rounds x {per_agg} sequential appends each, {total} events/side"
    )

    run = os.urandom(3).hex()
    with _common.keyring() as keys_dir:
        async with _common.nats_server() as server:
            nc = await _common.connect(server.url)
            try:
                store = await _common.make_store(nc, keys_dir)
                await raw_stream(nc)
                agg_ids = [f"bench-{run}-{i:04d}" for i in range(k)]
                size = await sealed_size(store, agg_ids[0])
                payload = os.urandom(size)
                print(f"sealed event size: {size} bytes (baseline payload: {size} random bytes)")

                tips = dict.fromkeys(agg_ids, NEW_AGGREGATE)
                seqs = {f"raw.agent.{a}": 0 for a in agg_ids}

                sender = RawSender(nc)
                await sender.start()
                # Warm-up: creates every aggregate's data key, every subject, and warms every code path.
                await baseline_round(nc, seqs, args.warmup, payload, "w")
                await pipelined_round(sender, seqs, args.warmup, payload, "wp")
                await ours_round(store, tips, args.warmup, 0)

                pm = _common.CpuMeter(server.proc.pid)
                bm = _common.CpuMeter(server.proc.pid)
                om = _common.CpuMeter(server.proc.pid)
                n = per_agg * k
                for r in range(rounds):
                    # Rotate which side goes first and start each side without GC debt.
                    times: dict[str, float] = {}
                    sides = ["pipelined", "ours", "request"]
                    for side in sides[r % 3 :] + sides[: r % 3]:
                        gc.collect()
                        if side == "request":
                            with bm:
                                times[side] = await baseline_round(nc, seqs, per_agg, payload, f"r{r}")
                        elif side == "pipelined":
                            with pm:
                                times[side] = await pipelined_round(sender, seqs, per_agg, payload, f"p{r}")
                        else:
                            with om:
                                times[side] = await ours_round(store, tips, per_agg, args.warmup + r * per_agg)
                    pt, bt, ot = times["pipelined"], times["request"], times["ours"]
                    print(
                        f"  round {r + 1}: raw {n / pt:8.0f} events/s   raw nc.request {n / bt:8.0f} events/s   "
                        f"ours {n / ot:8.0f} events/s   ratio {pt / ot:.3f} (vs nc.request {bt / ot:.3f})"
                    )

                # Sanity: every aggregate's chain is where we think it is.
                expected_version = args.warmup + rounds * per_agg
                assert all(t.version == expected_version for t in tips.values()), "tips out of step"
                info = await nc.jetstream().stream_info(store.stream)
                raw_info = await nc.jetstream().stream_info(RAW_STREAM)
                print(f"stored: EVENTS {info.state.messages} msgs, {RAW_STREAM} {raw_info.state.messages} msgs")
            finally:
                await nc.close()

    base = total / pm.wall
    request = total / bm.wall
    ours = total / om.wall
    for name, rate, m in (
        ("baseline (raw, EventStore's send path)", base, pm),
        ("raw nc.request (old baseline)", request, bm),
        ("ours (EventStore.append)", ours, om),
    ):
        print(
            f"{name:39s} {rate:8.0f} events/s   per event: {m.wall * 1e6 / total:5.1f} us wall, "
            f"{m.client_cpu * 1e6 / total:5.1f} us client CPU, {m.server_cpu * 1e6 / total:5.1f} us nats-server CPU"
        )
    print(f"ratio against raw nc.request (the old baseline): {ours / request:.3f}")
    print(_common.result_line("append", ours, base, "events/s", f">={TARGET}", ours / base >= TARGET))


if __name__ == "__main__":
    asyncio.run(main())
