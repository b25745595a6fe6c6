"""Services of this host that a sandbox reaches by a reserved name through the egress proxy.

The proxy answers a plain-HTTP request for a reserved host (``models.symbi.internal``: the model gateway)
itself, by handing the parsed request to the service registered under that name, together with the
:class:`Caller` the proxy knows from the sandbox's socket. The caller is never taken from the request:
an ``X-Symbi-*`` header a sandbox sends is dropped by the proxy. Pure: no I/O here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

#: The name ordinary OpenAI clients in a sandbox use as their base URL: ``http://models.symbi.internal/v1``.
MODELS_HOST = "models.symbi.internal"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks, as the host knows it from the listener the request came in on (never from the request)."""

    agent_id: str
    task_id: str
    tenant: str = "default"
    tier: str = "tier1"
    #: The attempt of the task the run is (0: none given; a model call is then refused, not let through).
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class InternalRequest:
    """One HTTP request to an internal service: ``path`` is origin-form (``/v1/chat/completions?x=1``)."""

    method: str
    path: str
    #: Lower-cased header names; hop-by-hop headers and ``x-symbi-*`` are already removed.
    headers: Mapping[str, str]
    body: bytes


async def _no_body() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


@dataclass(slots=True)
class InternalResponse:
    """The answer: sent with ``content-length`` when ``length`` is known, else chunked (streaming)."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: AsyncIterator[bytes] = field(default_factory=_no_body)
    length: int | None = None


class InternalService(Protocol):
    """A host service reachable from sandboxes by a reserved name (registered with the proxy)."""

    async def handle(self, caller: Caller, request: InternalRequest) -> InternalResponse: ...
