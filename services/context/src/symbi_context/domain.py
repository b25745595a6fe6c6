"""Memory and knowledge as event-sourced aggregates: events, state and the pure ``decide`` / ``apply``.

Two aggregate types, both written only by the context service:

- ``memory.<agent_id>`` (subject ``evt.memory.<agent_id>``): one agent's own memories. Short-term memories are
  bounded (the oldest are evicted in the same append that overflows the bound) and expire; working memories
  belong to a task and are cleared when it completes; long-term memories stay until forgotten. A memory of
  any kind stored with a time to live expires too: it is never served past it, and the sweep forgets it.
- ``knowledge.<kb_id>`` (subject ``evt.knowledge.<kb_id>``): a knowledge base shared by the agents the policy
  grants it to. Documents are ingested as chunks; retention drops documents older than the configured days.

Events carry the embedding of every text they add, so the vector index is a pure projection of the stream:
rebuilding it needs no embedding model and gives the same vectors, hence the same search results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
from symbi_common.decisions import DecisionRecord
from symbi_common.domain import AggregateType
from symbi_common.events import Event, EventCodec
from symbi_contracts.context.commands import MAX_TAGS as MAX_TAGS
from symbi_contracts.context.commands import MAX_TEXT_CHARS as MAX_TEXT_CHARS
from symbi_contracts.context.commands import MEMORY_KINDS as MEMORY_KINDS
from symbi_contracts.context.commands import MemoryKind as MemoryKind
from symbi_contracts.context.commands import MetaValue as MetaValue
from symbi_contracts.context.commands import Origin as Origin

from symbi_context.errors import DocumentConflict, InvalidContext, MemoryConflict, UnknownMemory

#: The kind stored on knowledge chunks in the index, next to the memory kinds.
KNOWLEDGE_KIND = "knowledge"
ForgetReason = Literal["request", "evicted", "expired", "task_completed", "retention"]


# --- memory events ----------------------------------------------------------------------------------------


class MemoryStored(Event, frozen=True, kw_only=True, tag="memory.stored"):
    memory_id: str
    kind: MemoryKind
    text: str
    vector: bytes  # float32 little-endian, the embedding of ``text``
    model: str
    created_at: float
    expires_at: float | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, MetaValue] = msgspec.field(default_factory=dict)
    origin: Origin = msgspec.field(default_factory=Origin)
    #: The ``memory.write`` decision that allowed the write.
    decision: DecisionRecord | None = None


class MemoryForgotten(Event, frozen=True, kw_only=True, tag="memory.forgotten"):
    memory_ids: tuple[str, ...]
    reason: ForgetReason
    decision: DecisionRecord | None = None


MemoryEvent = MemoryStored | MemoryForgotten


# --- knowledge events -------------------------------------------------------------------------------------


class Chunk(msgspec.Struct, frozen=True, kw_only=True):
    chunk_id: str
    position: int
    text: str
    vector: bytes


class KnowledgeIngested(Event, frozen=True, kw_only=True, tag="knowledge.ingested"):
    """One part of a document (a large document is several of these in one atomic append)."""

    document_id: str
    title: str
    source: str
    media_type: str
    model: str
    created_at: float
    part: int
    parts: int
    chunks: tuple[Chunk, ...]
    tags: tuple[str, ...] = ()
    metadata: dict[str, MetaValue] = msgspec.field(default_factory=dict)
    origin: Origin = msgspec.field(default_factory=Origin)
    decision: DecisionRecord | None = None


class KnowledgeForgotten(Event, frozen=True, kw_only=True, tag="knowledge.forgotten"):
    document_ids: tuple[str, ...]
    reason: ForgetReason
    decision: DecisionRecord | None = None


KnowledgeEvent = KnowledgeIngested | KnowledgeForgotten


# --- state ------------------------------------------------------------------------------------------------


class Digest(msgspec.Struct, frozen=True, kw_only=True):
    """Short hashes of a stored memory's content, field by field: enough to tell a retried store (same id, same
    content) from a conflicting one (same id, other content) and to say which field differs."""

    text: str
    tags: str
    metadata: str
    origin: str


class DocumentDigest(msgspec.Struct, frozen=True, kw_only=True):
    """Short hashes of a stored document's content, field by field, as :class:`Digest` is for a memory.
    ``text`` covers the texts of all its chunks in order, across the parts it was stored in."""

    title: str
    source: str
    media_type: str
    text: str
    tags: str
    metadata: str
    origin: str


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """What decisions need to know about one live memory or document."""

    kind: str
    created_at: float
    expires_at: float | None = None
    task_id: str | None = None
    #: The content digest of a memory (``None`` for knowledge, and for memories in snapshots taken before it).
    digest: Digest | None = None
    #: The content digest of a document (``None`` for memories, and for documents in snapshots taken before it).
    document_digest: DocumentDigest | None = None


class ContextState(msgspec.Struct, frozen=True, kw_only=True):
    """A memory owner's (or knowledge base's) live entries; ``short_term`` oldest first. Snapshot-able."""

    owner_id: str
    live: dict[str, Entry] = msgspec.field(default_factory=dict)
    short_term: tuple[str, ...] = ()


# --- commands ---------------------------------------------------------------------------------------------


class StoreMemories(msgspec.Struct, frozen=True, kw_only=True):
    memories: tuple[MemoryStored, ...]
    short_term_capacity: int


class Forget(msgspec.Struct, frozen=True, kw_only=True):
    ids: tuple[str, ...]
    reason: ForgetReason = "request"
    decision: DecisionRecord | None = None
    #: Ids already gone are skipped instead of refused (sweepers racing with a request).
    missing_ok: bool = False
    #: Only entries whose recorded ``expires_at`` is at or before this time are forgotten, the others skipped
    #: (the expiry sweep: the index it found them in may lag, and an id forgotten and stored again is live).
    expired_by: float | None = None


class IngestDocument(msgspec.Struct, frozen=True, kw_only=True):
    parts: tuple[KnowledgeIngested, ...]


MemoryCommand = StoreMemories | Forget
KnowledgeCommand = IngestDocument | Forget


def check_text(text: str, field: str) -> None:
    if not text.strip():
        raise InvalidContext("must not be empty", field=field)
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidContext(f"is {len(text)} characters; at most {MAX_TEXT_CHARS} per memory", field=field)


def check_tags(tags: Sequence[str], field: str = "tags") -> None:
    if len(tags) > MAX_TAGS:
        raise InvalidContext(f"{len(tags)} tags; at most {MAX_TAGS}", field=field)
    for tag in tags:
        if not tag or len(tag) > 128:
            raise InvalidContext(f"tag {tag!r} must be 1-128 characters", field=field)


_canonical = msgspec.json.Encoder(order="sorted")


def _hash(value: Any) -> str:
    return hashlib.blake2b(_canonical.encode(value), digest_size=12).hexdigest()


def digest(memory: MemoryStored) -> Digest:
    """The content digest of ``memory`` (not its times, vector or decision, which a retry makes anew)."""
    return Digest(
        text=_hash(memory.text), tags=_hash(memory.tags), metadata=_hash(memory.metadata), origin=_hash(memory.origin)
    )


def differences(entry: Entry, memory: MemoryStored) -> list[str]:
    """The fields in which ``memory`` differs from the stored ``entry`` of the same id (empty: the same)."""
    if entry.digest is None:
        return ["content (stored before content digests were kept; it cannot be compared)"]
    new = digest(memory)
    fields = ["kind"] if entry.kind != memory.kind else []
    return fields + [f for f in Digest.__struct_fields__ if getattr(entry.digest, f) != getattr(new, f)]


def _chunk_texts(previous: str | None, part: KnowledgeIngested) -> str:
    """The text digest of a document's chunks up to and including ``part`` (``previous``: of the parts before)."""
    return _hash([previous, [c.text for c in part.chunks]])


