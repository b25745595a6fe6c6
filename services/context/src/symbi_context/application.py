"""The context service's use cases: store, retrieve, forget and ingest, each gated by the policy decision point.

Writes go through the memory / knowledge aggregates (one conditional append per command, so a batch of
memories or the chunks of a document land atomically); reads go to the vector index, which follows the stream.
A read asks ``memory.read`` for every memory owner and knowledge base it would touch; what is denied is left
out of the results and logged, so a denied read returns nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from symbi_common.aggregate import Repository
from symbi_common.decisions import DecisionPoint, DecisionRecord, DecisionRequest, EntityRef
from symbi_common.policy.enforcement import CONTEXT_MEMORY_WRITE
from symbi_common.policy.hooks import Enforcer
from symbi_common.sealing import new_event_id
from symbi_contracts.context.commands import NewMemory, Query

from symbi_context.access import agent_principal, may_read, memory_resource
from symbi_context.chunking import TextChunk, chunk_text, extract_text
from symbi_context.domain import (
    KNOWLEDGE_KIND,
    MEMORY_KINDS,
    Chunk,
    ContextState,
    Forget,
    IngestDocument,
    KnowledgeCommand,
    KnowledgeEvent,
    KnowledgeIngested,
    MemoryCommand,
    MemoryEvent,
    MemoryStored,
    MetaValue,
    Origin,
    StoreMemories,
    check_tags,
    check_text,
)
from symbi_context.embeddings import Embedder
from symbi_context.errors import InvalidContext
from symbi_context.index import ContextIndex
from symbi_context.metrics import operation
from symbi_context.point_ids import item_id
from symbi_context.retrieval import Retrieved, hybrid_search
from symbi_context.sweeps import sweep
from symbi_context.vectors.port import MetaFilter

log = structlog.get_logger(__name__)

#: Chunks per knowledge event: keeps each event well under the event size limit at 1536 dimensions.
CHUNKS_PER_EVENT = 64
#: A forget by filter refuses to go on past this many matching memories (rather than forget only some).
FORGET_WHERE_LIMIT = 10_000
#: The expiry and retention sweep reads the index in pages of this many points.
SWEEP_PAGE = 10_000
_ID_NAMESPACE = uuid.UUID("5b0c8f9e-4d1a-4c55-9a51-6a1f2f6f3c10")


@dataclass(frozen=True, slots=True)
class Written:
    ids: list[str]
    sequence: int


@dataclass(frozen=True, slots=True)
class ContextConfig:
    short_term_capacity: int = 200
    short_term_ttl_s: float = 86_400.0
    knowledge_retention_days: int = 365
    chunk_chars: int = 1000
    chunk_overlap_chars: int = 150
    #: How long a read (``min_sequence``) or a filtered forget waits for the index to reach the writes it needs.
    index_wait_s: float = 5.0
    forget_where_limit: int = FORGET_WHERE_LIMIT
    sweep_page: int = SWEEP_PAGE


def check_id(value: str, field: str) -> None:
    if not value or len(value) > 128 or not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
        raise InvalidContext("must be 1-128 characters of ASCII letters, digits, '-' or '_'", field=field)


def check_kinds(kinds: Sequence[str], field: str) -> None:
    """Memory kinds to filter on: a misspelt one is refused, not a filter that silently matches nothing."""
    for kind in kinds:
        if kind not in MEMORY_KINDS:
            raise InvalidContext(f"unknown kind {kind!r}; use one of {', '.join(MEMORY_KINDS)}", field=field)


class ContextService:
    def __init__(
        self,
        memories: Repository[ContextState, MemoryCommand, MemoryEvent],
        knowledge: Repository[ContextState, KnowledgeCommand, KnowledgeEvent],
        index: ContextIndex,
        embedder: Embedder,
        decisions: DecisionPoint,
        config: ContextConfig,
    ) -> None:
        self.memories = memories
        self.knowledge = knowledge
        self.index = index
        self.store = index.store
        self.embedder = embedder
        self.decisions = decisions
        self.config = config

    # --- policy ---------------------------------------------------------------------------------------------

    async def _require(self, agent_id: str, action: str, owner: str, scope: str) -> DecisionRecord:
        """The decision allowing ``action``, to record in the event; a denial raises :class:`PolicyDenied`."""
        request = DecisionRequest(
            principal=agent_principal(agent_id), action=action, resource=memory_resource(owner, scope)
        )
        verdict = await Enforcer.around(self.decisions).decide(request, CONTEXT_MEMORY_WRITE)
        if not verdict.allowed:
            log.warning("memory write denied", agent_id=agent_id, resource=owner, reason=verdict.record.reason)
            raise verdict.denial()
        return verdict.record

    async def readable(
        self,
        agent_id: str,
        owners: Sequence[str],
        knowledge_bases: Sequence[str],
        *,
        operator: EntityRef | None = None,
    ) -> tuple[list[str], list[str]]:
        """The memory owners and knowledge bases ``agent_id`` may read; denials are logged and counted.

        With ``operator`` (an operator asking over HTTP: :func:`~symbi_context.access.operator_principal`) only those the policy lets
        the operator read as well: the content goes to the operator, so ``memory.read`` is decided for it too
        (as the audit service decides an operator's payload reads for the operator, never as the agent)."""
        asked = [(o, "memory") for o in dict.fromkeys(owners)] + [
            (k, "knowledge") for k in dict.fromkeys(knowledge_bases)
        ]
        allowed = await may_read(self.decisions, agent_principal(agent_id), asked)
        if operator is not None:  # asked only of what the agent may read
            agreed = [a for a, ok in zip(asked, allowed, strict=True) if ok]
            also = dict(zip(agreed, await may_read(self.decisions, operator, agreed), strict=True))
            allowed = [ok and also[a] for a, ok in zip(asked, allowed, strict=True)]
        memory = [owner for (owner, scope), ok in zip(asked, allowed, strict=True) if ok and scope == "memory"]
        knowledge = [kb for (kb, scope), ok in zip(asked, allowed, strict=True) if ok and scope == "knowledge"]
        return memory, knowledge

    # --- memories -------------------------------------------------------------------------------------------

    @operation("store")
    async def store_memories(self, agent_id: str, items: Sequence[NewMemory], *, owner: str | None = None) -> Written:
        """Store memories of ``owner`` (default: the writing agent itself) in one append.

        Retry-safe when the caller names each memory (``id``): ids already stored with the same content append
        nothing and are answered as before; the same id with other content raises :class:`MemoryConflict`.
        Two replicas racing on the same request both append against the version they read; the loser's append
        conflicts, it catches up and decides again, and then finds the memory stored."""
        owner = owner or agent_id
        check_id(agent_id, "agent_id")
        check_id(owner, "owner")
        if not items:
            raise InvalidContext("store at least one memory", field="memories")
        for i, item in enumerate(items):
            if item.kind not in MEMORY_KINDS:
                raise InvalidContext(
                    f"unknown kind {item.kind!r}; use one of {', '.join(MEMORY_KINDS)}", field=f"memories[{i}].kind"
                )
            check_text(item.text, f"memories[{i}].text")
            check_tags(item.tags, f"memories[{i}].tags")
            if item.ttl_s is not None and item.ttl_s <= 0:
                raise InvalidContext("must be positive", field=f"memories[{i}].ttl_s")
            if item.id is not None:
                check_id(item.id, f"memories[{i}].id")
                if any(other.id == item.id for other in items[:i]):
                    raise InvalidContext(f"memory id {item.id} is given twice", field=f"memories[{i}].id")
        decision = await self._require(agent_id, "memory.write", owner, "memory")
        vectors = await self.embedder.embed([m.text for m in items])
        now = time.time()
        events = tuple(
            MemoryStored(
                memory_id=item.id or str(uuid.UUID(new_event_id())),
                kind=item.kind,
                text=item.text,
                vector=vec.astype("<f4").tobytes(),
                model=self.embedder.model,
                created_at=now,
                expires_at=(now + (item.ttl_s or self.config.short_term_ttl_s))
                if item.kind == "short_term"
                else (now + item.ttl_s if item.ttl_s else None),
                tags=item.tags,
                metadata=item.metadata,
                origin=item.origin,
                decision=decision,
            )
            for item, vec in zip(items, vectors, strict=True)
        )
        command = StoreMemories(memories=events, short_term_capacity=self.config.short_term_capacity)
        loaded, records = await self.memories.execute(owner, command)
        # Nothing appended: every memory was already stored (a retry); its append is at or before the tip.
        return Written([e.memory_id for e in events], records[-1].sequence if records else loaded.tip.sequence)

    @operation("forget")
    async def forget_memories(
        self, agent_id: str, *, owner: str | None = None, ids: Sequence[str] = (), where: MetaFilter | None = None
    ) -> Written:
        """Forget memories by id, or all of ``owner``'s memories matching ``where`` (see :meth:`_matching`)."""
        owner = owner or agent_id
        check_id(agent_id, "agent_id")
        check_id(owner, "owner")
        if where is not None:
            check_kinds(where.kinds, "where.kinds")
        decision = await self._require(agent_id, "memory.write", owner, "memory")
        chosen = list(ids)
        if where is not None:
            chosen += await self._matching(owner, where)
            if not chosen:
                return Written([], 0)
        command = Forget(ids=tuple(chosen), missing_ok=where is not None, decision=decision)
        _, records = await self.memories.execute(owner, command)
        return Written(chosen, records[-1].sequence if records else 0)

    async def _matching(self, owner: str, where: MetaFilter) -> list[str]:
        """The ids of ``owner``'s memories matching ``where``, read from the index once it has applied every
        write of ``owner`` (a memory stored just before is found; :class:`IndexBehind` if the index does not get
        there in time). More than ``forget_where_limit`` matches are refused, never cut short silently."""
        tip = (await self.memories.load(owner, fresh=True)).tip.sequence  # fresh: other replicas' writes too
        await self.index.reach(tip, self.config.index_wait_s)
        limit = self.config.forget_where_limit
        hits = await self.store.scroll(dataclasses.replace(where, owners=(owner,)), limit=limit + 1)
        if len(hits) > limit:
            raise InvalidContext(
                f"matches more than {limit} memories; at most {limit} are forgotten by one filter: narrow it "
                "(kinds, tags, created_from / created_to) and forget the rest with another request",
                field="where",
            )
        return [item_id(h) for h in hits]

    # --- knowledge ------------------------------------------------------------------------------------------

    @operation("ingest")
    async def ingest(
        self,
        agent_id: str,
        kb_id: str,
        *,
        title: str,
        content: bytes,
        media_type: str = "text/plain",
        source: str = "",
        tags: Sequence[str] = (),
        metadata: dict[str, MetaValue] | None = None,
        origin: Origin | None = None,
        document_id: str | None = None,
    ) -> Written:
        """Chunk, embed and append a document to knowledge base ``kb_id`` (all parts in one atomic append).

        Retry-safe when the caller names the document (``document_id``): an id already stored with the same
        content appends nothing and is answered as before; the same id with other content raises
        :class:`DocumentConflict`. Without an id one is made up, so a retried request stores the document twice."""
        check_id(kb_id, "kb_id")
        if document_id is not None:
            check_id(document_id, "document_id")
        check_tags(tags)
        if not title.strip() or len(title) > 500:
            raise InvalidContext("must be 1-500 characters", field="title")
        decision = await self._require(agent_id, "memory.write", kb_id, "knowledge")
        # Off the event loop: extracting a PDF takes up to seconds of CPU, and the service answers meanwhile.
        chunks = await asyncio.to_thread(self._chunks, content, media_type)
        vectors = await self.embedder.embed([c.text for c in chunks])
        doc_id = document_id or str(uuid.UUID(new_event_id()))
        now = time.time()
        records = [
            Chunk(
                chunk_id=str(uuid.uuid5(_ID_NAMESPACE, f"{kb_id}/{doc_id}/{c.position}")),
                position=c.position,
                text=c.text,
                vector=v.astype("<f4").tobytes(),
            )
            for c, v in zip(chunks, vectors, strict=True)
        ]
        groups = [records[i : i + CHUNKS_PER_EVENT] for i in range(0, len(records), CHUNKS_PER_EVENT)]
        parts = tuple(
            KnowledgeIngested(
                document_id=doc_id,
                title=title,
                source=source,
                media_type=media_type,
                model=self.embedder.model,
                created_at=now,
                part=i,
                parts=len(groups),
                chunks=tuple(group),
                tags=tuple(tags),
                metadata=metadata or {},
                origin=origin or Origin(),
                decision=decision,
            )
            for i, group in enumerate(groups)
        )
        loaded, appended = await self.knowledge.execute(kb_id, IngestDocument(parts=parts))
        # Nothing appended: the document was already stored (a retry); its append is at or before the tip.
        return Written([doc_id], appended[-1].sequence if appended else loaded.tip.sequence)

    def _chunks(self, content: bytes, media_type: str) -> list[TextChunk]:
        """The chunks of a document (blocking: extraction and chunking are CPU-bound)."""
        return chunk_text(
            extract_text(content, media_type),
            size=self.config.chunk_chars,
            overlap=self.config.chunk_overlap_chars,
            markdown=media_type == "text/markdown",
        )

    @operation("forget_documents")
    async def forget_documents(self, agent_id: str, kb_id: str, document_ids: Sequence[str]) -> Written:
        check_id(kb_id, "kb_id")
        decision = await self._require(agent_id, "memory.write", kb_id, "knowledge")
        _, records = await self.knowledge.execute(kb_id, Forget(ids=tuple(document_ids), decision=decision))
        return Written(list(document_ids), records[-1].sequence if records else 0)

    # --- reads ----------------------------------------------------------------------------------------------

    def _filter(self, q: Query, owners: list[str], kinds: tuple[str, ...], now: float) -> MetaFilter:
        created_from = q.created_from
        if kinds == (KNOWLEDGE_KIND,):
            # Retention: knowledge older than the configured days is never served (the sweeper forgets it).
            oldest = now - self.config.knowledge_retention_days * 86_400
            created_from = max(created_from or oldest, oldest)
        return MetaFilter(
            owners=tuple(owners),
            kinds=kinds,
            equals={f"metadata.{k}": v for k, v in q.metadata.items()},
            tags_any=q.tags,
            created_from=created_from,
            created_to=q.created_to,
            alive_at=now,
        )

    @operation("retrieve")
    async def retrieve(self, q: Query, *, operator: EntityRef | None = None) -> list[Retrieved]:
        """Hybrid search over the reader's permitted memories and knowledge (and, asked by ``operator``, only
        what it may read too: :meth:`readable`), fused and ranked."""
        check_id(q.agent_id, "agent_id")
        for i, owner in enumerate(q.owners):  # ids name data keys and index partitions: checked as when written
            check_id(owner, f"owners[{i}]")
        for i, kb_id in enumerate(q.knowledge_bases):
            check_id(kb_id, f"knowledge_bases[{i}]")
        if not q.query.strip():
            raise InvalidContext("must not be empty", field="query")
        if not 1 <= q.limit <= 100:
            raise InvalidContext("must be between 1 and 100", field="limit")
        check_kinds(q.kinds, "kinds")
        owners_asked = (q.owners or (q.agent_id,)) if q.include_memories else ()
        owners, kbs = await self.readable(q.agent_id, owners_asked, q.knowledge_bases, operator=operator)
        if not owners and not kbs:
            return []
        if q.min_sequence:
            await self.index.reach(q.min_sequence, self.config.index_wait_s)
        now = time.time()
        filters = []
        if owners:
            filters.append(self._filter(q, owners, q.kinds or MEMORY_KINDS, now))
        if kbs:
            filters.append(self._filter(q, kbs, (KNOWLEDGE_KIND,), now))
        vector = (await self.embedder.embed([q.query]))[0]
        return await hybrid_search(self.store, q.query, vector, filters, limit=q.limit)

    # --- expiry and retention -------------------------------------------------------------------------------

    @operation("sweep")
    async def sweep(self, now: float | None = None) -> int:
        """Forget expired memories (of any kind) and knowledge past its retention, as events. Returns how many."""
        return await sweep(self, time.time() if now is None else now)
