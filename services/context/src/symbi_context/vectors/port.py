"""The ``VectorStore`` port: what the context service needs from a vector database, and nothing more.

Each point has a dense vector (cosine), a sparse keyword vector (BM25 term weights with IDF computed by the
store) and a JSON payload. Filters are expressed with :class:`MetaFilter`, which every backend translates to
its own filter language, so the same conformance suite runs against each implementation.

The store also keeps the stream position its content reflects (the index is a projection of the event stream).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from symbi_context.errors import DimensionMismatch, VectorStoreError

Quantization = Literal["none", "int8", "binary"]
#: Vector name of the dense embedding and of the sparse keyword vector in every backend.
DENSE = "dense"
KEYWORDS = "keywords"
#: Payload keys with an index in every backend (filters on them must stay fast).
INDEXED_KEYWORDS = ("owner", "kind", "task_id", "document_id", "tags", "terms")
INDEXED_FLOATS = ("created_at", "expires_at")
#: ``expires_at`` of points that never expire (a range filter needs a number).
NEVER = 1e18


def checked_vector(vector: npt.NDArray[np.float32], dimension: int, what: str) -> list[float]:
    """``vector`` as floats for an engine, if it has the store's dimension; :class:`DimensionMismatch` otherwise."""
    if vector.shape != (dimension,):
        raise DimensionMismatch(expected=dimension, got=int(vector.shape[-1]), what=what)
    return [float(x) for x in vector]


async def in_thread(engine: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking engine call in a thread; its own errors become :class:`VectorStoreError` naming ``engine``."""
    try:
        return await asyncio.to_thread(fn, *args)
    except (DimensionMismatch, VectorStoreError):
        raise
    except Exception as exc:
        raise VectorStoreError(f"{engine}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class SparseVector:
    indices: list[int]
    values: list[float]


@dataclass(frozen=True, slots=True)
class VectorPoint:
    id: str  # a UUID
    vector: npt.NDArray[np.float32]
    keywords: SparseVector
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MetaFilter:
    """All conditions must hold. Empty fields do not constrain."""

    owners: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    #: Exact matches on payload keys (dotted paths reach into ``metadata``).
    equals: dict[str, str | int | bool] = field(default_factory=dict)
    #: At least one tag in common.
    tags_any: tuple[str, ...] = ()
    created_from: float | None = None
    created_to: float | None = None
    #: Only points not expired at this time (``expires_at`` > it).
    alive_at: float | None = None
    #: Only points expired at this time (``expires_at`` <= it): what the expiry sweep forgets.
    expired_by: float | None = None
    ids: tuple[str, ...] = ()
    #: For each ``(key, values)``: the payload key (a string or a list of strings) matches one of ``values``.
    any_of: tuple[tuple[str, tuple[str, ...]], ...] = ()


class VectorStore(Protocol):
    """A collection of points with dense + sparse vectors and filterable payloads."""

    @property
    def dimension(self) -> int: ...

    async def upsert(self, points: Sequence[VectorPoint]) -> None:
        """Insert or replace points by id (batched; visible to the next search)."""
        ...

    async def delete(self, ids: Sequence[str]) -> None: ...

    async def delete_where(self, where: MetaFilter) -> None: ...

    async def search(
        self, vector: npt.NDArray[np.float32], *, where: MetaFilter | None = None, limit: int = 10, exact: bool = False
    ) -> list[Hit]:
        """Nearest points by cosine similarity, best first (``exact``: brute force, for checks)."""
        ...

    async def search_keywords(
        self, query: SparseVector, *, where: MetaFilter | None = None, limit: int = 10
    ) -> list[Hit]:
        """Points by BM25 keyword score, best first."""
        ...

    async def scroll(self, where: MetaFilter | None = None, *, limit: int = 10_000) -> list[Hit]:
        """Points matching ``where`` (score 0), in id order."""
        ...

    async def count(self, where: MetaFilter | None = None) -> int: ...

    async def position(self) -> int:
        """The stream sequence the content reflects (0: nothing applied)."""
        ...

    async def set_position(self, sequence: int) -> None:
        """Record the stream sequence after the updates so far are durable."""
        ...

    async def optimize(self) -> None:
        """Build or merge indexes now (the embedded engine does it on demand)."""
        ...

    async def reset(self) -> None:
        """Delete every point and the position: the next projection run rebuilds from the stream."""
        ...

    async def close(self) -> None: ...
