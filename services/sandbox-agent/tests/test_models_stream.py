"""The SDK's streamed completion (``agent.models.stream``) and its typed refusals, over plain HTTP through a
proxy to ``models.symbi.internal``. The proxy here is a minimal stand-in for the egress proxy's
internal-service dispatch (it parses the request and hands it to ``ModelGateway.handle`` with a fixed caller,
chunked back); the gateway, the provider (HTTPS, test CA), NATS and Cedar are real."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from symbi_agent import Agent, BudgetExceeded, Denied
from symbi_contracts.lifecycle.config import AgentBudget
from symbi_sandbox_agent.egress.internal import Caller, InternalRequest
from symbi_sandbox_agent.models.gateway import ModelGateway

from .models_support import assign, gateway, models_settings
from .test_models_gateway import Upstream, daemon, model_settings, upstream

__all__ = ["daemon", "model_settings", "upstream"]  # fixtures, used by name


async def proxy(gw: ModelGateway, caller: Caller) -> tuple[asyncio.Server, int]:
    """Answers absolute-form requests for models.symbi.internal with the gateway; anything else is 403."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method, target, _ = (await reader.readline()).decode().split(" ", 2)
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if not target.startswith("http://models.symbi.internal/"):
            writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
        else:
            path = target.removeprefix("http://models.symbi.internal")
            answer = await gw.handle(caller, InternalRequest(method, path, headers, body))
            head = [
                f"HTTP/1.1 {answer.status} X",
                *(f"{k}: {v}" for k, v in answer.headers),
                "transfer-encoding: chunked",
            ]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
            async for chunk in answer.body:
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def streaming(
    daemon: Any, upstream: Upstream, make_store: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ModelGateway]:
    gw = gateway(daemon.daemon.rt, models_settings(upstream.url, upstream.ca))
    task = await assign(await make_store("scheduler"), daemon.host_id, budget=AgentBudget(micro_usd_per_day=150))
    server, port = await proxy(gw, Caller(agent_id="agent-1", task_id=task, attempt=1))
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    yield gw
    server.close()
    await gw.aclose()


async def test_the_sdk_streams_a_completion_through_the_proxy(streaming: ModelGateway, upstream: Upstream) -> None:
    agent = Agent(stdio=True)  # the stream does not use the channel

    def run() -> dict[str, Any]:
        chunks = list(agent.models.stream("test/small", "hi", max_tokens=16))
        out: dict[str, Any] = {"text": "".join(c["choices"][0]["delta"]["content"] for c in chunks if c["choices"])}
        out["usage"] = chunks[-1]["usage"]
        try:
            list(agent.models.stream("test/other", "hi", max_tokens=16))
        except Denied as err:
            out["other"] = err.code
        spent = 0
        while spent < 20:
            try:
                list(agent.models.stream("test/small", "hi", max_tokens=16))
                spent += 1
            except BudgetExceeded as err:
                out["exceeded"] = (err.scope, err.unit, err.left, err.requested)
                break
        return out

    out = await asyncio.to_thread(run)
    assert out["text"] == "hello from the model"
    assert out["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    assert out["other"] == "denied"
    scope, unit, left, requested = out["exceeded"]
    assert (scope, unit) == ("agent", "micro_usd")
    assert left < requested
    assert upstream.provider.bodies[0]["stream"] is True


async def test_a_stream_the_caller_leaves_early_is_charged_its_whole_reservation(
    daemon: Any, upstream: Upstream, make_store: Any
) -> None:
    """Closed before a byte was read, or after the first chunk: the provider was answering, and may generate all
    it was allowed whether or not anyone reads it, so the call is charged its whole reservation (estimated).
    Before, it was released (nothing read) or charged only the text that went out."""
    gw = gateway(daemon.daemon.rt, models_settings(upstream.url, upstream.ca, {"default": {"tokens_per_day": 10_000}}))
    task = await assign(await make_store("scheduler"), daemon.host_id)
    who = Caller(agent_id="agent-1", task_id=task, attempt=1)
    body = b'{"model": "test/small", "messages": [{"role": "user", "content": "hi"}], "stream": true}'
    unread = await gw.handle(who, InternalRequest("POST", "/v1/chat/completions", {}, body))
    await unread.body.aclose()  # type: ignore[attr-defined]
    started = await gw.handle(who, InternalRequest("POST", "/v1/chat/completions", {}, body))
    first = await anext(started.body)
    assert first.startswith(b"data: ")
    await started.body.aclose()  # type: ignore[attr-defined]
    await gw.drain()
    state = await gw.ledger.state("default")
    assert not state.open
    usage = state.usage[("agent-1", "test/small")]
    assert usage.calls == 2
    assert usage.output_tokens == 2 * gw.default_max_tokens  # each charged the completion it was allowed
    await gw.aclose()
