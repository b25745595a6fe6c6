"""The sandbox-agent's domain: the execution state machine of one task and the host's log. Pure.

``execution.<task_id>``: commands are the events the daemon proposes; :meth:`ExecutionAggregate.decide`
accepts, drops or refuses them. That makes redelivery harmless: a start for an attempt that already
started (or was refused) decides to nothing, and so does a second terminal event. An ``execution.output``
chunk names the offset its writer counted: a chunk the stream already holds decides to nothing, one past the
stream's end is refused, so a retried append (its first outcome unknown) never stores a chunk twice. A terminal
event's ``tail`` is placed where the streams end. An ``execution.action`` already among the run's last
:data:`RECENT_KEYS` (by request and decision, :func:`event_key`) decides to nothing too, and so does an
``execution.egress`` of a connection already recorded. :func:`terminal_event` is the
rule that turns how a container ended (exit state, kill reason) into the one terminal event of its run.

``host.<host_id>``: a log of registrations and reconciliations (:class:`HostAggregate`).

No I/O here: :mod:`symbi_sandbox_agent.application` loads and appends through the repository.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from symbi_common.key_names import agent_data_key
from symbi_contracts.sandbox_agent.errors import ExecutionStateError
from symbi_contracts.sandbox_agent.events import (
    EXECUTION_CODEC,
    HOST_CODEC,
    TERMINAL_TYPES,
    ExecutionAction,
    ExecutionEgress,
    ExecutionEvent,
    ExecutionExited,
    ExecutionFailed,
    ExecutionKilled,
    ExecutionOomKilled,
    ExecutionOutput,
    ExecutionPaused,
    ExecutionRefused,
    ExecutionResumed,
    ExecutionStarted,
    ExecutionTimedOut,
    HostEvent,
    OutputChunk,
    OutputDigest,
    Terminal,
    Usage,
    output_chunks,
)

from symbi_sandbox_agent.spec import SandboxSpec

Status = Literal["none", "running", "paused", "ended"]


class ExecutionState(msgspec.Struct, kw_only=True):
    task_id: str
    #: The task's agent (from ``execution.started``/``refused``; empty for events written before they named it).
    agent_id: str = ""
    attempt: int = 0
    host_id: str = ""
    status: Status = "none"
    outcome: str = ""
    stdout_offset: int = 0
    stderr_offset: int = 0
    #: The keys (:func:`event_key`) of the last :data:`RECENT_KEYS` action and egress events.
    recent: tuple[str, ...] = ()


#: How many recorded action and egress events of a run an event is checked against before it is stored. A retry
#: follows its unconfirmed append within seconds, while that run's other appends are failing too.
RECENT_KEYS = 256


def event_key(event: ExecutionEvent) -> str | None:
    """What makes an action or egress event one of a kind, or None. An action: its request and the decision it
    records (a request that stays pending is decided again, under a new decision id, each time it is
    re-evaluated). An egress record: its connection's number in the run (0, not numbered: none)."""
    if isinstance(event, ExecutionAction):
        decision = event.decision.decision_id if event.decision is not None else ""
        return f"action/{event.seq}/{decision}/{event.outcome}"
    if isinstance(event, ExecutionEgress) and event.conn:
        return f"egress/{event.conn}"
    return None


class ExecutionAggregate:
    aggregate_type = "execution"
    codec = EXECUTION_CODEC
    state_type = ExecutionState

    def initial(self, aggregate_id: str) -> ExecutionState:
        return ExecutionState(task_id=aggregate_id)

    def apply(self, state: ExecutionState, event: ExecutionEvent) -> ExecutionState:
        s = msgspec.structs.replace(state)
        if isinstance(event, ExecutionStarted):
            return ExecutionState(
                task_id=s.task_id,
                agent_id=event.agent_id or s.agent_id,
                attempt=event.attempt,
                host_id=event.host_id,
                status="running",
            )
        if isinstance(event, ExecutionRefused):
            return ExecutionState(
                task_id=s.task_id,
                agent_id=event.agent_id or s.agent_id,
                attempt=event.attempt,
                status="ended",
                outcome="refused",
            )
        for chunk in output_chunks(event):
            end = chunk.offset + len(chunk.data)
            if chunk.stream == "stdout":
                s.stdout_offset = end
            else:
                s.stderr_offset = end
        key = event_key(event)
        if key is not None:
            s.recent = (*s.recent[-(RECENT_KEYS - 1) :], key)
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
            return _output(state, command)
        if event_key(command) in state.recent:
            return []  # stored already: the retry of an append whose outcome was unknown
        if isinstance(command, ExecutionPaused):
            if state.status != "running":
                raise ExecutionStateError(f"execution {state.task_id} is {state.status}, not running")
            return [command]
        if isinstance(command, ExecutionResumed):
            if state.status != "paused":
                raise ExecutionStateError(f"execution {state.task_id} is {state.status}, not paused")
            return [command]
        if (
            isinstance(command, Terminal) and command.tail
        ):  # a terminal event of the current, running attempt, with the output it carries
            return [msgspec.structs.replace(command, tail=_placed(state, command.tail))]
        return [command]


