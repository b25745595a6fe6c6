"""The vector store port and its two implementations (embedded Qdrant Edge, Qdrant through qdrant-client)."""

from symbi_context.vectors.port import Hit, MetaFilter, Quantization, SparseVector, VectorPoint, VectorStore

__all__ = ["Hit", "MetaFilter", "Quantization", "SparseVector", "VectorPoint", "VectorStore"]
