"""Appending a run's execution events, retrying while NATS is away: the bottom of the write path. Output chunks
name the offset this daemon counted for their stream, so a retried chunk is stored once (see the domain).

Output chunks, action decisions and the terminal event of a run must not be lost to a short NATS
outage, so each is retried with back-off (:data:`TERMINAL_ATTEMPTS` tries, about two minutes in all)
before the run gives up on it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from symbi_common.aggregate import Repository
from symbi_common.decisions import DecisionRecord
from symbi_common.errors import AppendFailed, DomainError
from symbi_common.service import ServiceRuntime
from symbi_contracts.sandbox_agent.events import (
    ExecutionAction,
    ExecutionEvent,
    ExecutionOutput,
    OutputChunk,
    Stream,
    Terminal,
)

from symbi_sandbox_agent.domain import ExecutionState, fits
from symbi_sandbox_agent.output import OutputCollector
from symbi_sandbox_agent.run import Running

log = structlog.get_logger(__name__)

#: Tries to store an output or terminal event (backing off to 5 s between tries: about 2 minutes in all).
TERMINAL_ATTEMPTS = 30
#: After those: how long between further tries of a terminal event (which ends its task).
LATER_RETRY_S = 30.0
#: Longest ``detail`` an ``execution.action`` keeps (the rest is cut): so whether the record of an action fits
#: the event size limit is known before the action is performed (:func:`action_fits`).
MAX_DETAIL_CHARS = 2000
#: Errors of encoding an event: trying again would not change them.
_UNENCODABLE = (OverflowError, TypeError, msgspec.EncodeError)
#: Whether the record of an action (seq, action, resource, context as recorded, decision) could be stored,
#: whatever its outcome: asked before the action is performed (``ProtocolServer.record_fits``).
Fits = Callable[[int, str, str, dict[str, Any], DecisionRecord | None], bool]


def fits_nothing(*_: object) -> bool:
    """The :data:`Fits` of an operation given none: no record is known to fit, so nothing is performed."""
    return False


def unrecordable(action: str, max_event_bytes: int | None = None) -> str:
    """What the agent is told of an action refused ``too_large`` because its record could not be stored (the
    limit, ``max_event_bytes``, named when given)."""
    limit = f" ({max_event_bytes} bytes)" if max_event_bytes is not None else ""
    return f"the record of this {action} would exceed the event size limit{limit}; nothing was performed: send less"


def action_event(event: ExecutionAction) -> ExecutionAction:
    """``event`` with its ``detail`` cut to :data:`MAX_DETAIL_CHARS`."""
    if len(event.detail) <= MAX_DETAIL_CHARS:
        return event
    return msgspec.structs.replace(event, detail=event.detail[: MAX_DETAIL_CHARS - 1] + "…")


def action_fits(event: ExecutionAction, max_event_bytes: int) -> bool:
    """Whether every record of the action ``event`` is about (any outcome, any detail up to
    :data:`MAX_DETAIL_CHARS`) can be stored: encodable and within ``max_event_bytes``."""
    worst = msgspec.structs.replace(event, outcome="allowed", detail="\U0010ffff" * MAX_DETAIL_CHARS)
    try:
        return fits(worst, max_event_bytes)
    except _UNENCODABLE:
        return False


class ExecutionRecorder:
    """Appends the events of running sandboxes to their ``execution.<task_id>`` aggregates."""

    def __init__(
        self, rt: ServiceRuntime, executions: Repository[ExecutionState, ExecutionEvent, ExecutionEvent]
    ) -> None:
        self.rt = rt
        self.executions = executions

    async def store(self, run: Running, event: ExecutionEvent, attempts: int) -> bool:
        """Append ``event``, retrying with back-off while NATS is away; whether it was stored."""
        delay = 0.5
        for attempt in range(1, attempts + 1):
            try:
                await self.executions.execute(run.spec.task_id, event)
                return True
            except (DomainError, *_UNENCODABLE) as exc:  # refused or unencodable: trying again would not change that
                log.error(
                    "event refused",
                    task_id=run.spec.task_id,
                    event_type=type(event).__struct_config__.tag,
                    error=str(exc),
                )
                self.rt.note_error(f"{run.spec.task_id}: {exc!r}")
                return False
            except Exception as exc:
                kind = type(event).__struct_config__.tag
                log.error(
                    "event not stored", task_id=run.spec.task_id, event_type=kind, attempt=attempt, error=str(exc)
                )
                self.rt.note_error(f"{kind} {run.spec.task_id}: {exc!r}")
                if attempt < attempts:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        return False

    async def keep_storing(self, run: Running, event: ExecutionEvent, stored: Callable[[], object]) -> None:
        """Try to store ``event`` every :data:`LATER_RETRY_S` until it lands (then ``run.stored`` and ``stored()``)
        or the service stops."""
        while not self.rt.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.rt.stopping.wait(), LATER_RETRY_S)
                return
            if await self.store(run, event, 1):
                run.stored = True
                stored()
                return

    async def store_action(self, run: Running, event: ExecutionAction) -> None:
        """Record one decision of the action gateway (retrying while NATS is away; its detail cut to
        :data:`MAX_DETAIL_CHARS`)."""
        event = action_event(event)
        if not await self.store(run, event, TERMINAL_ATTEMPTS):
            raise AppendFailed(f"execution.action {event.seq} of {run.spec.task_id} could not be stored")

    async def output(self, run: Running, stream: Stream, data: bytes) -> None:
        """Store the next chunk of one of the run's streams; :class:`AppendFailed` (the run is stopped) if it
        cannot be stored."""
        offset = run.output_end[stream]
        event = ExecutionOutput(attempt=run.spec.attempt, stream=stream, offset=offset, data=data)
        if not await self.store(run, event, TERMINAL_ATTEMPTS):
            raise AppendFailed(f"output of {run.spec.task_id} could not be stored; the run is stopped")
        run.output_end[stream] = offset + len(data)

    def carrying(self, terminal: Terminal, collector: OutputCollector) -> tuple[Terminal, tuple[OutputChunk, ...]]:
        """``terminal`` carrying the output still held (what a last flush would send) if it then fits the event
        size limit, with nothing left over; else ``terminal`` as it is, and that output."""
        held = tuple(OutputChunk(stream=s, offset=0, data=piece) for s, piece in collector.flush())
        carrying = msgspec.structs.replace(terminal, tail=held)
        if not held or fits(carrying, self.executions.store.max_event_bytes):
            return carrying, ()
        return terminal, held
