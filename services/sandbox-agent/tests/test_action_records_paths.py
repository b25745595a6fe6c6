"""No agent action without its record, on every path that performs one (docs/agent-protocol.md, "Error codes").

With the event store's size limit lowered, a context within its own 16 KiB bound no longer fits a record: a
``data.write``, a ``messages.send`` and an ``@symbi`` action line were performed all the same and then left
unrecorded (the agent answered ``internal``, or on stdio not at all). They are refused ``too_large`` before
anything happens. And an ``@symbi`` action performed whose record then cannot be stored is answered, saying
so, instead of leaving the workload waiting. The real daemon (real NATS, signed event store, allow-all
decisions, the real context service) serves each through the test harness.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest
from symbi_common.bus_names import MESSAGES_STREAM
from symbi_common.bus_streams import inbox_name
from symbi_common.commands import CommandClient
from symbi_common.settings import Settings
from symbi_contracts.lifecycle.config import PathAccess
from symbi_contracts.sandbox_agent.events import ExecutionAction, ExecutionEvent
from symbi_sandbox_agent.harness import GatewayHarness
from symbi_sandbox_agent.run import Running

from .conftest import running_agent
from .test_actions import context_service
from .test_protocol_hardening import code, exchange, harness, request, stdio

__all__ = ["context_service", "harness", "stdio"]  # fixtures, used by name

#: An event size limit a record with a context of :data:`BIG` characters is over (its event is refused when
#: stored), while a record with a small context fits whatever its outcome and detail.
SMALL_LIMIT = 12_000
BIG = 13_000


@contextmanager
def lowered(harness: GatewayHarness) -> Iterator[Callable[[], None]]:
    """A ``lower()`` that sets the event size limit to :data:`SMALL_LIMIT` (called by the program, once the
    run's started event is stored); the limit is set back afterwards."""
    store = harness.service.rt.store
    limit = store.max_event_bytes

    def lower() -> None:
        store.max_event_bytes = SMALL_LIMIT

    try:
        yield lower
    finally:
        store.max_event_bytes = limit


def refused_unrecordable(action: ExecutionAction, name: str) -> None:
    """``action`` is the record of a request refused ``too_large``: with its decision, without its context."""
    assert (action.action, action.outcome, action.context) == (name, "failed", {}), action
    assert action.decision is not None
    assert action.detail.startswith("too_large:"), action.detail


async def test_a_data_write_whose_record_would_not_fit_is_refused_and_writes_nothing(
    agent_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    outbox = tmp_path / "roots" / "outbox"
    outbox.mkdir(parents=True)
    big = request("data.write", {"path": "outbox/big.txt", "content": "big"}, context={"purpose": "p" * BIG})
    small = request("data.write", {"path": "outbox/small.txt", "content": "small"}, id=2, context={"purpose": "p"})
    async with running_agent(agent_settings(SYMBI_SANDBOX__DATA_ROOTS__OUTBOX=str(outbox))) as agent:
        harness = GatewayHarness(agent.daemon.service)
        with lowered(harness) as lower:

            def program(path: str) -> list[dict[str, Any] | None]:
                lower()
                return exchange(path, big, small)

            grant = PathAccess(path=str(outbox), mode="read_write")
            run = await harness.run_callable(program, filesystem_access=(grant,))
    refused, written = run.value
    assert code(refused) == "too_large", refused
    assert not (outbox / "big.txt").exists()  # nothing was written without its record
    assert written is not None
    assert written["type"] == "result", written
    assert (outbox / "small.txt").read_text() == "small"
    first, second = [a for a in run.actions if a.action == "data.write"]
    refused_unrecordable(first, "data.write")
    assert (second.outcome, second.context["purpose"]) == ("allowed", "p")


async def _pending(harness: GatewayHarness, agent_id: str) -> int:
    """Messages waiting in ``agent_id``'s inbox (none if it has no inbox)."""
    try:
        info = await harness.service.rt.js.consumer_info(MESSAGES_STREAM, inbox_name(agent_id))
    except nats.js.errors.NotFoundError:
        return 0
    return int(info.num_pending or 0)


async def test_a_message_whose_record_would_not_fit_is_refused_and_not_sent(harness: GatewayHarness) -> None:
    to = f"rcpt-{uuid.uuid4().hex[:12]}"
    big = request("messages.send", {"to": to, "body": "big"}, context={"topic": "t" * BIG})
    small = request("messages.send", {"to": to, "body": "small"}, id=2)
    with lowered(harness) as lower:

        def program(path: str) -> list[dict[str, Any] | None]:
            lower()
            return exchange(path, big, small)

        run = await harness.run_callable(program)
    refused, sent = run.value
    assert code(refused) == "too_large", refused
    assert sent is not None
    assert sent["type"] == "result", sent
    assert await _pending(harness, to) == 1  # only the small one was sent
    first, second = [a for a in run.actions if a.action == "message.send"]
    refused_unrecordable(first, "message.send")
    assert second.outcome == "allowed"


def _action_line(context: dict[str, Any], text: str = "t") -> bytes:
    body = {"action": "memory.write", "resource": "notes", "context": context, "args": {"text": text}}
    return b"@symbi " + json.dumps(body).encode() + b"\n"


async def test_an_action_line_whose_record_would_not_fit_is_refused_and_answered(
    harness: GatewayHarness,
    stdio: Callable[[bytes], Any],
    context_service: CommandClient,
) -> None:
    """It was performed, its record refused, and the workload never answered (the gateway's loop went on)."""
    with lowered(harness) as lower:

        def program(path: str) -> list[Any]:
            lower()
            return [stdio(_action_line({"classification": "c" * BIG})), stdio(_action_line({}, "small"))]

        run = await harness.run_callable(program)
    refused, stored = run.value
    assert refused is not None, "the workload was left without an answer"
    assert (refused["seq"], refused["outcome"], refused["error"]["code"]) == (1, "error", "too_large"), refused
    assert (stored["seq"], stored["outcome"]) == (2, "allowed"), stored
    first, second = run.actions
    refused_unrecordable(first, "memory.write")
    assert (first.resource, second.outcome) == ("notes", "allowed")


async def test_an_action_line_performed_whose_record_cannot_be_stored_is_answered_saying_so(
    harness: GatewayHarness,
    stdio: Callable[[bytes], Any],
    context_service: CommandClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The event store away past every retry once the memory is stored: the workload is told, not left waiting."""
    recorder = harness.service.recorder
    store = recorder.store

    async def away_for_writes(run: Running, event: ExecutionEvent, attempts: int) -> bool:
        if isinstance(event, ExecutionAction) and (event.action, event.outcome) == ("memory.write", "allowed"):
            return False  # as after every retry while NATS is away
        return await store(run, event, attempts)

    monkeypatch.setattr(recorder, "store", away_for_writes)
    run = await harness.run_callable(lambda path: [stdio(_action_line({})), stdio(_action_line({}, "again"))])
    answer, later = run.value
    assert answer is not None, "the workload was left without an answer"
    assert (answer["seq"], answer["error"]["code"]) == (1, "internal"), answer
    assert "memory.write was performed, but its record could not be stored" in answer["error"]["message"]
    assert later is not None  # the run goes on
    assert (later["seq"], later["error"]["code"]) == (2, "internal"), later
    assert not [a for a in run.actions if a.outcome == "allowed"]