def document_digest(parts: Sequence[KnowledgeIngested]) -> DocumentDigest:
    """The content digest of a document stored as ``parts`` (not its times, vectors, model or decision, which a
    retry makes anew)."""
    first = parts[0]
    text = _chunk_texts(None, first)
    for part in parts[1:]:
        text = _chunk_texts(text, part)
    return DocumentDigest(
        title=_hash(first.title),
        source=_hash(first.source),
        media_type=_hash(first.media_type),
        text=text,
        tags=_hash(first.tags),
        metadata=_hash(first.metadata),
        origin=_hash(first.origin),
    )


def document_differences(entry: Entry, parts: Sequence[KnowledgeIngested]) -> list[str]:
    """The fields in which the document ``parts`` differs from the stored ``entry`` of the same id (empty: the
    same)."""
    if entry.document_digest is None:
        return ["content (stored before content digests were kept; it cannot be compared)"]
    new = document_digest(parts)
    return [f for f in DocumentDigest.__struct_fields__ if getattr(entry.document_digest, f) != getattr(new, f)]


def _forget(state: ContextState, command: Forget) -> tuple[str, ...]:
    ids = tuple(dict.fromkeys(command.ids))
    if not ids:
        raise InvalidContext("name at least one id to forget", field="ids")
    missing = [i for i in ids if i not in state.live]
    if missing and not command.missing_ok:
        raise UnknownMemory(f"{len(missing)} id(s) not found for {state.owner_id}: {', '.join(missing[:5])}")
    return tuple(i for i in ids if i in state.live and _due(state.live[i], command.expired_by))


def _due(entry: Entry, expired_by: float | None) -> bool:
    """Whether ``entry`` may be forgotten by a command limited to what expired by ``expired_by`` (None: any)."""
    return expired_by is None or (entry.expires_at is not None and entry.expires_at <= expired_by)


