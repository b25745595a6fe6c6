"""Hybrid retrieval and ranking: dense (semantic) and keyword (BM25) search fused by reciprocal rank, then
ranked by relevance with a threshold and diversity (at most a few chunks per document, no near-duplicates).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from symbi_context.point_ids import item_id
from symbi_context.vectors.keywords import query_keywords
from symbi_context.vectors.port import Hit, MetaFilter, VectorStore

RRF_K = 60
_WORD = re.compile(r"\w+")


@dataclass(frozen=True, slots=True)
class Retrieved:
    """One ranked result: a memory or a knowledge chunk."""

    id: str
    relevance: float  # cosine similarity to the query
    fused: float  # reciprocal-rank fusion of the dense and keyword ranks
    text: str
    kind: str
    owner: str
    created_at: float
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)
    document_id: str | None = None
    title: str | None = None
    source: str | None = None
    position: int | None = None

    @classmethod
    def of(cls, hit: Hit, relevance: float, fused: float) -> Retrieved:
        p = hit.payload
        return cls(
            id=item_id(hit),
            relevance=round(relevance, 6),
            fused=round(fused, 6),
            text=str(p.get("text", "")),
            kind=str(p.get("kind", "")),
            owner=str(p.get("owner", "")),
            created_at=float(p.get("created_at", 0.0)),
            tags=list(p.get("tags", [])),
            metadata=dict(p.get("metadata", {})),
            origin=dict(p.get("origin", {})),
            document_id=p.get("document_id"),
            title=p.get("title"),
            source=p.get("source"),
            position=p.get("position"),
        )


def rrf(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> dict[str, float]:
    """Reciprocal rank fusion: sum of 1 / (k + rank) over the rankings an id appears in."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return scores


def _tokens(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def near_duplicate(a: str, b: str, threshold: float = 0.85) -> bool:
    ta, tb = _tokens(a), _tokens(b)
    if not ta or not tb:
        return a == b
    return len(ta & tb) / len(ta | tb) >= threshold


def rank(
    candidates: Sequence[Retrieved], *, limit: int, min_relevance: float = 0.0, per_document: int = 3
) -> list[Retrieved]:
    """Best fused first; drop those under ``min_relevance``, near-duplicates and a document's extra chunks."""
    chosen: list[Retrieved] = []
    per_doc: dict[str, int] = {}
    for c in sorted(candidates, key=lambda r: (-r.fused, -r.relevance, r.id)):
        if c.relevance < min_relevance:
            continue
        if c.document_id is not None and per_doc.get(c.document_id, 0) >= per_document:
            continue
        if any(near_duplicate(c.text, other.text) for other in chosen):
            continue
        chosen.append(c)
        if c.document_id is not None:
            per_doc[c.document_id] = per_doc.get(c.document_id, 0) + 1
        if len(chosen) == limit:
            break
    return chosen


async def hybrid_search(
    store: VectorStore,
    text: str,
    vector: npt.NDArray[np.float32],
    filters: Sequence[MetaFilter],
    *,
    limit: int = 10,
    min_relevance: float = 0.0,
    depth: int = 4,
) -> list[Retrieved]:
    """Dense and keyword candidates under each filter (``depth`` times ``limit`` of each), fused and ranked."""
    dense: list[Hit] = []
    keyword: list[Hit] = []
    sparse = query_keywords(text)
    for where in filters:
        dense += await store.search(vector, where=where, limit=limit * depth)
        keyword += await store.search_keywords(sparse, where=where, limit=limit * depth)
    dense.sort(key=lambda h: -h.score)
    keyword.sort(key=lambda h: -h.score)
    fused = rrf([[h.id for h in dense], [h.id for h in keyword]])
    relevance = {h.id: h.score for h in dense}
    hits = {h.id: h for h in (*keyword, *dense)}
    missing = tuple(i for i in hits if i not in relevance)
    if missing:
        # Keyword-only hits: their exact similarity, so one threshold applies to every candidate.
        for h in await store.search(vector, where=MetaFilter(ids=missing), limit=len(missing), exact=True):
            relevance[h.id] = h.score
    candidates = [Retrieved.of(hit, relevance.get(i, 0.0), fused[i]) for i, hit in hits.items()]
    return rank(candidates, limit=limit, min_relevance=min_relevance)
