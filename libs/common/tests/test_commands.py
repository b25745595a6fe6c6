"""Commands over NATS request/reply against a real nats-server: typed results, typed errors, tracing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import pytest
from nats.aio.client import Client as NatsClient
from opentelemetry.sdk.trace import TracerProvider
from symbi_common.commands import CommandClient, CommandMeta, CommandServer
from symbi_common.errors import (
    BadRequest,
    IllegalTransition,
    InfrastructureError,
    NotFound,
    PayloadTooLarge,
    SymbiError,
    Timeout,
)


class Greet(msgspec.Struct):
    name: str
    times: int = 1


class Greeting(msgspec.Struct):
    text: str
    traceparent: str | None = None


@pytest.fixture
async def server(nc: NatsClient) -> CommandServer:
    srv = CommandServer(nc, "demo", max_request_bytes=1024)

    async def greet(req: Greet, meta: CommandMeta) -> Greeting:
        if req.name == "ghost":
            raise NotFound("no such person: ghost")
        if req.name == "late":
            raise IllegalTransition(state="Terminated", command="greet")
        if req.name == "boom":
            raise RuntimeError("secret internal detail")
        if req.name == "slow":
            await asyncio.sleep(1)
        return Greeting(" ".join([f"hello {req.name}"] * req.times), meta.headers.get("traceparent"))

    srv.register("greet", Greet, greet)
    await srv.start()
    return srv


async def test_typed_result(server: CommandServer, nc: NatsClient) -> None:
    out = await CommandClient(nc).call("demo", "greet", {"name": "ada", "times": 2}, Greeting)
    assert out.text == "hello ada hello ada"


async def test_typed_errors_cross_the_wire(server: CommandServer, nc: NatsClient) -> None:
    client = CommandClient(nc)
    with pytest.raises(NotFound, match="no such person"):
        await client.call("demo", "greet", {"name": "ghost"}, Greeting)
    with pytest.raises(IllegalTransition) as info:
        await client.call("demo", "greet", {"name": "late"}, Greeting)
    assert info.value.details["state"] == "Terminated"
    assert info.value.state == "Terminated"  # type: ignore[attr-defined]


async def test_internal_errors_do_not_leak_details(server: CommandServer, nc: NatsClient) -> None:
    with pytest.raises(SymbiError) as info:
        await CommandClient(nc).call("demo", "greet", {"name": "boom"}, Greeting)
    assert type(info.value) is SymbiError
    assert "RuntimeError" in str(info.value)
    assert "secret internal detail" not in str(info.value)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": 3}, "name"),
        ({}, "name"),
        ({"name": "x", "times": "many"}, "times"),
    ],
)
async def test_bad_requests_name_the_field(server: CommandServer, nc: NatsClient, body: object, field: str) -> None:
    with pytest.raises(BadRequest) as info:
        await CommandClient(nc).call("demo", "greet", body, Greeting)
    assert info.value.details["field"] == field


async def test_malformed_json_and_unknown_action(server: CommandServer, nc: NatsClient) -> None:
    reply = await nc.request("cmd.demo.greet", b"{not json", timeout=2)
    body = msgspec.json.decode(reply.data)
    assert body["ok"] is False
    assert body["error"]["code"] == "bad_request"
    with pytest.raises(BadRequest, match=r"unknown command demo\.wave; known: greet"):
        await CommandClient(nc).call("demo", "wave", {}, Greeting)


async def test_oversized_request_is_refused(server: CommandServer, nc: NatsClient) -> None:
    with pytest.raises(PayloadTooLarge, match="over the limit of 1024 bytes"):
        await CommandClient(nc).call("demo", "greet", {"name": "x" * 2000}, Greeting)


async def test_no_service_and_timeouts_are_infrastructure_errors(server: CommandServer, nc: NatsClient) -> None:
    client = CommandClient(nc)
    with pytest.raises(InfrastructureError, match="no nobody service is answering"):
        await client.call("nobody", "greet", {"name": "x"}, Greeting)
    with pytest.raises(Timeout):
        await client.call("demo", "greet", {"name": "slow"}, Greeting, timeout=0.2)


async def test_trace_context_travels_in_headers(server: CommandServer, nc: NatsClient) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("caller") as span:
        out = await CommandClient(nc).call("demo", "greet", {"name": "ada"}, Greeting)
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert out.traceparent is not None
    assert out.traceparent.split("-")[1] == trace_id


async def test_replicas_share_the_load(nc: NatsClient, server: CommandServer) -> None:
    second = CommandServer(nc, "demo")
    hits: list[str] = []

    async def greet(req: Greet, meta: CommandMeta) -> Greeting:
        hits.append(req.name)
        return Greeting("second")

    second.register("greet", Greet, greet)
    await second.start()
    client = CommandClient(nc)
    texts = [(await client.call("demo", "greet", {"name": f"n{i}"}, Greeting)).text for i in range(40)]
    # Queue group: each request is served once, by one of the two replicas.
    assert len(texts) == 40
    assert 0 < len(hits) < 40
    await second.stop()


async def test_a_started_server_answers_and_a_stopped_one_is_gone_for_other_connections_at_once(
    nats_connect: Callable[..., Awaitable[NatsClient]],
) -> None:
    """``start``/``stop`` return once the server has the subscription / has dropped it (``synced``): a caller
    on another connection, asking right then, is answered / told nobody answers — never "no responders" from
    a server that is up, nor a request lost to one that is gone (a timeout)."""
    serving, calling = await nats_connect(), await nats_connect()
    client = CommandClient(calling, timeout=5.0)

    async def greet(req: Greet, meta: CommandMeta) -> Greeting:
        return Greeting(f"hello {req.name}")

    for i in range(100):
        srv = CommandServer(serving, f"flip{i}")
        srv.register("greet", Greet, greet)
        await srv.start()
        assert (await client.call(f"flip{i}", "greet", {"name": "x"}, Greeting)).text == "hello x"
        await srv.stop()
        with pytest.raises(InfrastructureError, match="is answering"):
            await client.call(f"flip{i}", "greet", {"name": "x"}, Greeting)
