"""The SDK's side of the channel's bounds, against a stand-in gateway on a Unix socket that answers as a test
scripts it (late, out of order, with ``"id": null``): deadlines per operation, a new connection after a
timeout, requests too large refused before they are sent, id-less errors failing the calls they can be for."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from symbi_agent import (
    Agent,
    AsyncAgent,
    ChannelError,
    ChannelTimeout,
    Deadlines,
    Internal,
    MalformedRequest,
    RequestTooLarge,
)
from symbi_agent._wire import request_limit

Answer = tuple[float, dict[str, Any]]
Script = Callable[[dict[str, Any]], list[Answer]]
MAX_REQUEST_BYTES = 1024 * 1024


def result(request: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"v": 1, "id": request["id"], "type": "result", "result": fields}


def id_null_error(code: str) -> dict[str, Any]:
    return {"v": 1, "id": None, "type": "error", "error": {"code": code, "message": f"{code} (no id)"}}


def echo(delays: dict[str, float]) -> Script:
    """Answers ``{"query": …}`` after the delay its query names (none: at once)."""

    def script(request: dict[str, Any]) -> list[Answer]:
        query = request["args"].get("query", "")
        return [(delays.get(query, 0.0), result(request, query=query))]

    return script


class StubGateway:
    """Reads request lines like the gateway (a line over 1 MiB is answered ``request_too_large`` with
    ``"id": null``) and sends what ``script`` says for each, each answer after its delay on a timer of its own,
    so later requests are read meanwhile."""

    def __init__(self, path: str, script: Script) -> None:
        self.path = path
        self.script = script
        self.lines = 0
        self.connections = 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        lock = threading.Lock()
        with contextlib.suppress(OSError, ValueError), conn, conn.makefile("rb") as lines:
            for line in lines:
                self.lines += 1
                too_long = len(line.rstrip(b"\n")) > MAX_REQUEST_BYTES
                answers = [(0.0, id_null_error("request_too_large"))] if too_long else self.script(json.loads(line))
                for delay, answer in answers:
                    timer = threading.Timer(delay, self._send, (conn, lock, answer))
                    timer.daemon = True
                    timer.start()

    @staticmethod
    def _send(conn: socket.socket, lock: threading.Lock, answer: dict[str, Any]) -> None:
        with lock, contextlib.suppress(OSError):
            conn.sendall(json.dumps(answer).encode() + b"\n")

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def stub() -> Iterator[Callable[[Script], StubGateway]]:
    directory = tempfile.mkdtemp(prefix="sdk", dir="/tmp")  # short: a socket path has at most 107 bytes
    started: list[StubGateway] = []

    def start(script: Script) -> StubGateway:
        started.append(StubGateway(os.path.join(directory, f"g{len(started)}.sock"), script))
        return started[-1]

    yield start
    for gateway in started:
        gateway.close()
    shutil.rmtree(directory, ignore_errors=True)


# Finding 1: deadlines and the connection after a timeout.


def test_default_deadlines_outlast_what_the_gateway_may_take() -> None:
    deadlines = Deadlines()
    assert deadlines.for_call("models.complete", {"model": "p/m", "prompt": "hi"}) > 30 * 60
    assert deadlines.for_call("messages.request", {"to": "b", "body": 1, "timeout_s": 60}) > 60
    assert deadlines.for_call("messages.receive", {"timeout_s": 600}) > 60
    assert deadlines.for_call("http.request", {"url": "https://x", "timeout_s": 120}) > 120
    assert deadlines.for_call("tools.call", {"name": "s.t"}) > 60
    assert Deadlines(margin_s=1.0).for_call("messages.receive", {"timeout_s": 0.5}) == 1.5
    assert Deadlines(fixed_s=2.0).for_call("models.complete", {}) == 2.0


def test_after_a_timeout_the_next_call_gets_its_own_answer_on_a_new_connection(
    stub: Callable[[Script], StubGateway],
) -> None:
    gateway = stub(echo({"slow": 0.5}))
    with Agent(gateway.path, timeout=0.3) as agent:
        with pytest.raises(ChannelError):
            agent.memory.recall("slow")
        time.sleep(0.4)  # the late answer to "slow" has come by now
        assert agent.memory.recall("fast") == {"query": "fast"}
        assert agent.memory.recall("again") == {"query": "again"}
    assert gateway.connections == 2


def test_a_call_waits_for_its_operation_own_wait_plus_the_margin(stub: Callable[[Script], StubGateway]) -> None:
    def script(request: dict[str, Any]) -> list[Answer]:
        return [(0.7, result(request, op=request["op"]))]

    gateway = stub(script)
    with Agent(gateway.path, deadlines=Deadlines(margin_s=0.4)) as agent:
        assert agent.messages.request("peer", "hi", timeout_s=0.5) == {"op": "messages.request"}
        with pytest.raises(ChannelTimeout):
            agent.memory.recall("anything")  # no wait of its own: 0.4 s
        assert agent.messages.receive(timeout_s=0.5) == {"op": "messages.receive"}


async def test_async_timeout_moves_later_calls_to_a_new_connection(stub: Callable[[Script], StubGateway]) -> None:
    gateway = stub(echo({"slow": 0.6, "meanwhile": 0.35}))
    async with AsyncAgent(gateway.path, deadlines=Deadlines(margin_s=0.4)) as agent:
        slow = asyncio.ensure_future(agent.memory.recall("slow"))
        meanwhile = asyncio.ensure_future(agent.memory.recall("meanwhile"))
        with pytest.raises(ChannelTimeout):
            await slow
        assert await meanwhile == {"query": "meanwhile"}  # on the old connection, answered in time
        await asyncio.sleep(0.3)  # the late answer to "slow" has come by now
        assert await agent.memory.recall("next") == {"query": "next"}
    assert gateway.connections == 2


# Finding 2: requests too large, and answers with "id": null.


async def test_async_refuses_a_request_longer_than_the_gateway_reads(stub: Callable[[Script], StubGateway]) -> None:
    gateway = stub(echo({}))
    async with AsyncAgent(gateway.path) as agent:
        with pytest.raises(RequestTooLarge) as refused:
            await asyncio.wait_for(agent.knowledge.share("kb", "t", "x" * 2_000_000), 2)
        assert refused.value.details["max_request_bytes"] == MAX_REQUEST_BYTES
        assert await agent.memory.recall("still here") == {"query": "still here"}
    assert gateway.lines == 1  # the recall only: the share was never sent


def test_sync_refuses_a_request_over_the_limit_hello_names(stub: Callable[[Script], StubGateway]) -> None:
    def script(request: dict[str, Any]) -> list[Answer]:
        return [(0.0, result(request, version=1, max_request_bytes=4096, max_in_flight=16))]

    gateway = stub(script)
    with Agent(gateway.path) as agent:
        with pytest.raises(RequestTooLarge):
            agent.knowledge.share("kb", "t", "x" * 2_000_000)
        agent.hello()
        with pytest.raises(RequestTooLarge) as refused:
            agent.memory.store("x" * 5000)
        assert refused.value.details["max_request_bytes"] == 4096
    assert gateway.lines == 1  # the hello only
    assert request_limit("stdio") == request_limit("socket") == MAX_REQUEST_BYTES  # the same bound on both


async def test_async_id_null_error_fails_the_one_call_in_flight(stub: Callable[[Script], StubGateway]) -> None:
    def script(request: dict[str, Any]) -> list[Answer]:
        if request["op"] == "memory.store":
            return [(0.0, id_null_error("internal"))]
        return [(0.0, result(request, ok=True))]

    gateway = stub(script)
    async with AsyncAgent(gateway.path) as agent:
        with pytest.raises(Internal):
            await asyncio.wait_for(agent.memory.store("x"), 2)
        assert await agent.memory.recall("after") == {"ok": True}


async def test_async_id_null_error_fails_every_call_in_flight(stub: Callable[[Script], StubGateway]) -> None:
    def script(request: dict[str, Any]) -> list[Answer]:
        query = request["args"]["query"]
        if query == "done":
            return [(0.0, result(request, query=query))]
        return [(0.3, id_null_error("malformed_request"))] if query == "b" else []

    gateway = stub(script)
    async with AsyncAgent(gateway.path) as agent:
        assert await agent.memory.recall("done") == {"query": "done"}
        calls = [agent.memory.recall("a"), agent.memory.recall("b")]
        failed = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 2)
        assert [type(f) for f in failed] == [MalformedRequest, MalformedRequest]
