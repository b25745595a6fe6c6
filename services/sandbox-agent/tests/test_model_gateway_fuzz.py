"""What a sandbox sends the model gateway, and what a provider answers it, ends in an OpenAI answer or a typed
error, and every reservation made is settled exactly once, never for less than the provider may have been
asked to produce (pure: the provider, the ledger and the callers are fakes; no NATS, no Cedar).

The request body is the sandbox's choice (the agent is untrusted); the provider's answer is not trusted with the
budget either.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from symbi_common.decisions import Allow, DecisionRecord
from symbi_contracts.models.events import BudgetEvent, BudgetReconciled, BudgetReleased, BudgetReserved
from symbi_sandbox_agent.egress.internal import Caller, InternalRequest
from symbi_sandbox_agent.model_ops import reply_content
from symbi_sandbox_agent.models.budget import Limit
from symbi_sandbox_agent.models.callers import Budgeted
from symbi_sandbox_agent.models.catalog import Catalog, Route
from symbi_sandbox_agent.models.errors import BadModelRequest, UnknownModel
from symbi_sandbox_agent.models.gateway import ModelGateway
from symbi_sandbox_agent.models.ledger import Hold
from symbi_sandbox_agent.models.pricing import Price, text_tokens
from symbi_sandbox_agent.models.relay import Relay
from symbi_sandbox_agent.models.wire import (
    MAX_DEPTH,
    MAX_REPORTED_TOKENS,
    StreamTally,
    max_completion_tokens,
    parse_body,
    reply_text,
    usage_of,
)

DEFAULT_MAX = 64
CATALOG = Catalog(
    {
        "test/small": Route("test", "small", Price(1_000_000, 2_000_000)),
        "test/dup": Route("test", "dup", Price(1, 1)),
        "other/dup": Route("other", "dup", Price(1, 1)),
    }
)
ABSENT = object()


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


class FakeUpstreams:
    def __init__(self, status: int = 200, chunks: list[bytes] | None = None) -> None:
        self.status = status
        self.chunks = chunks if chunks is not None else [b'{"choices": []}']
        self.bodies: list[dict[str, Any]] = []

    async def send(self, provider: str, path: str, body: bytes, *, accept: str) -> httpx.Response:
        self.bodies.append(msgspec.json.decode(body))
        return httpx.Response(self.status, stream=_Chunks(self.chunks))

    def scrub(self, provider: str, status: int, body: bytes) -> str:
        return body[:300].decode("utf-8", "replace")

    async def aclose(self) -> None:
        pass


class FakeLedger:
    def __init__(self) -> None:
        self.reserved: list[BudgetReserved] = []
        self.settled: list[BudgetEvent] = []

    async def reserve(self, tenant: str, limit: Limit, event: BudgetReserved, ask: Any) -> Hold:
        self.reserved.append(event)
        record = DecisionRecord(action="model.invoke", effect="allow", policy_version=0)
        return Hold("agg", event, Allow(), record)

    async def settle(self, aggregate: str, event: BudgetEvent) -> None:
        self.settled.append(event)


class FakeCallers:
    async def of(self, caller: Caller) -> Budgeted:
        return Budgeted(caller.agent_id, caller.task_id, "default", Limit(tokens=10**9))


async def _unused_decide(question: Any) -> Any:
    raise AssertionError("the fake ledger decides")


def _gateway(upstreams: FakeUpstreams) -> tuple[ModelGateway, FakeLedger]:
    ledger = FakeLedger()
    gw = ModelGateway(
        catalog=CATALOG,
        upstreams=upstreams,  # type: ignore[arg-type]
        ledger=ledger,  # type: ignore[arg-type]
        callers=FakeCallers(),  # type: ignore[arg-type]
        decide=_unused_decide,
        default_max_tokens=DEFAULT_MAX,
    )
    return gw, ledger


async def _serve(gw: ModelGateway, body: bytes, path: str = "/v1/chat/completions") -> tuple[int, bytes]:
    request = InternalRequest(method="POST", path=path, headers={}, body=body)
    answer = await gw.handle(Caller(agent_id="a", task_id="t"), request)
    data = b"".join([c async for c in answer.body])
    await gw.drain()
    return answer.status, data


def _settled_once(ledger: FakeLedger) -> None:
    """Every reservation is settled exactly once (reconciled or released), none is given back twice."""
    ids = [e.reservation_id for e in ledger.settled]
    assert sorted(ids) == sorted(r.reservation_id for r in ledger.reserved)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_REPORTED_TOKENS


# --- what the sandbox sends -----------------------------------------------------------------------------------

_ODD = st.sampled_from([None, True, False, 0, 1, -1, 1.5, "1", "²", "\u0661", "", [], {}, [1], {"a": 1}, 10**30])
_TOKENS = st.sampled_from([ABSENT, None, 1, 2, DEFAULT_MAX, MAX_REPORTED_TOKENS, MAX_REPORTED_TOKENS + 1]) | _ODD
_FIELDS = {
    "model": st.sampled_from([ABSENT, "test/small", "small", "dup", "test/dup", "nope", "", "x" * 201]) | _ODD,
    "messages": st.sampled_from([ABSENT, [], [{"role": "user", "content": "hi"}], [{"content": ["a", {"x": 1}]}]])
    | _ODD,
    "stream": st.sampled_from([ABSENT, True, False]) | _ODD,
    "stream_options": st.sampled_from([ABSENT, {"include_usage": False}, {"x": 1}]) | _ODD,
    "max_tokens": _TOKENS,
    "max_completion_tokens": _TOKENS,
    "n": st.sampled_from([ABSENT, 1, 2, 128, 129]) | _ODD,
}


def _expected_ok(body: dict[str, Any]) -> bool:
    """The oracle: whether the gateway should serve this chat request."""
    model = body.get("model")
    if not isinstance(model, str) or model not in ("test/small", "small", "test/dup"):
        return False
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return False
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return False
    if stream is True and not isinstance(body.get("stream_options") or {}, dict):
        return False
    if any(body.get(k) is not None and not _is_count(body[k]) for k in ("max_tokens", "max_completion_tokens")):
        return False
    n = body.get("n", 1)
    return isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional=_FIELDS))
def test_a_chat_request_is_served_within_what_was_reserved_or_refused_typed(fields: dict[str, Any]) -> None:
    body = {k: v for k, v in fields.items() if v is not ABSENT}
    upstreams = FakeUpstreams(chunks=[b'{"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}'])
    gw, ledger = _gateway(upstreams)
    status, data = asyncio.run(_serve(gw, msgspec.json.encode(body)))
    _settled_once(ledger)
    if not _expected_ok(body):
        assert status in (400, 404), (body, status, data)
        assert msgspec.json.decode(data)["error"]["type"] == "invalid_request_error"
        assert not upstreams.bodies
        return
    assert status == 200, (body, status, data)
    sent = upstreams.bodies[0]
    # The provider is told a bool (or nothing) and a limit no larger than what was reserved for each choice.
    assert sent.get("stream") in (None, True, False)
    if sent.get("stream") is True:
        assert sent["stream_options"]["include_usage"] is True
    limits = [sent[k] for k in ("max_tokens", "max_completion_tokens") if sent.get(k) is not None]
    assert limits, "the provider must be told the completion limit that was reserved"
    prompt = 3  # at least the framing of the prompt
    reserved = ledger.reserved[0].tokens
    assert reserved >= prompt + max(limits) * body.get("n", 1)


@pytest.mark.parametrize("depth", [MAX_DEPTH - 3, MAX_DEPTH - 2, 10_000, 400_000])
def test_nesting_is_refused_typed_beyond_the_limit(depth: int) -> None:
    # {"model", "messages": [{"content": <depth lists>}]}: the body, messages and the message are 3 levels.
    content = b"[" * depth + b"]" * depth
    body = b'{"model": "test/small", "messages": [{"role": "user", "content": ' + content + b"}]}"
    gw, ledger = _gateway(FakeUpstreams())
    status, data = asyncio.run(_serve(gw, body))
    _settled_once(ledger)
    assert status == (200 if depth + 3 <= MAX_DEPTH else 400), data


def test_models_complete_refuses_nesting_typed() -> None:
    deep: Any = "x"
    for _ in range(5_000):
        deep = [deep]
    gw, ledger = _gateway(FakeUpstreams())
    with pytest.raises(BadModelRequest):
        asyncio.run(gw.complete(Caller("a", "t"), {"model": "test/small", "messages": [{"content": deep}]}))
    assert not ledger.reserved


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_any_request_bytes_are_an_object_or_a_bad_request(raw: bytes) -> None:
    try:
        parsed = parse_body(raw, 1024)
    except BadModelRequest:
        return
    assert isinstance(parsed, dict)
    assert parse_body(msgspec.json.encode(parsed), 1024) == parsed  # round trip


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=20,
    )
)
def test_a_json_object_round_trips_and_the_size_limit_is_exact(value: Any) -> None:
    raw = msgspec.json.encode({"v": value})
    assert parse_body(raw, len(raw)) == {"v": value}
    with pytest.raises(BadModelRequest):
        parse_body(raw, len(raw) - 1)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, DEFAULT_MAX),
        ({"max_tokens": 1}, 1),
        ({"max_tokens": MAX_REPORTED_TOKENS}, MAX_REPORTED_TOKENS),
        ({"max_completion_tokens": 5, "max_tokens": None}, 5),
        ({"max_completion_tokens": 5, "max_tokens": 900}, 900),  # a provider may honour either
        ({"max_completion_tokens": 900, "max_tokens": 5}, 900),
        ({"max_tokens": 0}, None),
        ({"max_tokens": MAX_REPORTED_TOKENS + 1}, None),
        ({"max_tokens": True}, None),
        ({"max_tokens": 2.0}, None),
        ({"max_tokens": "5"}, None),
        ({"max_tokens": "²"}, None),
        ({"max_completion_tokens": 5, "max_tokens": "x"}, None),
    ],
)
def test_the_completion_limit_at_its_boundaries(body: dict[str, Any], expected: int | None) -> None:
    if expected is None:
        with pytest.raises(BadModelRequest):
            max_completion_tokens(body, DEFAULT_MAX)
    else:
        assert max_completion_tokens(body, DEFAULT_MAX) == expected


@settings(max_examples=300, deadline=None)
@given(st.one_of(_ODD, st.text(max_size=210), st.sampled_from([*CATALOG.routes, "dup", "small"])))
def test_a_model_name_is_a_route_or_unknown(name: object) -> None:
    try:
        route = CATALOG.resolve(name)
    except UnknownModel as err:
        message = err.message
    else:
        assert name in (route.name, route.model)
        return
    assert len(message) < 1000


# --- what the provider answers --------------------------------------------------------------------------------

_JSONISH = st.recursive(
    _ODD | st.text(max_size=6) | st.integers(-(2**63), 2**63 - 1),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "content"]), inner, max_size=2),
    max_leaves=8,
)
_USAGE = st.fixed_dictionaries(
    {},
    optional={
        "prompt_tokens": st.sampled_from([0, 7, -5, MAX_REPORTED_TOKENS, MAX_REPORTED_TOKENS + 1]) | _ODD,
        "completion_tokens": st.sampled_from([0, 3, -1]) | _ODD,
    },
)
_CHOICE = st.fixed_dictionaries(
    {}, optional={"message": st.fixed_dictionaries({}, optional={"content": _JSONISH}) | _JSONISH, "delta": _JSONISH}
)
REPLIES = st.fixed_dictionaries(
    {}, optional={"choices": st.lists(_CHOICE | _JSONISH, max_size=3) | _JSONISH, "usage": _USAGE | _JSONISH}
)


@settings(max_examples=300, deadline=None)
@given(reply=REPLIES)
def test_any_reply_is_read_without_error(reply: dict[str, Any]) -> None:
    used = usage_of(reply)
    assert used is None or all(0 <= c <= MAX_REPORTED_TOKENS for c in used)
    assert isinstance(reply_text(reply), str)
    text = reply_content(reply)
    assert text is None or isinstance(text, str)


@settings(max_examples=150, deadline=None)
@given(
    status=st.sampled_from([200, 200, 201, 400, 401, 429, 500]),
    reply=REPLIES.map(msgspec.json.encode)
    | st.binary(max_size=40)
    | st.just(b'{"choices": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
    cut=st.integers(0, 50),
)
def test_any_provider_answer_settles_the_reservation_once(status: int, reply: bytes, cut: int) -> None:
    upstreams = FakeUpstreams(status, [reply[:cut], reply[cut:]])
    gw, ledger = _gateway(upstreams)
    body = msgspec.json.encode({"model": "test/small", "messages": [{"role": "user", "content": "hi"}]})
    answered, _ = asyncio.run(_serve(gw, body))
    _settled_once(ledger)
    (event,) = ledger.settled
    if status >= 400:
        assert answered == 502
        assert isinstance(event, BudgetReleased)
        return
    assert answered == status
    assert isinstance(event, BudgetReconciled)
    assert min(event.input_tokens, event.output_tokens, event.micro_usd) >= 0


def _sse(events: list[bytes], newline: bytes) -> bytes:
    return b"".join(b"data: " + e + newline + newline for e in events)


@settings(max_examples=200, deadline=None)
@given(
    replies=st.lists(REPLIES.map(msgspec.json.encode) | st.binary(max_size=20), max_size=4),
    usage=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)) | st.none(),
    newline=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_a_stream_is_tallied_alike_however_it_is_framed_and_cut(
    replies: list[bytes], usage: tuple[int, int] | None, newline: bytes, cuts: list[int]
) -> None:
    events = [r.replace(b"\r", b"").replace(b"\n", b"") for r in replies]
    if usage is not None:
        events.append(
            msgspec.json.encode(
                {"choices": [], "usage": dict(zip(("prompt_tokens", "completion_tokens"), usage, strict=True))}
            )
        )
    data = _sse(events, newline) + b"data: [DONE]" + newline + newline
    whole = StreamTally()
    whole.feed(data)
    assert whole.done
    if usage is not None:
        assert whole.usage == usage
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    upstreams = FakeUpstreams(200, chunks)
    gw, ledger = _gateway(upstreams)

    async def run() -> bytes:
        body = {"model": "test/small", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        request = InternalRequest(
            method="POST", path="/v1/chat/completions", headers={}, body=msgspec.json.encode(body)
        )
        answer = await gw.handle(Caller("a", "t"), request)
        assert isinstance(answer.body, Relay)
        out = b"".join([c async for c in answer.body])
        await gw.drain()
        return out

    assert asyncio.run(run()) == data  # passed on unchanged
    _settled_once(ledger)
    (event,) = ledger.settled
    assert isinstance(event, BudgetReconciled)
    assert (event.input_tokens, event.output_tokens) == (whole.usage or (event.input_tokens, whole.text_tokens))
    assert event.estimated is (whole.usage is None)


@pytest.mark.parametrize("extra", [0, 1, 5000])
def test_a_reply_larger_than_the_limit_is_not_read_and_the_whole_reservation_is_charged(extra: int) -> None:
    """Before, a reply was read whole, however large. Past the limit it is refused (502) and, as its usage cannot
    be read, reconciled at everything reserved (estimated); one at the limit is read as usual."""
    reply = msgspec.json.encode({"choices": [{"message": {"content": "x" * 50}}]})
    limit = len(reply) + 10
    padded = reply + b" " * (10 + extra)  # trailing whitespace: still the same JSON at the limit
    gw, ledger = _gateway(FakeUpstreams(200, [padded[i : i + 7] for i in range(0, len(padded), 7)]))
    gw.max_reply_bytes = limit
    body = msgspec.json.encode({"model": "test/small", "messages": [{"role": "user", "content": "hi"}]})
    answered, _ = asyncio.run(_serve(gw, body))
    _settled_once(ledger)
    (event,) = ledger.settled
    assert isinstance(event, BudgetReconciled)
    (reserved,) = ledger.reserved
    if extra == 0:
        assert answered == 200
        assert event.output_tokens == text_tokens("x" * 50)  # read: its text counted (no usage reported)
        return
    assert answered == 502
    assert event.estimated
    assert event.input_tokens + event.output_tokens == reserved.tokens
    assert event.micro_usd == reserved.micro_usd


def test_a_large_error_answer_is_not_read_whole() -> None:
    gw, ledger = _gateway(FakeUpstreams(500, [b"e" * 1024] * 100))
    body = msgspec.json.encode({"model": "test/small", "messages": [{"role": "user", "content": "hi"}]})
    answered, data = asyncio.run(_serve(gw, body))
    assert answered == 502
    assert b"an error answer of more than 64 KiB" in data
    (event,) = ledger.settled
    assert isinstance(event, BudgetReleased)
