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
from typing import Any

import msgspec
import structlog
from symbi_common.aggregate import Repository
from symbi_common.caps import cap_limits
from symbi_common.decisions import AllowWithConditions, DecisionPoint, DecisionRecord, DecisionRequest, Deny, EntityRef
from symbi_common.errors import AlreadyExists, DomainError, InfrastructureError, SymbiError
from symbi_common.eventstore import Recorded
from symbi_common.policy.enforcement import SCHEDULER_TASK_ALLOCATE
from symbi_common.policy.hooks import Enforcer
from symbi_common.service import ServiceRuntime
from symbi_common.telemetry import continue_trace, inject_trace
from symbi_contracts.lifecycle.commands import COMMANDS as LIFECYCLE_COMMANDS
from symbi_contracts.lifecycle.config import ResourceLimits
from symbi_contracts.sandbox_agent import errors as sandbox_errors  # noqa: F401  (decodes its typed replies)
from symbi_contracts.sandbox_agent.commands import TaskRef, service_for
from symbi_contracts.scheduler.events import (
    TaskAssigned,
    TaskCancelled,
    TaskCompleted,
    TaskEvent,
    TaskPreempted,
    TaskResumed,
    TaskSubmitted,
    TaskSuspended,
)

from symbi_scheduler import metrics
from symbi_scheduler.chores import (
    AgentDenied,
    AgentDone,
    AgentViolated,
    CancelForAgent,
    Chore,
    Complete,
    Dispatch,
    HostLost,
    PauseForAction,
    PauseForAgent,
    ResumeAction,
    ResumeDenied,
    ResumedOnHost,
    ResumePaused,
    StopForAgent,
    SuspendForAction,
)
from symbi_scheduler.chores import due as chores_due
from symbi_scheduler.core import Place, Preempt
from symbi_scheduler.domain import Command, Record, Submit, TaskState
from symbi_scheduler.follower import stop_requested
from symbi_scheduler.lease import Lease
from symbi_scheduler.model import Model
from symbi_scheduler.schedules import (
    Fire,
    ScheduleEvent,
    ScheduleFired,
    ScheduleState,
    check_spec,
    due,
    task_id_for,
)

log = structlog.get_logger(__name__)
_json = msgspec.json.Encoder()

