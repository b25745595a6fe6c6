"""Errors of the context service: one root, a domain branch (bad input) and an infrastructure branch."""

from __future__ import annotations

from typing import ClassVar

from symbi_common.errors import DomainError, InfrastructureError, SymbiError


class ContextError(SymbiError):
    """Root of every error raised by the context service."""

    code = "context_error"


class InvalidContext(ContextError, DomainError):
    """A memory, document or query is malformed; ``field`` names what is wrong."""

    code = "invalid_context"
    http_status = 422

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(f"{field}: {message}", field=field)
        self.field = field


class UnknownMemory(ContextError, DomainError):
    """A memory or knowledge entry id that does not exist (or was forgotten)."""

    code = "unknown_memory"
    http_status = 404


class _ContentConflict(ContextError, DomainError):
    """An id already stored with other content: a retry must send the same content, something new a new id.
    ``differs`` names the fields whose content differs; the details name the id as ``<what>_id``."""

    http_status = 409
    what: ClassVar[str]

    def __init__(self, item_id: str, differs: list[str], *, field: str) -> None:
        super().__init__(
            f"{field}: {self.what} {item_id} is already stored with a different {', '.join(differs)}; "
            f"resend the same content to retry, or use a new id for a new {self.what}",
            **{f"{self.what}_id": item_id},
            differs=differs,
            field=field,
        )
        self.item_id = item_id
        self.differs = differs
        self.field = field


class MemoryConflict(_ContentConflict):
    """A memory id that is already stored with other content."""

    code = "memory_conflict"
    what = "memory"


class DocumentConflict(_ContentConflict):
    """A document id that is already stored in the knowledge base with other content."""

    code = "document_conflict"
    what = "document"


class DimensionMismatch(ContextError, DomainError):
    """A vector does not have the dimension the index was created with."""

    code = "dimension_mismatch"
    http_status = 422

    def __init__(self, *, expected: int, got: int, what: str = "vector") -> None:
        super().__init__(
            f"{what} has dimension {got} but the index was created for {expected}; "
            "use the same embedding model for writes and queries, or rebuild the index",
            expected=expected,
            got=got,
        )


class EmbeddingFailed(ContextError, InfrastructureError):
    """The embedding provider could not embed the texts (model missing, HTTP error, bad answer)."""

    code = "embedding_failed"
    http_status = 502


class VectorStoreError(ContextError, InfrastructureError):
    """The vector store refused or failed an operation."""

    code = "vector_store_error"
    http_status = 503


class IndexBehind(ContextError, InfrastructureError):
    """The index has not applied the stream up to a sequence a request depends on (a read's ``min_sequence``,
    the owner's last write before a filtered forget) within the wait: it is halted or far behind. Answering
    from it would silently leave out the caller's own writes; the same request may succeed later."""

    code = "index_behind"
    http_status = 503

    def __init__(self, *, wanted: int, position: int, waited_s: float, halted: str | None = None) -> None:
        why = f" (halted: {halted})" if halted else ""
        super().__init__(
            f"the index is at stream sequence {position}{why}, not yet at {wanted}, after waiting {waited_s:g} s; "
            "retry later",
            wanted=wanted,
            position=position,
        )
        self.wanted = wanted
        self.position = position


class GenerationFailed(ContextError, InfrastructureError):
    """The chat endpoint that generates RAG answers failed."""

    code = "generation_failed"
    http_status = 502
