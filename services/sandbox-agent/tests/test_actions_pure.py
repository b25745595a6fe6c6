"""The action gateway's pure rules: finding request lines, parsing, the policy question, the schema check,
the replies, and how the execution aggregate records decisions."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from symbi_common.decisions import DecisionRecord
from symbi_contracts.context.commands import Query, StoreRequest
from symbi_contracts.sandbox_agent.events import (
    ExecutionAction,
    ExecutionExited,
    ExecutionPaused,
    ExecutionStarted,
    Limits,
)
from symbi_sandbox_agent.actions import (
    MAX_REQUEST_BYTES,
    ActionRequest,
    MemoryReadArgs,
    MemoryWriteArgs,
    RequestLine,
    RequestLines,
    allowed_reply,
    check_against_schema,
    context_retrieve_body,
    context_store_body,
    decision_request,
    error_reply,
    parse_request,
)
from symbi_sandbox_agent.domain import EXECUTION
from symbi_sandbox_agent.errors import (
    ActionRequestError,
    ActionRequestTooLarge,
    MalformedActionRequest,
    UnknownAction,
)


def lines(*chunks: bytes, limit: int = MAX_REQUEST_BYTES) -> list[RequestLine]:
    splitter = RequestLines(limit)
    return [line for chunk in chunks for line in splitter.feed(chunk)]


# --- request lines -----------------------------------------------------------------------------------


def test_only_prefixed_lines_are_requests_and_they_may_arrive_split() -> None:
    found = lines(b"log\n@sym", b'bi {"a"', b":1}\r\nnot @symbi x\n  @symbi no\n@symbi {}\n@symbi")
    assert found == [RequestLine(b'{"a":1}'), RequestLine(b"{}")]


def test_a_prefix_split_byte_by_byte_is_still_found() -> None:
    data = b'@symbi {"action":"memory.read"}\n'
    assert lines(*(data[i : i + 1] for i in range(len(data)))) == [RequestLine(b'{"action":"memory.read"}')]


def test_an_overlong_request_is_reported_once_and_the_next_line_is_read() -> None:
    found = lines(b"@symbi " + b"x" * 30, b"y" * 1000, b"z\n@symbi {}\n", limit=20)
    assert [(len(f.body) > 0, f.too_long) for f in found] == [(True, True), (True, False)]
    assert found[1].body == b"{}"
    with pytest.raises(ActionRequestTooLarge):
        parse_request(found[0])


def test_long_log_lines_are_not_kept() -> None:
    splitter = RequestLines(limit=16)
    assert splitter.feed(b"z" * 100_000) == []
    assert len(splitter._line) == 0  # memory stays bounded whatever the workload prints
    assert splitter.feed(b"\n@symbi {}\n") == [RequestLine(b"{}")]


_PIECES = st.sampled_from([b"@symbi ", b"@sym", b"bi", b"\n", b"\r\n", b"{}", b'{"a":1}', b"x" * 7, b" ", b"@"])


@settings(max_examples=300, deadline=None)
@given(
    stream=st.lists(_PIECES | st.binary(max_size=12), max_size=40).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=12),
    limit=st.sampled_from([4, 16, 64]),
    prefix=st.sampled_from([b"@symbi ", b""]),
)
def test_how_the_stream_is_cut_into_chunks_changes_nothing(
    stream: bytes, cuts: list[int], limit: int, prefix: bytes
) -> None:
    """The workload's output arrives in chunks of any size: the request lines found are those of the whole
    stream read at once, and what the splitter keeps between chunks stays within the line limit. (An overlong
    line's body is only the start of it for the error message: how much of it arrived in its chunk varies.)"""
    whole = RequestLines(limit, prefix).feed(stream)
    splitter = RequestLines(limit, prefix)
    found: list[RequestLine] = []
    at = 0
    for cut in [*sorted({c for c in cuts if c < len(stream)}), len(stream)]:
        found += splitter.feed(stream[at:cut])
        at = cut
        assert len(splitter._line) <= len(prefix) + limit

    def seen(lines: list[RequestLine]) -> list[tuple[bool, bytes]]:
        return [(line.too_long, b"" if line.too_long else line.body) for line in lines]

    assert seen(found) == seen(whole)
    assert all(len(line.body) <= limit or line.too_long for line in found)


# --- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error", "words"),
    [
        (b"not json", MalformedActionRequest, "not a JSON object"),
        (b"[1]", MalformedActionRequest, "shape"),
        (b'{"action":"memory.write"}', MalformedActionRequest, "resource"),
        (b'{"action":"memory.write","resource":"n","extra":1}', MalformedActionRequest, "extra"),
        (b'{"action":"sandbox.start","resource":"t"}', UnknownAction, "sandbox.start"),
        (b'{"action":"memory.write","resource":""}', MalformedActionRequest, "resource must be"),
        (b'{"action":"memory.write","resource":"n","args":{"text":1}}', MalformedActionRequest, "args of"),
        (b'{"action":"memory.read","resource":"n","args":{}}', MalformedActionRequest, "query"),
    ],
)
def test_a_bad_request_is_a_typed_error_saying_what_is_wrong(body: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        parse_request(RequestLine(body))


def test_a_request_becomes_the_policy_question_in_the_schemas_vocabulary() -> None:
    write = parse_request(
        RequestLine(
            b'{"action":"memory.write","resource":"notes","context":{"classification":"secret"},"args":{"text":"t"}}'
        )
    )
    q = decision_request("a1", write)
    assert (q.principal.uid, q.action, q.resource.uid) == ('Agent::"a1"', "memory.write", 'Memory::"notes"')
    assert q.resource.parents == ('Agent::"a1"',)  # the agent's own memory
    assert q.context == {"classification": "secret"}
    check_against_schema(q)
    tool = decision_request("a1", ActionRequest(action="tool.invoke", resource="search"))
    assert (tool.resource.uid, tool.resource.parents) == ('Tool::"search"', ())
    message = decision_request("a1", ActionRequest(action="message.send", resource="a2"))
    assert message.resource.uid == 'Agent::"a2"'
    check_against_schema(message)


@pytest.mark.parametrize(
    ("context", "words"),
    [
        ({"classification": 5}, "is not valid for"),
        ({"destination": "x"}, "should not exist"),
        ({"classification": None}, "cannot be expressed"),
    ],
)
def test_a_context_the_schema_rejects_is_refused_before_any_decision(context: dict[str, object], words: str) -> None:
    q = decision_request("a1", ActionRequest(action="memory.write", resource="n", context=context))
    with pytest.raises(ActionRequestError, match=words):
        check_against_schema(q)


def test_the_context_service_bodies_carry_the_agent_the_task_and_the_collection() -> None:
    req = ActionRequest(action="memory.write", resource="notes")
    body = context_store_body("a1", "t9", req, MemoryWriteArgs(text="hi", tags=("x",), metadata={"k": 1}))
    assert isinstance(body, StoreRequest)
    assert msgspec.json.decode(msgspec.json.encode(body)) == {  # as it goes on the wire
        "agent_id": "a1",
        "memories": [
            {
                "id": None,
                "kind": "long_term",
                "text": "hi",
                "tags": ["x"],
                "metadata": {"k": 1, "collection": "notes"},
                "origin": {"task_id": "t9"},
                "ttl_s": None,
            }
        ],
        "owner": None,
    }
    named = context_store_body("a1", "t9", req, MemoryWriteArgs(text="hi", memory_id="note-1"))
    assert named.memories[0].id == "note-1"  # the workload's id goes through: its retries store once
    read = context_retrieve_body("a1", req, MemoryReadArgs(query="q"), min_sequence=42)
    assert isinstance(read, Query)
    assert read.metadata == {"collection": "notes"}
    assert read.min_sequence == 42
    everything = context_retrieve_body(
        "a1", ActionRequest(action="memory.read", resource="*"), MemoryReadArgs(query="q"), 0
    )
    assert everything.metadata == {}


def test_arguments_the_context_contract_refuses_are_the_workloads_malformed_request() -> None:
    req = ActionRequest(action="memory.write", resource="notes")
    with pytest.raises(MalformedActionRequest, match=r"memory\.write"):
        context_store_body("a1", "t9", req, MemoryWriteArgs(text="hi", kind="forever"))
    with pytest.raises(MalformedActionRequest, match=r"memory\.write"):
        context_store_body("a1", "t9", req, MemoryWriteArgs(text="x" * 40_000))


def test_replies_are_single_json_lines() -> None:
    ok = allowed_reply(3, {"memory_id": "m"})
    err = error_reply(4, "malformed_request", "bad\nline")
    assert ok.endswith(b"\n")
    assert ok.count(b"\n") == 1
    assert err.count(b"\n") == 1
    assert msgspec.json.decode(ok) == {"seq": 3, "outcome": "allowed", "result": {"memory_id": "m"}}
    assert msgspec.json.decode(err)["error"] == {"code": "malformed_request", "message": "bad\nline"}


# --- the execution aggregate -----------------------------------------------------------------------


def _started(attempt: int = 1) -> ExecutionStarted:
    limits = Limits(
        memory_mb=64,
        cpu_cores=1,
        disk_io_mbps=10,
        network_io_mbps=0,
        execution_timeout_s=5,
        pids=64,
        output_cap_bytes=1024,
        scratch_mb=1,
    )
    decision = DecisionRecord(action="sandbox.start", effect="allow", policy_version=0)
    return ExecutionStarted(
        attempt=attempt,
        host_id="h",
        tier="tier1",
        runtime="runc",
        container="c",
        image="i",
        command=(),
        limits=limits,
        hardening={},
        decision=decision,
    )


def test_actions_are_recorded_while_the_attempt_runs_or_is_paused_and_dropped_after() -> None:
    action = ExecutionAction(attempt=1, seq=1, action="memory.write", resource="n", outcome="denied")
    state = EXECUTION.apply(EXECUTION.initial("t"), _started())
    assert EXECUTION.decide(state, action) == [action]
    state = EXECUTION.apply(state, ExecutionPaused(attempt=1, reason="action_denied"))
    assert state.status == "paused"
    assert EXECUTION.decide(state, action) == [action]
    assert EXECUTION.decide(state, msgspec.structs.replace(action, attempt=0)) == []  # an older attempt's
    ended = EXECUTION.apply(state, ExecutionExited(attempt=1, exit_code=0))
    assert EXECUTION.decide(ended, action) == []
    encoded = msgspec.json.encode(action)
    assert msgspec.json.decode(encoded, type=ExecutionAction) == action