def decide_memory(state: ContextState, command: MemoryCommand) -> list[MemoryEvent]:
    """Events for ``command``. Storing short-term memories past the capacity evicts the oldest ones."""
    if isinstance(command, Forget):
        ids = _forget(state, command)
        return [MemoryForgotten(memory_ids=ids, reason=command.reason, decision=command.decision)] if ids else []
    if command.short_term_capacity < 1:
        raise InvalidContext("must be at least 1", field="short_term_capacity")
    events: list[MemoryStored] = []
    seen: set[str] = set()
    for i, memory in enumerate(command.memories):
        check_text(memory.text, f"memories[{i}].text")
        check_tags(memory.tags, f"memories[{i}].tags")
        if memory.memory_id in seen:
            raise InvalidContext(f"memory id {memory.memory_id} is given twice", field=f"memories[{i}].id")
        seen.add(memory.memory_id)
        if memory.kind == "working" and not memory.origin.task_id:
            raise InvalidContext("a working memory belongs to a task: set origin.task_id", field=f"memories[{i}]")
        stored = state.live.get(memory.memory_id)
        if stored is None:
            events.append(memory)
            continue
        # A retry of a store that already landed: the same content appends nothing, other content is refused.
        differ = differences(stored, memory)
        if differ:
            raise MemoryConflict(memory.memory_id, differ, field=f"memories[{i}]")
    if not events:
        return []
    short = [*state.short_term, *(m.memory_id for m in events if m.kind == "short_term")]
    overflow = len(short) - command.short_term_capacity
    result: list[MemoryEvent] = list(events)
    if overflow > 0:
        result.append(MemoryForgotten(memory_ids=tuple(short[:overflow]), reason="evicted"))
    return result


def decide_knowledge(state: ContextState, command: KnowledgeCommand) -> list[KnowledgeEvent]:
    if isinstance(command, Forget):
        ids = _forget(state, command)
        return [KnowledgeForgotten(document_ids=ids, reason=command.reason, decision=command.decision)] if ids else []
    if not command.parts:
        raise InvalidContext("a document needs at least one chunk", field="text")
    document_id = command.parts[0].document_id
    stored = state.live.get(document_id)
    if stored is None:
        return list(command.parts)
    # A retry of an ingest that already landed: the same content appends nothing, other content is refused.
    differ = document_differences(stored, command.parts)
    if differ:
        raise DocumentConflict(document_id, differ, field="document_id")
    return []


def apply_memory(state: ContextState, event: MemoryEvent) -> ContextState:
    if isinstance(event, MemoryStored):
        entry = Entry(
            kind=event.kind,
            created_at=event.created_at,
            expires_at=event.expires_at,
            task_id=event.origin.task_id,
            digest=digest(event),
        )
        short = (*state.short_term, event.memory_id) if event.kind == "short_term" else state.short_term
        return ContextState(owner_id=state.owner_id, live={**state.live, event.memory_id: entry}, short_term=short)
    gone = set(event.memory_ids)
    return ContextState(
        owner_id=state.owner_id,
        live={k: v for k, v in state.live.items() if k not in gone},
        short_term=tuple(i for i in state.short_term if i not in gone),
    )


def apply_knowledge(state: ContextState, event: KnowledgeEvent) -> ContextState:
    if isinstance(event, KnowledgeIngested):
        entry = state.live.get(event.document_id)
        if entry is None:
            entry = Entry(kind=KNOWLEDGE_KIND, created_at=event.created_at, document_digest=document_digest([event]))
        elif event.part > 0 and entry.document_digest is not None:
            # A later part of the same append: its chunks extend the document's text digest.
            text = _chunk_texts(entry.document_digest.text, event)
            entry = msgspec.structs.replace(
                entry, document_digest=msgspec.structs.replace(entry.document_digest, text=text)
            )
        else:
            return state
        return ContextState(owner_id=state.owner_id, live={**state.live, event.document_id: entry})
    gone = set(event.document_ids)
    return ContextState(owner_id=state.owner_id, live={k: v for k, v in state.live.items() if k not in gone})


def _empty(owner_id: str) -> ContextState:
    return ContextState(owner_id=owner_id)


MEMORY: AggregateType[ContextState, MemoryCommand, MemoryEvent] = AggregateType(
    "memory", EventCodec([MemoryStored, MemoryForgotten]), ContextState, _empty, apply_memory, decide_memory
)
KNOWLEDGE: AggregateType[ContextState, KnowledgeCommand, KnowledgeEvent] = AggregateType(
    "knowledge",
    EventCodec([KnowledgeIngested, KnowledgeForgotten]),
    ContextState,
    _empty,
    apply_knowledge,
    decide_knowledge,
)
