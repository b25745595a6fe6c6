"""Requests an agent may send that once left an action without its record or a request without an answer
(docs/agent-protocol.md): a context or tool arguments too large to record, numbers Cedar cannot hold, invalid
UTF-8, ids past their bounds, ``agent_id: null``. The real daemon (real NATS, signed event store, allow-all
decisions) serves each over its real socket through the test harness (``symbi_sandbox_agent.harness``).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from symbi_common.settings import Settings
from symbi_contracts.agent_protocol import Reply, Result
from symbi_contracts.sandbox_agent.events import ExecutionAction
from symbi_sandbox_agent import harness as harness_module
from symbi_sandbox_agent.actions import RequestLine, parse_request
from symbi_sandbox_agent.channel import Channel
from symbi_sandbox_agent.errors import ActionRequestError
from symbi_sandbox_agent.gateway import ActionGateway
from symbi_sandbox_agent.harness import GatewayHarness
from symbi_sandbox_agent.recorder import TERMINAL_ATTEMPTS
from symbi_sandbox_agent.tools.service import ToolService

from .conftest import running_agent
from .test_tool_listing_refusals import approved_and_callable, breakable, store, tools  # noqa: F401 (fixtures)

#: Long enough for an answer; the faults fixed here left the agent waiting minutes, or for ever.
ANSWER_WAIT_S = 15.0


@pytest.fixture
async def harness(agent_settings: Callable[..., Settings]) -> AsyncIterator[GatewayHarness]:
    async with running_agent(agent_settings()) as agent:
        yield GatewayHarness(agent.daemon.service)


def exchange(path: str, *lines: bytes) -> list[dict[str, Any] | None]:
    """Send each line on one connection and read its answer (None: no answer within :data:`ANSWER_WAIT_S`)."""
    answers: list[dict[str, Any] | None] = []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(ANSWER_WAIT_S)
        sock.connect(path)
        reader = sock.makefile("rb")
        for line in lines:
            sock.sendall(line + b"\n")
            try:
                answers.append(json.loads(reader.readline() or b"null"))
            except TimeoutError:
                answers.append(None)
                break
    return answers


def code(answer: dict[str, Any] | None) -> str | None:
    return answer["error"]["code"] if answer and answer.get("type") == "error" else None


def request(op: str, args: dict[str, Any] | None = None, **fields: Any) -> bytes:
    return json.dumps({"v": 1, "id": fields.pop("id", 1), "op": op, "args": args or {}, **fields}).encode()


# --- finding 1: no action without its record ---------------------------------------------------------


async def test_a_tool_call_with_half_a_megabyte_of_arguments_is_made_only_with_its_record(
    harness: GatewayHarness,
    tools: ToolService,  # noqa: F811
) -> None:
    """The arguments were recorded twice (``argument_values`` and ``arguments_json``), after the call: the
    event was over the size limit, the agent got ``internal`` and the call that was made had no record."""
    await tools.register(breakable("brk"))
    await approved_and_callable(tools, "brk.add")
    harness.service.tools = tools
    line = request("tools.call", {"name": "brk.add", "arguments": {"a": 2, "b": 3, "q": "x" * 530_000}})
    run = await harness.run_callable(lambda path: exchange(path, line))
    [answer] = run.value
    assert answer is not None
    assert code(answer) != "internal", answer
    [action] = [a for a in run.actions if a.action == "tool.invoke"]
    assert action.outcome in ("allowed", "failed"), action
    assert action.context["arguments_bytes"] > 530_000
    assert len(action.context["arguments_sha256"]) == 64
    assert not {"arguments", "argument_values", "arguments_json"} & set(action.context)


async def test_a_context_too_large_to_record_is_refused_before_anything_is_decided(harness: GatewayHarness) -> None:
    line = request("memory.store", {"text": "t"}, context={"classification": "c" * 1_000_000})
    run = await harness.run_callable(lambda path: exchange(path, line))
    [answer] = run.value
    assert code(answer) == "too_large", answer
    assert "16384" in answer["error"]["message"]  # type: ignore[index]
    [action] = run.actions
    assert (action.outcome, action.decision, action.context) == ("failed", None, {})
    assert action.detail.startswith("too_large:")


async def test_a_number_cedar_cannot_hold_is_refused_at_once(harness: GatewayHarness) -> None:
    """It was recorded as it came: the event could not be encoded and was tried again for two minutes."""
    big = b'{"v":1,"id":7,"op":"memory.recall","args":{"query":"q"},"context":{"n":123456789012345678901234567890}}'
    run = await harness.run_callable(lambda path: exchange(path, big))
    [answer] = run.value
    assert code(answer) == "invalid_request", answer
    assert "context.n" in answer["error"]["message"]  # type: ignore[index]
    assert [(a.outcome, a.context) for a in run.actions] == [("failed", {})]


def test_a_stdio_request_with_a_number_cedar_cannot_hold_is_malformed_or_invalid() -> None:
    body = b'{"action":"memory.read","resource":"notes","context":{"deep":[{"n":-99999999999999999999}]}}'
    with pytest.raises(ActionRequestError) as raised:
        parse_request(RequestLine(body))
    assert (raised.value.code, "context.deep[0].n" in raised.value.message) == ("invalid_request", True)


# --- finding 2: invalid UTF-8 is answered --------------------------------------------------------------


async def test_invalid_utf8_on_the_socket_is_answered_malformed(harness: GatewayHarness) -> None:
    run = await harness.run_callable(lambda path: exchange(path, b'{"v":1,"id":"\xff","op":"hello"}', request("hello")))
    bad, good = run.value
    assert (code(bad), bad["id"]) == ("malformed_request", None), bad  # type: ignore[index]
    assert "UTF-8" in bad["error"]["message"]  # type: ignore[index]
    assert good is not None
    assert good["type"] == "result"  # the connection goes on


@pytest.fixture
def stdio(monkeypatch: pytest.MonkeyPatch) -> Callable[[bytes], Any]:
    """The stdio channel of the next harness run: called from its program, writes a line to the run's stderr (as
    the workload would) and returns the JSON answer on its stdin (None: none within :data:`ANSWER_WAIT_S`)."""
    replies: queue.Queue[bytes] = queue.Queue()
    gateways: list[tuple[asyncio.AbstractEventLoop, ActionGateway]] = []

    def gateway(*args: Any) -> ActionGateway:
        made = ActionGateway(*args)

        async def reply(line: bytes) -> None:
            replies.put(line)

        made.reply = reply
        made.start()
        gateways.append((asyncio.get_running_loop(), made))
        return made

    monkeypatch.setattr(harness_module, "ActionGateway", gateway)

    def send(line: bytes) -> Any:
        loop, made = gateways[0]
        loop.call_soon_threadsafe(made.feed, line)
        try:
            return json.loads(replies.get(timeout=ANSWER_WAIT_S))
        except queue.Empty:
            return None

    return send


async def test_invalid_utf8_on_stdio_is_answered_and_the_run_goes_on(
    harness: GatewayHarness, stdio: Callable[[bytes], Any]
) -> None:
    lines = (b'@symbi {"op":"\xff"}\n', b'@symbi {"action":"memory.read","resource":"\xff"}\n')
    run = await harness.run_callable(lambda path: [stdio(line) for line in lines])
    protocol, legacy = run.value
    assert code(protocol) == "malformed_request", protocol
    assert legacy is not None
    assert legacy["error"]["code"] == "malformed_request", legacy
    assert "UTF-8" in legacy["error"]["message"]


# --- finding 5: stdio reads what hello promises, and answers in the protocol's format ----------------------


async def test_stdio_takes_protocol_requests_up_to_a_mebibyte_and_answers_larger_ones_in_v1(
    harness: GatewayHarness, stdio: Callable[[bytes], Any]
) -> None:
    lines = (
        b"@symbi " + request("hello", {"client": "c" * 200_000}, id="mid") + b"\n",
        b"@symbi " + request("hello", {"client": "c" * (1 << 20)}, id="over") + b"\n",
        b'@symbi {"action":"memory.read","resource":"r","args":{"query":"' + b"q" * 70_000 + b'"}}\n',
    )
    run = await harness.run_callable(lambda path: [stdio(line) for line in lines])
    mid, over, legacy = run.value
    assert (mid["type"], mid["id"], mid["result"]["channel"]) == ("result", "mid", "stdio"), mid
    assert mid["result"]["max_request_bytes"] == 1 << 20
    assert (over["v"], code(over), over["id"]) == (1, "request_too_large", None), over
    assert (legacy["outcome"], legacy["error"]["code"]) == ("error", "request_too_large"), legacy  # its own bound


# --- finding 4: ids and agent_id as documented ---------------------------------------------------------


async def test_ids_past_their_bounds_and_a_null_agent_id_are_refused(harness: GatewayHarness) -> None:
    lines = (
        request("hello", id="i" * 65),
        b'{"v":1,"id":18446744073709551616,"op":"hello"}',
        request("hello", id="i" * 64),
        request("hello", id=2**63 - 1),
        request("memory.recall", {"query": "q"}, agent_id=None),
    )
    run = await harness.run_callable(lambda path: exchange(path, *lines))
    long_str, long_int, most_str, most_int, null_agent = run.value
    assert (code(long_str), long_str["id"]) == ("malformed_request", None), long_str  # type: ignore[index]
    assert (code(long_int), long_int["id"]) == ("malformed_request", None), long_int  # type: ignore[index]
    assert (most_str["id"], most_int["id"]) == ("i" * 64, 2**63 - 1)  # type: ignore[index]
    assert code(null_agent) == "identity_refused", null_agent


# --- finding 3: a half-closed connection still gets its answers --------------------------------------------


async def test_a_client_that_shuts_down_writing_still_gets_every_answer(tmp_path: Path) -> None:
    """At end of input the connection was closed while its requests were still served (and then performed
    and recorded): their answers were lost."""
    release = asyncio.Event()

    async def answer(line: RequestLine, channel: str) -> Reply:
        await release.wait()
        return Result(id=json.loads(line.body)["id"], result={"done": True})

    channel = Channel(str(tmp_path / "ch"), (os.getuid(), os.getgid()), answer)
    await channel.open()
    reader, writer = await asyncio.open_unix_connection(str(channel.path))
    writer.write(b"".join(request("hello", id=i) + b"\n" for i in range(3)))
    await writer.drain()
    writer.write_eof()  # shutdown(SHUT_WR): no more requests, answers still wanted
    await asyncio.sleep(0.2)
    release.set()
    answers = [json.loads(line) for line in (await asyncio.wait_for(reader.read(), ANSWER_WAIT_S)).splitlines()]
    assert sorted(a["id"] for a in answers) == [0, 1, 2]
    writer.close()
    await channel.close()


async def test_an_event_that_cannot_be_encoded_is_given_up_at_once(harness: GatewayHarness) -> None:
    """Trying again cannot encode it (it was tried for two minutes; before that, logging the failure raised)."""
    loop, task_id = asyncio.get_running_loop(), "harness-unencodable"
    run: Any = SimpleNamespace(spec=SimpleNamespace(task_id=task_id))
    event = ExecutionAction(attempt=1, seq=1, action="memory.read", outcome="failed", context={"n": 10**30})

    def program(path: str) -> Any:  # while the run's execution is open
        stored = harness.service.recorder.store(run, event, TERMINAL_ATTEMPTS)
        return asyncio.run_coroutine_threadsafe(asyncio.wait_for(stored, ANSWER_WAIT_S), loop).result()

    assert (await harness.run_callable(program, task_id=task_id)).value is False


async def test_an_action_whose_record_would_not_fit_is_refused_before_it_is_performed(harness: GatewayHarness) -> None:
    """With a small event size limit, a context within its own bound no longer fits a record: the action is
    refused ``too_large`` and recorded without it, instead of performed and then left unrecorded."""
    events = harness.service.rt.store
    line = request("memory.recall", {"query": "q"}, context={"classification": "c" * 15_000})

    def program(path: str) -> list[dict[str, Any] | None]:
        events.max_event_bytes = 20_000  # (the run's started event is stored; its exited event is small)
        return exchange(path, line)

    limit = events.max_event_bytes
    try:
        run = await harness.run_callable(program)
    finally:
        events.max_event_bytes = limit
    [answer] = run.value
    assert code(answer) == "too_large", answer
    [action] = run.actions
    assert (action.outcome, action.context, action.decision is not None) == ("failed", {}, True)
