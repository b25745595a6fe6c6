"""Vector search of the context service's embedded backend (Qdrant Edge in-process), and context retrieval
through the HTTP API end to end.

Vectors have the default model's dimension (384). They are synthetic but shaped like sentence embeddings:
unit vectors in a two-level mixture (n/1,000 topics, sub-topics of ~20 points), so a query's true neighbours
have cosines like related sentences (~0.4-0.7) and must be told apart from hundreds of near candidates
(uniform random vectors would have no neighbourhood structure at all). Queries come from the same
distribution: half of them near a stored point (like a paraphrase of a stored sentence), half unseen.

For each size (100k and 1M; ``--quick``: 20k) and each compression (none, int8, binary = 2 bits a dimension):

* upsert throughput through ``EdgeVectorStore.upsert`` (batches of 1,024, payload and keyword vector included),
  then the HNSW build (``optimize``; m=16, ef_construct=100);
* ours: search latency p50 / p99 through ``EdgeVectorStore.search`` (one query at a time, as the service asks,
  hnsw_ef=128, quantized candidates rescored with the originals), and recall@10 against exact search;
* baseline: exact brute-force search of the same queries with numpy (BLAS matrix-vector product + top-k);
* filtered search: the same queries restricted to one of 100 owners (payload index on ``owner``);
* memory: bytes per vector of the copy searched in RAM (float32 originals, or the quantized codes while the
  originals stay on disk for rescoring), read from the engine's storage files.

Then the service itself: ``python -m symbi_context`` as a child process with a throwaway nats-server, 1,000
memories and the test corpus stored through HTTP, and ``POST /v1/memories/query`` (embedding of the query +
policy + hybrid retrieval + ranking) timed against ``GET /healthz`` on the same connection.

    uv run python bench/vector_search.py [--quick] [--sizes 100000,1000000] [--modes none,int8,binary]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import _common
import httpx
import numpy as np
from symbi_context.vectors.edge import EdgeVectorStore
from symbi_context.vectors.port import MetaFilter, SparseVector, VectorPoint

DIM = 384
K = 10
TARGET_P99_MS = 20.0
TARGET_RECALL = 0.95
TARGET_HTTP_P50_MS = 50.0
CORPUS = Path(__file__).resolve().parent.parent / "services" / "context" / "tests" / "corpus"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def embedding_like(n: int, rng: np.random.Generator, topics: np.ndarray) -> np.ndarray:
    """Unit vectors in a two-level mixture: topics, sub-topics of ~20 points around them, points around those.

    A query's neighbourhood is then a continuum (its sub-topic, then the ~1,000 points of its topic), with
    cosines like related sentences have (~0.4-0.7), so the top 10 must be picked out of many near candidates.
    """
    out = np.empty((n, DIM), dtype=np.float32)
    scale = 0.8 / np.sqrt(DIM)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        subs = topics[rng.integers(0, len(topics), size=max(1, m // 20))]
        subs = subs + rng.normal(scale=scale, size=subs.shape).astype(np.float32)
        subs /= np.linalg.norm(subs, axis=1, keepdims=True)
        block = subs[rng.integers(0, len(subs), size=m)] + rng.normal(scale=scale, size=(m, DIM)).astype(np.float32)
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


@dataclass
class Run:
    size: int
    mode: str
    upsert_per_s: float
    build_s: float
    p50: float
    p99: float
    recall: float
    filtered_p50: float
    filtered_p99: float
    filtered_recall: float
    bytes_per_vector: float


def searched_bytes(path: Path, mode: str, n: int) -> float:
    """Bytes per vector of the dense copy searched in RAM, from the engine's files."""
    name = "quantized.data" if mode != "none" else "matrix.dat"
    total = sum(f.stat().st_size for f in path.rglob(name) if "vector_storage-dense" in str(f))
    return total / n


