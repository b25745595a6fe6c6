"""Audit verification throughput vs raw PyNaCl Ed25519 verification of the same signatures.

N events (default 20,000; quick 4,000) over 200 aggregates are appended by the real event store and
read back raw. Then, in the same run, the two sides alternate chunk by chunk (1,000 events, ABBA) so
that both see the same machine load; figures are the median of the repeats:

* baseline: raw PyNaCl ``VerifyKey.verify(message, signature)`` over the very (message, signature)
  pairs those events carry — nothing else.
* ours: the audit verifier's whole per-event work (``symbi_tlog.rules``): decode, subject check, key
  lookup and authorisation, Ed25519 verify, stream-sequence check, per-aggregate chain and version
  check, Merkle leaf hash and tree append (RFC 6962 node hashes).

Both on one thread — the ratio this bench reports (target >= 0.8), measured in CPU time of the
thread so that other processes on a shared machine do not skew it (the wall-clock figures are
printed too) — and with all cores (``ThreadPoolExecutor``; PyNaCl releases the GIL while verifying;
wall clock), reported on the RESULT line before the last.
Unless ``--no-live``, the live verifier is also timed end to end — durable consumer, verification,
tree, PostgreSQL commit per batch — on a private PostgreSQL (pgserver), for information.

    uv run python bench/audit_verify.py [--quick] [--events N] [--repeats R] [--no-live]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common
import nacl.signing
from symbi_audit.export import stored_events
from symbi_cli.infra import PostgresServer
from symbi_common.envelope import decode_sealed, signed_message
from symbi_common.keyring import KeyRegistry
from symbi_common.sealing import NEW_AGGREGATE, ChainTip
from symbi_common.streams import RawMessage
from symbi_tlog.merkle import TreeBuilder
from symbi_tlog.rules import CachedRegistry, LogVerifier, authenticate_all

TARGET = 0.8
AGGREGATES = 200


async def fill(store: object, n: int) -> None:
    from symbi_common.eventstore import EventStore

    assert isinstance(store, EventStore)
    tips: dict[str, ChainTip] = {}
    per_append = 25
    done = 0
    while done < n:
        agg = f"v{(done // per_append) % AGGREGATES}"
        k = min(per_append, n - done)
        tip = tips.get(agg, NEW_AGGREGATE)
        events = [_common.heartbeat(agg, done + i) for i in range(k)]
        recs = await store.append(_common.AGGREGATE_TYPE, agg, events, _common.CODEC, expected=tip)
        tips[agg] = recs[-1].tip
        done += k


def raw_verify(pairs: list[tuple[bytes, bytes]], key: nacl.signing.VerifyKey) -> None:
    verify = key.verify
    for message, signature in pairs:
        verify(message, signature)


def raw_verify_parallel(
    pairs: list[tuple[bytes, bytes]], key: nacl.signing.VerifyKey, pool: ThreadPoolExecutor
) -> None:
    chunk = 256
    list(pool.map(lambda part: raw_verify(part, key), [pairs[i : i + chunk] for i in range(0, len(pairs), chunk)]))


class Ours:
    """The audit verifier's per-event work over successive chunks of the log (state carries over)."""

    def __init__(self, registry: KeyRegistry, pool: ThreadPoolExecutor | None) -> None:
        self.registry = CachedRegistry(registry)  # as the live verifier holds it
        self.pool = pool
        self.rules = LogVerifier()
        self.tree = TreeBuilder()

    def __call__(self, raws: list[RawMessage]) -> None:
        auths = authenticate_all(raws, self.registry, self.pool, chunk=256)
        for checked in self.rules.check_all(raws, auths):
            self.tree.append(checked.leaf)
            if checked.findings:
                raise AssertionError(f"event {checked.message.sequence} failed: {checked.findings}")


def interleaved(
    ours: Callable[[], Ours],
    raw: Callable[[list[tuple[bytes, bytes]]], None],
    raws: list[RawMessage],
    pairs: list[tuple[bytes, bytes]],
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
    chunk: int = 1000,
) -> tuple[float, float]:
    """Median total ``clock`` time of each side; the sides alternate chunk by chunk (ABBA) so both see
    the same machine load."""
    t_ours: list[float] = []
    t_raw: list[float] = []
    for r in range(repeats):
        run = ours()
        a = b = 0.0
        gc.collect()
        for k, start in enumerate(range(0, len(raws), chunk)):
            part, part_pairs = raws[start : start + chunk], pairs[start : start + chunk]
            for side in (0, 1) if (k + r) % 2 == 0 else (1, 0):
                t0 = clock()
                if side == 0:
                    run(part)
                    a += clock() - t0
                else:
                    raw(part_pairs)
                    b += clock() - t0
        if run.tree.size != len(raws):
            raise AssertionError("not every event became a leaf")
        t_ours.append(a)
        t_raw.append(b)
    return statistics.median(t_ours), statistics.median(t_raw)


