"""The embedding cache counts each entry's bytes once: a text embedded twice before it was cached (twice in one
batch, or by two calls at once) does not inflate the count until nothing fits."""

from __future__ import annotations

import asyncio

from symbi_context.cache import ENTRY_OVERHEAD, CachedEmbedder
from symbi_context.embeddings import LocalEmbedder

ONE = 384 * 4 + ENTRY_OVERHEAD


async def test_a_key_cached_again_is_counted_once() -> None:
    cache = CachedEmbedder(LocalEmbedder(), max_bytes=2 * ONE)
    await cache.embed(["the pump failed"] * 3)
    assert cache.bytes == ONE
    await asyncio.gather(cache.embed(["revenue grew"]), cache.embed(["revenue grew"]))
    assert cache.bytes == 2 * ONE
    # Both are kept and served from the cache (with the bytes counted thrice, each new entry evicted itself).
    await cache.embed(["the pump failed", "revenue grew"])
    assert cache.hits == 2
    await cache.embed(["the cat sleeps"])
    assert cache.bytes == 2 * ONE
    await cache.embed(["the cat sleeps"])
    assert cache.hits == 3
