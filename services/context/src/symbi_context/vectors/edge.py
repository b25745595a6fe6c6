"""The embedded backend: Qdrant Edge (the Qdrant engine in-process) under ``vector_data_path``.

HNSW graph, payload indexes on the filtered keys, optional int8 / binary quantization with rescoring on the
original vectors, a write-ahead log. Nothing to run beside the service. Engine calls run in worker threads so
the event loop stays free while a large batch is written or an index is built.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import qdrant_edge as qe

from symbi_context.errors import VectorStoreError
from symbi_context.vectors.files import private_dir, restrict_tree
from symbi_context.vectors.port import (
    DENSE,
    INDEXED_FLOATS,
    INDEXED_KEYWORDS,
    KEYWORDS,
    Hit,
    MetaFilter,
    Quantization,
    SparseVector,
    VectorPoint,
    checked_vector,
    in_thread,
)

_POSITION_FILE = "symbi-position"
_SHARD_DIR = "shard"


def edge_filter(where: MetaFilter | None) -> qe.Filter | None:
    """``where`` in Qdrant Edge's filter language."""
    if where is None:
        return None
    must: list[Any] = []
    if where.owners:
        must.append(qe.FieldCondition("owner", match=qe.MatchAny(list(where.owners))))
    if where.kinds:
        must.append(qe.FieldCondition("kind", match=qe.MatchAny(list(where.kinds))))
    for key, value in where.equals.items():
        must.append(qe.FieldCondition(key, match=qe.MatchValue(value)))
    if where.tags_any:
        must.append(qe.FieldCondition("tags", match=qe.MatchAny(list(where.tags_any))))
    if where.created_from is not None or where.created_to is not None:
        must.append(qe.FieldCondition("created_at", range=qe.RangeFloat(gte=where.created_from, lte=where.created_to)))
    if where.alive_at is not None:
        must.append(qe.FieldCondition("expires_at", range=qe.RangeFloat(gt=where.alive_at)))
    if where.expired_by is not None:
        must.append(qe.FieldCondition("expires_at", range=qe.RangeFloat(lte=where.expired_by)))
    for key, values in where.any_of:
        must.append(qe.FieldCondition(key, match=qe.MatchAny(list(values))))
    if where.ids:
        must.append(qe.HasIdCondition(set(where.ids)))
    return qe.Filter(must=must) if must else None


def _quantization(kind: Quantization) -> Any:
    if kind == "int8":
        return qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, memory=qe.Memory.Cached)
    if kind == "binary":
        # Two bits per dimension and an 8-bit query: 16x smaller than float32, far better recall than one bit
        # at small dimensions such as 384.
        return qe.BinaryQuantizationConfig(
            memory=qe.Memory.Cached,
            encoding=qe.BinaryQuantizationEncoding.TwoBits,
            query_encoding=qe.BinaryQuantizationQueryEncoding.Scalar8Bits,
        )
    return None


