"""What an MCP tool server answers ends in what the agent gets or a typed error (no Docker, no real server).

A tool server is not trusted. Its ``tools/list`` and ``tools/call`` answers, whatever they are (a tool list, a
JSON-RPC error, a result that is not one, a line that is not JSON, nothing at all), reach the gateway as tools,
a result, or one of the tool errors (``ToolRefused``, ``ToolCallFailed``, ``ToolTimeout``,
``ToolResultTooLarge``, ``ToolServerUnavailable``): never as the SDK's ``MCPError``, pydantic's or jsonschema's
errors, a ``RuntimeError``, nor as a wait without end. The server here is the other end of in-memory streams
speaking JSON-RPC lines to the real ``mcp`` client session (:class:`McpConnection`), and the registry is the
real aggregate folded in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import mcp.types as mt
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mcp.shared.message import SessionMessage
from schemapin.crypto import KeyManager
from schemapin.utils import SchemaSigningWorkflow
from symbi_common.errors import SymbiError
from symbi_contracts.tools.errors import (
    ToolCallFailed,
    ToolRefused,
    ToolResultTooLarge,
    ToolServerUnavailable,
    ToolTimeout,
)
from symbi_contracts.tools.events import ToolServerRegistered
from symbi_sandbox_agent.tools.canon import canonical_json, definition_of, pin_of
from symbi_sandbox_agent.tools.limits import ToolLimits
from symbi_sandbox_agent.tools.names import TOOL_NAME
from symbi_sandbox_agent.tools.registry import TOOLSERVER, Approve, Command, PinKey, ServerState
from symbi_sandbox_agent.tools.scan import scan, strings_in
from symbi_sandbox_agent.tools.servers import McpConnection
from symbi_sandbox_agent.tools.service import ToolService
from symbi_sandbox_agent.tools.verify import SIGNATURE_META, empty_bundle, verify

from .tools_support import DOMAIN, bundle, keypair

KEY, PUBLIC = keypair()
OTHER_KEY, OTHER_PUBLIC = keypair()
FINGERPRINT = KeyManager.calculate_key_fingerprint_from_pem(PUBLIC)
OTHER_FINGERPRINT = KeyManager.calculate_key_fingerprint_from_pem(OTHER_PUBLIC)
SIGNER = SchemaSigningWorkflow(KEY)
FORGER = SchemaSigningWorkflow(OTHER_KEY)
#: How long a test waits for an answer that never comes (the server's silence must end in a typed error).
SHORT_S = 0.3
#: What the gateway may raise for a server's answer.
LISTING_ERRORS = (ToolRefused, ToolServerUnavailable)
CALL_ERRORS = (ToolCallFailed, ToolTimeout, ToolServerUnavailable, ToolResultTooLarge)

# --- JSON a server may send -------------------------------------------------------------------------------

#: Text JSON can carry (no lone surrogates: a line holding one is not JSON and never parses).
TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)
SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | TEXT
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8
)
OBJECTS = st.dictionaries(TEXT, JSON, max_size=4)
NAMES = (
    st.from_regex(r"[A-Za-z0-9_./\-]{1,12}", fullmatch=True)
    | st.sampled_from(
        ["read_file", "Read_File", "a\n", "a b", "²", "\uff52\uff45\uff41\uff44", "x" * 129, "x" * 128, ""]
    )
    | TEXT
)
SCHEMAS = st.fixed_dictionaries(
    {"type": st.just("object")},
    optional={"properties": st.dictionaries(TEXT, st.fixed_dictionaries({"type": st.just("string")}), max_size=3)},
)
TOOLS = st.fixed_dictionaries(
    {"name": NAMES, "inputSchema": SCHEMAS},
    optional={
        "description": TEXT,
        "title": TEXT,
        "outputSchema": SCHEMAS,
        "annotations": st.fixed_dictionaries({}, optional={"title": TEXT, "readOnlyHint": st.booleans()}),
        "_meta": st.dictionaries(st.sampled_from([SIGNATURE_META, "x"]), JSON, max_size=2),
    },
)
ERRORS = st.fixed_dictionaries(
    {"code": st.integers(-(2**31), 2**31 - 1) | st.sampled_from([-32000, -32001, -32602, -32603]), "message": TEXT},
    optional={"data": JSON},
)
LIST_ANSWERS = st.one_of(
    st.builds(lambda tools: {"result": {"tools": tools}}, st.lists(TOOLS, max_size=4)),
    st.builds(lambda tools: {"result": {"tools": tools}}, st.lists(TOOLS | OBJECTS, max_size=3)),
    st.builds(lambda tools, c: {"result": {"tools": tools, "nextCursor": c}}, st.lists(TOOLS, max_size=2), TEXT),
    st.builds(lambda result: {"result": result}, OBJECTS),
    st.builds(lambda err: {"error": err}, ERRORS),
)
CONTENT = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image", "bogus"])}, optional={"text": JSON}),
)
CALL_ANSWERS = st.one_of(
    st.builds(lambda c, e: {"result": {"content": c, "isError": e}}, st.lists(CONTENT, max_size=3), st.booleans()),
    st.builds(lambda c, s: {"result": {"content": c, "structuredContent": s}}, st.lists(CONTENT, max_size=2), OBJECTS),
    st.builds(lambda result: {"result": result}, OBJECTS),
    st.builds(lambda err: {"error": err}, ERRORS),
)

# --- a server at the other end of memory streams -----------------------------------------------------------

Answer = dict[str, Any] | str | None  # a JSON-RPC answer body, a raw line, or no answer at all


def _line(request_id: Any, answer: dict[str, Any] | str) -> str:
    return answer if isinstance(answer, str) else json.dumps({"jsonrpc": "2.0", "id": request_id, **answer})


def fake_server(answers: dict[str, Answer]) -> Callable[[], contextlib.AbstractAsyncContextManager[Any]]:
    """A transport to a server answering each method with ``answers[method]``; each line is parsed as the
    stdio transport parses it (a line that is not a JSON-RPC message reaches the session as an exception)."""

    @contextlib.asynccontextmanager
    async def transport() -> AsyncIterator[tuple[Any, Any]]:
        to_server, from_client = anyio.create_memory_object_stream[SessionMessage](100)
        to_client, from_server = anyio.create_memory_object_stream[SessionMessage | Exception](100)

        async def serve() -> None:
            async for message in from_client:
                request = message.message
                if not isinstance(request, mt.JSONRPCRequest):
                    continue
                if request.method == "initialize":
                    version = (request.params or {}).get("protocolVersion")
                    result = {"protocolVersion": version, "capabilities": {"tools": {}}, "serverInfo": {"name": "f"}}
                    answer: Answer = {"result": {**result, "serverInfo": {"name": "f", "version": "1"}}}
                else:
                    answer = answers.get(request.method, {"error": {"code": -32601, "message": "no such method"}})
                if answer is None:
                    continue  # silence
                line = _line(request.id, answer)
                try:
                    await to_client.send(SessionMessage(mt.jsonrpc_message_adapter.validate_json(line, by_name=False)))
                except ValueError as exc:
                    await to_client.send(exc)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                try:
                    yield from_server, to_server
                finally:
                    tg.cancel_scope.cancel()
        finally:
            for stream in (to_server, from_client, to_client, from_server):
                stream.close()

    return transport


async def connected(answers: dict[str, Answer]) -> McpConnection:
    registration = ToolServerRegistered(server="srv", transport="stdio", command=("x",), domain=DOMAIN)
    conn = McpConnection("srv", fake_server(answers), registration=registration)
    await conn.start(timeout=5)
    return conn


async def attempt(answer: Awaitable[Any], errors: tuple[type[SymbiError], ...]) -> Any:
    """What ``answer`` gives, or the typed error (one of ``errors``) it raised instead."""
    try:
        return await answer
    except errors as exc:
        return exc


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 30))


class MemoryRegistry:
    """The registry's aggregate folded in memory (the event store is not what is tested here)."""

    def __init__(self) -> None:
        self.states: dict[str, ServerState] = {}

    async def state(self, server: str, *, fresh: bool = False) -> ServerState:
        return self.states.get(server) or TOOLSERVER.initial(server)

    async def execute(self, server: str, command: Command) -> ServerState:
        state = await self.state(server)
        for happened in TOOLSERVER.decide(state, command):
            state = TOOLSERVER.apply(state, happened)
        self.states[server] = state
        return state


