"""The read side: what the API shows of the replica's state (tasks, output, hosts, the queue).

Every view is computed from the one state the leader also decides on (:class:`~symbi_scheduler.model.Model`,
whose tasks are the task aggregate's own states), so a query never disagrees with a decision; nothing
here derives a task's status again. A task's output is read from its verified ``execution.<task_id>``
events when asked for (it is not kept in memory).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import msgspec
from symbi_common.errors import ValidationError
from symbi_common.eventstore import EventStore
from symbi_contracts.sandbox_agent.events import EXECUTION_CODEC, TERMINAL_TYPES, ExecutionEvent, output_chunks

from symbi_scheduler.core import never_fits
from symbi_scheduler.domain import TaskStatus
from symbi_scheduler.model import Model, TaskRec
from symbi_scheduler.records import host_may_report


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
    #: A placed task whose attempt is being stopped: ``cancelled`` or ``preempted`` (``task.stop_requested``).
    stopping: str = ""
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
            running=rec.executing,
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
            stopping=rec.state.stop.reason if rec.state.stop is not None and rec.state.placed else "",
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


def task_view(model: Model, rec: TaskRec, now: float) -> TaskView:
    """The task, with ``wait_reason`` if it is queued."""
    view = TaskView.of(rec)
    if rec.status == TaskStatus.QUEUED:
        view.wait_reason = wait_reason(model, rec, now)
    return view


def wait_reason(model: Model, rec: TaskRec, now: float) -> str:
    """What keeps a queued task from starting: no host could ever run it, none is alive, or the runtime's
    limit of running tasks is reached ("" when it only waits for room or its turn)."""
    deferred = model.deferred.get(rec.task_id)
    if deferred is not None:  # a task.allocate denied by a concurrency quota (symbi_scheduler.quotas)
        return deferred[1]
    agent = model.agents.get(rec.agent_id)
    limits = model.limits_of(rec)
    if agent is None or limits is None:
        return f"agent {rec.agent_id} is not known to the scheduler yet"
    model.check_hosts(now)
    hosts = list(model.placer.hosts.values())
    if not any(h.alive for h in hosts):
        return "no sandbox host is alive"
    tier = model.assessment_of(agent).tier
    never = never_fits(limits.cpu_cores, limits.memory_mb, tier, hosts)
    if never is not None:
        return f"no host could ever run it: {never}"
    if not any(h.alive and tier in h.tiers for h in hosts):
        return f"no live host offers sandbox tier {tier}"
    running, limit = len(model.core.running), model.core.max_running
    if running >= limit:
        return f"{running} tasks are running, the most runtime.max_concurrent_agents allows"
    return ""


#: Bytes of output one read returns unless asked for fewer (and at most): base64 makes a third more, and the
#: reply must stay well under NATS's 1 MB max payload.
OUTPUT_PAGE_BYTES = 256 * 1024
OUTPUT_PAGE_MAX_BYTES = 512 * 1024


class OffsetPastEnd(ValidationError):
    """``after`` lies beyond the output stored so far (it is a ``next_offset`` of an earlier read, or 0)."""

    code = "offset_past_end"


async def read_output(store: EventStore, rec: TaskRec, stream: str, after: int, max_bytes: int) -> OutputView:
    """A page of at most ``max_bytes`` of the latest attempt's output on ``stream`` from byte ``after``, from its
    verified events (those of its own host: :func:`~symbi_scheduler.records.host_may_report`). ``done``: the task
    had finished before its events were read and this page reaches the end."""
    attempt, finished, outcome, exit_code = rec.attempt, rec.state.finished, rec.outcome, rec.exit_code
    events: list[ExecutionEvent] = []
    if rec.exec_version:
        loaded = await store.load("execution", rec.task_id, EXECUTION_CODEC)
        events = [
            r.event for r in loaded if host_may_report(rec, attempt, store.registry.host_of(r.header.signing_key_id))
        ]
    chunks: list[tuple[int, bytes]] = []
    terminal: Any = None
    for ev in events:
        if getattr(ev, "attempt", attempt) != attempt:
            continue
        chunks.extend((c.offset, c.data) for c in output_chunks(ev) if c.stream == stream)
        if isinstance(ev, TERMINAL_TYPES):
            terminal = ev
    whole = _assemble(chunks)
    if after > len(whole):
        raise OffsetPastEnd(
            f"is past the end of the output: {stream} of task {rec.task_id} has {len(whole)} bytes so far",
            field="after",
        )
    part = whole[after : after + max_bytes]
    total = sha = None
    intact = None
    if terminal is not None:
        digest = terminal.output
        total = digest.stdout_bytes if stream == "stdout" else digest.stderr_bytes
        sha = digest.stdout_sha256 if stream == "stdout" else digest.stderr_sha256
        intact = len(whole) == total and (not sha or hashlib.sha256(whole).hexdigest() == sha)
    return OutputView(
        task_id=rec.task_id,
        attempt=attempt,
        stream=stream,
        offset=after,
        data_base64=base64.b64encode(part).decode(),
        next_offset=after + len(part),
        done=finished and after + len(part) == len(whole),
        outcome=outcome,
        exit_code=exit_code,
        total_bytes=total,
        sha256=sha,
        intact=intact,
    )


def state_view(model: Model, now: float) -> dict[str, Any]:
    """Queue depths, hosts with their free capacity, running tasks (``/v1/status`` without the replica's role)."""
    model.check_hosts(now)
    hosts = []
    for host in sorted(model.placer.hosts.values(), key=lambda h: h.host_id):
        info = model.capacity.host_info.get(host.host_id)
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
                "tasks": model.holds_on(host.host_id),
            }
        )
    running = []
    for r in sorted(model.core.running.values(), key=lambda r: r.task_id):
        rec = model.tasks[r.task_id]
        running.append(
            {
                "task_id": r.task_id,
                "agent_id": rec.agent_id,
                "host_id": r.host_id,
                "priority": rec.priority,
                "attempt": rec.attempt,
                "paused": r.paused,
                "stopping": r.stopping,
            }
        )
    queued, _ = model.counts()
    return {
        "strategy": model.placer.strategy,
        "preemption": model.core.preemption,
        "queues": queued,
        "parked": sum(len(v) for v in model.parked.values()),
        "hosts": hosts,
        "running": running,
        "position": model.position,
    }


def _assemble(chunks: list[tuple[int, bytes]]) -> bytes:
    """The bytes of a stream from its chunks (each at its offset; a repeated chunk is written once)."""
    out = bytearray()
    for offset, data in sorted(chunks):
        if offset > len(out):
            break  # a gap: what follows is not there yet
        out[offset : offset + len(data)] = data
    return bytes(out)
