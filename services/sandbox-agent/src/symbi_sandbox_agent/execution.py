"""The ``execution.<task_id>`` aggregate: pure rules over the execution events of one task.

Commands are the events the daemon proposes; :meth:`ExecutionAggregate.decide` accepts, drops or
refuses them. That makes redelivery harmless: a start for an attempt that already started (or was
refused) decides to nothing, and so does a second terminal event. Output offsets come from the
state, so the chunks of a stream are contiguous by construction.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from symbi_contracts.sandbox_agent.errors import ExecutionStateError
from symbi_contracts.sandbox_agent.events import (
    EXECUTION_CODEC,
    TERMINAL_TYPES,
    ExecutionEvent,
    ExecutionOutput,
    ExecutionPaused,
    ExecutionRefused,
    ExecutionResumed,
    ExecutionStarted,
)

Status = Literal["none", "running", "paused", "ended"]


class ExecutionState(msgspec.Struct, kw_only=True):
    task_id: str
    attempt: int = 0
    host_id: str = ""
    status: Status = "none"
    outcome: str = ""
    stdout_offset: int = 0
    stderr_offset: int = 0


class ExecutionAggregate:
    aggregate_type = "execution"
    codec = EXECUTION_CODEC
    state_type = ExecutionState

    def initial(self, aggregate_id: str) -> ExecutionState:
        return ExecutionState(task_id=aggregate_id)

    def apply(self, state: ExecutionState, event: ExecutionEvent) -> ExecutionState:
        s = msgspec.structs.replace(state)
        if isinstance(event, ExecutionStarted):
            return ExecutionState(task_id=s.task_id, attempt=event.attempt, host_id=event.host_id, status="running")
        if isinstance(event, ExecutionRefused):
            return ExecutionState(task_id=s.task_id, attempt=event.attempt, status="ended", outcome="refused")
        if isinstance(event, ExecutionOutput):
            end = event.offset + len(event.data)
            if event.stream == "stdout":
                s.stdout_offset = end
            else:
                s.stderr_offset = end
        elif isinstance(event, ExecutionPaused):
            s.status = "paused"
        elif isinstance(event, ExecutionResumed):
            s.status = "running"
        elif isinstance(event, TERMINAL_TYPES):
            s.status = "ended"
            s.outcome = type(event).__struct_config__.tag.removeprefix("execution.")  # type: ignore[union-attr]
        return s

    def decide(self, state: ExecutionState, command: ExecutionEvent) -> list[ExecutionEvent]:
        if isinstance(command, ExecutionStarted | ExecutionRefused):
            # A new attempt may begin whatever happened to older ones; the same attempt only once.
            return [command] if command.attempt > state.attempt else []
        if command.attempt != state.attempt or state.status in ("none", "ended"):
            if isinstance(command, ExecutionPaused | ExecutionResumed):
                raise ExecutionStateError(
                    f"execution {state.task_id} attempt {command.attempt} is not running "
                    f"(current attempt {state.attempt}, {state.status})"
                )
            return []  # late output or a second terminal event of an attempt that is over
        if isinstance(command, ExecutionOutput):
            offset = state.stdout_offset if command.stream == "stdout" else state.stderr_offset
            return [msgspec.structs.replace(command, offset=offset)]
        if isinstance(command, ExecutionPaused):
            if state.status != "running":
                raise ExecutionStateError(f"execution {state.task_id} is {state.status}, not running")
            return [command]
        if isinstance(command, ExecutionResumed):
            if state.status != "paused":
                raise ExecutionStateError(f"execution {state.task_id} is {state.status}, not paused")
            return [command]
        return [command]  # a terminal event of the current, running attempt


EXECUTION = ExecutionAggregate()
