"""Inclusion and consistency proofs at 1M leaves: generation and verification latency.

A tree of N leaves (default 1,048,576; quick 131,072) is built with the audit service's
``TreeBuilder`` and its perfect nodes are stored in PostgreSQL (``audit.nodes``, pgserver) exactly as
the live verifier stores them. Then, for random leaves and random pairs of sizes:

* generation from PostgreSQL: ``AuditStore.nodes`` (one query) + folding, as ``/v1/audit/proofs`` does;
* generation from memory: the same pure code over an in-memory node table (the lower bound);
* verification: ``verify_inclusion`` / ``verify_consistency`` (RFC 9162), what a client runs.

Reported: ``ours`` = median inclusion-proof verification latency; ``baseline`` = median latency of one
raw PyNaCl Ed25519 verification (what checking the checkpoint's signature costs anyway), so the
ratio says how the proof compares with the one signature check a client must do. Target: < 1 ms.

    uv run python bench/audit_proofs.py [--quick] [--leaves N] [--samples S]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _common
import nacl.signing
from symbi_audit.store import AuditStore
from symbi_cli.postgres_server import PostgresServer
from symbi_common.db import open_pool
from symbi_tlog.merkle import (
    Node,
    TreeBuilder,
    consistency_ranges,
    fold_range,
    hashes_for,
    inclusion_ranges,
    nodes_for,
    range_nodes,
    verify_consistency,
    verify_inclusion,
)

TARGET_US = 1000.0


class Levels:
    """Perfect nodes per level in flat byte arrays (32 bytes each): 64 MB for 1M leaves, not 2M dict entries."""

    def __init__(self) -> None:
        self.levels: list[bytearray] = []

    def add(self, level: int, index: int, h: bytes) -> None:
        while len(self.levels) <= level:
            self.levels.append(bytearray())
        arr = self.levels[level]
        assert len(arr) == index * 32
        arr += h

    def get(self, node: Node) -> bytes:
        level, index = node
        return bytes(self.levels[level][index * 32 : index * 32 + 32])


def median_us(fn: Callable[[], object], samples: int) -> float:
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="131,072 leaves, fewer samples")
    ap.add_argument("--leaves", type=int, help="tree size (default 1048576, quick 131072)")
    ap.add_argument("--samples", type=int, help="proofs per measurement (default 2000, quick 500)")
    args = ap.parse_args()
    n = args.leaves or (131_072 if args.quick else 1_048_576)
    samples = args.samples or (500 if args.quick else 2000)
    rng = random.Random(6962)
    print(_common.machine_summary())

    t0 = time.perf_counter()
    tree = TreeBuilder()
    levels = Levels()
    roots: dict[int, bytes] = {}
    checkpoints = sorted({rng.randrange(1, n) for _ in range(64)} | {n})
    for i in range(n):
        for level, index, h in tree.append(hashlib.sha256(b"\x00" + i.to_bytes(8, "big")).digest()):
            levels.add(level, index, h)
        if tree.size in checkpoints:
            roots[tree.size] = tree.root()
    print(f"built a tree of {n} leaves in {time.perf_counter() - t0:.1f}s")

    with (
        tempfile.TemporaryDirectory(prefix="symbi-bench-pg-") as tmp,
        PostgresServer(Path(tmp) / "data", cleanup="delete") as pg,
    ):
        pool = await open_pool(pg.create_database("proofs_bench"), min_size=1, max_size=2)
        try:
            store = AuditStore(pool)
            await store.setup()
            t0 = time.perf_counter()
            async with pool.acquire() as conn:
                for level, arr in enumerate(levels.levels):
                    count = len(arr) // 32
                    for start in range(0, count, 100_000):
                        records = [
                            (level, i, bytes(arr[i * 32 : i * 32 + 32]))
                            for i in range(start, min(count, start + 100_000))
                        ]
                        await conn.copy_records_to_table("nodes", schema_name="audit", records=records)
            print(
                f"stored {sum(len(a) for a in levels.levels) // 32} nodes in PostgreSQL in {time.perf_counter() - t0:.1f}s"
            )

            leaves = [rng.randrange(n) for _ in range(samples)]
            pairs = [(o, m) for o in checkpoints for m in checkpoints if o < m]
            rng.shuffle(pairs)

            # Generation from PostgreSQL, as the service does it.
            pg_times = []
            for index in leaves[: min(samples, 500)]:
                t = time.perf_counter()
                ranges = inclusion_ranges(index, n)
                nodes = await store.nodes(sorted(nodes_for(ranges)))
                proof = [fold_range([nodes[x] for x in range_nodes(s, e)]) for s, e in ranges]
                pg_times.append(time.perf_counter() - t)
                assert verify_inclusion(levels.get((0, index)), index, n, proof, roots[n])
            gen_pg = statistics.median(pg_times) * 1e6
            pg_cons = []
            for old, new in pairs[: min(len(pairs), 300)]:
                t = time.perf_counter()
                ranges = consistency_ranges(old, new)
                nodes = await store.nodes(sorted(nodes_for(ranges)))
                proof = [fold_range([nodes[x] for x in range_nodes(s, e)]) for s, e in ranges]
                pg_cons.append(time.perf_counter() - t)
                assert verify_consistency(old, new, roots[old], roots[new], proof)
            gen_pg_cons = statistics.median(pg_cons) * 1e6
        finally:
            await pool.close()

    proofs = [(i, hashes_for(inclusion_ranges(i, n), levels.get)) for i in leaves]
    it = iter(leaves * 2)
    gen_mem = median_us(lambda: hashes_for(inclusion_ranges(next(it), n), levels.get), samples)
    pit = iter(proofs * 2)

    def verify_one() -> None:
        i, proof = next(pit)
        if not verify_inclusion(levels.get((0, i)), i, n, proof, roots[n]):
            raise AssertionError("proof does not verify")

    ver = median_us(verify_one, samples)
    cons = [(o, m, hashes_for(consistency_ranges(o, m), levels.get)) for o, m in pairs]
    cit = iter(cons * (samples // max(len(cons), 1) + 2))

    def verify_cons() -> None:
        o, m, proof = next(cit)
        if not verify_consistency(o, m, roots[o], roots[m], proof):
            raise AssertionError("consistency proof does not verify")

    ver_cons = median_us(verify_cons, samples)
    signer = nacl.signing.SigningKey.generate()
    signed = signer.sign(b"symbi-audit\n1048576\n" + roots[n])
    vk = signer.verify_key
    ed = median_us(lambda: vk.verify(signed), samples)
    print(f"inclusion proof ({len(proofs[0][1])} hashes): generate {gen_pg:.0f} us from PostgreSQL, "
          f"{gen_mem:.1f} us from memory; verify {ver:.1f} us")  # fmt: skip
    print(f"consistency proof: generate {gen_pg_cons:.0f} us from PostgreSQL; verify {ver_cons:.1f} us")
    print(f"one raw Ed25519 verification: {ed:.1f} us")
    print(_common.result_line("audit_proofs", ver, ed, "us", f"verify<{TARGET_US:g}us", ver < TARGET_US))


if __name__ == "__main__":
    asyncio.run(main())
