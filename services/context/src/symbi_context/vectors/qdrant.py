"""Qdrant through ``qdrant-client``, for deployments with a Qdrant server or cluster.

``SYMBIONT_VECTOR_BACKEND=qdrant`` with ``SYMBIONT_VECTOR_HOST`` / ``SYMBIONT_VECTOR_PORT``. The tests run
this exact code against qdrant-client's local mode (``location=":memory:"`` or a path), which speaks the same
API; only the client construction differs.

The projection position lives in a one-point side collection, ``<collection>_position``.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from qdrant_client import AsyncQdrantClient
from qdrant_client import models as m

from symbi_context.errors import DimensionMismatch, VectorStoreError
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
)

_POSITION_ID = str(uuid.UUID(int=1))


def qdrant_filter(where: MetaFilter | None) -> m.Filter | None:
    """``where`` in Qdrant's filter language."""
    if where is None:
        return None
    must: list[Any] = []
    if where.owners:
        must.append(m.FieldCondition(key="owner", match=m.MatchAny(any=list(where.owners))))
    if where.kinds:
        must.append(m.FieldCondition(key="kind", match=m.MatchAny(any=list(where.kinds))))
    for key, value in where.equals.items():
        must.append(m.FieldCondition(key=key, match=m.MatchValue(value=value)))
    if where.tags_any:
        must.append(m.FieldCondition(key="tags", match=m.MatchAny(any=list(where.tags_any))))
    if where.created_from is not None or where.created_to is not None:
        must.append(m.FieldCondition(key="created_at", range=m.Range(gte=where.created_from, lte=where.created_to)))
    if where.alive_at is not None:
        must.append(m.FieldCondition(key="expires_at", range=m.Range(gt=where.alive_at)))
    if where.expired_by is not None:
        must.append(m.FieldCondition(key="expires_at", range=m.Range(lte=where.expired_by)))
    for key, values in where.any_of:
        must.append(m.FieldCondition(key=key, match=m.MatchAny(any=list(values))))
    if where.ids:
        must.append(m.HasIdCondition(has_id=list(where.ids)))
    return m.Filter(must=must) if must else None


def _quantization(kind: Quantization) -> m.QuantizationConfig | None:
    if kind == "int8":
        return m.ScalarQuantization(
            scalar=m.ScalarQuantizationConfig(type=m.ScalarType.INT8, quantile=0.99, always_ram=True)
        )
    if kind == "binary":
        return m.BinaryQuantization(
            binary=m.BinaryQuantizationConfig(
                always_ram=True,
                encoding=m.BinaryQuantizationEncoding.TWO_BITS,
                query_encoding=m.BinaryQuantizationQueryEncoding.SCALAR8BITS,
            )
        )
    return None


