"""An execution event whose append lands but is not confirmed (its ack lost, as after repeated timeouts) is tried
again by the recorder: against the real event store, the retry stores nothing a second time."""

from __future__ import annotations

from typing import Any, cast

import msgspec
import pytest
from symbi_common.aggregate import Repository
from symbi_common.decisions import DecisionRecord
from symbi_common.errors import AppendFailed
from symbi_common.eventstore import EventStore
from symbi_contracts.sandbox_agent.events import EXECUTION_CODEC, ExecutionAction, ExecutionEgress, ExecutionOutput
from symbi_sandbox_agent.domain import EXECUTION, ExecutionState, execution_data_key

from .store_faults import AcksLost
from .test_pure import started


async def test_a_retried_output_action_or_egress_record_is_stored_once(make_store: Any) -> None:
    store = AcksLost(await make_store("sandbox-agent"), (ExecutionOutput, ExecutionAction, ExecutionEgress))
    repo: Repository[ExecutionState, Any, Any] = Repository(
        cast(EventStore, store), EXECUTION, data_key=execution_data_key
    )
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
