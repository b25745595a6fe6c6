"""Symbi context service: agent memory and knowledge bases, embeddings, vector search and retrieval."""
