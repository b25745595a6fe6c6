"""The scheduler service: submissions and queries (any replica), and the parts that run in the background.

Any replica accepts a submission: it appends ``task.submitted`` to a new task aggregate (a conditional
append on an empty subject, so a repeated task id is refused, never doubled) and the lease holder
picks it up. Queries are answered from the replica's model; a task's output is read from its
``execution.<task_id>`` events (verified and decrypted) when asked for.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from typing import Any

import msgspec
from symbi_common.aggregate import Repository
from symbi_common.errors import NotFound, ValidationError
from symbi_common.eventstore import Recorded
from symbi_common.sealing import new_event_id
from symbi_common.service import ServiceRuntime
from symbi_common.telemetry import inject_trace
from symbi_contracts.lifecycle.events import AgentStatus
from symbi_contracts.sandbox_agent.events import EXECUTION_CODEC, TERMINAL_TYPES, ExecutionEvent, ExecutionOutput
from symbi_contracts.scheduler.events import ResourceRequest, TaskCancelled, TaskEvent, TaskSubmitted

from symbi_scheduler import metrics
from symbi_scheduler.core import never_fits
from symbi_scheduler.domain import (
    LEVEL,
    TASK_ID_RE,
    Command,
    Record,
    Submit,
    TaskNotAssignable,
    TaskState,
    TaskStatus,
    effective_limits,
)
from symbi_scheduler.follower import EventFollower, HostWatcher
from symbi_scheduler.leader import Leader
from symbi_scheduler.model import Model, TaskRec

#: How long a submission waits for an agent this replica has not seen yet (it may have just registered).
AGENT_WAIT_S = 3.0


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


class CancelRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    task_id: str
    reason: str = "cancelled on request"


class OutputRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Output of the task's latest attempt on ``stream`` from byte ``after`` on."""

    task_id: str
    stream: str = "stdout"
    after: int = 0


class StatusRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class TaskView(msgspec.Struct, kw_only=True):
    task_id: str
    agent_id: str
    priority: str
    status: str
    attempt: int
    host_id: str
    tier: str
    risk_score: float | None
    running: bool
    outcome: str
    exit_code: int | None
    detail: str
    schedule: str
    submitted_by: str
    submitted_at: float
    finished_at: float | None
    output_bytes: dict[str, int]
    decision: dict[str, Any] | None
    #: Why a paused task is paused: ``preempted``, ``agent_suspended`` or ``action_denied``.
    pause_reason: str = ""
    #: Why a queued task has not started, when something other than a moment's wait keeps it.
    wait_reason: str = ""
    sequence: int = 0

    @classmethod
    def of(cls, rec: TaskRec, sequence: int = 0) -> TaskView:
        return cls(
            task_id=rec.task_id,
            agent_id=rec.agent_id,
            priority=rec.priority,
            status=rec.status.value,
            attempt=rec.attempt,
            host_id=rec.host_id,
            tier=rec.tier,
            risk_score=rec.risk_score,
            running=rec.status == TaskStatus.ASSIGNED and rec.attempt in rec.started and rec.attempt not in rec.ended,
            outcome=rec.outcome,
            exit_code=rec.exit_code,
            detail=rec.detail,
            schedule=rec.schedule,
            submitted_by=rec.submitted_by,
            submitted_at=rec.submitted_at,
            finished_at=rec.finished_at or None,
            output_bytes=dict(rec.output_bytes),
            decision=msgspec.to_builtins(rec.decision) if rec.decision is not None else None,
            pause_reason=rec.pause_reason if rec.status == TaskStatus.PAUSED else "",
            sequence=sequence,
        )


class OutputView(msgspec.Struct, kw_only=True):
    task_id: str
    attempt: int
    stream: str
    offset: int
    data_base64: str
    next_offset: int
    done: bool
    outcome: str
    exit_code: int | None
    total_bytes: int | None
    sha256: str | None
    intact: bool | None