async def service_for(conn: McpConnection, *, pinned: str = "", timeout_s: float = 2.0, **limits: Any) -> ToolService:
    registry = MemoryRegistry()
    assert conn.registration is not None
    await registry.execute("srv", conn.registration)
    if pinned:
        await registry.execute("srv", PinKey(DOMAIN, pinned))
    service = ToolService(registry, bundle(PUBLIC), limits=ToolLimits(timeout_s=timeout_s, **limits), local=True)
    service.connections["srv"] = conn
    return service


def signed(tool: dict[str, Any], signer: SchemaSigningWorkflow = SIGNER) -> dict[str, Any]:
    return {**tool, "_meta": {SIGNATURE_META: signer.sign_schema(definition_of(tool))}}


# --- tools/list ----------------------------------------------------------------------------------------------


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=LIST_ANSWERS)
def test_a_listing_is_tools_or_a_typed_refusal(answer: dict[str, Any]) -> None:
    async def body() -> None:
        conn = await connected({"tools/list": answer})
        try:
            listed = await attempt(conn.list_tools(timeout=5), LISTING_ERRORS)
            event(type(listed).__name__)
            if isinstance(listed, SymbiError):
                assert listed.message
                return
            sent = answer["result"]["tools"]
            assert not answer["result"].get("nextCursor")
            assert [t["name"] for t in listed] == [t["name"] for t in sent]
            for wire, tool in zip(sent, listed, strict=True):  # what was listed is what was sent
                assert isinstance(tool["inputSchema"], dict)
                assert definition_of(tool) == definition_of(wire)
        finally:
            await conn.close()

    run(body)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=LIST_ANSWERS, signing=st.sampled_from(["signed", "forged", "as sent"]))