def _output(state: ExecutionState, chunk: ExecutionOutput) -> list[ExecutionEvent]:
    end = state.stdout_offset if chunk.stream == "stdout" else state.stderr_offset
    if chunk.offset + len(chunk.data) <= end and chunk.offset < end:
        return []  # stored already: the retry of an append whose outcome was unknown
    if chunk.offset != end:
        raise ExecutionStateError(
            f"execution {state.task_id}: {len(chunk.data)} bytes of {chunk.stream} at offset {chunk.offset}, "
            f"but the stream holds {end} bytes"
        )
    return [chunk]


def _placed(state: ExecutionState, chunks: tuple[OutputChunk, ...]) -> tuple[OutputChunk, ...]:
    """``chunks`` at the offsets where their streams end now, in order."""
    offsets = {"stdout": state.stdout_offset, "stderr": state.stderr_offset}
    placed = []
    for chunk in chunks:
        placed.append(msgspec.structs.replace(chunk, offset=offsets[chunk.stream]))
        offsets[chunk.stream] += len(chunk.data)
    return tuple(placed)


EXECUTION = ExecutionAggregate()


def execution_data_key(state: ExecutionState, events: Sequence[ExecutionEvent]) -> str | None:
    """An execution is sealed with its agent's key (:mod:`symbi_common.key_names`), once an event has named the
    agent; one written before events named it keeps its own key (None)."""
    agent = state.agent_id
    for event in events:
        if isinstance(event, ExecutionStarted | ExecutionRefused) and event.agent_id:
            agent = event.agent_id
    return agent_data_key(EXECUTION.aggregate_type, agent) if agent else None


class WorkItem(msgspec.Struct, frozen=True):
    """One message of ``work.<host_id>``: run this attempt of this task."""

    task_id: str
    attempt: int


class HostAggregate:
    """``host.<host_id>``: a log of registrations and reconciliations; every event is accepted."""

    aggregate_type = "host"
    codec = HOST_CODEC
    state_type = int

    def initial(self, aggregate_id: str) -> int:
        return 0

    def apply(self, state: int, event: HostEvent) -> int:
        return state + 1

    def decide(self, state: int, command: HostEvent) -> list[HostEvent]:
        return [command]


@dataclass(frozen=True, slots=True)
class ExitState:
    """How a container ended, as its runner saw it (``exit_code`` None: no exit status to be had)."""

    exit_code: int | None
    oom_killed: bool
    error: str


#: Why the daemon killed a run (``kill_reason``), as the terminal event explains it.
KILL_REASONS = {
    "output_cap": "printed more than {output_cap_bytes} bytes",
    "terminated": "terminated by command",
    "shutdown": "the sandbox-agent shut down",
}


def terminal_event(
    spec: SandboxSpec,
    exit_state: ExitState | None,
    kill_reason: str,
    output: OutputDigest,
    usage: Usage,
    duration_s: float,
    last_error: str = "",
) -> Terminal:
    """The one terminal event of a run that started: timed out, OOM-killed, killed, failed or exited.
    ``last_error``: the last line of the workload's stderr, the reason of an exit with a non-zero status."""
    common: dict[str, Any] = {
        "attempt": spec.attempt,
        "exit_code": exit_state.exit_code if exit_state else None,
        "usage": usage,
        "output": output,
        "duration_s": duration_s,
    }
    if kill_reason == "timeout":
        return ExecutionTimedOut(
            **common,
            timeout_s=spec.limits.execution_timeout_s,
            reason=f"ran past its {spec.limits.execution_timeout_s} s timeout",
        )
    if exit_state is not None and exit_state.oom_killed:
        limit = spec.limits.memory_mb * 1024 * 1024
        return ExecutionOomKilled(
            **common, memory_limit_bytes=limit, reason=f"allocated past its {spec.limits.memory_mb} MB limit"
        )
    if kill_reason:
        why = KILL_REASONS.get(kill_reason, "").format(output_cap_bytes=spec.limits.output_cap_bytes)
        return ExecutionKilled(**common, reason=kill_reason + ": " + why)
    if exit_state is None or exit_state.exit_code is None:
        why = exit_state.error if exit_state else "unknown"
        return ExecutionFailed(**common, reason=f"no exit status: {why}")
    if exit_state.exit_code != 0:
        detail = f": {last_error}" if last_error else ""
        return ExecutionExited(**common, reason=f"exited with status {exit_state.exit_code}{detail}")
    return ExecutionExited(**common)


#: Room for an event's envelope (header, AEAD tag, signature) around its payload, to stay within the store's
#: ``max_event_bytes``; the envelope of an execution event takes well under half of it.
ENVELOPE_ROOM = 2048


def fits(event: ExecutionEvent, max_event_bytes: int) -> bool:
    """Whether ``event``, sealed, stays within the event size limit (with room for the offsets ``decide`` sets)."""
    return len(EXECUTION_CODEC.encode(event)) + ENVELOPE_ROOM <= max_event_bytes