class EdgeVectorStore:
    """A Qdrant Edge shard in ``path`` (created on first use)."""

    def __init__(
        self,
        path: str | Path,
        dimension: int,
        *,
        quantization: Quantization = "none",
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 100,
        hnsw_ef: int = 128,
        oversampling: float | None = None,
        indexing_threads: int = 0,
    ) -> None:
        self.path = Path(path)
        self._dimension = dimension
        self.quantization = quantization
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construct = hnsw_ef_construct
        self.hnsw_ef = hnsw_ef
        # Binary codes rank coarsely: rescoring needs a deeper candidate list than int8 codes do.
        self.oversampling = oversampling or {"binary": 16.0}.get(quantization, 3.0)
        self.indexing_threads = indexing_threads
        self._shard = self._open()

    @property
    def dimension(self) -> int:
        return self._dimension

    def _config(self) -> qe.EdgeConfig:
        quantized = self.quantization != "none"
        return qe.EdgeConfig(
            vectors={
                DENSE: qe.EdgeVectorParams(
                    size=self._dimension,
                    distance=qe.Distance.Cosine,
                    # With quantization the originals are only read to rescore the few candidates: leave
                    # them on disk, the compressed copies stay in memory.
                    memory=qe.Memory.Cold if quantized else qe.Memory.Cached,
                    quantization_config=_quantization(self.quantization),
                )
            },
            sparse_vectors={KEYWORDS: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            hnsw_config=qe.HnswIndexConfig(
                m=self.hnsw_m,
                ef_construct=self.hnsw_ef_construct,
                full_scan_threshold=10_000,
                max_indexing_threads=self.indexing_threads,
            ),
        )

    def _open(self) -> qe.EdgeShard:
        shard_path = self.path / _SHARD_DIR
        try:
            private_dir(self.path)
            if shard_path.exists() and any(shard_path.iterdir()):
                shard = qe.EdgeShard.load(str(shard_path))
                restrict_tree(self.path)
                return shard
            private_dir(shard_path)
            shard = qe.EdgeShard.create(str(shard_path), self._config())
        except Exception as exc:
            raise VectorStoreError(f"cannot open the vector store in {shard_path}: {exc}") from exc
        for key in INDEXED_KEYWORDS:
            shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword))
        for key in INDEXED_FLOATS:
            shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Float))
        restrict_tree(self.path)
        return shard

    def _check(self, vector: npt.NDArray[np.float32], what: str) -> list[float]:
        return checked_vector(vector, self._dimension, what)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await in_thread("embedded vector store", fn, *args)

    # --- writes ---------------------------------------------------------------------------------------------

    def _upsert(self, points: Sequence[VectorPoint]) -> None:
        batch = [
            qe.Point(
                p.id,
                {
                    DENSE: self._check(p.vector, f"point {p.id}"),
                    KEYWORDS: qe.SparseVector(p.keywords.indices, p.keywords.values),
                },
                p.payload,
            )
            for p in points
        ]
        for start in range(0, len(batch), 1024):
            self._shard.update(qe.UpdateOperation.upsert_points(batch[start : start + 1024]))

    async def upsert(self, points: Sequence[VectorPoint]) -> None:
        if points:
            await self._run(self._upsert, points)

    async def delete(self, ids: Sequence[str]) -> None:
        if ids:
            await self._run(self._shard.update, qe.UpdateOperation.delete_points(list(ids)))

    async def delete_where(self, where: MetaFilter) -> None:
        flt = edge_filter(where)
        if flt is None:
            raise VectorStoreError("refusing to delete with an empty filter; use reset() to clear the store")
        await self._run(self._shard.update, qe.UpdateOperation.delete_points_by_filter(flt))

    # --- reads ----------------------------------------------------------------------------------------------

    @staticmethod
    def _hits(points: Sequence[Any]) -> list[Hit]:
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    async def search(
        self, vector: npt.NDArray[np.float32], *, where: MetaFilter | None = None, limit: int = 10, exact: bool = False
    ) -> list[Hit]:
        query = self._check(vector, "query vector")
        params = qe.SearchParams(
            hnsw_ef=max(self.hnsw_ef, limit),
            exact=exact,
            quantization=qe.QuantizationSearchParams(ignore=exact, rescore=True, oversampling=self.oversampling),
        )
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(query, using=DENSE),
            filter=edge_filter(where),
            with_payload=True,
            params=params,
        )
        return self._hits(await self._run(self._shard.query, request))

    async def search_keywords(
        self, query: SparseVector, *, where: MetaFilter | None = None, limit: int = 10
    ) -> list[Hit]:
        if not query.indices:
            return []
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(qe.SparseVector(query.indices, query.values), using=KEYWORDS),
            filter=edge_filter(where),
            with_payload=True,
        )
        return self._hits(await self._run(self._shard.query, request))

    async def scroll(self, where: MetaFilter | None = None, *, limit: int = 10_000) -> list[Hit]:
        request = qe.ScrollRequest(limit=limit, filter=edge_filter(where), with_payload=True, with_vector=False)
        records, _ = await self._run(self._shard.scroll, request)
        return [Hit(str(r.id), 0.0, dict(r.payload or {})) for r in records]

    async def count(self, where: MetaFilter | None = None) -> int:
        result: int = await self._run(self._shard.count, qe.CountRequest(filter=edge_filter(where), exact=True))
        return result

    # --- position, maintenance ------------------------------------------------------------------------------

    async def position(self) -> int:
        file = self.path / _POSITION_FILE
        return int(file.read_text()) if file.exists() else 0

    def _set_position(self, sequence: int) -> None:
        self._shard.flush()  # the points first, then the position that claims them
        tmp = self.path / f"{_POSITION_FILE}.tmp"
        tmp.write_text(str(sequence))
        os.replace(tmp, self.path / _POSITION_FILE)

    async def set_position(self, sequence: int) -> None:
        await self._run(self._set_position, sequence)

    async def optimize(self) -> None:
        await self._run(self._shard.optimize)

    def _reset(self) -> None:
        self._shard.close()
        shutil.rmtree(self.path / _SHARD_DIR, ignore_errors=True)
        (self.path / _POSITION_FILE).unlink(missing_ok=True)
        self._shard = self._open()

    async def reset(self) -> None:
        await self._run(self._reset)

    def _close(self) -> None:
        self._shard.close()
        restrict_tree(self.path)

    async def close(self) -> None:
        await self._run(self._close)