def test_a_refresh_records_exactly_what_was_listed_or_leaves_nothing_callable(
    answer: dict[str, Any], signing: str
) -> None:
    tools = answer.get("result", {}).get("tools")
    if isinstance(tools, list) and signing != "as sent":
        signer = SIGNER if signing == "signed" else FORGER
        answer = {"result": {**answer["result"], "tools": [signed(t, signer) if "name" in t else t for t in tools]}}

    async def body() -> None:
        conn = await connected({"tools/list": answer})
        service = await service_for(conn)
        try:
            state = await attempt(service.refresh("srv"), LISTING_ERRORS)
            event(type(state).__name__)
            if isinstance(state, ToolServerUnavailable):  # a JSON-RPC error -32000: the connection closed
                assert "closed the connection" in state.message
                return
            if isinstance(state, ToolRefused):
                assert state.message
                assert service.definitions["srv"] == {}  # nothing of a refused listing is callable
                assert not any(r.callable for r in (await service.registry.state("srv")).tools.values())
                return
            sent = answer["result"]["tools"]
            assert sorted(service.definitions["srv"]) == sorted(t["name"] for t in sent)
            for wire in sent:
                assert TOOL_NAME.fullmatch(wire["name"])
                definition = definition_of(wire)
                record = state.tools[wire["name"]]
                assert service.definitions["srv"][wire["name"]] == definition
                assert record.seen_pin == pin_of(definition)
                assert record.status == "pending"
                assert (record.verification == "verified") == (signing == "signed")  # only our signer's is
            if signing == "signed" and sent:
                assert state.key_fingerprint == FINGERPRINT
            else:
                assert state.key_fingerprint == ""
        finally:
            await conn.close()

    run(body)


@pytest.mark.parametrize(
    "answer",
    [
        None,  # never answers
        '{"jsonrpc": "2.0", "id": 1, "result": 5}',  # not a JSON-RPC message: dropped by the transport
        '{"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "a\\ud800", "inputSchema": {}}]}}',
        '{"jsonrpc": "2.0", "id": 1, "result": {"tools": []}',  # cut short
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": "x"}}',
        '{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"t","inputSchema":' + "[" * 400 + "]" * 400 + "}]}}",
    ],
)
def test_a_listing_that_never_comes_is_unavailable_in_time(answer: str | None) -> None:
    async def body() -> None:
        conn = await connected({"tools/list": answer})
        try:
            with pytest.raises(ToolServerUnavailable, match="did not list its tools"):
                await conn.list_tools(timeout=SHORT_S)
            service = await service_for(conn, timeout_s=SHORT_S)
            with pytest.raises(ToolServerUnavailable):
                await service.refresh("srv")
            assert await service.list() == []  # one silent server holds up no listing
        finally:
            await conn.close()

    run(body)


