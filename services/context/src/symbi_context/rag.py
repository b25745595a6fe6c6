"""Retrieval-augmented generation: query analysis → hybrid retrieval → document retrieval → ranking → response.

The response is always the assembled context with numbered citations; an answer is generated only when an
OpenAI-compatible chat endpoint is configured (``[context] chat_model`` and ``OPENAI_API_KEY``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import httpx
import structlog
from symbi_common.decisions import EntityRef
from symbi_contracts.context.commands import Query

from symbi_context.application import ContextService
from symbi_context.domain import MEMORY_KINDS
from symbi_context.errors import GenerationFailed, InvalidContext
from symbi_context.retrieval import Retrieved, rank
from symbi_context.vectors.port import MetaFilter

log = structlog.get_logger(__name__)

_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "please",
        "should",
        "tell",
        "that",
        "the",
        "their",
        "them",
        "there",
        "these",
        "this",
        "to",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "about",
        "any",
        "all",
    ]
)
_QUESTION_WORDS = (
    "what",
    "when",
    "where",
    "which",
    "who",
    "whom",
    "whose",
    "why",
    "how",
    "is",
    "are",
    "does",
    "do",
    "did",
    "can",
    "could",
    "should",
    "would",
    "will",
)
_COMMAND_WORDS = ("list", "show", "find", "give", "summarise", "summarize", "explain", "describe", "compare")
_INLINE = re.compile(r"\b(tag|kind|since|until):(\S+)")


@dataclass(frozen=True, slots=True)
class Analysis:
    """What the query asks: its intent, inline filters (``tag:x kind:long_term since:2026-01-01``), keywords."""

    text: str
    intent: str  # question | instruction | lookup
    keywords: list[str]
    tags: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    since: float | None = None
    until: float | None = None


def _date(value: str, field_name: str) -> float:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidContext(f"{value!r} is not an ISO date", field=field_name) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def analyse(query: str) -> Analysis:
    tags: list[str] = []
    kinds: list[str] = []
    since = until = None
    for key, value in _INLINE.findall(query):
        if key == "tag":
            tags.append(value)
        elif key == "kind":
            if value not in MEMORY_KINDS:
                raise InvalidContext(f"unknown kind {value!r}; use one of {', '.join(MEMORY_KINDS)}", field="query")
            kinds.append(value)
        elif key == "since":
            since = _date(value, "query")
        else:
            until = _date(value, "query")
    text = " ".join(_INLINE.sub(" ", query).split())
    words = re.findall(r"\w+", text.lower())
    if text.endswith("?") or (words and words[0] in _QUESTION_WORDS):
        intent = "question"
    elif words and words[0] in _COMMAND_WORDS:
        intent = "instruction"
    else:
        intent = "lookup"
    keywords = list(dict.fromkeys(w for w in words if w not in _STOP and len(w) > 1))
    return Analysis(text or query, intent, keywords, tags, kinds, since, until)


@dataclass(frozen=True, slots=True)
class Citation:
    number: int
    id: str
    kind: str
    owner: str
    title: str | None
    source: str | None
    document_id: str | None
    position: int | None
    relevance: float


@dataclass(frozen=True, slots=True)
class RagAnswer:
    query: str
    analysis: Analysis
    context: str
    citations: list[Citation]
    passages: list[Retrieved]
    answer: str | None


class RagEngine:
    def __init__(
        self,
        service: ContextService,
        *,
        chat_model: str = "",
        base_url: str = "https://api.openai.com/v1",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.service = service
        self.chat_model = chat_model
        self.base_url = os.environ.get("OPENAI_BASE_URL", base_url).rstrip("/")
        self.transport = transport

    async def _expand(self, passages: list[Retrieved]) -> list[Retrieved]:
        """Document retrieval: a knowledge chunk is read with its neighbours, so a passage cut mid-thought
        still reaches the reader whole."""
        out = []
        for p in passages:
            if p.document_id is None or p.position is None:
                out.append(p)
                continue
            where = MetaFilter(owners=(p.owner,), equals={"document_id": p.document_id})
            neighbours = {
                int(h.payload["position"]): str(h.payload["text"])
                for h in await self.service.store.scroll(where, limit=1000)
                if abs(int(h.payload["position"]) - p.position) <= 1
            }
            text = " … ".join(neighbours[k] for k in sorted(neighbours)) if neighbours else p.text
            out.append(replace(p, text=text))
        return out

    async def query(
        self,
        agent_id: str,
        query: str,
        *,
        knowledge_bases: tuple[str, ...] = (),
        include_memories: bool = True,
        limit: int = 5,
        min_relevance: float = 0.25,
        min_sequence: int = 0,
        generate: bool = True,
        operator: EntityRef | None = None,
    ) -> RagAnswer:
        analysis = analyse(query)
        if not analysis.text.strip():
            raise InvalidContext("must not be empty", field="query")
        candidates = await self.service.retrieve(
            Query(
                agent_id=agent_id,
                query=analysis.text,
                knowledge_bases=knowledge_bases,
                include_memories=include_memories,
                kinds=tuple(analysis.kinds),
                tags=tuple(analysis.tags),
                created_from=analysis.since,
                created_to=analysis.until,
                limit=min(100, limit * 3),
                min_sequence=min_sequence,
            ),
            operator=operator,
        )
        ranked = rank(candidates, limit=limit, min_relevance=min_relevance, per_document=2)
        passages = await self._expand(ranked)
        citations = [
            Citation(i, p.id, p.kind, p.owner, p.title, p.source, p.document_id, p.position, p.relevance)
            for i, p in enumerate(passages, start=1)
        ]
        context = "\n\n".join(
            f"[{i}] ({p.title or p.kind}{', ' + p.source if p.source else ''}) {p.text}"
            for i, p in enumerate(passages, start=1)
        )
        answer = None
        if generate and self.chat_model and os.environ.get("OPENAI_API_KEY") and passages:
            answer = await self._generate(analysis.text, context)
        return RagAnswer(query, analysis, context, citations, passages, answer)

    async def _generate(self, question: str, context: str) -> str:
        body = {
            "model": self.chat_model,
            "messages": [
                {
                    "role": "system",
                    "content": "Answer only from the numbered context passages and cite them as [n]. "
                    "If they do not contain the answer, say so.",
                },
                {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"},
            ],
            "temperature": 0,
        }
        headers = {"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', '')}"}
        try:
            async with httpx.AsyncClient(base_url=self.base_url, timeout=60.0, transport=self.transport) as http:
                response = await http.post("/chat/completions", json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise GenerationFailed(f"chat request failed: {exc}") from exc
        if response.status_code != 200:
            raise GenerationFailed(f"chat endpoint answered {response.status_code}: {response.text[:300]}")
        try:
            return str(response.json()["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise GenerationFailed(f"chat endpoint answered an unexpected body: {exc}") from exc
