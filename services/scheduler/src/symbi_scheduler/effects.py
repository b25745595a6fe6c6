"""What a replica does to the world: appends to tasks (applied to its model at once), lifecycle and host
commands, work items, and the pacing of side effects that are repeated until their events show them done.

Every task append is a conditional append through the task repository (the aggregate's ``decide`` checks it
against the task's state) and is applied to the model right away, so the next decision already sees it; the
follower sees it again on the stream and ignores it (its version is applied already).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Literal

import msgspec
import structlog
from symbi_common.aggregate import Repository
from symbi_common.errors import SymbiError
from symbi_common.eventstore import Recorded
from symbi_common.service import ServiceRuntime
from symbi_common.telemetry import continue_trace, inject_trace
from symbi_contracts.lifecycle.commands import COMMANDS as LIFECYCLE_COMMANDS
from symbi_contracts.sandbox_agent import errors as sandbox_errors  # (also decodes its typed replies)
from symbi_contracts.sandbox_agent.commands import TaskRef, service_for
from symbi_contracts.scheduler.events import TaskEvent, TaskSubmitted

from symbi_scheduler import metrics
from symbi_scheduler.domain import Command, Record, Submit, TaskState
from symbi_scheduler.model import Model

log = structlog.get_logger(__name__)
_json = msgspec.json.Encoder()

#: A lifecycle or host command that did not take effect is retried after this long.
RETRY_AFTER_S = 3.0
#: What a host made of a command (:meth:`Effects.ask_host`).
HostAnswer = Literal["done", "unknown", "no_answer"]


class Effects:
    """The replica's writes and commands, each applied to (or paced by) its model."""

    def __init__(self, rt: ServiceRuntime, model: Model, tasks: Repository[TaskState, Command, TaskEvent]) -> None:
        self.rt = rt
        self.model = model
        self.tasks = tasks
        #: Work items published while leading: (task, attempt).
        self.dispatched: set[tuple[str, int]] = set()
        self._recent: dict[tuple[str, str], float] = {}  # (what, key) -> when last tried

    def forget(self) -> None:
        """Lead (or stop leading) afresh: every side effect may be needed again."""
        self.dispatched.clear()
        self._recent.clear()

    def traced(self, name: str, task_id: str) -> contextlib.AbstractContextManager[Any]:
        """A span of the task's trace (the one its newest event carries) for what is done for it."""
        rec = self.model.tasks.get(task_id)
        return continue_trace(name, rec.trace if rec else None, attributes={"symbi.task_id": task_id})

    async def record(self, task_id: str, event: TaskEvent) -> list[Recorded[TaskEvent]]:
        """Append one event to the task (conditionally), apply it to the model at once and count it."""
        command: Command = Submit(event=event) if isinstance(event, TaskSubmitted) else Record(event=event)
        if isinstance(event, TaskSubmitted) and task_id not in self.model.tasks:
            # A task id this replica has not seen: no read of its (most likely empty) subject first. The
            # append is conditional on the subject being empty, so a task that exists after all (another
            # replica's, not applied here yet) is a conflict, caught up and refused by Submit's decide.
            self.tasks.assume_new(task_id)
        _, records = await self.tasks.execute(task_id, command, correlation_id=task_id)
        for r in records:
            h = r.header
            self.model.apply("task", h.aggregate_id, h.aggregate_version, r.sequence, h.occurred_at / 1e9, r.event)
        self.model.note_trace("task", task_id, inject_trace({}))  # what the store put in the event's headers
        rec = self.model.tasks.get(task_id)
        for r in records:
            if rec is not None:
                metrics.recorded(r.event, rec.submitted_at, r.header.occurred_at / 1e9)
        return records

    def due(self, what: str, key: str) -> bool:
        """Whether an idempotent side effect (``what`` for ``key``) should be (re)tried now."""
        now = time.monotonic()
        if now - self._recent.get((what, key), -RETRY_AFTER_S) < RETRY_AFTER_S:
            return False
        self._recent[(what, key)] = now
        return True

    async def lifecycle(self, action: str, body: dict[str, Any]) -> None:
        """A command to the lifecycle service (typed errors propagate: the caller knows which are expected)."""
        request = msgspec.convert(body, LIFECYCLE_COMMANDS[action])  # the body as the lifecycle's contract has it
        await self.rt.client.call(
            "lifecycle", action, request, dict, headers={"Symbi-Correlation-Id": str(body.get("task_id", ""))}
        )

    async def ask_host(self, host_id: str, action: str, task_id: str) -> HostAnswer:
        """``suspend``/``resume``/``terminate`` to a host's sandbox-agent: ``done`` (done, or refused as moot: the
        run is already in that state, or over), ``unknown`` (the host runs no such task: not yet — it may still be
        checking the task before starting it — or no longer; only the task's events tell which) or ``no_answer``
        (logged)."""
        try:
            await self.rt.client.call(service_for(host_id), action, TaskRef(task_id=task_id), dict, timeout=15.0)
        except sandbox_errors.UnknownExecution:
            log.info("host runs no such task yet", host=host_id, action=action, task_id=task_id)
            return "unknown"
        except SymbiError as exc:
            log.warning("host command failed", host=host_id, action=action, task_id=task_id, error=str(exc))
            return "done" if exc.http_status < 500 else "no_answer"
        return "done"

    async def host_command(self, host_id: str, action: str, task_id: str) -> bool:
        """Whether the host did it (:meth:`ask_host` answered ``done``). False: no answer, or the host runs no
        such task; either way the caller records nothing, so whatever asked (a chore, the leader's next placement
        pass) asks again while the task is still in that state."""
        return await self.ask_host(host_id, action, task_id) == "done"

    async def publish_work(self, task_id: str, attempt: int, host_id: str) -> None:
        """The work item of an attempt (``Nats-Msg-Id`` makes a repeat harmless)."""
        headers = {"Nats-Msg-Id": f"{task_id}:{attempt}"}
        inject_trace(headers)  # the sandbox-agent runs the task as part of its trace
        await self.rt.js.publish(
            f"work.{host_id}", _json.encode({"task_id": task_id, "attempt": attempt}), headers=headers
        )
        self.dispatched.add((task_id, attempt))
