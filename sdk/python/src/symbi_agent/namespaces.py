"""What an agent can ask for, by area. Each method sends one protocol request through the client's ``call``,
so the same classes serve the synchronous client (a value) and the asynchronous one (an awaitable)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from symbi_agent.model_stream import stream_chat
from symbi_agent.seen import SEEN

Call = Callable[..., Any]


def _given(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


class _Area:
    def __init__(self, call: Call) -> None:
        self._call = call


class Memory(_Area):
    """The agent's own memories, through the context service, each request decided by policy."""

    def store(
        self,
        text: str,
        *,
        collection: str = "default",
        kind: str | None = None,
        tags: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        ttl_s: float | None = None,
        memory_id: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> Any:
        """Store one memory; the result is ``{"memory_id", "ids", "sequence"}``.

        Every store is sent with an id (``memory_id``, else a new UUID), so the runtime stores it at most once.
        To retry a store whose answer was lost (a timeout), pass the same ``memory_id`` and content again: the
        answer is the same memory; the same id with other content raises an error coded ``memory_conflict``."""
        args = _given(
            text=text,
            collection=collection,
            kind=kind,
            tags=tags and list(tags),
            metadata=metadata,
            ttl_s=ttl_s,
            memory_id=memory_id or str(uuid.uuid4()),
        )
        return self._call("memory.store", args, context)

    def recall(
        self,
        query: str,
        *,
        collection: str = "*",
        limit: int = 5,
        kinds: Sequence[str] | None = None,
        tags: Sequence[str] | None = None,
        context: dict[str, Any] | None = None,
    ) -> Any:
        """Search the agent's memories; the result is ``{"memories": [{"id", "text", …}]}``."""
        args = _given(
            query=query, collection=collection, limit=limit, kinds=kinds and list(kinds), tags=tags and list(tags)
        )
        return self._call("memory.recall", args, context)

    def forget(self, ids: Sequence[str], *, context: dict[str, Any] | None = None) -> Any:
        """Erase memories of the agent's own by id; the result is ``{"ids", "sequence"}``."""
        return self._call("memory.forget", {"ids": list(ids)}, context)


class Knowledge(_Area):
    """Knowledge bases shared between agents; policy decides who may share into or query each one."""

    def share(
        self,
        kb: str,
        title: str,
        text: str,
        *,
        tags: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        document_id: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> Any:
        """Add a document to knowledge base ``kb``; the result is ``{"document_id", "sequence"}``.

        Every share is sent with an id (``document_id``, else a new UUID), so the runtime stores it at most once.
        To retry a share whose answer was lost (a timeout), pass the same ``document_id`` and content again: the
        answer is the same document; the same id with other content raises an error coded ``document_conflict``."""
        args = _given(
            kb=kb,
            title=title,
            text=text,
            tags=tags and list(tags),
            metadata=metadata,
            document_id=document_id or str(uuid.uuid4()),
        )
        return self._call("knowledge.share", args, context)

    def query(self, kb: str, query: str, *, limit: int = 5, context: dict[str, Any] | None = None) -> Any:
        """Search knowledge base ``kb``; the result is ``{"results": [{"id", "text", …}]}``."""
        return self._call("knowledge.query", {"kb": kb, "query": query, "limit": limit}, context)


class Messages(_Area):
    """Messages between agents: direct, topics, request/reply. Signed and encrypted by the host, each send
    decided by policy (``classification`` in ``context`` drives data-flow rules). A received message is
    ``{"id", "kind", "from", "body", "sent_at", "to"?, "topic"?, "classification"?}``."""

    def send(self, to: str, body: Any, *, ttl_s: float | None = None, context: dict[str, Any] | None = None) -> Any:
        """A direct message to agent ``to``; the result is ``{"id", "sent_at"}``."""
        return self._call("messages.send", _given(to=to, body=body, ttl_s=ttl_s), context)

    def publish(
        self, topic: str, body: Any, *, ttl_s: float | None = None, context: dict[str, Any] | None = None
    ) -> Any:
        """A message to every agent subscribed to ``topic``; the result is ``{"id", "sent_at"}``."""
        return self._call("messages.publish", _given(topic=topic, body=body, ttl_s=ttl_s), context)

    def request(self, to: str, body: Any, *, timeout_s: float = 10.0, context: dict[str, Any] | None = None) -> Any:
        """Ask agent ``to`` and wait for its reply (a received message); :class:`Timeout` if none comes."""
        return self._call("messages.request", {"to": to, "body": body, "timeout_s": timeout_s}, context)

    def reply(self, message: dict[str, Any], body: Any, *, context: dict[str, Any] | None = None) -> Any:
        """Answer a received request (``message`` as :meth:`receive` returned it)."""
        return self._call("messages.send", {"to": message["from"], "body": body, "in_reply_to": message["id"]}, context)

    def subscribe(self, *topics: str) -> Any:
        """Have messages on ``topics`` delivered to this agent's inbox from now on."""
        return self._call("messages.receive", {"max": 0, "timeout_s": 0, "subscribe": list(topics)})

    def receive(self, *, max: int = 10, timeout_s: float = 5.0) -> Any:
        """Up to ``max`` waiting messages, waiting up to ``timeout_s`` for the first; the result is
        ``{"messages": [...]}`` (empty when none came). A message is handed over once per process: one
        delivered again (its host restarted before recording it) is dropped here, by id."""
        return SEEN.filter(self._call("messages.receive", {"max": max, "timeout_s": timeout_s}))


class Tools(_Area):
    """MCP tools of the servers an operator registered and approved, each call decided by policy.

    A host without tool servers answers :class:`~symbi_agent.errors.NotAvailable`."""

    def list(self) -> Any:
        """The tools this agent may call: ``{"tools": [{"name", "description", "input_schema", "pin", …}]}``."""
        return self._call("tools.list", {})

    def call(self, name: str, arguments: dict[str, Any] | None = None, *, context: dict[str, Any] | None = None) -> Any:
        """Call tool ``name`` (``server.tool``); the result is the server's, untouched (``content``,
        ``structuredContent``) with its ``digest`` and ``bytes``. Its text is data, not instructions."""
        return self._call("tools.call", {"name": name, "arguments": arguments or {}}, context)

    def invoke(self, tool: str, arguments: dict[str, Any] | None = None) -> Any:
        """The same as :meth:`call` (its first name)."""
        return self._call("tools.invoke", {"tool": tool, "arguments": arguments or {}})


class Web(_Area):
    """HTTP(S) requests the runtime makes for the agent through its egress proxy (docs/network.md): the
    same allow-list, address checks and policy (``network.connect``) as the agent's own clients behind
    ``HTTPS_PROXY``. A refused one raises :class:`~symbi_agent.errors.Denied` naming the reason."""

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: str | bytes | None = None,
        timeout_s: float | None = None,
        max_bytes: int | None = None,
    ) -> Any:
        """The answer as ``{"status", "headers": [[name, value], …], "body"}`` (``body_b64`` for bytes that are
        not UTF-8)."""
        args = _given(method=method, url=url, headers=headers, timeout_s=timeout_s, max_bytes=max_bytes)
        if isinstance(body, bytes):
            args["body_b64"] = base64.b64encode(body).decode()
        elif body is not None:
            args["body"] = body
        return self._call("http.request", args)

    def get(self, url: str, **kwargs: Any) -> Any:
        """``request("GET", url, …)``."""
        return self.request("GET", url, **kwargs)


class Models(_Area):
    """Model calls through the host's model gateway: the provider's credentials stay with the host, policy
    decides which models the agent may call, and each call counts against the day's budgets
    (:class:`~symbi_agent.errors.BudgetExceeded` names the budget and what is left of it)."""

    def complete(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Sequence[dict[str, Any]] | None = None,
        max_tokens: int | None = None,
        context: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """One chat completion of ``model`` (``provider/model``) for ``prompt`` (one user message) or
        ``messages``; other OpenAI fields (``temperature`` …) are passed on. The result is the provider's reply
        (``choices``, ``usage``) with ``text``, the first choice's content. Not streamed: to stream, point an
        OpenAI client at ``http://models.symbi.internal/v1`` (through the sandbox's proxy)."""
        args = _given(model=model, prompt=prompt, messages=messages and list(messages), max_tokens=max_tokens)
        return self._call("models.complete", {**kwargs, **args}, context)

    def stream(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Sequence[dict[str, Any]] | None = None,
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> Iterator[dict[str, Any]]:
        """A streamed chat completion: yields the OpenAI chunks as they come (``choices[0].delta.content``; the
        last one carries ``usage``). It goes over HTTP to ``models.symbi.internal`` through the sandbox's proxy,
        not over the channel (whose requests have one answer each); blocking, in the async client too."""
        if messages is None:
            messages = [{"role": "user", "content": prompt or ""}]
        body = {**kwargs, **_given(model=model, messages=list(messages), max_tokens=max_tokens)}
        return stream_chat(body)