def test_a_listing_without_end_is_refused() -> None:
    answer = {"result": {"tools": [{"name": "t", "inputSchema": {"type": "object"}}], "nextCursor": "again"}}

    async def body() -> None:
        conn = await connected({"tools/list": answer})
        try:
            with pytest.raises(ToolRefused, match="more than 100 pages"):
                await conn.list_tools(timeout=10)
        finally:
            await conn.close()

    run(body)


@given(depth=st.integers(1, 150), leaf=TEXT)
@settings(max_examples=30, deadline=None)
def test_deep_definitions_within_what_the_wire_carries_are_pinned_and_scanned(depth: int, leaf: str) -> None:
    nested: Any = leaf
    for i in range(depth):
        nested = {"description": nested} if i % 2 else [nested]
    tool = {"name": "deep", "inputSchema": {"type": "object", "properties": {"p": {"x": nested}}}}

    async def body() -> None:
        conn = await connected({"tools/list": {"result": {"tools": [tool]}}})
        service = await service_for(conn)
        try:
            state = await service.refresh("srv")
            assert state.tools["deep"].seen_pin == pin_of(definition_of(tool))
            assert leaf in list(strings_in(service.definitions["srv"]["deep"]))
            assert scan("srv", definition_of(tool)) == scan("srv", service.definitions["srv"]["deep"])
        finally:
            await conn.close()

    run(body)


# --- tools/call ----------------------------------------------------------------------------------------------

LISTED = {"result": {"tools": [{"name": "t", "inputSchema": {"type": "object"}}]}}
LISTED_WITH_OUTPUT = {
    "result": {
        "tools": [
            {
                "name": "t",
                "inputSchema": {"type": "object"},
                "outputSchema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
            }
        ]
    }
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    answer=CALL_ANSWERS, listing=st.sampled_from([LISTED, LISTED_WITH_OUTPUT, {"error": {"code": 1, "message": "x"}}])
)
def test_a_call_answer_is_a_result_or_a_typed_failure(answer: dict[str, Any], listing: dict[str, Any]) -> None:
    async def body() -> None:
        conn = await connected({"tools/list": listing, "tools/call": answer})
        try:
            result = await attempt(conn.call("t", {}, 5), CALL_ERRORS)
            event(type(result).__name__)
            if isinstance(result, SymbiError):
                assert result.message
                return
            assert isinstance(result, mt.CallToolResult)
            dumped = result.model_dump(by_alias=True, exclude_none=True, mode="json")
            if "content" in answer.get("result", {}):
                assert dumped["content"] == [
                    {k: v for k, v in c.items() if v is not None} for c in answer["result"]["content"]
                ]
        finally:
            await conn.close()

    run(body)


def test_a_call_answered_with_nothing_times_out() -> None:
    async def body() -> None:
        conn = await connected({"tools/list": LISTED, "tools/call": '{"jsonrpc": "2.0", "id": 2, "result": []}'})
        try:
            with pytest.raises(ToolTimeout):
                await conn.call("t", {}, SHORT_S)
        finally:
            await conn.close()

    run(body)


def _size_of(result: dict[str, Any]) -> int:
    """The size the gateway measures: the canonical JSON of the result as the SDK parsed it, ``_meta`` out."""
    dumped = mt.CallToolResult.model_validate(result, by_name=False).model_dump(
        by_alias=True, exclude_none=True, mode="json"
    )
    dumped.pop("_meta", None)
    return len(canonical_json(dumped))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=700),
    error=st.booleans(),
    meta=st.none() | OBJECTS,
)
def test_the_result_size_cap_holds_at_its_exact_boundary(text: str, error: bool, meta: dict[str, Any] | None) -> None:
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": error}
    if meta is not None:
        result["_meta"] = meta
    size = _size_of(result)

    async def body() -> None:
        conn = await connected({"tools/list": LISTED, "tools/call": {"result": result}})
        try:
            service = await service_for(conn, max_result_bytes=size)
            if error:
                with pytest.raises(ToolCallFailed) as failed:
                    await service.call("srv.t", {})
                assert text[:500] in failed.value.message
                assert len(failed.value.message) <= 600  # the server's text is cut, not passed on whole
            else:
                called = await service.call("srv.t", {})
                assert called.size == size == len(canonical_json(called.result))
                assert called.result["content"] == result["content"]
                assert "_meta" not in called.result
            service.limits = dataclasses.replace(service.limits, max_result_bytes=size - 1)
            with pytest.raises(ToolResultTooLarge) as raised:
                await service.call("srv.t", {})
            assert raised.value.details == {"size": size, "max_result_bytes": size - 1}
        finally:
            await conn.close()

    run(body)


