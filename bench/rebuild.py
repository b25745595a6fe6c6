"""Aggregate rebuild: EventStore.load + fold vs raw PyNaCl Ed25519 verification.

One aggregate gets N events (default 10,000; quick 2,000). Then, alternating, in the same run:

* baseline: raw PyNaCl ``VerifyKey.verify(message, signature)`` over the very (message, signature)
  pairs those N events carry (same count, same sizes); nothing else.
* ours: ``EventStore.load`` (batched direct get, signature + key authorisation, chain check,
  decrypt, decode) and a trivial ``apply`` fold over the result. The aggregate's data key is
  dropped from the cache before each load, so every load also fetches and unwraps it once, as a
  freshly started service would.

Repeats alternate the two sides (ABBA order, a gc.collect() before each); figures are the
median of the repeats. Afterwards the load is broken down into its stages, each
timed on its own over the same data, and ``--profile`` prints a cProfile of one load.

    uv run python bench/rebuild.py [--quick] [--events N] [--repeats R] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import os
import pstats
import statistics
import time
from dataclasses import dataclass

import _common
import nacl.signing
from nats.aio.client import Client as NatsClient
from symbi_common.envelope import decode_header, decode_sealed, event_hash, signed_message, subject_for
from symbi_common.eventstore import EventStore, Recorded
from symbi_common.sealing import NEW_AGGREGATE, ChainTip, check_link, decrypt, open_envelope
from symbi_common.streams import RawMessage, read_subject

TARGET = 0.5


@dataclass
class State:
    """A trivial aggregate state."""

    heartbeats: int = 0
    status: str = ""
    memory_bytes: int = 0


def apply(state: State, event: _common.AgentHeartbeat) -> State:
    state.heartbeats += 1
    state.status = event.status
    state.memory_bytes = event.memory_bytes
    return state


async def fill(store: EventStore, agg_id: str, n: int, batch: int) -> ChainTip:
    """Append n events to one aggregate, ``batch`` per atomic append (fast setup, same stored events)."""
    tip = NEW_AGGREGATE
    done = 0
    while done < n:
        k = min(batch, n - done)
        events = [_common.heartbeat(agg_id, done + i) for i in range(k)]
        recs = await store.append(_common.AGGREGATE_TYPE, agg_id, events, _common.CODEC, expected=tip)
        tip = recs[-1].tip
        done += k
    return tip


async def rebuild(store: EventStore, agg_id: str) -> tuple[State, int]:
    store.datakeys.forget(f"{_common.AGGREGATE_TYPE}.{agg_id}")
    records: list[Recorded[_common.AgentHeartbeat]] = await store.load(_common.AGGREGATE_TYPE, agg_id, _common.CODEC)
    state = State()
    for rec in records:
        state = apply(state, rec.event)
    return state, len(records)


def raw_verify(pairs: list[tuple[bytes, bytes]], key: nacl.signing.VerifyKey) -> None:
    verify = key.verify
    for message, signature in pairs:
        verify(message, signature)


async def fetch_all(store: EventStore, subject: str) -> list[RawMessage]:
    out: list[RawMessage] = []
    async for batch in read_subject(store.nc, store.stream, subject, timeout=store.timeout):
        out.extend(batch)
    return out


async def breakdown(store: EventStore, agg_id: str, n: int) -> list[tuple[str, float]]:
    """Per-event time of each stage of a rebuild, each stage timed on its own over the same data."""
    subject = f"evt.{_common.AGGREGATE_TYPE}.{agg_id}"
    stages: list[tuple[str, float]] = []

    def timed(name: str, t0: float) -> None:
        stages.append((name, (time.perf_counter() - t0) * 1e6 / n))

    t0 = time.perf_counter()
    await rebuild(store, agg_id)
    whole = (time.perf_counter() - t0) * 1e6 / n

    t0 = time.perf_counter()
    raws = await fetch_all(store, subject)
    timed("fetch: batched direct get, nats-py per-message parse", t0)

    # nats-py parses every reply's header block in Python; time that parser on the same blocks.
    blocks = [
        b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in r.headers.items()) + b"\r\n" for r in raws
    ]
    t0 = time.perf_counter()
    for b in blocks:
        NatsClient._parse_header_lines(b[len(b"NATS/1.0\r\n") :])
    header_parse = (time.perf_counter() - t0) * 1e6 / n

    t0 = time.perf_counter()
    decoded = [decode_sealed(r.data) for r in raws]
    headers = [decode_header(s.header) for s in decoded]
    timed("msgpack decode (sealed + header)", t0)

    t0 = time.perf_counter()
    for h, r in zip(headers, raws, strict=True):
        if subject_for(h.aggregate_type, h.aggregate_id) != r.subject:
            raise AssertionError("subject mismatch")
        store.registry.authorise(h.signing_key_id, r.subject)
    timed("subject check + key lookup/authorisation", t0)

    t0 = time.perf_counter()
    messages = [signed_message(s.header, s.ciphertext) for s in decoded]
    timed("build signed message", t0)

    verifier = store.registry.verifier(headers[0].signing_key_id)
    t0 = time.perf_counter()
    for m, s in zip(messages, decoded, strict=True):
        verifier.verify(m, s.signature)
    timed("Ed25519 verify (Verifier.verify)", t0)

    t0 = time.perf_counter()
    for r in raws:
        event_hash(r.data)
    timed("SHA-256 chain hash", t0)

    opened = [open_envelope(r.data, subject=r.subject, sequence=r.sequence, registry=store.registry) for r in raws]
    t0 = time.perf_counter()
    tip = ChainTip()
    for o in opened:
        check_link(tip, o)
        tip = o.tip
    timed("chain check", t0)

    t0 = time.perf_counter()
    plains = [decrypt(o, await store.datakeys.by_id(o.header.data_key_id)) for o in opened]
    timed("data key lookup + AES-GCM decrypt", t0)

    t0 = time.perf_counter()
    events = [_common.CODEC.decode(p, event_type=h.event_type) for p, h in zip(plains, headers, strict=True)]
    timed("payload decode (msgspec)", t0)

    t0 = time.perf_counter()
    state = State()
    for e in events:
        state = apply(state, e)
    timed("apply fold", t0)

    stages.append(("rest (objects, coroutines, loop glue)", whole - sum(v for _, v in stages)))
    stages.insert(1, ("  of which nats-py header parsing (est.)", header_parse))
    return stages


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 events, 3 repeats")
    ap.add_argument("--events", type=int, help="events in the aggregate (default 10000, quick 2000)")
    ap.add_argument("--repeats", type=int, help="measured repeats per side (default 5, quick 3)")
    ap.add_argument("--batch", type=int, default=100, help="events per atomic append while filling")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of one load")
    args = ap.parse_args()
    n = args.events or (2000 if args.quick else 10000)
    repeats = args.repeats or (3 if args.quick else 5)

    print(_common.machine_summary())
    with _common.keyring() as keys_dir:
        async with _common.nats_server() as server:
            nc = await _common.connect(server.url)
            try:
                store = await _common.make_store(nc, keys_dir)
                agg_id = f"rebuild-{os.urandom(3).hex()}"
                subject = f"evt.{_common.AGGREGATE_TYPE}.{agg_id}"
                t0 = time.perf_counter()
                tip = await fill(store, agg_id, n, args.batch)
                fill_s = time.perf_counter() - t0
                print(f"filled {agg_id}: {tip.version} events in {fill_s:.2f}s (atomic batches of {args.batch})")

                # The exact (message, signature) pairs the stored events carry.
                raws = await fetch_all(store, subject)
                sealed = [decode_sealed(r.data) for r in raws]
                pairs = [(signed_message(s.header, s.ciphertext), s.signature) for s in sealed]
                assert len(pairs) == n
                sizes = [len(m) for m, _ in pairs]
                print(f"stored event: {len(raws[0].data)} bytes; signed message: {min(sizes)}-{max(sizes)} bytes")
                key = nacl.signing.VerifyKey(store.signer.public_key)

                # Warm-up of both paths.
                raw_verify(pairs[: min(500, n)], key)
                state, count = await rebuild(store, agg_id)
                assert count == n
                assert state.heartbeats == n

                base_rates: list[float] = []
                ours_rates: list[float] = []
                ours_cpu: list[tuple[float, float]] = []
                for r in range(repeats):
                    # Alternate which side goes first (ABBA) and start each side without GC debt.
                    for side in ("baseline", "ours") if r % 2 == 0 else ("ours", "baseline"):
                        gc.collect()
                        if side == "baseline":
                            t0, c0 = time.perf_counter(), time.process_time()
                            raw_verify(pairs, key)
                            base_rates.append(n / (time.perf_counter() - t0))
                            base_cpu = (time.process_time() - c0) * 1e6 / n
                        else:
                            with _common.CpuMeter(server.proc.pid) as m:
                                state, count = await rebuild(store, agg_id)
                            ours_rates.append(n / m.wall)
                            ours_cpu.append((m.client_cpu * 1e6 / n, m.server_cpu * 1e6 / n))
                            assert count == n
                            assert state.heartbeats == n
                    print(
                        f"  repeat {r + 1}: raw verify {base_rates[-1]:7.0f}/s ({base_cpu:5.1f} us CPU each)   "
                        f"load+apply {ours_rates[-1]:7.0f} events/s ({ours_cpu[-1][0]:5.1f} us client CPU, "
                        f"{ours_cpu[-1][1]:4.1f} us nats-server CPU per event)"
                    )

                print("breakdown of one rebuild (us/event, wall; each stage timed separately over the same data):")
                stages = await breakdown(store, agg_id, n)
                whole = sum(us for name, us in stages if not name.startswith(" "))
                for name, us in stages:
                    print(f"  {name:54s} {us:7.2f} us  {us / whole * 100:5.1f}%")
                print(f"  {'whole rebuild (load + apply)':54s} {whole:7.2f} us")

                if args.profile:
                    prof = cProfile.Profile()
                    prof.enable()
                    await rebuild(store, agg_id)
                    prof.disable()
                    out = io.StringIO()
                    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
                    print(out.getvalue())
            finally:
                await nc.close()

    base = statistics.median(base_rates)
    ours = statistics.median(ours_rates)
    print(f"baseline (raw PyNaCl verify):   {base:8.0f} verifies/s  ({1e6 / base:.1f} us each)")
    print(f"ours (EventStore.load + apply): {ours:8.0f} events/s    ({1e6 / ours:.1f} us each)")
    print(_common.result_line("rebuild", ours, base, "events/s", f">={TARGET}", ours / base >= TARGET))


if __name__ == "__main__":
    asyncio.run(main())