async def live(nats_url: str, keys_dir: Path, n: int) -> float:
    """Events/s of the live verifier from start until it has committed all ``n`` events."""
    from symbi_audit.live import LiveFeed
    from symbi_audit.runner import VerifierRunner
    from symbi_audit.store import AuditStore
    from symbi_common.datakeys import DataKeys, KvDataKeyStore
    from symbi_common.db import open_pool
    from symbi_common.keyring import load_master_key, load_signer
    from symbi_common.settings import AuditSettings

    with (
        tempfile.TemporaryDirectory(prefix="symbi-bench-pg-") as tmp,
        PostgresServer(Path(tmp) / "data", cleanup="delete") as pg,
    ):
        url = pg.create_database("audit_bench")
        nc = await _common.connect(nats_url)
        pool = await open_pool(url, min_size=1, max_size=4)
        try:
            js = nc.jetstream()
            runner = VerifierRunner(
                js=js,
                nc=nc,
                store=AuditStore(pool),
                registry=KeyRegistry.load(keys_dir),
                signer=load_signer(keys_dir / "audit.key"),
                datakeys=DataKeys(await KvDataKeyStore.open(js), load_master_key(keys_dir / "master.key")),
                settings=AuditSettings(checkpoint_every=10_000, checkpoint_interval_s=3600),
                live=LiveFeed(),
            )
            await runner.setup()
            t0 = time.perf_counter()
            task = asyncio.create_task(runner.run())
            ok = await runner.wait_for(n, timeout=600)
            elapsed = time.perf_counter() - t0
            await runner.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if not ok:
                raise SystemExit("the live verifier did not finish")
            return n / elapsed
        finally:
            await pool.close()
            await nc.drain()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4,000 events, 3 repeats")
    ap.add_argument("--events", type=int, help="events (default 20000, quick 4000)")
    ap.add_argument("--repeats", type=int, help="measured repeats per side (default 5, quick 3)")
    ap.add_argument("--no-live", action="store_true", help="skip the end-to-end live verifier measurement")
    args = ap.parse_args()
    n = args.events or (4000 if args.quick else 20000)
    repeats = args.repeats or (3 if args.quick else 5)
    cores = os.cpu_count() or 1

    print(_common.machine_summary())
    with _common.keyring() as keys_dir:
        async with _common.nats_server() as server:
            nc = await _common.connect(server.url)
            try:
                store = await _common.make_store(nc, keys_dir)
                t0 = time.perf_counter()
                await fill(store, n)
                print(f"filled {n} events over {AGGREGATES} aggregates in {time.perf_counter() - t0:.1f}s")
                raws: list[RawMessage] = []
                async for batch in stored_events(nc):
                    raws.extend(batch)
            finally:
                await nc.drain()
            assert len(raws) == n
            registry = KeyRegistry.load(keys_dir)
            sealed = [decode_sealed(r.data) for r in raws]
            pairs = [(signed_message(s.header, s.ciphertext), s.signature) for s in sealed]
            key = nacl.signing.VerifyKey(registry.verifier(store.signer.key_id).public_key)

            # One thread: CPU time of this thread, so other processes on a shared machine do not skew it.
            t_ours, t_base = interleaved(
                lambda: Ours(registry, None), lambda p: raw_verify(p, key), raws, pairs, repeats, time.thread_time
            )
            one_ours, one_base = n / t_ours, n / t_base
            print(
                f"one thread (per CPU second): ours {one_ours:,.0f} events/s, raw PyNaCl {one_base:,.0f} signatures/s"
            )
            w_ours, w_base = interleaved(
                lambda: Ours(registry, None), lambda p: raw_verify(p, key), raws, pairs, repeats
            )
            print(
                f"one thread (wall clock):     ours {n / w_ours:,.0f} events/s, raw PyNaCl {n / w_base:,.0f} signatures/s"
            )
            with ThreadPoolExecutor(max_workers=cores) as pool:
                tp_ours, tp_base = interleaved(
                    lambda: Ours(registry, pool), lambda p: raw_verify_parallel(p, key, pool), raws, pairs, repeats
                )
            all_ours, all_base = n / tp_ours, n / tp_base
            print(
                f"{cores} threads (wall clock):   ours {all_ours:,.0f} events/s, raw PyNaCl {all_base:,.0f} signatures/s"
            )
            if not args.no_live:
                rate = await live(server.url, keys_dir, n)
                print(f"live verifier end to end (consumer + verify + tree + PostgreSQL commit): {rate:,.0f} events/s")
    print(
        _common.result_line(
            "audit_verify_all_cores", all_ours, all_base, "events/s", f">={TARGET}", all_ours / all_base >= TARGET
        )
    )
    print(
        _common.result_line(
            "audit_verify", one_ours, one_base, "events/s", f">={TARGET}", one_ours / one_base >= TARGET
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
