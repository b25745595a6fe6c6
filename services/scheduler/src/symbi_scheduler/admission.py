"""Admission: which queued task may start now, and where the others wait (no I/O).

The half of the scheduler's state (:class:`symbi_scheduler.model.Model`) that the leader reads to pick work:
the folded tasks and agents, the queue, the tasks parked until their agent's next event, the tasks deferred
until a concurrency quota frees up (:mod:`symbi_scheduler.quotas`), the agents busy with a task of ours, and
the CPU-seconds used per day. :class:`~symbi_scheduler.model.Model` folds the events into it and keeps these
indices in line with each task's state.
"""

from __future__ import annotations

from collections.abc import Mapping

from symbi_contracts.lifecycle.config import ResourceLimits
from symbi_contracts.lifecycle.events import AgentStatus
from symbi_contracts.sandbox_agent.risk import RiskAssessment

from symbi_scheduler.core import CRITICAL, AgingQueue, Entry, Verdict
from symbi_scheduler.domain import LEVEL, TaskStatus, effective_limits
from symbi_scheduler.quotas import CpuLedger, QuotaLimits, QuotaUsage
from symbi_scheduler.records import AgentRec, TaskRec
from symbi_scheduler.risk import assess_agent


class Admission:
    """The tasks and agents, the queue and the tasks kept out of it, and the rules that let a task start."""

    def __init__(self, *, aging_s: float, default_tier: str, tenant_quotas: Mapping[str, QuotaLimits] | None) -> None:
        self.tasks: dict[str, TaskRec] = {}
        self.agents: dict[str, AgentRec] = {}
        self.queue = AgingQueue(aging_s)
        self.parked: dict[str, list[Entry]] = {}
        #: Tasks not yet completed or cancelled (the only ones chores look at).
        self.active: set[str] = set()
        #: agent id -> the task of ours that holds it (assigned or paused).
        self.busy: dict[str, str] = {}
        self.default_tier = default_tier
        #: Quotas beyond one task (:mod:`symbi_scheduler.quotas`): the tenants' limits, CPU-seconds used per
        #: day, and the tasks waiting for a concurrency quota (task id -> entry, why), re-queued when a task ends.
        self.tenant_quotas = dict(tenant_quotas or {})
        self.cpu = CpuLedger()
        self.deferred: dict[str, tuple[Entry, str]] = {}

    # --- queue -----------------------------------------------------------------------------------

    def limits_of(self, rec: TaskRec) -> ResourceLimits | None:
        agent = self.agents.get(rec.agent_id)
        if agent is None or agent.config is None:
            return None
        return effective_limits(agent.config.resources, rec.resources)

    def assessment_of(self, agent: AgentRec) -> RiskAssessment:
        if agent.assessment is None:
            agent.assessment = assess_agent(agent.config, self.default_tier)
        return agent.assessment

    def _enqueue(self, rec: TaskRec) -> None:
        agent = self.agents.get(rec.agent_id)
        limits = self.limits_of(rec)
        if agent is None or limits is None:
            return
        entry = Entry(
            rec.task_id,
            rec.agent_id,
            rec.level,
            rec.submitted_at,
            limits.cpu_cores,
            limits.memory_mb,
            self.assessment_of(agent).tier,
        )
        self.queue.push(entry)

    def _release_agent(self, rec: TaskRec) -> None:
        if self.busy.get(rec.agent_id) == rec.task_id:
            del self.busy[rec.agent_id]
            self._unpark_agent(rec.agent_id)
        self._undefer()  # a task ended: one waiting for a concurrency quota may fit now

    def _unpark_agent(self, agent_id: str) -> None:
        for entry in self.parked.pop(agent_id, ()):
            rec = self.tasks.get(entry.task_id)
            if rec is not None and rec.status == TaskStatus.QUEUED:
                self.queue.push(entry)

    # --- quotas ------------------------------------------------------------------------------------

    def tenant_of(self, agent_id: str) -> str:
        agent = self.agents.get(agent_id)
        return agent.config.tenant if agent is not None and agent.config is not None else "default"

    def quota_usage(self, rec: TaskRec, now: float) -> QuotaUsage:
        """The running tasks and today's CPU-seconds of the task's agent and tenant, and their limits."""
        tenant = self.tenant_of(rec.agent_id)
        agent_running = tenant_running = 0
        for task_id in self.active:
            other = self.tasks.get(task_id)
            if other is None or other.status not in (TaskStatus.ASSIGNED, TaskStatus.PAUSED):
                continue
            if other.agent_id == rec.agent_id:
                agent_running += 1
            if self.tenant_of(other.agent_id) == tenant:
                tenant_running += 1
        agent = self.agents.get(rec.agent_id)
        quota = agent.config.quota if agent is not None and agent.config is not None else None
        return QuotaUsage(
            tenant=tenant,
            agent_running=agent_running,
            tenant_running=tenant_running,
            agent_cpu_seconds_today=self.cpu.agent_today(rec.agent_id, now),
            tenant_cpu_seconds_today=self.cpu.tenant_today(tenant, now),
            agent_limits=QuotaLimits(quota.concurrent_tasks, quota.cpu_seconds_per_day) if quota else QuotaLimits(),
            tenant_limits=self.tenant_quotas.get(tenant, QuotaLimits()),
        )

    def defer(self, entry: Entry, reason: str) -> None:
        """Keep ``entry`` out of the queue until a task ends (or an agent changes): it waits for a quota."""
        self.deferred[entry.task_id] = (entry, reason)

    def _undefer(self) -> None:
        waiting, self.deferred = self.deferred, {}
        for entry, _ in waiting.values():
            rec = self.tasks.get(entry.task_id)
            if rec is not None and rec.status == TaskStatus.QUEUED:
                self.queue.push(entry)

    def _unpark_task(self, rec: TaskRec) -> None:
        self.deferred.pop(rec.task_id, None)
        parked = self.parked.get(rec.agent_id)
        if parked:
            self.parked[rec.agent_id] = [e for e in parked if e.task_id != rec.task_id]

    def park(self, entry: Entry) -> None:
        """Keep ``entry`` out of the queue until its agent's next event."""
        self.parked.setdefault(entry.agent_id, []).append(entry)

    def agent_verdict(self, entry: Entry) -> Verdict:
        """``take`` if the task's agent can start it now, else ``park`` it until the agent changes."""
        agent = self.agents.get(entry.agent_id)
        rec = self.tasks.get(entry.task_id)
        ok = (
            agent is not None
            and rec is not None
            and entry.agent_id not in self.busy
            and (
                agent.status == AgentStatus.READY
                or (
                    agent.status == AgentStatus.RUNNING
                    and agent.current_task == entry.task_id
                    and agent.assigned_seq > rec.queued_seq
                )
            )
        )
        if ok:
            return "take"
        self.park(entry)
        return "park"

    def counts(self) -> tuple[dict[str, int], dict[TaskStatus, int]]:
        """The queued tasks by priority, and the unfinished ones by status (``/v1/status`` and the gauges)."""
        queued = dict.fromkeys(LEVEL, 0)
        by_status = dict.fromkeys((TaskStatus.QUEUED, TaskStatus.ASSIGNED, TaskStatus.PAUSED, TaskStatus.DENIED), 0)
        for task_id in list(self.active):
            rec = self.tasks.get(task_id)
            if rec is None:
                continue
            by_status[rec.status] += 1
            if rec.status == TaskStatus.QUEUED:
                queued[rec.priority] += 1
        return queued, by_status

    def critical_waiting(self) -> bool:
        """Whether a critical task is queued (paused tasks then stay paused)."""
        return any(e.level >= CRITICAL for e in self.queue.entries.values())
