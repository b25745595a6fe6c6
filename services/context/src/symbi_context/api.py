"""The context service's interfaces: HTTP under ``/v1`` and NATS commands ``cmd.context.<action>``.

HTTP (JSON bodies; errors are ``{"error": {"code", "message", "details"}}`` with the typed error's status)::

    POST /v1/memories                 store    {"agent_id", "owner"?, "memories": [{"id"?, "kind", "text", "tags"?,
                                               "metadata"?, "origin"?: {"task_id", "tool_call_id", "message_id"},
                                               "ttl_s"?}]}  -> {"ids", "sequence"}; retry-safe with "id":
                                               an id stored with the same content appends nothing and is
                                               answered again, with other content it is 409 memory_conflict
    GET  /v1/memories?agent_id=&owner=&kind=&limit=50
                                      list     the memories ``agent_id`` may read of ``owner`` (default: its own),
                                               newest first: {"owner", "items", "total", "denied", "text_withheld"};
                                               their content only where the calling operator may read it too
    POST /v1/memories/query           retrieve {"agent_id", "query", "owners"?, "knowledge_bases"?, "kinds"?,
                                               "tags"?, "metadata"?, "created_from"?, "created_to"?, "limit"?,
                                               "min_sequence"?}  -> {"results": [...]}
    POST /v1/memories/forget          forget   {"agent_id", "owner"?, "ids"? | "where"?: {"kinds", "tags",
                                               "metadata", "task_id", "created_from", "created_to"}}
    POST /v1/knowledge/{kb}/documents ingest   {"agent_id", "title", "text"? | "content"? (base64),
                                               "media_type"?, "source"?, "tags"?, "metadata"?, "origin"?}
    POST /v1/knowledge/{kb}/forget    forget_knowledge {"agent_id", "document_ids"}
    POST /v1/knowledge/search         search_knowledge {"agent_id", "query", "knowledge_bases", ...}
    POST /v1/rag/query                rag_query {"agent_id", "query", "knowledge_bases"?, "include_memories"?,
                                               "limit"?, "min_relevance"?, "min_sequence"?, "generate"?}

Writes answer with ``sequence`` (the stream sequence of the append); pass it as ``min_sequence`` to read your
own write (503 ``index_behind`` if the index has not applied it within the wait: never an answer without it;
422 ``invalid_context`` for a sequence past the stream's last event, which no write answered).
The same bodies (with ``kb_id`` where the path has it) are the NATS commands ``cmd.context.store``,
``retrieve``, ``forget``, ``ingest``, ``forget_knowledge``, ``search_knowledge`` and ``rag_query``.

Over HTTP the reader of what comes back is the calling operator, not the agent: the reads (list, query,
search, RAG) decide ``memory.read`` for the agent and for the operator (``User::"<name>"`` with its token's
role in ``roles``); a query answers from what both may read, a listing lists what the agent may read with the
content withheld unless the operator may read it too. The baseline lets admins read agents' memory and
knowledge; auditors and operators read it only where a policy says so.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import msgspec
from fastapi import APIRouter, Request, Response
from symbi_common.bounds import check_ints, check_json_depth, parse_int, query_text
from symbi_common.commands import CommandMeta, CommandServer
from symbi_common.decisions import EntityRef
from symbi_common.errors import BadRequest, Unauthenticated
from symbi_common.openapi import INT64, TEXT, json_body, query_params
from symbi_common.operator_auth import claims_of
from symbi_contracts.context.commands import ForgetRequest, IngestRequest, Query, StoreRequest

from symbi_context.access import operator_principal
from symbi_context.application import ContextService, Written
from symbi_context.domain import MEMORY_KINDS
from symbi_context.errors import InvalidContext
from symbi_context.listing import list_memories
from symbi_context.rag import RagEngine
from symbi_context.vectors.port import MetaFilter

T = TypeVar("T")
_json = msgspec.json.Encoder()


class ForgetKnowledgeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    agent_id: str
    document_ids: tuple[str, ...]
    kb_id: str = ""


class RagRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    agent_id: str
    query: str
    knowledge_bases: tuple[str, ...] = ()
    include_memories: bool = True
    limit: int = 5
    min_relevance: float = 0.25
    min_sequence: int = 0
    generate: bool = True


@dataclasses.dataclass
class Api:
    service: ContextService
    rag: RagEngine

    async def store(self, r: StoreRequest) -> dict[str, Any]:
        return _written(await self.service.store_memories(r.agent_id, r.memories, owner=r.owner))

    async def retrieve(self, q: Query, operator: EntityRef | None = None) -> dict[str, Any]:
        return {"results": [dataclasses.asdict(x) for x in await self.service.retrieve(q, operator=operator)]}

    async def search_knowledge(self, q: Query, operator: EntityRef | None = None) -> dict[str, Any]:
        if not q.knowledge_bases:
            raise InvalidContext("name at least one knowledge base", field="knowledge_bases")
        return await self.retrieve(msgspec.structs.replace(q, include_memories=False), operator)

    async def forget(self, r: ForgetRequest) -> dict[str, Any]:
        if not r.ids and r.where is None:
            raise InvalidContext("give ids or a filter ('where')", field="ids")
        where = None
        if r.where is not None:
            w = r.where
            equals: dict[str, str | int | bool] = {f"metadata.{k}": v for k, v in w.metadata.items()}
            if w.task_id:
                equals["task_id"] = w.task_id
            where = MetaFilter(
                kinds=w.kinds, tags_any=w.tags, equals=equals, created_from=w.created_from, created_to=w.created_to
            )
        return _written(await self.service.forget_memories(r.agent_id, owner=r.owner, ids=r.ids, where=where))

    async def ingest(self, r: IngestRequest) -> dict[str, Any]:
        if (r.text is None) == (r.content is None):
            raise InvalidContext("give exactly one of 'text' and 'content' (base64)", field="text")
        content = r.text.encode() if r.text is not None else (r.content or b"")
        written = await self.service.ingest(
            r.agent_id,
            r.kb_id,
            title=r.title,
            content=content,
            media_type=r.media_type,
            source=r.source,
            tags=r.tags,
            metadata=r.metadata,
            origin=r.origin,
            document_id=r.document_id,
        )
        return {"document_id": written.ids[0], "sequence": written.sequence}

    async def forget_knowledge(self, r: ForgetKnowledgeRequest) -> dict[str, Any]:
        return _written(await self.service.forget_documents(r.agent_id, r.kb_id, r.document_ids))

    async def rag_query(self, r: RagRequest, operator: EntityRef | None = None) -> dict[str, Any]:
        if not 1 <= r.limit <= 50:
            raise InvalidContext("must be between 1 and 50", field="limit")
        result = await self.rag.query(
            r.agent_id,
            r.query,
            knowledge_bases=r.knowledge_bases,
            include_memories=r.include_memories,
            limit=r.limit,
            min_relevance=r.min_relevance,
            min_sequence=r.min_sequence,
            generate=r.generate,
            operator=operator,
        )
        return dataclasses.asdict(result)


def _written(w: Written) -> dict[str, Any]:
    return {"ids": w.ids, "sequence": w.sequence}


def _decode(data: bytes, type_: type[T]) -> T:
    try:
        decoded = msgspec.json.decode(check_json_depth(data) or b"{}", type=type_)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    check_ints(decoded)
    return decoded


def _api(request: Request) -> Api:
    api: Api = request.app.state.context
    return api


def _operator(request: Request) -> EntityRef:
    """The operator this HTTP request comes from, as it reads content (the guard lets none through without)."""
    claims = claims_of(request)
    if claims is None:
        raise Unauthenticated("no authenticated operator for this request")
    return operator_principal(claims.sub, claims.role)


def _reply(value: Any, status: int = 200) -> Response:
    return Response(_json.encode(value), status_code=status, media_type="application/json")


router = APIRouter(prefix="/v1", tags=["context"])


@router.post("/memories", status_code=201, openapi_extra=json_body(StoreRequest))
async def store(request: Request) -> Response:
    return _reply(await _api(request).store(_decode(await request.body(), StoreRequest)), 201)


@router.get(
    "/memories",
    openapi_extra=query_params(
        agent_id=TEXT, owner=TEXT, kind={"type": "string", "enum": list(MEMORY_KINDS)}, limit=INT64
    ),
)
async def list_(request: Request) -> Response:
    """An agent's memories (or another owner's it may read), newest first; ``denied`` when the policy says no to
    the agent, ``text_withheld`` when it says no to the calling operator (``symbi_context.listing``)."""
    q = request.query_params
    agent_id = query_text(q.get("agent_id"), "agent_id")
    if agent_id is None:
        raise InvalidContext("name the reading agent", field="agent_id")
    kinds = tuple(k for k in q.getlist("kind") if k)
    limit = parse_int(q.get("limit") or "50", "limit")
    owner = query_text(q.get("owner"), "owner") or ""
    page = await list_memories(
        _api(request).service, agent_id, owner=owner, kinds=kinds, limit=limit, operator=_operator(request)
    )
    return _reply(page)


@router.post("/memories/query", openapi_extra=json_body(Query))
async def retrieve(request: Request) -> Response:
    return _reply(await _api(request).retrieve(_decode(await request.body(), Query), _operator(request)))


@router.post("/memories/forget", openapi_extra=json_body(ForgetRequest))
async def forget(request: Request) -> Response:
    return _reply(await _api(request).forget(_decode(await request.body(), ForgetRequest)))


@router.post("/knowledge/search", openapi_extra=json_body(Query))
async def search_knowledge(request: Request) -> Response:
    return _reply(await _api(request).search_knowledge(_decode(await request.body(), Query), _operator(request)))


@router.post("/knowledge/{kb_id}/documents", status_code=201, openapi_extra=json_body(IngestRequest))
async def ingest(kb_id: str, request: Request) -> Response:
    body = _decode(await request.body(), IngestRequest)
    return _reply(await _api(request).ingest(msgspec.structs.replace(body, kb_id=kb_id)), 201)


@router.post("/knowledge/{kb_id}/forget", openapi_extra=json_body(ForgetKnowledgeRequest))
async def forget_knowledge(kb_id: str, request: Request) -> Response:
    body = _decode(await request.body(), ForgetKnowledgeRequest)
    return _reply(await _api(request).forget_knowledge(msgspec.structs.replace(body, kb_id=kb_id)))


@router.post("/rag/query", openapi_extra=json_body(RagRequest))
async def rag_query(request: Request) -> Response:
    return _reply(await _api(request).rag_query(_decode(await request.body(), RagRequest), _operator(request)))


def register_commands(server: CommandServer, api: Api) -> None:
    """Serve ``cmd.context.*`` with the same handlers as HTTP."""
    routes: dict[str, tuple[type[Any], Any]] = {
        "store": (StoreRequest, api.store),
        "retrieve": (Query, api.retrieve),
        "search_knowledge": (Query, api.search_knowledge),
        "forget": (ForgetRequest, api.forget),
        "ingest": (IngestRequest, api.ingest),
        "forget_knowledge": (ForgetKnowledgeRequest, api.forget_knowledge),
        "rag_query": (RagRequest, api.rag_query),
    }
    for action, (request_type, handler) in routes.items():

        async def run(request: Any, meta: CommandMeta, handler: Any = handler) -> Any:
            return await handler(request)

        server.register(action, request_type, run)
