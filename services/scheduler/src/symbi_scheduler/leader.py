"""The lease holder's work: placing tasks, preempting, finishing what executions report, firing schedules.

One loop, woken by every change the follower or the host watcher applies (and every ``tick_s`` for
aging, host loss and cron). Each round first does the model's chores — the steps a crash may have left
half done — then takes scheduling decisions from the pure core until none is left, then fires due
schedules. Every write is a conditional append through the task repository and is applied to the model
at once, so the next decision already sees it.

Assignment order (each step is safe to repeat after a crash): ask the decision point (``task.allocate``
on ``Host::"<id>"``) → ``cmd.lifecycle.assign_task`` (Ready → Running) → append ``task.assigned`` with
the decision record → publish ``work.<host_id>`` (``Nats-Msg-Id: <task_id>:<attempt>``). A denial is
appended as ``task.suspended`` (reason ``policy_denied``) and the agent is suspended through the lifecycle.

Tracing: whatever the leader does for a task runs as a span of the trace the task's newest event
carries (the submitter's, then the sandbox-agent's), and the work item carries it on to the sandbox, so a
task is one trace from submission to ``task.completed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from symbi_common.aggregate import Repository
from symbi_common.caps import cap_limits
from symbi_common.decisions import (
    AllowWithConditions,
    DecisionPoint,
    DecisionRecord,
    DecisionRequest,
    Deny,
    EntityRef,
)
from symbi_common.errors import DomainError, InfrastructureError, SymbiError
from symbi_common.policy.enforcement import SCHEDULER_TASK_ALLOCATE
from symbi_common.policy.hooks import Enforcer
from symbi_common.service import ServiceRuntime
from symbi_contracts.lifecycle.config import ResourceLimits
from symbi_contracts.scheduler.events import TaskAssigned, TaskCompleted, TaskEvent, TaskStopRequested, TaskSuspended

from symbi_scheduler.chore_runner import ChoreRunner
from symbi_scheduler.chores import AgentDenied
from symbi_scheduler.chores import due as chores_due
from symbi_scheduler.core import Place, Preempt
from symbi_scheduler.domain import Command, TaskState, TaskStatus
from symbi_scheduler.effects import Effects
from symbi_scheduler.firing import ScheduleFirer
from symbi_scheduler.follower import stop_requested
from symbi_scheduler.lease import Lease
from symbi_scheduler.model import Model
from symbi_scheduler.quotas import QuotaDenial, quota_denial
from symbi_scheduler.schedules import Fire, ScheduleEvent, ScheduleState

log = structlog.get_logger(__name__)

MAX_DECISIONS_PER_ROUND = 500


class Leader:
    """Runs the scheduling loop while this replica holds the lease."""

    def __init__(
        self,
        rt: ServiceRuntime,
        model: Model,
        tasks: Repository[TaskState, Command, TaskEvent],
        schedules: Repository[ScheduleState, Fire, ScheduleEvent],
        lease: Lease,
        decisions: DecisionPoint | None,
        synced: asyncio.Event,
        hosts_loaded: asyncio.Event,
        wake: asyncio.Event,
    ) -> None:
        self.rt = rt
        self.model = model
        self.fx = Effects(rt, model, tasks)
        self.chores = ChoreRunner(self.fx, rt.settings.scheduler.max_attempts)
        self.firer = ScheduleFirer(self.fx, schedules, rt.note_error)
        self.lease = lease
        self.decisions = decisions
        self.synced = synced
        self.hosts_loaded = hosts_loaded
        self.settings = rt.settings.scheduler
        #: Set by whatever changes the model (new events, heartbeats, submissions): a round runs soon.
        self.wake = wake
        self.leading = False
        self.decisions_made = 0

    # --- the loop -------------------------------------------------------------------------------

    async def renew(self) -> None:
        """Keep the lease (or try to take it) every ``lease_ttl_s / 3``; hand it back on shutdown."""
        try:
            while not stop_requested():
                try:
                    held = await self.lease.tick()
                except Exception as exc:
                    log.warning("lease check failed", error=repr(exc))
                    held = False
                if held != self.leading:
                    self.leading = held
                    self.fx.forget()
                    self.chores.forget()
                    self.wake.set()
                await asyncio.sleep(self.settings.lease_ttl_s / 3)
        finally:
            self.leading = False
            await asyncio.shield(self.lease.release())

    async def run(self) -> None:
        await self.synced.wait()
        await self.hosts_loaded.wait()
        while not stop_requested():
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
            # coincides with its timeout, and this loop would then outlive the service's shutdown.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.tick_s):
                    await self.wake.wait()
            self.wake.clear()
            if not self.leading:
                continue
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("scheduling round failed")
                self.rt.note_error(f"scheduling round: {exc!r}")
                await asyncio.sleep(self.settings.tick_s)

    async def round(self) -> None:
        now = time.time()
        for chore in chores_due(self.model, now, dispatched=self.fx.dispatched):
            if not self.leading:
                return
            try:
                with self.fx.traced(f"scheduler.{type(chore).__name__}", chore.task_id):
                    await self.chores.do(chore)
            except SymbiError as exc:
                log.warning("chore failed", chore=repr(chore), error=str(exc))
        handled: set[str] = set()
        for _ in range(MAX_DECISIONS_PER_ROUND):
            if not self.leading:
                return
            decision = self.model.core.decide(time.time(), self.model.agent_verdict)
            if decision is None:
                break
            self.decisions_made += 1
            if isinstance(decision, Place):
                try:
                    with self.fx.traced("scheduler.place", decision.entry.task_id):
                        await self._place(decision)
                except BaseException:
                    if self.model.tasks[decision.entry.task_id].status == TaskStatus.QUEUED:
                        self.model.queue.push(decision.entry)  # not placed: back in its place in line
                    raise
            else:
                if decision.victim.task_id in handled:
                    break
                handled.add(decision.victim.task_id)
                with self.fx.traced("scheduler.preempt", decision.victim.task_id):
                    await self._preempt(decision)
        await self.firer.fire_due(now)

    # --- decisions --------------------------------------------------------------------------------

    async def _place(self, place: Place) -> None:
        entry = place.entry
        rec = self.model.tasks[entry.task_id]
        agent = self.model.agents[rec.agent_id]
        limits = self.model.limits_of(rec)
        if agent.config is None or agent.config.workload is None or limits is None:
            await self.fx.record(
                rec.task_id, TaskCompleted(outcome="refused", attempt=rec.attempt, detail="no workload")
            )
            return
        assessment = self.model.assessment_of(agent)
        usage = self.model.quota_usage(rec, time.time())
        request = DecisionRequest(
            principal=EntityRef(type="Agent", id=rec.agent_id, attrs={"name": agent.config.name}),
            action="task.allocate",
            resource=EntityRef(type="Host", id=place.host_id),
            context={
                "task_id": rec.task_id,
                "priority": rec.priority,
                "cpu_cores": limits.cpu_cores,
                "memory_mb": limits.memory_mb,
                "tier": assessment.tier,
                "risk_score": assessment.score,
                "quota": usage.context(),  # the baseline's quota-* policies deny over a quota (quotas.py)
            },
        )
        if self.decisions is None:  # opened on first use: the policy events may still be loading at start
            self.decisions = await self.rt.decision_point()
        verdict = await Enforcer.around(self.decisions).decide(request, SCHEDULER_TASK_ALLOCATE)
        decision, record = verdict.decision, verdict.record
        if verdict.undecided:  # no decision could be had: the task stays queued, tried again next round
            raise InfrastructureError(f"task.allocate for task {rec.task_id} not decided: {record.reason}")
        if isinstance(decision, Deny) and (denial := quota_denial(decision.policies, usage)) is not None:
            await self._over_quota(place, denial, record)
            return
        if isinstance(decision, Deny):
            event = TaskSuspended(reason="policy_denied", attempt=rec.attempt, host_id=place.host_id, decision=record)
            await self.fx.record(rec.task_id, event)
            log.info("task.allocate denied", task_id=rec.task_id, reason=decision.reason)
            await self.chores.agent_denied(AgentDenied(rec.agent_id, rec.task_id, assign_first=True))
            return
        if isinstance(decision, AllowWithConditions):
            limits = _capped(limits, decision)
        try:
            if not (agent.status == "Running" and agent.current_task == rec.task_id):
                await self.fx.lifecycle("assign_task", {"agent_id": rec.agent_id, "task_id": rec.task_id})
        except DomainError as exc:
            # The agent changed under us (terminated, suspended): the task waits for its next event.
            log.info("agent not assignable", agent_id=rec.agent_id, task_id=rec.task_id, error=str(exc))
            self.model.park(entry)
            return
        attempt = rec.attempt + 1
        assigned = TaskAssigned(
            host_id=place.host_id,
            tier=assessment.tier,
            risk_score=assessment.score,
            risk_factors=dict(assessment.factors),
            risk_reason=assessment.reason,
            workload=agent.config.workload,
            limits=limits,
            attempt=attempt,
            decision=record,
            network_access=agent.config.network_access,
            filesystem_access=agent.config.filesystem_access,
            tenant=agent.config.tenant,
            budget=agent.config.budget,
            secrets=agent.config.secrets,
            messaging=agent.config.messaging,
            mcp_servers=agent.config.mcp_servers,
        )
        await self.fx.record(rec.task_id, assigned)
        log.info("task assigned", task_id=rec.task_id, host=place.host_id, attempt=attempt, priority=rec.priority)
        await self.fx.publish_work(rec.task_id, attempt, place.host_id)

    async def _over_quota(self, place: Place, denial: QuotaDenial, record: DecisionRecord) -> None:
        """A task over a quota: it waits for a concurrency quota, and is refused over a CPU-seconds one."""
        rec = self.model.tasks[place.entry.task_id]
        if denial.action == "wait":
            if rec.task_id not in self.model.deferred:
                log.info("task waits for a quota", task_id=rec.task_id, agent_id=rec.agent_id, reason=denial.reason)
            self.model.defer(place.entry, denial.reason)
            return
        log.info("task refused over quota", task_id=rec.task_id, agent_id=rec.agent_id, reason=denial.reason)
        refused = TaskCompleted(
            outcome="refused", attempt=rec.attempt, code="quota_exceeded", detail=denial.reason, decision=record
        )
        await self.fx.record(rec.task_id, refused)

    async def _preempt(self, preempt: Preempt) -> None:
        victim = self.model.tasks[preempt.victim.task_id]
        by = preempt.entry.task_id
        self.model.queue.push(preempt.entry)  # the critical task stays first in line
        log.info("preempting", victim=victim.task_id, by=by, mode=preempt.mode, host=victim.host_id)
        if preempt.mode == "suspend":
            # Recorded paused (its resources given to the critical task) only once the host has frozen it.
            if await self.fx.host_command(victim.host_id, "suspend", victim.task_id):
                await self.fx.record(
                    victim.task_id,
                    TaskSuspended(reason="preempted", attempt=victim.attempt, host_id=victim.host_id, by_task=by),
                )
            return
        # Requeued (task.preempted) only once the host reports the attempt's end: killed, or refused because of
        # the stop request recorded here first. Until then the victim keeps its place and its resources are
        # releasing (the critical task waits for them), so nothing runs it again beside the old attempt.
        host_id, attempt = victim.host_id, victim.attempt
        stop = TaskStopRequested(
            attempt=attempt, host_id=host_id, reason="preempted", requested_by="scheduler", by_task=by
        )
        await self.fx.record(victim.task_id, stop)
        if self.fx.due("stop", f"{victim.task_id}:{attempt}"):  # asked again by the StopRun chore if need be
            await self.fx.ask_host(host_id, "terminate", victim.task_id)


def _capped(limits: ResourceLimits, decision: AllowWithConditions) -> ResourceLimits:
    """Apply ``cap_resources`` conditions of an allow to the limits the task runs with (the one capping rule)."""
    return cap_limits(limits, decision.conditions)