class SchedulerService:
    """Submissions, queries and the background work of one scheduler replica."""

    def __init__(
        self,
        rt: ServiceRuntime,
        model: Model,
        tasks: Repository[TaskState, Command, TaskEvent],
        follower: EventFollower,
        hosts: HostWatcher,
        leader: Leader,
    ) -> None:
        self.rt = rt
        self.model = model
        self.tasks = tasks
        self.follower = follower
        self.hosts = hosts
        self.leader = leader

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
        _, records = await self.tasks.execute(task_id, Submit(event=event), correlation_id=task_id)
        self._apply(records)
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
        """Withdraw a queued (or denied) task; a placed one is stopped on its host and completes as killed."""
        rec = self.get_rec(request.task_id)
        if rec.status in (TaskStatus.ASSIGNED, TaskStatus.PAUSED):
            await self.leader.host_command(rec.host_id, "terminate", rec.task_id)
            return TaskView.of(rec)
        event = TaskCancelled(reason=request.reason[:500], cancelled_by=cancelled_by)
        _, records = await self.tasks.execute(request.task_id, Record(event=event), correlation_id=request.task_id)
        self._apply(records)
        for r in records:
            metrics.recorded(r.event, rec.submitted_at, r.header.occurred_at / 1e9)
        self.leader.wake.set()
        return TaskView.of(self.model.tasks[request.task_id], records[-1].sequence if records else 0)

    def _apply(self, records: list[Recorded[TaskEvent]]) -> None:
        for rec in records:
            h = rec.header
            self.model.apply("task", h.aggregate_id, h.aggregate_version, rec.sequence, h.occurred_at / 1e9, rec.event)
            # The store put the current trace context in the event's headers: the leader continues it.
            self.model.note_trace("task", h.aggregate_id, inject_trace({}))

    async def _agent(self, agent_id: str) -> Any:
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            agent = self.model.agents.get(agent_id)
            if agent is not None and agent.status is not None and agent.status != AgentStatus.INITIALIZING:
                return agent
            if time.monotonic() >= deadline:
                raise NotFound(f"agent {agent_id} is not registered; register it first", agent_id=agent_id)
            await asyncio.sleep(0.05)

    # --- read ---------------------------------------------------------------------------------------

    def get_rec(self, task_id: str) -> TaskRec:
        rec = self.model.tasks.get(task_id)
        if rec is None:
            raise NotFound(f"task {task_id} does not exist", task_id=task_id)
        return rec

    def get(self, request: TaskRef) -> TaskView:
        rec = self.get_rec(request.task_id)
        view = TaskView.of(rec)
        if rec.status == TaskStatus.QUEUED:
            view.wait_reason = self._wait_reason(rec)
        return view

    def _wait_reason(self, rec: TaskRec) -> str:
        """What keeps a queued task from starting: no host could ever run it, none is alive, or the runtime's
        limit of running tasks is reached ("" when it only waits for room or its turn)."""
        agent = self.model.agents.get(rec.agent_id)
        limits = self.model.limits_of(rec)
        if agent is None or limits is None:
            return f"agent {rec.agent_id} is not known to the scheduler yet"
        self.model.check_hosts(time.time())
        hosts = list(self.model.placer.hosts.values())
        if not any(h.alive for h in hosts):
            return "no sandbox host is alive"
        tier = self.model.assessment_of(agent).tier
        never = never_fits(limits.cpu_cores, limits.memory_mb, tier, hosts)
        if never is not None:
            return f"no host could ever run it: {never}"
        if not any(h.alive and tier in h.tiers for h in hosts):
            return f"no live host offers sandbox tier {tier}"
        running, limit = len(self.model.core.running), self.model.core.max_running
        if running >= limit:
            return f"{running} tasks are running, the most runtime.max_concurrent_agents allows"
        return ""

    async def output(self, request: OutputRequest) -> OutputView:
        """Reassemble the latest attempt's output from its verified ``execution.output`` events."""
        if request.stream not in ("stdout", "stderr"):
            raise ValidationError("must be stdout or stderr", field="stream")
        if request.after < 0:
            raise ValidationError("must be >= 0", field="after")
        rec = self.get_rec(request.task_id)
        events: list[ExecutionEvent] = []
        if rec.exec_version:
            loaded = await self.rt.store.load("execution", rec.task_id, EXECUTION_CODEC)
            events = [r.event for r in loaded]
        attempt = rec.attempt
        chunks: list[tuple[int, bytes]] = []
        terminal: Any = None
        for ev in events:
            if getattr(ev, "attempt", attempt) != attempt:
                continue
            if isinstance(ev, ExecutionOutput) and ev.stream == request.stream:
                chunks.append((ev.offset, ev.data))
            elif isinstance(ev, TERMINAL_TYPES):
                terminal = ev
        whole = _assemble(chunks)
        part = whole[request.after :]
        total = sha = None
        intact = None
        if terminal is not None:
            digest = terminal.output
            total = digest.stdout_bytes if request.stream == "stdout" else digest.stderr_bytes
            sha = digest.stdout_sha256 if request.stream == "stdout" else digest.stderr_sha256
            intact = len(whole) == total and (not sha or hashlib.sha256(whole).hexdigest() == sha)
        done = rec.status in (TaskStatus.COMPLETED, TaskStatus.CANCELLED)
        return OutputView(
            task_id=rec.task_id,
            attempt=attempt,
            stream=request.stream,
            offset=request.after,
            data_base64=base64.b64encode(part).decode(),
            next_offset=request.after + len(part),
            done=done,
            outcome=rec.outcome,
            exit_code=rec.exit_code,
            total_bytes=total,
            sha256=sha,
            intact=intact,
        )

    def status(self) -> dict[str, Any]:
        """Queue depths, hosts with their free capacity, running tasks."""
        now = time.time()
        self.model.check_hosts(now)
        hosts = []
        for host in sorted(self.model.placer.hosts.values(), key=lambda h: h.host_id):
            info = self.model.host_info.get(host.host_id)
            hosts.append(
                {
                    "host_id": host.host_id,
                    "alive": host.alive,
                    "tiers": sorted(host.tiers),
                    "cpu_cores": host.cpu_cores,
                    "cpu_free": round(host.cpu_free, 3),
                    "memory_mb": host.memory_mb,
                    "memory_free_mb": host.memory_free,
                    "heartbeat_age_s": round(now - info.heartbeat_s(), 2) if info else None,
                    "tasks": self.model.holds_on(host.host_id),
                }
            )
        running = [
            {
                "task_id": r.task_id,
                "agent_id": self.model.tasks[r.task_id].agent_id,
                "host_id": r.host_id,
                "priority": self.model.tasks[r.task_id].priority,
                "attempt": self.model.tasks[r.task_id].attempt,
                "paused": r.paused,
                "stopping": r.stopping,
            }
            for r in sorted(self.model.core.running.values(), key=lambda r: r.task_id)
        ]
        return {
            "replica": self.leader.lease.replica_id,
            "leader": self.leader.leading,
            "synced": self.follower.synced.is_set(),
            "strategy": self.model.placer.strategy,
            "preemption": self.model.core.preemption,
            "queues": self.model.depths(),
            "parked": sum(len(v) for v in self.model.parked.values()),
            "hosts": hosts,
            "running": running,
            "decisions": self.leader.decisions_made,
            "position": self.model.position,
        }


def _assemble(chunks: list[tuple[int, bytes]]) -> bytes:
    """The bytes of a stream from its chunks (each at its offset; a repeated chunk is written once)."""
    out = bytearray()
    for offset, data in sorted(chunks):
        if offset > len(out):
            break  # a gap: what follows is not there yet
        out[offset : offset + len(data)] = data
    return bytes(out)
