"""A provider that never ends its answer cannot hold the gateway: a streamed call whose caller stops reading is cut
off once the caller has taken nothing for ``caller_stall_s``, and any call once its answer has taken ``max_call_s``;
the provider's connection is closed, the call ends with a typed error and is charged its whole reservation.

The provider is a real local HTTP server that streams (or trickles) forever; the stalled caller is a real client
of the real egress proxy that sends its request and reads nothing; NATS (the budget events) and Cedar are real.
The limits are lowered to about a second here (the defaults are :data:`~symbi_sandbox_agent.models.relay.
CALLER_STALL_S` and :data:`~symbi_sandbox_agent.models.relay.MAX_CALL_S`)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from symbi_common.policy.hooks import Enforcer
from symbi_common.settings_sandbox import EgressSettings
from symbi_fixtures.model_upstream import make_ca_and_server_cert
from symbi_sandbox_agent.egress.decisions import Connection
from symbi_sandbox_agent.egress.host import EgressHost
from symbi_sandbox_agent.egress.internal import MODELS_HOST
from symbi_sandbox_agent.models.errors import StreamCutOff
from symbi_sandbox_agent.models.gateway import ModelGateway

from .conftest import Agent
from .models_support import assign, body_of, caller, chat, gateway, models_settings, post
from .test_models_gateway import daemon, model_settings

__all__ = ["daemon", "model_settings"]  # fixtures, used by name

#: Every check waits at most this long: the limits trip within about a second, the code before them never.
WAIT_S = 10.0


@dataclass
class Endless:
    """An OpenAI-compatible provider over plain HTTP that answers every chat call and never ends the answer: SSE
    events of ``event_bytes`` (a JSON reply that never closes, when not streamed), ``pause_s`` apart (0: as fast
    as the connection takes them). ``closed`` is set once the gateway has closed a connection."""

    pause_s: float = 0.0
    event_bytes: int = 16 * 1024
    calls: int = 0
    sent: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.calls += 1
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
            stream = json.loads(await reader.readexactly(length)).get("stream") is True
            kind = b"text/event-stream" if stream else b"application/json"
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: " + kind + b"\r\ntransfer-encoding: chunked\r\n\r\n")
            if stream:
                piece = b'data: {"choices": [{"index": 0, "delta": {"content": "'
                piece += b"x" * self.event_bytes + b'"}, "finish_reason": null}]}\n\n'
            else:
                writer.write(b'd\r\n{"choices": [\r\n')
                piece = b" " * self.event_bytes  # a reply that never closes
            gone = asyncio.ensure_future(reader.read(1))  # the gateway closes its side: EOF (or a reset)
            gone.add_done_callback(lambda f: f.cancelled() or f.exception())
            while not gone.done():
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                drained = asyncio.ensure_future(writer.drain())
                await asyncio.wait([gone, drained], return_when=asyncio.FIRST_COMPLETED)
                if not drained.done():
                    drained.cancel()
                    break
                drained.result()
                self.sent += len(piece)
                if self.pause_s:
                    await asyncio.sleep(self.pause_s)
            gone.cancel()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.set()
            writer.close()
            self.handlers.discard(task)


@pytest.fixture
async def endless() -> AsyncIterator[tuple[Endless, str]]:
    provider = Endless()
    server = await asyncio.start_server(provider.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield provider, f"http://127.0.0.1:{port}/v1"
    server.close()
    for task in list(provider.handlers):
        task.cancel()
    await asyncio.gather(*provider.handlers, return_exceptions=True)


@pytest.fixture
async def gw(daemon: Agent, endless: tuple[Endless, str], tmp_path: Path) -> AsyncIterator[ModelGateway]:
    ca, _, _ = make_ca_and_server_cert(tmp_path / "tls")  # (a CA the provider's settings name; plain HTTP here)
    built = gateway(daemon.daemon.rt, models_settings(endless[1], ca, {"default": {"tokens_per_day": 100_000}}))
    yield built
    await built.aclose()


async def charged(gw: ModelGateway) -> tuple[int, int]:
    """``(calls, output tokens)`` the day holds for the agent's model, once nothing is left open."""
    await gw.drain()
    state = await gw.ledger.state("default")
    assert not state.open
    usage = state.usage[("agent-1", "test/small")]
    return usage.calls, usage.output_tokens