MAX_DECISIONS_PER_ROUND = 500
#: A lifecycle or host command that did not take effect is retried after this long.
RETRY_AFTER_S = 3.0


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
        self.tasks = tasks
        self.schedules = schedules
        self.lease = lease
        self.decisions = decisions
        self.synced = synced
        self.hosts_loaded = hosts_loaded
        self.settings = rt.settings.scheduler
        #: Set by whatever changes the model (new events, heartbeats, submissions): a round runs soon.
        self.wake = wake
        self.leading = False
        self.decisions_made = 0
        self._dispatched: set[tuple[str, int]] = set()
        self._recent: dict[tuple[str, str], float] = {}  # (what, task) -> when last tried
        #: ``resume`` requests of paused-on-denial tasks the sandbox answered: (task, agent resumption).
        self._resume_answered: set[tuple[str, int]] = set()
        self._bad_specs: set[tuple[str, str]] = set()

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
                    self._dispatched.clear()
                    self._recent.clear()
                    self._resume_answered.clear()
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
        for chore in chores_due(self.model, now, dispatched=self._dispatched):
            if not self.leading:
                return
            try:
                with self._traced(f"scheduler.{type(chore).__name__}", chore.task_id):
                    await self.do(chore)
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
                    with self._traced("scheduler.place", decision.entry.task_id):
                        await self._place(decision)
                except BaseException:
                    if self.model.tasks[decision.entry.task_id].status == "queued":
                        self.model.queue.push(decision.entry)  # not placed: back in its place in line
                    raise
            else:
                if decision.victim.task_id in handled:
                    break
                handled.add(decision.victim.task_id)
                with self._traced("scheduler.preempt", decision.victim.task_id):
                    await self._preempt(decision)
        await self._fire_schedules(now)

    # --- writing ----------------------------------------------------------------------------------

    def _traced(self, name: str, task_id: str) -> contextlib.AbstractContextManager[Any]:
        """A span of the task's trace (the one its newest event carries) for what the leader does for it."""
        rec = self.model.tasks.get(task_id)
        return continue_trace(name, rec.trace if rec else None, attributes={"symbi.task_id": task_id})

    async def record(self, task_id: str, event: TaskEvent) -> list[Recorded[TaskEvent]]:
        """Append one decision to the task (conditionally) and apply it to the model at once."""
        command: Command = Submit(event=event) if isinstance(event, TaskSubmitted) else Record(event=event)
        _, records = await self.tasks.execute(task_id, command, correlation_id=task_id)
        self.apply(records)
        self.model.note_trace("task", task_id, inject_trace({}))  # what the store put in the event's headers
        rec = self.model.tasks.get(task_id)
        for r in records:
            if rec is not None:
                metrics.recorded(r.event, rec.submitted_at, r.header.occurred_at / 1e9)
        return records

    def apply(self, records: list[Recorded[TaskEvent]]) -> None:
        for rec in records:
            h = rec.header
            self.model.apply("task", h.aggregate_id, h.aggregate_version, rec.sequence, h.occurred_at / 1e9, rec.event)

    def _due(self, what: str, task_id: str) -> bool:
        """Whether an idempotent side effect for ``task_id`` should be (re)tried now."""
        key = (what, task_id)
        now = time.monotonic()
        if now - self._recent.get(key, -RETRY_AFTER_S) < RETRY_AFTER_S:
            return False
        self._recent[key] = now
        return True

    async def lifecycle(self, action: str, body: dict[str, Any]) -> None:
        request = msgspec.convert(body, LIFECYCLE_COMMANDS[action])  # the body as the lifecycle's contract has it
        await self.rt.client.call(
            "lifecycle", action, request, dict, headers={"Symbi-Correlation-Id": str(body.get("task_id", ""))}
        )

    async def host_command(self, host_id: str, action: str, task_id: str) -> None:
        try:
            await self.rt.client.call(service_for(host_id), action, TaskRef(task_id=task_id), dict, timeout=15.0)
        except SymbiError as exc:
            log.warning("host command failed", host=host_id, action=action, task_id=task_id, error=str(exc))

    async def publish_work(self, task_id: str, attempt: int, host_id: str) -> None:
        headers = {"Nats-Msg-Id": f"{task_id}:{attempt}"}
        inject_trace(headers)  # the sandbox-agent runs the task as part of its trace
        await self.rt.js.publish(
            f"work.{host_id}", _json.encode({"task_id": task_id, "attempt": attempt}), headers=headers
        )
        self._dispatched.add((task_id, attempt))

    # --- decisions --------------------------------------------------------------------------------

    async def _place(self, place: Place) -> None:
        entry = place.entry
        rec = self.model.tasks[entry.task_id]
        agent = self.model.agents[rec.agent_id]
        limits = self.model.limits_of(rec)
        if agent.config is None or agent.config.workload is None or limits is None:
            await self.record(rec.task_id, TaskCompleted(outcome="refused", attempt=rec.attempt, detail="no workload"))
            return
        assessment = self.model.assessment_of(agent)
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
            },
        )
        if self.decisions is None:  # opened on first use: the policy events may still be loading at start
            self.decisions = await self.rt.decision_point()
        verdict = await Enforcer.around(self.decisions).decide(request, SCHEDULER_TASK_ALLOCATE)
        decision, record = verdict.decision, verdict.record
        if verdict.undecided:  # no decision could be had: the task stays queued, tried again next round
            raise InfrastructureError(f"task.allocate for task {rec.task_id} not decided: {record.reason}")
        if isinstance(decision, Deny):
            event = TaskSuspended(reason="policy_denied", attempt=rec.attempt, host_id=place.host_id, decision=record)
            await self.record(rec.task_id, event)
            log.info("task.allocate denied", task_id=rec.task_id, reason=decision.reason)
            await self._agent_denied(AgentDenied(rec.agent_id, rec.task_id, assign_first=True))
            return
        if isinstance(decision, AllowWithConditions):
            limits = _capped(limits, decision)
        try:
            if not (agent.status == "Running" and agent.current_task == rec.task_id):
                await self.lifecycle("assign_task", {"agent_id": rec.agent_id, "task_id": rec.task_id})
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
        )
        await self.record(rec.task_id, assigned)
        log.info("task assigned", task_id=rec.task_id, host=place.host_id, attempt=attempt, priority=rec.priority)
        await self.publish_work(rec.task_id, attempt, place.host_id)

    async def _preempt(self, preempt: Preempt) -> None:
        victim = self.model.tasks[preempt.victim.task_id]
        by = preempt.entry.task_id
        self.model.queue.push(preempt.entry)  # the critical task stays first in line
        log.info("preempting", victim=victim.task_id, by=by, mode=preempt.mode, host=victim.host_id)
        if preempt.mode == "suspend":
            await self.record(
                victim.task_id,
                TaskSuspended(reason="preempted", attempt=victim.attempt, host_id=victim.host_id, by_task=by),
            )
            await self.host_command(victim.host_id, "suspend", victim.task_id)
            return
        host_id, attempt = victim.host_id, victim.attempt
        await self.record(
            victim.task_id, TaskPreempted(host_id=host_id, attempt=attempt, reason="preempted", by_task=by)
        )
        await self.host_command(host_id, "terminate", victim.task_id)
        await self._agent_done(AgentDone(victim.agent_id, victim.task_id, "cancelled"))

    # --- chores -----------------------------------------------------------------------------------

    async def do(self, chore: Chore) -> None:
        match chore:
            case Complete():
                rec = self.model.tasks[chore.task_id]
                event = TaskCompleted(
                    outcome=chore.outcome,
                    attempt=chore.attempt,
                    host_id=rec.host_id,
                    exit_code=chore.exit_code,
                    detail=chore.detail,
                )
                await self.record(chore.task_id, event)
                log.info("task completed", task_id=chore.task_id, outcome=chore.outcome, exit_code=chore.exit_code)
                if chore.policy_violation:
                    # The sandbox refused to start it on the policy's word: a policy violation (Running →
                    # Suspended). Once resumed, the agent gets complete_task like any other finished task.
                    await self.do(AgentViolated(rec.agent_id, chore.task_id, f"sandbox.start denied: {chore.detail}"))
                    return
                outcome = {"succeeded": "succeeded", "cancelled": "cancelled"}.get(chore.outcome, "failed")
                await self._agent_done(AgentDone(rec.agent_id, rec.task_id, outcome))
            case Dispatch():
                await self.publish_work(chore.task_id, chore.attempt, chore.host_id)
            case AgentDone():
                await self._agent_done(chore)
            case AgentViolated():
                if self._due("violation", chore.task_id):
                    await self._suspend_agent(chore.agent_id, chore.task_id, chore.reason)
            case AgentDenied():
                await self._agent_denied(chore)
            case ResumeDenied():
                rec = self.model.tasks[chore.task_id]
                await self.record(chore.task_id, TaskResumed(reason="policy violation cleared", attempt=rec.attempt))
            case CancelForAgent():
                await self.record(chore.task_id, TaskCancelled(reason=chore.reason, cancelled_by="scheduler"))
            case HostLost():
                await self._host_lost(chore)
            case PauseForAgent():
                if self._due("pause", f"{chore.task_id}:{chore.attempt}"):
                    await self.record(
                        chore.task_id,
                        TaskSuspended(reason="agent_suspended", attempt=chore.attempt, host_id=chore.host_id),
                    )
                    await self.host_command(chore.host_id, "suspend", chore.task_id)
            case StopForAgent():
                if self._due("stop", f"{chore.task_id}:{chore.attempt}"):
                    await self.host_command(chore.host_id, "terminate", chore.task_id)
            case PauseForAction():
                await self._pause_for_action(chore)
            case SuspendForAction():
                if self._due("action-suspend", f"{chore.task_id}@{chore.denied_seq}"):
                    await self._suspend_for_action(chore.agent_id, chore.task_id)
            case ResumeAction():
                await self._resume_action(chore)
            case ResumedOnHost():
                await self.record(
                    chore.task_id, TaskResumed(reason="action allowed", attempt=chore.attempt, host_id=chore.host_id)
                )
                log.info("task resumed", task_id=chore.task_id, reason="action allowed")
            case ResumePaused():
                if self._due("resume", f"{chore.task_id}@{self.model.tasks[chore.task_id].version}"):
                    await self.host_command(chore.host_id, "resume", chore.task_id)
                    await self.record(
                        chore.task_id,
                        TaskResumed(reason="capacity available", attempt=chore.attempt, host_id=chore.host_id),
                    )

    async def _agent_done(self, chore: AgentDone) -> None:
        agent = self.model.agents.get(chore.agent_id)
        # Once per assignment of the agent (a task re-queued and assigned again completes again).
        if not self._due("complete", f"{chore.task_id}@{agent.assigned_seq if agent else 0}"):
            return
        try:
            await self.lifecycle(
                "complete_task", {"agent_id": chore.agent_id, "task_id": chore.task_id, "outcome": chore.outcome}
            )
        except DomainError as exc:  # already done, or the agent moved on: its events will tell
            log.info("complete_task not applied", agent_id=chore.agent_id, task_id=chore.task_id, error=str(exc))

    async def _agent_denied(self, chore: AgentDenied) -> None:
        rec = self.model.tasks[chore.task_id]
        if not self._due("deny", f"{chore.task_id}@{rec.denied_seq}"):
            return
        reason = rec.decision.reason if isinstance(rec.decision, DecisionRecord) else ""
        try:
            if chore.assign_first:
                await self.lifecycle("assign_task", {"agent_id": chore.agent_id, "task_id": chore.task_id})
            policies = rec.decision.policies if isinstance(rec.decision, DecisionRecord) else ()
            await self.lifecycle(
                "suspend",
                {
                    "agent_id": chore.agent_id,
                    "reason": f"task.allocate denied for task {chore.task_id}: {reason}"[:900],
                    "policy_id": policies[0] if policies else None,
                },
            )
        except DomainError as exc:
            log.info("suspend not applied", agent_id=chore.agent_id, task_id=chore.task_id, error=str(exc))

    async def _pause_for_action(self, chore: PauseForAction) -> None:
        """The sandbox froze the task on a denied request: record the pause, then suspend the agent."""
        rec = self.model.tasks[chore.task_id]
        denial = rec.action_denial
        event = TaskSuspended(
            reason="action_denied",
            attempt=chore.attempt,
            host_id=chore.host_id,
            decision=denial.decision if denial is not None else None,
        )
        await self.record(chore.task_id, event)
        log.info("task paused: action denied", task_id=chore.task_id, action=denial.action if denial else "")
        if self._due("action-suspend", f"{chore.task_id}@{rec.action_denied_seq}"):
            await self._suspend_for_action(rec.agent_id, chore.task_id)

    async def _suspend_for_action(self, agent_id: str, task_id: str) -> None:
        """Suspend the agent for the task's latest denied request; the reason names the decision."""
        rec = self.model.tasks[task_id]
        denial = rec.action_denial
        decision = denial.decision if denial is not None else None
        why = decision.reason if decision is not None and decision.reason else "denied by policy"
        what = f"{denial.action} on {denial.resource}" if denial is not None else "a request"
        try:
            await self.lifecycle(
                "suspend",
                {
                    "agent_id": agent_id,
                    "reason": f"action {what} denied for task {task_id}: {why}"[:900],
                    "policy_id": decision.policies[0] if decision is not None and decision.policies else None,
                },
            )
        except DomainError as exc:
            log.info("suspend not applied", agent_id=agent_id, task_id=task_id, error=str(exc))

    async def _resume_action(self, chore: ResumeAction) -> None:
        """Ask the sandbox to decide the pending request again (once per resumption of the agent).

        Allowed: the sandbox performs it, unfreezes the task and says so; ``task.resumed`` follows. Still
        denied (error ``action_denied``): the sandbox appended the new denial, which suspends the agent
        again (:class:`SuspendForAction`). A command that got no answer is tried again.
        """
        key = (chore.task_id, chore.resumed_seq)
        if key in self._resume_answered or not self._due("action-resume", f"{chore.task_id}@{chore.resumed_seq}"):
            return
        try:
            await self.rt.client.call(
                service_for(chore.host_id), "resume", TaskRef(task_id=chore.task_id), dict, timeout=15.0
            )
        except SymbiError as exc:
            if exc.http_status < 500 or exc.code == "action_denied":  # answered: no use asking again
                self._resume_answered.add(key)
            log.info("resume not applied", task_id=chore.task_id, code=exc.code, error=str(exc))
            return
        self._resume_answered.add(key)
        await self.record(
            chore.task_id, TaskResumed(reason="action allowed", attempt=chore.attempt, host_id=chore.host_id)
        )
        log.info("task resumed", task_id=chore.task_id, reason="action allowed")

    async def _suspend_agent(self, agent_id: str, task_id: str, reason: str) -> None:
        try:
            await self.lifecycle("suspend", {"agent_id": agent_id, "reason": reason[:900] or "policy violation"})
        except DomainError as exc:
            log.info("suspend not applied", agent_id=agent_id, task_id=task_id, error=str(exc))

    async def _host_lost(self, chore: HostLost) -> None:
        rec = self.model.tasks[chore.task_id]
        if chore.attempt >= self.settings.max_attempts:
            detail = f"host {chore.host_id} was lost on attempt {chore.attempt} of {self.settings.max_attempts}"
            await self.record(
                chore.task_id,
                TaskCompleted(outcome="lost", attempt=chore.attempt, host_id=chore.host_id, detail=detail),
            )
            outcome = "failed"
        else:
            await self.record(
                chore.task_id, TaskPreempted(host_id=chore.host_id, attempt=chore.attempt, reason="host_lost")
            )
            outcome = "cancelled"
        log.warning("host lost", host=chore.host_id, task_id=chore.task_id, requeued=outcome == "cancelled")
        await self._agent_done(AgentDone(rec.agent_id, rec.task_id, outcome))

    # --- schedules --------------------------------------------------------------------------------

    async def _fire_schedules(self, now: float) -> None:
        for agent in list(self.model.agents.values()):
            if agent.config is None or not agent.config.schedules or agent.status not in ("Ready", "Running"):
                continue
            for spec in agent.config.schedules:
                key = (agent.agent_id, spec.name)
                if key in self._bad_specs:
                    continue
                last = self.model.last_fired.get(key)
                if spec.one_shot and last is not None:
                    continue
                try:
                    check_spec(spec)
                    firing = due(spec, after=max(last or 0.0, agent.enabled_at), now=now)
                except SymbiError as exc:
                    self._bad_specs.add(key)
                    self.rt.note_error(f"schedule {spec.name} of agent {agent.agent_id}: {exc}")
                    continue
                if firing is None:
                    continue
                await self._fire(agent.agent_id, firing.spec, firing.fire_at, firing.missed)
        # A firing recorded without its task (a crash between the two appends): submit it now.
        for task_id, (agent_id, fired) in list(self.model.fired_pending.items()):
            await self._submit_fired(task_id, agent_id, fired)

    async def _fire(self, agent_id: str, spec: Any, fire_at: float, missed: int) -> None:
        task_id = task_id_for(agent_id, spec.name, fire_at)
        event = ScheduleFired(
            schedule=spec.name,
            cron=spec.cron,
            timezone=spec.timezone,
            fire_at=fire_at,
            task_id=task_id,
            missed=missed,
            one_shot=spec.one_shot,
        )
        _, records = await self.schedules.execute(agent_id, Fire(event=event), correlation_id=task_id)
        for rec in records:
            h = rec.header
            self.model.apply("schedule", agent_id, h.aggregate_version, rec.sequence, h.occurred_at / 1e9, rec.event)
        if records:
            log.info("schedule fired", agent_id=agent_id, schedule=spec.name, task_id=task_id, missed=missed)
            await self._submit_fired(task_id, agent_id, event)

    async def _submit_fired(self, task_id: str, agent_id: str, fired: ScheduleFired) -> None:
        agent = self.model.agents.get(agent_id)
        if agent is None or agent.config is None:
            return
        spec = next((s for s in agent.config.schedules if s.name == fired.schedule), None)
        if spec is None:
            return
        submitted = TaskSubmitted(
            agent_id=agent.agent_id,
            input=spec.input.encode(),
            priority=spec.priority if spec.priority in ("low", "normal", "high", "critical") else "normal",
            submitted_by=f"schedule:{spec.name}",
            schedule=spec.name,
        )
        with contextlib.suppress(AlreadyExists):
            await self.record(task_id, submitted)


def _capped(limits: ResourceLimits, decision: AllowWithConditions) -> ResourceLimits:
    """Apply ``cap_resources`` conditions of an allow to the limits the task runs with (the one capping rule)."""
    return cap_limits(limits, decision.conditions)