async def run_one(
    size: int,
    mode: str,
    data: np.ndarray,
    owners: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    ftruth: np.ndarray,
    qowners: np.ndarray,
    root: Path,
) -> Run:
    path = root / f"{mode}-{size}"
    shutil.rmtree(path, ignore_errors=True)
    store = EdgeVectorStore(path, DIM, quantization=mode, indexing_threads=2)  # type: ignore[arg-type]
    empty = SparseVector([], [])
    t0 = time.perf_counter()
    batch = 10_240
    for start in range(0, size, batch):
        points = [
            VectorPoint(str(uuid.UUID(int=i + 1)), data[i], empty, {"owner": f"o{owners[i]}", "n": i})
            for i in range(start, min(size, start + batch))
        ]
        await store.upsert(points)
    upsert_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    await store.optimize()
    build_s = time.perf_counter() - t1
    lat: list[float] = []
    found = 0
    flat: list[float] = []
    ffound = 0
    for _ in range(2):  # warm the caches once, measure the second pass
        lat, flat, found, ffound = [], [], 0, 0
        for qi, q in enumerate(queries):
            s = time.perf_counter()
            hits = await store.search(q, limit=K)
            lat.append((time.perf_counter() - s) * 1000)
            found += len({int(h.payload["n"]) for h in hits} & set(truth[qi].tolist()))
            where = MetaFilter(owners=(f"o{qowners[qi]}",))
            s = time.perf_counter()
            hits = await store.search(q, where=where, limit=K)
            flat.append((time.perf_counter() - s) * 1000)
            ffound += len({int(h.payload["n"]) for h in hits} & set(ftruth[qi].tolist()))
    await store.close()
    run = Run(
        size,
        mode,
        size / upsert_s,
        build_s,
        pct(lat, 50),
        pct(lat, 99),
        found / (K * len(queries)),
        pct(flat, 50),
        pct(flat, 99),
        ffound / (K * len(queries)),
        searched_bytes(path, mode, size),
    )
    shutil.rmtree(path, ignore_errors=True)
    return run


def exact(data: np.ndarray, queries: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, list[float]]:
    """Exact top-k by brute force, one query at a time (the baseline), with per-query latency."""
    out = np.empty((len(queries), K), dtype=np.int64)
    lat = []
    for i, q in enumerate(queries):
        s = time.perf_counter()
        scores = data @ q
        if mask is not None:
            scores = np.where(mask[i], scores, -np.inf)
        top = np.argpartition(-scores, K)[:K]
        out[i] = top[np.argsort(-scores[top])]
        lat.append((time.perf_counter() - s) * 1000)
    return out, lat


async def qdrant_local_upsert(rng: np.random.Generator, n: int = 20_000) -> float:
    """Upsert throughput of qdrant-client's local mode (the other in-process option; brute-force search)."""
    from qdrant_client import AsyncQdrantClient
    from symbi_context.vectors.qdrant import QdrantVectorStore

    data = rng.normal(size=(n, DIM)).astype(np.float32)
    store = await QdrantVectorStore.open(AsyncQdrantClient(location=":memory:"), DIM)
    empty = SparseVector([], [])
    t0 = time.perf_counter()
    for start in range(0, n, 1024):
        await store.upsert(
            [
                VectorPoint(str(uuid.UUID(int=i + 1)), data[i], empty, {"owner": "o", "n": i})
                for i in range(start, min(n, start + 1024))
            ]
        )
    rate = n / (time.perf_counter() - t0)
    await store.close()
    return rate


# --- the service over HTTP ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def context_service(nats_url: str, keys_dir: Path, vectors: Path) -> AsyncIterator[str]:
    env = {
        "SYMBI_NATS_URL": nats_url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_POLICY__ENFORCEMENT": "allow-all",
        "SYMBIONT_VECTOR_DATA_PATH": str(vectors),
        # The queries repeat: without this the embedding cache would answer them and flatter the latency.
        "SYMBI_CONTEXT__CONTEXT_CACHE_SIZE": "0",
    }
    async with _common.service_process("symbi_context", env) as svc:
        yield svc.url


QUESTIONS = [
    "How do plants make sugar from sunlight?",
    "What makes a mountain explode and spit out lava?",
    "How can I make bread rise without buying yeast?",
    "What happens when a data packet is lost on the network?",
    "Who removed the final emperor of Rome from power?",
    "How many hours of rest does a grown-up need each night?",
    "Which database does the team prefer?",
    "When is the next release planned?",
]


