"""The scheduler service: submissions and queries (any replica), and the parts that run in the background.

Any replica accepts a submission: it appends ``task.submitted`` to a new task aggregate (a conditional
append on an empty subject, so a repeated task id is refused, never doubled) and the lease holder
picks it up. Queries are answered from the replica's model, the same state the leader decides on
(:mod:`symbi_scheduler.projections` makes the views).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from typing import Any

import msgspec
from symbi_common.errors import NotFound, ValidationError
from symbi_common.fenced_read import ever_stored
from symbi_common.ids import ID_RE as AGENT_ID_RE
from symbi_common.sealing import new_event_id
from symbi_common.service import ServiceRuntime
from symbi_contracts.lifecycle.events import AgentStatus
from symbi_contracts.scheduler.events import ResourceRequest, TaskCancelled, TaskStopRequested, TaskSubmitted

from symbi_scheduler.core import never_fits
from symbi_scheduler.domain import LEVEL, TASK_ID_RE, CancelPending, TaskNotAssignable, effective_limits
from symbi_scheduler.effects import RETRY_AFTER_S
from symbi_scheduler.follower import EventFollower, HostWatcher
from symbi_scheduler.leader import Leader
from symbi_scheduler.listing import TaskList, list_tasks
from symbi_scheduler.model import Model, TaskRec
from symbi_scheduler.projections import (
    OUTPUT_PAGE_BYTES,
    OUTPUT_PAGE_MAX_BYTES,
    OutputView,
    TaskView,
    read_output,
    state_view,
    task_view,
)
from symbi_scheduler.waiting import TaskChanges, check_wait

__all__ = [
    "CancelRequest",
    "OutputRequest",
    "OutputView",
    "SchedulerService",
    "StatusRequest",
    "SubmitRequest",
    "TaskQuery",
    "TaskRef",
    "TaskView",
]

#: How long a submission waits for an agent this replica has not seen yet (it may have just registered).
AGENT_WAIT_S = 3.0
#: How long a cancel tries again while the task changes under it (placed, requeued or resumed by the leader,
#: which this replica's model may not show yet), and how often (under the 5 s a command client waits by default).
CANCEL_WAIT_S = 4.0
CANCEL_RETRY_S = 0.25


class SubmitRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A task: the agent, its input (text, or ``input_base64`` for bytes), priority, optional resources."""

    agent_id: str
    input: str = ""
    input_base64: str | None = None
    priority: str = "normal"
    resources: ResourceRequest | None = None
    task_id: str = ""


class TaskRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    task_id: str


class TaskQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A task, answered once it has ended or after ``wait`` seconds (0: at once; :mod:`symbi_scheduler.waiting`)."""

    task_id: str
    wait: float = 0


class CancelRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    task_id: str
    reason: str = "cancelled on request"


class OutputRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A page of the task's latest attempt's output on ``stream`` from byte ``after`` on, of at most ``max_bytes``
    (the next page starts at the reply's ``next_offset``)."""

    task_id: str
    stream: str = "stdout"
    after: int = 0
    max_bytes: int = OUTPUT_PAGE_BYTES
    #: Seconds to wait for output past ``after`` or the task's end before answering (0: at once).
    wait: float = 0


class StatusRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class SchedulerService:
    """Submissions, queries and the background work of one scheduler replica."""

    def __init__(
        self,
        rt: ServiceRuntime,
        model: Model,
        follower: EventFollower,
        hosts: HostWatcher,
        leader: Leader,
    ) -> None:
        self.rt = rt
        self.model = model
        #: The same writer the leader uses: an append is applied to the model at once, and counted.
        self.fx = leader.fx
        self.follower = follower
        self.hosts = hosts
        self.leader = leader
        self.changes = TaskChanges()
        model.task_changed = self.changes.changed

    # --- write --------------------------------------------------------------------------------------

    async def submit(self, request: SubmitRequest, submitted_by: str = "api") -> TaskView:
        """Queue a task; typed errors for an unknown agent, one that cannot take tasks, or bad fields."""
        task_id = request.task_id or new_event_id()
        if not TASK_ID_RE.match(task_id):
            raise ValidationError("must be 1-128 letters, digits, '-' or '_'", field="task_id")
        if request.priority not in LEVEL:
            raise ValidationError(f"must be one of {', '.join(LEVEL)}, got {request.priority!r}", field="priority")
        data = request.input.encode()
        if request.input_base64 is not None:
            if request.input:
                raise ValidationError("give input or input_base64, not both", field="input_base64")
            try:
                data = base64.b64decode(request.input_base64, validate=True)
            except (binascii.Error, ValueError):
                raise ValidationError("is not valid base64", field="input_base64") from None
        agent = await self._agent(request.agent_id)
        if agent.status in (AgentStatus.FAILED, AgentStatus.TERMINATED) or agent.status is None:
            state = agent.status.value if agent.status else "Initializing"
            raise TaskNotAssignable(
                f"agent {request.agent_id} is {state} and takes no tasks", agent_id=request.agent_id, state=state
            )
        if agent.config is None or agent.config.workload is None:
            raise TaskNotAssignable(
                f"agent {request.agent_id} has no workload (image and command) to run tasks in; register it with one",
                agent_id=request.agent_id,
            )
        self._check_placeable(agent, request)
        event = TaskSubmitted(
            agent_id=request.agent_id,
            input=data,
            priority=request.priority,
            resources=request.resources,
            submitted_by=submitted_by,
        )
        records = await self.fx.record(task_id, event)
        self.leader.wake.set()
        return TaskView.of(self.model.tasks[task_id], records[-1].sequence if records else 0)

    def _check_placeable(self, agent: Any, request: SubmitRequest) -> None:
        """Refuse a task that no live host could ever run (its limits exceed every host's whole capacity)."""
        limits = effective_limits(agent.config.resources, request.resources)
        tier = self.model.assessment_of(agent).tier
        self.model.check_hosts(time.time())
        reason = never_fits(limits.cpu_cores, limits.memory_mb, tier, self.model.placer.hosts.values())
        if reason is not None:
            raise TaskNotAssignable(f"task can never be placed: {reason}", agent_id=request.agent_id)

    async def cancel(self, request: CancelRequest, cancelled_by: str = "api") -> TaskView:
        """Withdraw a task: a queued (or denied) one is cancelled at once; a placed one is stopped (:meth:`_stop`).

        A task that ended while the cancel was under way is answered as it ended; one that had ended before is
        refused (:class:`~symbi_scheduler.domain.TaskFinished`): nothing is changed either way."""
        deadline = time.monotonic() + CANCEL_WAIT_S
        rec, tried = self.get_rec(request.task_id), False
        reason = request.reason[:500]
        while True:
            if tried and rec.state.finished:
                return TaskView.of(rec)  # it ended while the cancel was under way: nothing is left running
            try:
                if rec.state.placed:
                    return await self._stop(rec, reason, cancelled_by)
                records = await self.fx.record(rec.task_id, TaskCancelled(reason=reason, cancelled_by=cancelled_by))
            except TaskNotAssignable:
                if time.monotonic() >= deadline:
                    raise
                # Placed, requeued or resumed meanwhile (this replica's model may not show it yet): try again.
            else:
                self.leader.wake.set()
                return TaskView.of(self.model.tasks[rec.task_id], records[-1].sequence if records else 0)
            tried = True
            await asyncio.sleep(CANCEL_RETRY_S)
            rec = self.get_rec(request.task_id)

    async def _stop(self, rec: TaskRec, reason: str, cancelled_by: str) -> TaskView:
        """Cancel a placed task: record who asked, why and for which attempt (``task.stop_requested``), then ask
        its host to terminate the run.

        The sandbox-agent never starts an attempt with a stop request, so from here on the run is stopped or
        never starts, whatever the host answers. The task ends once the host reports the attempt's end:
        ``completed`` (``killed``) if it ran, ``cancelled`` if it never started. A host that does not answer is
        :class:`CancelPending` (retryable); the request stands and the leader keeps asking the host."""
        stop = TaskStopRequested(
            attempt=rec.attempt, host_id=rec.host_id, reason="cancelled", requested_by=cancelled_by, detail=reason
        )
        records = await self.fx.record(rec.task_id, stop)
        self.leader.wake.set()
        if await self.fx.ask_host(rec.host_id, "terminate", rec.task_id) == "no_answer":
            raise CancelPending(
                f"host {rec.host_id} did not answer the stop of task {rec.task_id}; the cancel is recorded and the "
                "host is asked again until it reports the run's end; cancel it again to ask now",
                task_id=rec.task_id,
                host_id=rec.host_id,
                retry_after=RETRY_AFTER_S,
            )
        return TaskView.of(self.get_rec(rec.task_id), records[-1].sequence if records else 0)

    async def _agent(self, agent_id: str) -> Any:
        """The agent, once this replica's model shows it initialized: it may have registered a moment ago, so it is
        waited for (up to :data:`AGENT_WAIT_S`) — unless the stream holds no event of it at all."""
        deadline = time.monotonic() + AGENT_WAIT_S
        unknown = NotFound(f"agent {agent_id} is not registered; register it first", agent_id=agent_id)
        if agent_id not in self.model.agents and not (
            AGENT_ID_RE.match(agent_id) and await ever_stored(self.rt.nc, self.rt.store.stream, f"evt.agent.{agent_id}")
        ):
            raise unknown
        while True:
            agent = self.model.agents.get(agent_id)
            if agent is not None and agent.status is not None and agent.status != AgentStatus.INITIALIZING:
                return agent
            if time.monotonic() >= deadline:
                raise unknown
            await asyncio.sleep(0.05)

    # --- read ---------------------------------------------------------------------------------------

    def get_rec(self, task_id: str) -> TaskRec:
        rec = self.model.tasks.get(task_id)
        if rec is None:
            raise NotFound(f"task {task_id} does not exist", task_id=task_id)
        return rec

    def tasks(self, *, state: str | None, agent: str | None, limit: int, after: str | None = None) -> TaskList:
        """The tasks in ``state`` of ``agent`` (either may be None: all), at most ``limit``, after ``after``."""
        return list_tasks(self.model, time.time(), state=state, agent=agent, limit=limit, after=after)

    async def get(self, request: TaskQuery) -> TaskView:
        """The task; with ``wait``, once it has ended or after that many seconds."""
        check_wait(request.wait)
        rec = self.get_rec(request.task_id)
        if request.wait:
            await self.changes.until(rec.task_id, lambda: rec.state.finished, request.wait)
        return task_view(self.model, rec, time.time())

    async def output(self, request: OutputRequest) -> OutputView:
        """The latest attempt's output on ``request.stream`` from byte ``request.after``; with ``wait``, once
        there is some past ``after`` or the task has ended, or after that many seconds."""
        if request.stream not in ("stdout", "stderr"):
            raise ValidationError("must be stdout or stderr", field="stream")
        if request.after < 0:
            raise ValidationError("must be >= 0", field="after")
        if not 1 <= request.max_bytes <= OUTPUT_PAGE_MAX_BYTES:
            raise ValidationError(f"must be 1 to {OUTPUT_PAGE_MAX_BYTES}", field="max_bytes")
        check_wait(request.wait)
        rec = self.get_rec(request.task_id)
        if request.wait:

            def ready() -> bool:
                return rec.state.finished or rec.output_bytes.get(request.stream, 0) > request.after

            await self.changes.until(rec.task_id, ready, request.wait)
        return await read_output(self.rt.store, rec, request.stream, request.after, request.max_bytes)

    def status(self) -> dict[str, Any]:
        """This replica's role, then the queues, hosts and running tasks of its state."""
        view = state_view(self.model, time.time())
        return {
            "replica": self.leader.lease.replica_id,
            "leader": self.leader.leading,
            "synced": self.follower.synced.is_set(),
            "strategy": view.pop("strategy"),
            "preemption": view.pop("preemption"),
            **view,
            "decisions": self.leader.decisions_made,
        }