# --- SchemaPin: a pin mismatch refuses, it never falls back ----------------------------------------------


@settings(max_examples=60, deadline=None)
@given(tool=TOOLS.filter(lambda t: bool(TOOL_NAME.fullmatch(t["name"]))), signature=TEXT | st.just(""))
def test_a_signature_verifies_exactly_its_definition_under_the_pinned_key(tool: dict[str, Any], signature: str) -> None:
    definition = definition_of(tool)
    trust = bundle(PUBLIC)
    good = SIGNER.sign_schema(definition)
    check: dict[str, Any] = {"domain": DOMAIN, "bundle": trust}
    assert verify("srv", definition, good, pinned="", **check).outcome == "verified"
    assert verify("srv", definition, good, pinned=FINGERPRINT, **check).outcome == "verified"
    mismatch = verify("srv", definition, good, pinned=OTHER_FINGERPRINT, **check)
    assert (mismatch.outcome, mismatch.valid) == ("key_pin_mismatch", False)
    assert not verify("srv", definition, FORGER.sign_schema(definition), pinned="", **check).valid
    assert not verify("srv", {**definition, "description": "x"}, good, pinned="", **check).valid or (
        definition.get("description") == "x"
    )
    garbage = verify("srv", definition, signature, pinned="", **check)
    assert not garbage.valid
    assert verify("srv", definition, good, pinned="", domain="other.example", bundle=trust).outcome == "unknown_domain"
    assert verify("srv", definition, good, pinned="", domain=DOMAIN, bundle=empty_bundle()).outcome == "unknown_domain"


def test_a_listing_signed_by_another_key_than_the_pinned_one_is_never_callable() -> None:
    tool = {"name": "t", "description": "Adds.", "inputSchema": {"type": "object"}}

    async def body() -> None:
        conn = await connected({"tools/list": {"result": {"tools": [signed(tool)]}}})
        service = await service_for(conn, pinned=OTHER_FINGERPRINT)
        try:
            state = await service.refresh("srv")
            record = state.tools["t"]
            assert (record.verification, record.callable) == ("key_pin_mismatch", False)
            assert state.key_fingerprint == OTHER_FINGERPRINT  # the pinned key stays; no fall back to the new one
            with pytest.raises(ToolRefused, match="key_pin_mismatch"):
                await service.registry.execute("srv", Approve("t"))
            with pytest.raises(SymbiError, match="SchemaPin"):
                await service.callable_record("srv.t")
        finally:
            await conn.close()

    run(body)


@pytest.mark.parametrize(
    "relisted",
    [
        {"result": {"tools": [{"name": "t"}]}},  # not a tool (no inputSchema)
        {"result": {}},
        {"error": {"code": -32603, "message": "boom"}},
        {"result": {"tools": [{"name": "t", "inputSchema": {"type": "object"}}], "nextCursor": "again"}},
    ],
)
def test_an_approved_tool_is_not_served_once_its_server_lists_what_is_refused(relisted: dict[str, Any]) -> None:
    """A call is served only while the server lists the approved definition: a re-read listing that is
    refused leaves nothing callable (it never falls back to the definition approved before)."""
    tool = {"name": "t", "description": "Adds.", "inputSchema": {"type": "object"}}
    answers: dict[str, Answer] = {"tools/list": {"result": {"tools": [signed(tool)]}}}

    async def body() -> None:
        conn = await connected(answers)
        service = await service_for(conn)
        try:
            await service.refresh("srv")
            await service.approve("srv.t")
            assert (await service.callable_record("srv.t")).callable
            answers["tools/list"] = relisted
            conn.changed.set()  # notifications/tools/list_changed
            with pytest.raises(SymbiError) as refused:
                await service.callable_record("srv.t")
            assert refused.value.code == "unknown_tool"
            assert await service.list() == []
        finally:
            await conn.close()

    run(body)