async def http_retrieval(memories: int, requests: int) -> tuple[list[float], list[float], float]:
    subjects = ["release", "database", "customer", "incident", "design", "budget", "hiring", "travel"]
    with _common.keyring() as keys_dir, tempfile.TemporaryDirectory(prefix="symbi-bench-vectors-") as vec:
        async with (
            _common.nats_server() as nats,
            context_service(nats.url, keys_dir, Path(vec)) as url,
            httpx.AsyncClient(base_url=url, timeout=30, headers=_common.AUTH) as http,
        ):
            last = 0
            t0 = time.perf_counter()
            for start in range(0, memories, 50):
                batch = [
                    {
                        "kind": "long_term",
                        "text": f"Note {i} about the {subjects[i % 8]}: item {i} was discussed with team {i % 13}.",
                        "tags": [subjects[i % 8]],
                    }
                    for i in range(start, min(memories, start + 50))
                ]
                r = await http.post("/v1/memories", json={"agent_id": "bench-agent", "memories": batch})
                r.raise_for_status()
                last = r.json()["sequence"]
            for doc in sorted(CORPUS.glob("*.md")):
                r = await http.post(
                    "/v1/knowledge/corpus/documents",
                    json={
                        "agent_id": "bench-agent",
                        "title": doc.stem,
                        "text": doc.read_text(),
                        "media_type": "text/markdown",
                    },
                )
                r.raise_for_status()
                last = r.json()["sequence"]
            write_s = time.perf_counter() - t0
            ours: list[float] = []
            base: list[float] = []
            warmup = 20
            for i in range(warmup + requests):
                t1 = time.perf_counter()
                (await http.get("/healthz")).raise_for_status()
                t2 = time.perf_counter()
                body = {
                    "agent_id": "bench-agent",
                    "query": QUESTIONS[i % len(QUESTIONS)],
                    "knowledge_bases": ["corpus"],
                    "limit": 5,
                    "min_sequence": last,
                }
                r = await http.post("/v1/memories/query", json=body)
                t3 = time.perf_counter()
                if r.status_code != 200 or not r.json()["results"]:
                    raise SystemExit(f"query failed: {r.status_code} {r.text[:300]}")
                if i >= warmup:
                    base.append((t2 - t1) * 1000)
                    ours.append((t3 - t2) * 1000)
    return ours, base, (memories + 6) / write_s


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20k vectors, fewer queries (about a minute)")
    ap.add_argument("--sizes", help="comma-separated sizes (default 100000,1000000)")
    ap.add_argument("--modes", default="none,int8,binary", help="compressions to measure")
    ap.add_argument("--queries", type=int, help="queries per configuration (default 500, quick 100)")
    ap.add_argument("--skip-http", action="store_true", help="skip the end-to-end HTTP measurement")
    args = ap.parse_args()
    sizes = [int(s) for s in (args.sizes or ("20000" if args.quick else "100000,1000000")).split(",")]
    modes = args.modes.split(",")
    nq = args.queries or (100 if args.quick else 500)
    print(_common.machine_summary())
    rng = np.random.default_rng(42)
    lines: list[str] = []
    runs: list[Run] = []
    exact_p99: dict[int, float] = {}
    local_upsert = await qdrant_local_upsert(rng)
    print(f"baseline upsert: qdrant-client local mode {local_upsert:,.0f} pts/s (20k points)")
    with tempfile.TemporaryDirectory(prefix="symbi-bench-edge-") as tmp:
        for size in sizes:
            centres = rng.normal(size=(max(10, size // 1000), DIM)).astype(np.float32)
            centres /= np.linalg.norm(centres, axis=1, keepdims=True)
            data = embedding_like(size, rng, centres)
            owners = rng.integers(0, 100, size=size)
            # Half paraphrase-like (a stored point moved as far as its own sub-topic spread), half unseen.
            near = data[rng.integers(0, size, size=nq // 2)]
            near = near + rng.normal(scale=0.8 / np.sqrt(DIM), size=near.shape).astype(np.float32)
            near /= np.linalg.norm(near, axis=1, keepdims=True)
            queries = np.vstack([near, embedding_like(nq - nq // 2, rng, centres)])
            qowners = rng.integers(0, 100, size=nq)
            truth, base_lat = exact(data, queries)
            mask = owners[None, :] == qowners[:, None] if size <= 100_000 else None
            if mask is None:
                ftruth = np.empty((nq, K), dtype=np.int64)
                for i in range(nq):
                    idx = np.flatnonzero(owners == qowners[i])
                    scores = data[idx] @ queries[i]
                    ftruth[i] = idx[np.argsort(-scores)[:K]]
            else:
                ftruth, _ = exact(data, queries, mask)
            b50, b99 = pct(base_lat, 50), pct(base_lat, 99)
            exact_p99[size] = b99
            print(f"\nsize={size} dim={DIM} queries={nq}: exact brute force (numpy) p50={b50:.2f} ms p99={b99:.2f} ms")
            for mode in modes:
                run = await run_one(size, mode, data, owners, queries, truth, ftruth, qowners, Path(tmp))
                runs.append(run)
                print(
                    f"  {mode:>6}: upsert {run.upsert_per_s:,.0f} pts/s, HNSW build {run.build_s:.1f} s | "
                    f"search p50 {run.p50:.2f} ms p99 {run.p99:.2f} ms recall@10 {run.recall:.3f} | "
                    f"filtered (1% owner) p50 {run.filtered_p50:.2f} ms p99 {run.filtered_p99:.2f} ms "
                    f"recall@10 {run.filtered_recall:.3f} | {run.bytes_per_vector:.0f} B/vector in RAM "
                    f"({100 * (1 - run.bytes_per_vector / (DIM * 4)):.1f}% less than float32)",
                    flush=True,
                )
                tag = f"{size // 1000}k_{mode}"
                ok = run.p99 < TARGET_P99_MS and run.recall >= TARGET_RECALL
                lines.append(
                    _common.result_line(
                        f"vector_search_p99_{tag}", run.p99, b99, "ms", f"<{TARGET_P99_MS:g}", run.p99 < TARGET_P99_MS
                    )
                )
                lines.append(
                    _common.result_line(
                        f"vector_recall10_{tag}",
                        run.recall,
                        1.0,
                        "recall",
                        f">={TARGET_RECALL}",
                        run.recall >= TARGET_RECALL,
                    )
                )
                lines.append(
                    _common.result_line(
                        f"vector_filtered_p99_{tag}",
                        run.filtered_p99,
                        b99,
                        "ms",
                        f"<{TARGET_P99_MS:g}",
                        run.filtered_p99 < TARGET_P99_MS,
                    )
                )
                if mode != "none":
                    saved = 1 - run.bytes_per_vector / (DIM * 4)
                    lines.append(
                        _common.result_line(
                            f"vector_memory_saved_{tag}", saved, 0.75, "fraction", ">=0.75", saved >= 0.75 and ok
                        )
                    )
                lines.append(
                    _common.result_line(
                        f"vector_upsert_{tag}",
                        run.upsert_per_s,
                        local_upsert,
                        "points/s",
                        ">baseline",
                        run.upsert_per_s > local_upsert,
                    )
                )
            del data, truth, ftruth, mask
    if not args.skip_http:
        memories = 200 if args.quick else 1000
        ours, base, writes = await http_retrieval(memories, 100 if args.quick else 500)
        p50, p99, b50 = pct(ours, 50), pct(ours, 99), pct(base, 50)
        print(
            f"\nHTTP context retrieval (POST /v1/memories/query, {memories} memories + corpus): p50 {p50:.1f} ms "
            f"p99 {p99:.1f} ms; GET /healthz p50 {b50:.2f} ms; writes {writes:.0f} memories/s through HTTP"
        )
        lines.append(
            _common.result_line(
                "context_retrieval_http_p50", p50, b50, "ms", f"<{TARGET_HTTP_P50_MS:g}", p50 < TARGET_HTTP_P50_MS
            )
        )
    print()
    for line in lines:
        print(line)
    # Headline: the largest size, compressed by >= 75% (binary codes) where measured.
    head = max(runs, key=lambda r: (r.size, r.mode == "binary", r.mode == "int8"))
    ok = head.p99 < TARGET_P99_MS and head.recall >= TARGET_RECALL
    print(
        _common.result_line(
            f"vector_search_{head.size // 1000}k_{head.mode}",
            head.p99,
            exact_p99[head.size],
            "ms",
            f"<{TARGET_P99_MS:g}_recall>={TARGET_RECALL}",
            ok,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
