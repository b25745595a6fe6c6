"""Offline audit verification on all cores (processes) vs raw Ed25519 verification on all cores (processes).

N events (default 20,000; quick 4,000) over 200 aggregates are appended by the real event store, read
back raw and written as an export (JSON Lines) with a checkpoint signed by the audit key. Then, in the
same run, the two sides alternate (ABBA) so both see the same machine load; figures are the medians:

* baseline: raw PyNaCl ``VerifyKey.verify(message, signature)`` over the very (message, signature)
  pairs those events carry, on a pool of one process per core (``ProcessPoolExecutor``), the pairs
  sent to the workers in chunks — the pool started inside the timed region, as ours is;
* ours: ``symbi_tlog.offline.verify_export_file`` — what ``symbi audit verify`` runs — on the same
  number of processes: reading and parsing the export lines, decode, subject check, key lookup and
  authorisation, Ed25519 verify (workers); stream sequences, per-aggregate chains and versions, Merkle
  leaves, the rebuilt RFC 6962 tree and its comparison with the signed checkpoint (in order, here).

RESULT: ours / baseline in events/s (target >= 0.8), wall clock. Unless ``--no-live``, the live
verifier (durable consumer, verification on threads, tree, PostgreSQL commit per batch, on a private
PostgreSQL) is timed end to end and printed as the second figure.

    uv run python bench/audit_verify.py [--quick] [--events N] [--repeats R] [--no-live]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import _common
import nacl.signing
from symbi_audit.export import stored_events
from symbi_cli.postgres_server import PostgresServer
from symbi_common.envelope import decode_sealed, signed_message
from symbi_common.key_material import load_signer
from symbi_common.keyring import KeyRegistry
from symbi_common.sealing import NEW_AGGREGATE, ChainTip
from symbi_common.streams import RawMessage
from symbi_tlog.merkle import TreeBuilder
from symbi_tlog.notes import Checkpoint, sign_checkpoint
from symbi_tlog.offline import TrustAnchor, export_line, verify_export_file
from symbi_tlog.rules import event_leaf

TARGET = 0.8
AGGREGATES = 200
CHUNK = 1024


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


_key: nacl.signing.VerifyKey | None = None


def _init_raw(public_key: bytes) -> None:
    global _key
    _key = nacl.signing.VerifyKey(public_key)


def _raw_chunk(pairs: list[tuple[bytes, bytes]]) -> int:
    assert _key is not None
    verify = _key.verify
    for message, signature in pairs:
        verify(message, signature)
    return len(pairs)


Timing = tuple[float, float]
"""(wall-clock seconds, CPU seconds of this process and its reaped worker processes)."""


def _cpu() -> float:
    # getrusage, not os.times(): clock ticks (10 ms) are too coarse for a quick run of a quarter of a second.
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def baseline(pairs: list[tuple[bytes, bytes]], public_key: bytes, workers: int) -> Timing:
    """Time to verify every pair on ``workers`` processes."""
    t0, c0 = time.perf_counter(), _cpu()
    with ProcessPoolExecutor(workers, initializer=_init_raw, initargs=(public_key,)) as pool:
        done = sum(pool.map(_raw_chunk, [pairs[i : i + CHUNK] for i in range(0, len(pairs), CHUNK)]))
    elapsed = time.perf_counter() - t0, _cpu() - c0
    assert done == len(pairs)
    return elapsed


def ours(export: Path, note: str, anchor: TrustAnchor, workers: int, n: int) -> Timing:
    """Time for the offline verifier over the export file on ``workers`` processes."""
    t0, c0 = time.perf_counter(), _cpu()
    with export.open("rb") as fh:
        report = verify_export_file(fh, note, anchor, workers=workers)
    elapsed = time.perf_counter() - t0, _cpu() - c0
    if not report.ok or report.events != n:
        raise AssertionError(f"the export did not verify: {report.findings[:3]}")
    return elapsed


def alternate(a: Callable[[], Timing], b: Callable[[], Timing], repeats: int) -> tuple[Timing, Timing]:
    """Median wall and CPU time of each side; the order alternates (ABBA) so both see the same machine load."""
    ta: list[Timing] = []
    tb: list[Timing] = []
    for r in range(repeats):
        for side in (0, 1) if r % 2 == 0 else (1, 0):
            (ta if side == 0 else tb).append(a() if side == 0 else b())

    def median(ts: list[Timing]) -> Timing:
        return statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)

    return median(ta), median(tb)


async def live(nats_url: str, keys_dir: Path, n: int) -> float:
    """Events/s of the live verifier from start until it has committed all ``n`` events."""
    from symbi_audit.live import LiveFeed
    from symbi_audit.runner import VerifierRunner
    from symbi_audit.store import AuditStore
    from symbi_common.datakeys import open_service_datakeys
    from symbi_common.db import open_pool
    from symbi_common.settings_sections import AuditSettings

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
                signer=load_signer(keys_dir / "audit" / "signing.key"),
                datakeys=await open_service_datakeys(js, keys_dir / "audit", "audit", KeyRegistry.load(keys_dir)),
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
    with _common.keyring() as keys_dir, tempfile.TemporaryDirectory(prefix="symbi-bench-export-") as tmp:
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
            export = Path(tmp) / "audit-log.jsonl"
            export.write_bytes(b"".join(export_line(m) for m in raws))
            tree = TreeBuilder()
            for m in raws:
                tree.append(event_leaf(m))
            audit = load_signer(keys_dir / "audit" / "signing.key")
            note = sign_checkpoint(Checkpoint("symbi-audit", tree.size, tree.root()), audit, audit.key_id)
            anchor = TrustAnchor(registry)
            sealed = [decode_sealed(r.data) for r in raws]
            pairs = [(signed_message(s.header, s.ciphertext), s.signature) for s in sealed]
            public_key = registry.verifier(store.signer.key_id).public_key

            (w_ours, c_ours), (w_base, c_base) = alternate(
                lambda: ours(export, note, anchor, cores, n), lambda: baseline(pairs, public_key, cores), repeats
            )
            all_ours, all_base = n / w_ours, n / w_base
            print(
                f"{cores} processes (wall clock): offline verifier {all_ours:,.0f} events/s, "
                f"raw PyNaCl verify {all_base:,.0f} signatures/s, ratio {all_ours / all_base:.2f}"
            )
            print(
                f"{cores} processes (per CPU second of all processes, for information: other load on a shared "
                f"machine does not skew it): offline verifier {n / c_ours:,.0f} events/s, raw {n / c_base:,.0f} "
                f"signatures/s, ratio {c_base / c_ours:.2f}"
            )
            if not args.no_live:
                rate = await live(server.url, keys_dir, n)
                print(f"live verifier end to end (consumer + verify + tree + PostgreSQL commit): {rate:,.0f} events/s")
    print(
        _common.result_line(
            "audit_verify", all_ours, all_base, "events/s", f">={TARGET}", all_ours / all_base >= TARGET
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