class QdrantVectorStore:
    """One Qdrant collection (and its position collection) through an :class:`AsyncQdrantClient`."""

    def __init__(
        self,
        client: AsyncQdrantClient,
        dimension: int,
        *,
        collection: str = "symbi_context",
        quantization: Quantization = "none",
        oversampling: float | None = None,
    ) -> None:
        self.client = client
        self._dimension = dimension
        self.collection = collection
        self.quantization = quantization
        self.oversampling = oversampling or {"binary": 16.0}.get(quantization, 3.0)

    @classmethod
    async def connect(
        cls,
        *,
        host: str,
        port: int,
        dimension: int,
        quantization: Quantization = "none",
        collection: str = "symbi_context",
        **client_options: Any,
    ) -> QdrantVectorStore:
        """The store on a Qdrant server, collections created if missing."""
        client = AsyncQdrantClient(host=host, port=port, **client_options)
        return await cls.open(client, dimension, quantization, collection)

    @classmethod
    async def open(
        cls,
        client: AsyncQdrantClient,
        dimension: int,
        quantization: Quantization = "none",
        collection: str = "symbi_context",
    ) -> QdrantVectorStore:
        store = cls(client, dimension, quantization=quantization, collection=collection)
        try:
            await store._ensure()
        except VectorStoreError:
            raise
        except Exception as exc:
            raise VectorStoreError(f"cannot open Qdrant collection {collection}: {exc}") from exc
        return store

    @property
    def dimension(self) -> int:
        return self._dimension

    async def _ensure(self) -> None:
        if not await self.client.collection_exists(self.collection):
            await self.client.create_collection(
                self.collection,
                vectors_config={DENSE: m.VectorParams(size=self._dimension, distance=m.Distance.COSINE)},
                sparse_vectors_config={KEYWORDS: m.SparseVectorParams(modifier=m.Modifier.IDF)},
                quantization_config=_quantization(self.quantization),
                hnsw_config=m.HnswConfigDiff(m=16, ef_construct=100),
            )
            with warnings.catch_warnings():
                # Local mode (tests) says payload indexes have no effect there; a server builds them.
                warnings.simplefilter("ignore", UserWarning)
                for key in INDEXED_KEYWORDS:
                    await self.client.create_payload_index(self.collection, key, m.PayloadSchemaType.KEYWORD)
                for key in INDEXED_FLOATS:
                    await self.client.create_payload_index(self.collection, key, m.PayloadSchemaType.FLOAT)
        else:
            info = await self.client.get_collection(self.collection)
            vectors = info.config.params.vectors
            size = vectors[DENSE].size if isinstance(vectors, dict) and DENSE in vectors else None
            if size != self._dimension:
                raise DimensionMismatch(expected=size or 0, got=self._dimension, what=f"collection {self.collection}")
        position = f"{self.collection}_position"
        if not await self.client.collection_exists(position):
            await self.client.create_collection(position, vectors_config={})

    def _check(self, vector: npt.NDArray[np.float32], what: str) -> list[float]:
        return checked_vector(vector, self._dimension, what)

    async def upsert(self, points: Sequence[VectorPoint]) -> None:
        batch = [
            m.PointStruct(
                id=p.id,
                vector={
                    DENSE: self._check(p.vector, f"point {p.id}"),
                    KEYWORDS: m.SparseVector(indices=p.keywords.indices, values=p.keywords.values),
                },
                payload=p.payload,
            )
            for p in points
        ]
        for start in range(0, len(batch), 1024):
            await self._call(self.client.upsert(self.collection, batch[start : start + 1024], wait=True))

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (DimensionMismatch, VectorStoreError):
            raise
        except Exception as exc:
            raise VectorStoreError(f"qdrant: {exc}") from exc

    async def delete(self, ids: Sequence[str]) -> None:
        if ids:
            await self._call(self.client.delete(self.collection, m.PointIdsList(points=list(ids)), wait=True))

    async def delete_where(self, where: MetaFilter) -> None:
        flt = qdrant_filter(where)
        if flt is None:
            raise VectorStoreError("refusing to delete with an empty filter; use reset() to clear the store")
        await self._call(self.client.delete(self.collection, m.FilterSelector(filter=flt), wait=True))

    @staticmethod
    def _hits(points: Sequence[Any]) -> list[Hit]:
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    async def search(
        self, vector: npt.NDArray[np.float32], *, where: MetaFilter | None = None, limit: int = 10, exact: bool = False
    ) -> list[Hit]:
        query = self._check(vector, "query vector")
        params = m.SearchParams(
            hnsw_ef=max(128, limit),
            exact=exact,
            quantization=m.QuantizationSearchParams(ignore=exact, rescore=True, oversampling=self.oversampling),
        )
        with warnings.catch_warnings():
            # Local mode (tests) notes that it always searches exactly; a server uses the parameters.
            warnings.filterwarnings("ignore", message="Local mode performs exact", category=UserWarning)
            result = await self._call(
                self.client.query_points(
                    self.collection,
                    query=query,
                    using=DENSE,
                    query_filter=qdrant_filter(where),
                    limit=limit,
                    with_payload=True,
                    search_params=params,
                )
            )
        return self._hits(result.points)

    async def search_keywords(
        self, query: SparseVector, *, where: MetaFilter | None = None, limit: int = 10
    ) -> list[Hit]:
        if not query.indices:
            return []
        result = await self._call(
            self.client.query_points(
                self.collection,
                query=m.SparseVector(indices=query.indices, values=query.values),
                using=KEYWORDS,
                query_filter=qdrant_filter(where),
                limit=limit,
                with_payload=True,
            )
        )
        return self._hits(result.points)

    async def scroll(self, where: MetaFilter | None = None, *, limit: int = 10_000) -> list[Hit]:
        records, _ = await self._call(
            self.client.scroll(
                self.collection, scroll_filter=qdrant_filter(where), limit=limit, with_payload=True, with_vectors=False
            )
        )
        return [Hit(str(r.id), 0.0, dict(r.payload or {})) for r in records]

    async def count(self, where: MetaFilter | None = None) -> int:
        result = await self._call(self.client.count(self.collection, count_filter=qdrant_filter(where), exact=True))
        return int(result.count)

    async def position(self) -> int:
        records = await self._call(self.client.retrieve(f"{self.collection}_position", [_POSITION_ID]))
        return int(records[0].payload["sequence"]) if records else 0

    async def set_position(self, sequence: int) -> None:
        point = m.PointStruct(id=_POSITION_ID, vector={}, payload={"sequence": sequence})
        await self._call(self.client.upsert(f"{self.collection}_position", [point], wait=True))

    async def optimize(self) -> None:
        """A Qdrant server builds its indexes in the background."""

    async def reset(self) -> None:
        await self._call(self.client.delete_collection(self.collection))
        await self._call(self.client.delete_collection(f"{self.collection}_position"))
        await self._call(self._ensure())

    async def close(self) -> None:
        await self.client.close()
