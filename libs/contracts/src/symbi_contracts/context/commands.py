"""The context service's commands that other services send (``cmd.context.<action>``, JSON bodies).

The sandbox-agent's action gateway stores a workload's memories (``store``), reads them back
(``retrieve``), forgets them (``forget``), and shares and queries knowledge (``ingest``,
``search_knowledge``, whose body is a ``Query``) on the agent's behalf; the context service's HTTP API takes the same bodies
(``POST /v1/memories``, ``POST /v1/memories/query``). Unknown keys are refused, so a misspelt field is an
error rather than silently ignored; the service checks the rest (ids, kinds, text and tag sizes, limits)
and answers a typed error. Pure: no I/O.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

MemoryKind = Literal["short_term", "long_term", "working"]
MEMORY_KINDS: tuple[str, ...] = ("short_term", "long_term", "working")
#: A metadata value of a memory (metadata is flat: a key names one scalar).
MetaValue = str | int | float | bool
#: What one memory's text and tags may hold.
MAX_TEXT_CHARS = 32_000
MAX_TAGS = 32
#: An id (agent, owner, knowledge base) is at most this long; the service checks its characters.
MAX_ID_CHARS = 128

Id = Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS)]


class Origin(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What produced a memory: the task, tool call and/or message it came from (also stored in its event)."""

    task_id: str | None = None
    tool_call_id: str | None = None
    message_id: str | None = None


class NewMemory(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One memory to store.

    ``id`` makes the store retry-safe: a memory whose id is already stored with the same content is not stored
    again (the answer names the same id), one with other content is refused (``memory_conflict``). Without an
    id the service makes one up, so a retried request stores the memory twice. Give a fresh id (a UUID) per
    memory and reuse it only to retry."""

    id: Id | None = None
    kind: MemoryKind = "long_term"
    text: Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]
    tags: Annotated[tuple[str, ...], msgspec.Meta(max_length=MAX_TAGS)] = ()
    metadata: dict[str, MetaValue] = msgspec.field(default_factory=dict)
    origin: Origin = msgspec.field(default_factory=Origin)
    #: The memory expires after this many seconds: any kind (then it is no longer served, and the expiry sweep
    #: forgets it); a short-term memory without one expires after the configured short-term TTL.
    ttl_s: float | None = None


class StoreRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``cmd.context.store``: memories of ``owner`` (default: the writing agent itself), stored in one append."""

    agent_id: Id
    memories: tuple[NewMemory, ...]
    owner: Id | None = None


class Query(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``cmd.context.retrieve``: what a read asks for. ``agent_id`` is who reads; ``owners`` whose memories
    (default: the reader's own); ``min_sequence`` waits until the index has the write that answered it."""

    agent_id: Id
    query: Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]
    owners: tuple[Id, ...] = ()
    knowledge_bases: tuple[Id, ...] = ()
    include_memories: bool = True
    kinds: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    metadata: dict[str, str | int | bool] = msgspec.field(default_factory=dict)
    created_from: float | None = None
    created_to: float | None = None
    limit: int = 10
    min_sequence: int = 0


class Stored(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to ``store``: the memories' ids (in request order) and the stream sequence of the append.

    When every memory was already stored (a retry), nothing is appended and ``sequence`` is the owner's
    latest, which is at or after the original append, so it still serves as ``min_sequence``."""

    ids: list[str]
    sequence: int


class Recalled(msgspec.Struct, frozen=True, kw_only=True):
    """One result of ``retrieve``: a memory or a knowledge chunk, ranked (other fields are ignored)."""

    id: str
    text: str
    kind: str
    relevance: float
    created_at: float
    tags: list[str] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class Retrieved(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to ``retrieve``: the results, best first."""

    results: list[Recalled]


class ForgetWhere(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kinds: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    metadata: dict[str, str | int | bool] = msgspec.field(default_factory=dict)
    task_id: str | None = None
    created_from: float | None = None
    created_to: float | None = None


class ForgetRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    agent_id: str
    owner: str | None = None
    ids: tuple[str, ...] = ()
    where: ForgetWhere | None = None


class IngestRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``cmd.context.ingest``: one document for knowledge base ``kb_id``, given as ``text`` or ``content``.

    ``document_id`` makes the ingest retry-safe, as ``NewMemory.id`` does a store: a document whose id is already
    stored with the same content (title, source, media type, text, tags, metadata, origin) is not stored again
    (the answer names the same id), one with other content is refused (``document_conflict``). Without an id the
    service makes one up, so a retried request stores the document twice."""

    agent_id: str
    title: str
    kb_id: str = ""
    text: str | None = None
    content: bytes | None = None  # base64 in JSON (PDF and other binary documents)
    media_type: str = "text/plain"
    source: str = ""
    tags: tuple[str, ...] = ()
    metadata: dict[str, MetaValue] = msgspec.field(default_factory=dict)
    origin: Origin = msgspec.field(default_factory=Origin)
    document_id: Id | None = None
