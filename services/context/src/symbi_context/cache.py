"""The embedding cache (``context_cache_size``): vectors of texts embedded recently, in memory, least recently
used first out. Keys are SHA-256 digests of the texts, so the cache holds no text; it never touches the disk.
A repeated query or a re-ingested document skips the model."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from symbi_context.embeddings import Embedder, Vectors

#: Bytes counted per entry beyond the vector itself (digest, dictionary slot, array header).
ENTRY_OVERHEAD = 200


class CachedEmbedder:
    """An :class:`Embedder` that remembers up to ``max_bytes`` of vectors (0: no cache)."""

    def __init__(self, inner: Embedder, max_bytes: int) -> None:
        self.inner = inner
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def _put(self, key: bytes, vector: np.ndarray) -> None:
        """Keep ``vector`` as the most recently used entry; a key already kept (the same text twice in a batch,
        or two calls missing it together) only moves to the end: counted again, the bytes would drift up until
        nothing fits."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        size = vector.nbytes + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        self._entries[key] = vector
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.nbytes + ENTRY_OVERHEAD

    async def embed(self, texts: Sequence[str]) -> Vectors:
        keys = [hashlib.sha256(f"{self.model}\0{t}".encode()).digest() for t in texts]
        found: dict[int, np.ndarray] = {}
        for i, key in enumerate(keys):
            vector = self._entries.get(key)
            if vector is not None:
                self._entries.move_to_end(key)
                found[i] = vector
        self.hits += len(found)
        missing = [i for i in range(len(texts)) if i not in found]
        self.misses += len(missing)
        if missing:
            fresh = await self.inner.embed([texts[i] for i in missing])
            for i, vector in zip(missing, fresh, strict=True):
                found[i] = vector
                self._put(keys[i], vector.copy())
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        out: Vectors = np.stack([found[i] for i in range(len(texts))]).astype(np.float32, copy=False)
        return out