async def test_a_stream_whose_caller_stops_reading_is_cut_off_and_charged_whole(
    daemon: Agent, endless: tuple[Endless, str], gw: ModelGateway, make_store: Any, tmp_path: Path
) -> None:
    """The workload sends a streamed request through its egress proxy and never reads: the proxy's write to it
    blocks, and before, the relay then held the provider's connection and the reservation until the run ended.
    Now, once it has taken nothing for the stall limit, the provider's connection is closed and the call charged
    its whole reservation (16 completion tokens asked); when the workload reads at last it gets what was written
    and a stream that breaks off (no last chunk), and the connection is recorded with the typed error."""
    provider, _ = endless
    gw.caller_stall_s = 0.5
    task = await assign(await make_store("scheduler"), daemon.host_id)
    host = EgressHost(EgressSettings(system_resolver=False))
    host.register(MODELS_HOST, gw)
    proxy = host.proxy(caller(task), (), 100, Enforcer.around(await daemon.daemon.rt.decision_point()))
    records: list[Connection] = []
    proxy.record = records.append
    path = str(tmp_path / "run" / "egress.sock")
    await proxy.open(path)
    body = chat(stream=True)
    request = (
        f"POST http://{MODELS_HOST}/v1/chat/completions HTTP/1.1\r\nHost: {MODELS_HOST}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    def send() -> socket.socket:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        client.sendall(request)
        return client  # and read nothing

    client = await asyncio.to_thread(send)
    try:
        async with asyncio.timeout(WAIT_S):
            await provider.closed.wait()
        assert provider.sent > 64 * 1024  # the stream ran until the workload's side was full
        assert await charged(gw) == (1, 16)

        def read_all() -> bytes:
            client.settimeout(WAIT_S)
            data = b""
            while chunk := client.recv(256 * 1024):
                data += chunk
            return data

        data = await asyncio.to_thread(read_all)
        assert data.startswith(b"HTTP/1.1 200")
        assert b'"delta": {"content": "xxx' in data
        assert not data.endswith(b"0\r\n\r\n")  # broken off: the workload cannot take it for a whole answer
        for _ in range(int(WAIT_S / 0.02)):
            if records:
                break
            await asyncio.sleep(0.02)
        (conn,) = records
        assert (conn.access, conn.outcome) == ("internal", "denied")
        assert "StreamCutOff" in conn.detail
        assert "the caller read nothing for 0.5 s" in conn.detail
        assert provider.calls == 1
    finally:
        client.close()
        await proxy.close()


async def test_a_stream_the_provider_never_ends_is_cut_off_at_the_call_deadline(
    daemon: Agent, endless: tuple[Endless, str], gw: ModelGateway, make_store: Any
) -> None:
    """The caller reads on, the provider trickles small events forever (no read timeout ever trips): the call is
    cut off at its deadline with the typed error, the provider's connection closed, charged whole."""
    provider, _ = endless
    provider.pause_s, provider.event_bytes = 0.02, 8
    gw.max_call_s = 1.0
    task = await assign(await make_store("scheduler"), daemon.host_id)
    answer = await gw.handle(caller(task), post("/v1/chat/completions", chat(stream=True)))
    assert answer.status == 200
    chunks: list[bytes] = []

    async def read() -> None:
        async with asyncio.timeout(WAIT_S):
            async for chunk in answer.body:
                chunks.append(chunk)

    with pytest.raises(StreamCutOff) as cut:
        await read()
    await answer.body.aclose()  # type: ignore[attr-defined]
    assert cut.value.details["limit"] == "deadline"
    assert "did not end within 1 s" in cut.value.message
    assert len(chunks) > 5
    async with asyncio.timeout(WAIT_S):
        await provider.closed.wait()
    assert await charged(gw) == (1, 16)


async def test_a_reply_the_provider_never_ends_fails_at_the_call_deadline(
    daemon: Agent, endless: tuple[Endless, str], gw: ModelGateway, make_store: Any
) -> None:
    """Not streamed, the same: a reply trickled forever (each read well within the provider's timeout) is given
    up at the deadline, 502 to the caller, the provider's connection closed, charged whole."""
    provider, _ = endless
    provider.pause_s, provider.event_bytes = 0.02, 1
    gw.max_call_s = 1.0
    task = await assign(await make_store("scheduler"), daemon.host_id)
    async with asyncio.timeout(WAIT_S):
        answer = await gw.handle(caller(task), post("/v1/chat/completions", chat()))
    error = json.loads(await body_of(answer))["error"]
    assert answer.status == 502
    assert error["code"] == "upstream_failed"
    assert "did not come within 1 s" in error["message"]
    async with asyncio.timeout(WAIT_S):
        await provider.closed.wait()
    assert await charged(gw) == (1, 16)
