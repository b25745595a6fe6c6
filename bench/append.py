"""Append throughput: EventStore.append vs raw nats-py conditional JetStream publish.

Both sides run against the same throwaway nats-server, each on its own stream with the EVENTS
configuration (file storage, de-duplication window, discard=new, ...), over the same number of
aggregates (subjects) appended to concurrently, each aggregate appending sequentially and waiting
for each ack before the next append.

* baseline: ``nc.request`` of a payload of the same size as our sealed events, with
  ``Nats-Msg-Id`` and ``Nats-Expected-Last-Subject-Sequence``, ack parsed with ``json.loads``.
* ours: ``EventStore.append`` of one small realistic event (encode, encrypt with the aggregate's
  data key, sign, hash-chain, conditional publish), tracking the aggregate's ChainTip from the
  returned Recorded.

Rounds alternate baseline / ours (ABBA order, a gc.collect() before each) so that stream growth,
disk state and noise from other processes affect both alike; figures are totals over all rounds.

    uv run python bench/append.py [--quick] [--events N] [--aggregates K] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import time

import _common
from nats.aio.client import Client as NatsClient
from symbi_common.eventstore import EventStore
from symbi_common.sealing import NEW_AGGREGATE, ChainTip, seal
from symbi_common.streams import StreamSettings, events_config

RAW_STREAM = "RAWBENCH"
TARGET = 0.5


async def raw_stream(nc: NatsClient) -> None:
    cfg = dataclasses.replace(events_config(StreamSettings()), name=RAW_STREAM, subjects=["raw.>"])
    await nc.jetstream().add_stream(cfg)


async def baseline_round(nc: NatsClient, seqs: dict[str, int], per_agg: int, payload: bytes, tag: str) -> float:
    """Raw conditional publishes: each subject appends ``per_agg`` messages sequentially."""

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

                # Warm-up: creates every aggregate's data key, every subject, and warms both code paths.
                await baseline_round(nc, seqs, args.warmup, payload, "w")
                await ours_round(store, tips, args.warmup, 0)

                bm = _common.CpuMeter(server.proc.pid)
                om = _common.CpuMeter(server.proc.pid)
                n = per_agg * k
                for r in range(rounds):
                    # Alternate which side goes first (ABBA) and start each side without GC debt.
                    times: dict[str, float] = {}
                    for side in ("baseline", "ours") if r % 2 == 0 else ("ours", "baseline"):
                        gc.collect()
                        if side == "baseline":
                            with bm:
                                times[side] = await baseline_round(nc, seqs, per_agg, payload, f"r{r}")
                        else:
                            with om:
                                times[side] = await ours_round(store, tips, per_agg, args.warmup + r * per_agg)
                    bt, ot = times["baseline"], times["ours"]
                    print(
                        f"  round {r + 1}: baseline {n / bt:8.0f} events/s   ours {n / ot:8.0f} events/s   "
                        f"ratio {bt / ot:.3f}"
                    )

                # Sanity: every aggregate's chain is where we think it is.
                expected_version = args.warmup + rounds * per_agg
                assert all(t.version == expected_version for t in tips.values()), "tips out of step"
                info = await nc.jetstream().stream_info(store.stream)
                raw_info = await nc.jetstream().stream_info(RAW_STREAM)
                print(f"stored: EVENTS {info.state.messages} msgs, {RAW_STREAM} {raw_info.state.messages} msgs")
            finally:
                await nc.close()

    base = total / bm.wall
    ours = total / om.wall
    for name, rate, m in (("baseline (raw conditional publish)", base, bm), ("ours (EventStore.append)", ours, om)):
        print(
            f"{name:35s} {rate:8.0f} events/s   per event: {m.wall * 1e6 / total:5.1f} us wall, "
            f"{m.client_cpu * 1e6 / total:5.1f} us client CPU, {m.server_cpu * 1e6 / total:5.1f} us nats-server CPU"
        )
    print(_common.result_line("append", ours, base, "events/s", f">={TARGET}", ours / base >= TARGET))


if __name__ == "__main__":
    asyncio.run(main())
