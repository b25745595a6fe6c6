"""Keyword (sparse) vectors for hybrid retrieval: Qdrant's BM25 tokenizer (stemming, stop words, lowercase).

The store applies the IDF weighting over its own documents, so these are just term-frequency weights.
"""

from __future__ import annotations

from qdrant_edge import Bm25

from symbi_context.vectors.port import SparseVector

_bm25 = Bm25()


def document_keywords(text: str) -> SparseVector:
    sv = _bm25.embed_document(text)
    return SparseVector(list(sv.indices), list(sv.values))


def query_keywords(text: str) -> SparseVector:
    sv = _bm25.embed_query(text)
    return SparseVector(list(sv.indices), list(sv.values))
