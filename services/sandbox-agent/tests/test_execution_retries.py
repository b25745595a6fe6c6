"""An execution event whose append lands but is not confirmed (its ack lost, as after repeated timeouts) is tried
again by the recorder: against the real event store, the retry stores nothing a second time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from symbi_common.aggregate import Repository
from symbi_common.decisions import DecisionRecord
from symbi_common.errors import AppendFailed
from symbi_common.eventstore import EventStore, Recorded
from symbi_contracts.sandbox_agent.events import EXECUTION_CODEC, ExecutionAction, ExecutionEgress, ExecutionOutput
from symbi_sandbox_agent.domain import EXECUTION, ExecutionState, execution_data_key

from .test_pure import started


class AcksLost(EventStore):
    """Stores every append, but reports the first of each output, action or egress event as not confirmed."""

    lost: set[str]

    async def append(self, aggregate_type: str, aggregate_id: str, events: Sequence[Any], *a: Any, **kw: Any) -> Any:
        recorded: list[Recorded[Any]] = await super().append(aggregate_type, aggregate_id, events, *a, **kw)
        kind = type(events[0]).__name__
        if isinstance(events[0], ExecutionOutput | ExecutionAction | ExecutionEgress) and kind not in self.lost:
            self.lost.add(kind)
            raise AppendFailed(f"append to evt.execution.{aggregate_id} timed out 3 times and could not be confirmed")
        return recorded


async def test_a_retried_output_action_or_egress_record_is_stored_once(make_store: Any) -> None:
    store = await make_store("sandbox-agent", store_class=AcksLost)
    store.lost = set()
    repo: Repository[ExecutionState, Any, Any] = Repository(store, EXECUTION, data_key=execution_data_key)
    await repo.execute("t-retry", msgspec.structs.replace(started(1), agent_id="agent-1"))
    record = DecisionRecord(action="memory.read", effect="allow", policy_version=1, decision_id="d-1")
    for event in (
        ExecutionOutput(attempt=1, stream="stdout", offset=0, data=b"hello\n"),
        ExecutionAction(attempt=1, seq=1, action="memory.read", decision=record, outcome="allowed"),
        ExecutionEgress(attempt=1, host="example.com", port=443, outcome="allowed", conn=1),
    ):
        with pytest.raises(AppendFailed):
            await repo.execute("t-retry", event)
        await repo.execute("t-retry", event)  # the recorder's retry
    await repo.execute("t-retry", ExecutionOutput(attempt=1, stream="stdout", offset=6, data=b"more\n"))
    reader = await make_store("sandbox-agent")
    stored = [r.event for r in await reader.load("execution", "t-retry", EXECUTION_CODEC)]
    assert [type(e).__name__ for e in stored] == [
        "ExecutionStarted",
        "ExecutionOutput",
        "ExecutionAction",
        "ExecutionEgress",
        "ExecutionOutput",
    ]
    assert [(e.offset, e.data) for e in stored if isinstance(e, ExecutionOutput)] == [(0, b"hello\n"), (6, b"more\n")]
