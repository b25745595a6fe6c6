"""Doing the chores the leader derives each round (:mod:`symbi_scheduler.chores`): each is safe to repeat.

A chore that only has side effects outside the event stream (a lifecycle command, a host command) is
paced by :meth:`Effects.due`, since nothing in the model shows it done until its events arrive; a chore
that appends to the task is a conditional append, refused if another leader (or our previous life) did it.
"""

from __future__ import annotations

import structlog
from symbi_common.decisions import DecisionRecord
from symbi_common.errors import DomainError, SymbiError
from symbi_contracts.sandbox_agent.commands import TaskRef, service_for
from symbi_contracts.scheduler.events import (
    TaskCancelled,
    TaskCompleted,
    TaskPreempted,
    TaskResumed,
    TaskStopRequested,
    TaskSuspended,
)

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
    Stopped,
    StopRun,
    StopStray,
    SuspendForAction,
)
from symbi_scheduler.domain import agent_outcome
from symbi_scheduler.effects import Effects

log = structlog.get_logger(__name__)


class ChoreRunner:
    """Does one chore at a time through the replica's :class:`Effects`."""

    def __init__(self, fx: Effects, max_attempts: int) -> None:
        self.fx = fx
        self.model = fx.model
        self.max_attempts = max_attempts
        #: ``resume`` requests of paused-on-denial tasks the sandbox answered: (task, agent resumption).
        self._resume_answered: set[tuple[str, int]] = set()

    def forget(self) -> None:
        self._resume_answered.clear()

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
                await self.fx.record(chore.task_id, event)
                log.info("task completed", task_id=chore.task_id, outcome=chore.outcome, exit_code=chore.exit_code)
                if chore.policy_violation:
                    # The sandbox refused to start it on the policy's word: a policy violation (Running →
                    # Suspended). Once resumed, the agent gets complete_task like any other finished task.
                    await self.do(AgentViolated(rec.agent_id, chore.task_id, f"sandbox.start denied: {chore.detail}"))
                    return
                await self.agent_done(AgentDone(rec.agent_id, rec.task_id, agent_outcome(chore.outcome)))
            case Stopped():
                await self._stopped(chore)
            case StopRun():
                if self.fx.due("stop", f"{chore.task_id}:{chore.attempt}"):
                    await self.fx.ask_host(chore.host_id, "terminate", chore.task_id)
            case Dispatch():
                await self.fx.publish_work(chore.task_id, chore.attempt, chore.host_id)
            case AgentDone():
                await self.agent_done(chore)
            case AgentViolated():
                if self.fx.due("violation", chore.task_id):
                    await self._suspend_agent(chore.agent_id, chore.task_id, chore.reason)
            case AgentDenied():
                await self.agent_denied(chore)
            case ResumeDenied():
                rec = self.model.tasks[chore.task_id]
                await self.fx.record(chore.task_id, TaskResumed(reason="policy violation cleared", attempt=rec.attempt))
            case CancelForAgent():
                await self.fx.record(chore.task_id, TaskCancelled(reason=chore.reason, cancelled_by="scheduler"))
            case HostLost():
                await self._host_lost(chore)
            case StopStray():
                if self.fx.due("stray", f"{chore.task_id}@{chore.host_id}"):
                    log.warning("stopping a run not placed on its host", task_id=chore.task_id, host=chore.host_id)
                    await self.fx.host_command(chore.host_id, "terminate", chore.task_id)
            case PauseForAgent():
                # Recorded paused only once the host has frozen it: until then the chore comes again.
                if self.fx.due("pause", f"{chore.task_id}:{chore.attempt}") and await self.fx.host_command(
                    chore.host_id, "suspend", chore.task_id
                ):
                    await self.fx.record(
                        chore.task_id,
                        TaskSuspended(reason="agent_suspended", attempt=chore.attempt, host_id=chore.host_id),
                    )
            case StopForAgent():
                if self.fx.due("stop", f"{chore.task_id}:{chore.attempt}"):
                    await self.fx.host_command(chore.host_id, "terminate", chore.task_id)
            case PauseForAction():
                await self._pause_for_action(chore)
            case SuspendForAction():
                if self.fx.due("action-suspend", f"{chore.task_id}@{chore.denied_seq}"):
                    await self._suspend_for_action(chore.agent_id, chore.task_id)
            case ResumeAction():
                await self._resume_action(chore)
            case ResumedOnHost():
                await self.fx.record(
                    chore.task_id, TaskResumed(reason="action allowed", attempt=chore.attempt, host_id=chore.host_id)
                )
                log.info("task resumed", task_id=chore.task_id, reason="action allowed")
            case ResumePaused():
                if self.fx.due(
                    "resume", f"{chore.task_id}@{self.model.tasks[chore.task_id].version}"
                ) and await self.fx.host_command(chore.host_id, "resume", chore.task_id):
                    await self.fx.record(
                        chore.task_id,
                        TaskResumed(reason="capacity available", attempt=chore.attempt, host_id=chore.host_id),
                    )

    async def _stopped(self, chore: Stopped) -> None:
        """The attempt is over on its host because of its stop request: requeue the task or end it."""
        rec = self.model.tasks[chore.task_id]
        stop = rec.state.stop
        if stop is None:  # pragma: no cover - derived only for a task with a stop request
            return
        event: TaskPreempted | TaskCancelled
        if stop.reason == "preempted":
            event = TaskPreempted(host_id=rec.host_id, attempt=chore.attempt, reason="preempted", by_task=stop.by_task)
        else:
            event = _cancelled(stop)
        await self.fx.record(chore.task_id, event)
        log.info("task stopped", task_id=chore.task_id, attempt=chore.attempt, reason=stop.reason)
        await self.agent_done(AgentDone(rec.agent_id, rec.task_id, "cancelled"))

    async def agent_done(self, chore: AgentDone) -> None:
        agent = self.model.agents.get(chore.agent_id)
        # Once per assignment of the agent (a task re-queued and assigned again completes again).
        if not self.fx.due("complete", f"{chore.task_id}@{agent.assigned_seq if agent else 0}"):
            return
        try:
            await self.fx.lifecycle(
                "complete_task", {"agent_id": chore.agent_id, "task_id": chore.task_id, "outcome": chore.outcome}
            )
        except DomainError as exc:  # already done, or the agent moved on: its events will tell
            log.info("complete_task not applied", agent_id=chore.agent_id, task_id=chore.task_id, error=str(exc))

    async def agent_denied(self, chore: AgentDenied) -> None:
        rec = self.model.tasks[chore.task_id]
        if not self.fx.due("deny", f"{chore.task_id}@{rec.denied_seq}"):
            return
        reason = rec.decision.reason if isinstance(rec.decision, DecisionRecord) else ""
        try:
            if chore.assign_first:
                await self.fx.lifecycle("assign_task", {"agent_id": chore.agent_id, "task_id": chore.task_id})
            policies = rec.decision.policies if isinstance(rec.decision, DecisionRecord) else ()
            await self.fx.lifecycle(
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
        await self.fx.record(chore.task_id, event)
        log.info("task paused: action denied", task_id=chore.task_id, action=denial.action if denial else "")
        if self.fx.due("action-suspend", f"{chore.task_id}@{rec.action_denied_seq}"):
            await self._suspend_for_action(rec.agent_id, chore.task_id)

    async def _suspend_for_action(self, agent_id: str, task_id: str) -> None:
        """Suspend the agent for the task's latest denied request; the reason names the decision."""
        rec = self.model.tasks[task_id]
        denial = rec.action_denial
        decision = denial.decision if denial is not None else None
        why = decision.reason if decision is not None and decision.reason else "denied by policy"
        what = f"{denial.action} on {denial.resource}" if denial is not None else "a request"
        try:
            await self.fx.lifecycle(
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
        if key in self._resume_answered or not self.fx.due("action-resume", f"{chore.task_id}@{chore.resumed_seq}"):
            return
        try:
            await self.fx.rt.client.call(
                service_for(chore.host_id), "resume", TaskRef(task_id=chore.task_id), dict, timeout=15.0
            )
        except SymbiError as exc:
            if exc.http_status < 500 or exc.code == "action_denied":  # answered: no use asking again
                self._resume_answered.add(key)
            log.info("resume not applied", task_id=chore.task_id, code=exc.code, error=str(exc))
            return
        self._resume_answered.add(key)
        await self.fx.record(
            chore.task_id, TaskResumed(reason="action allowed", attempt=chore.attempt, host_id=chore.host_id)
        )
        log.info("task resumed", task_id=chore.task_id, reason="action allowed")

    async def _suspend_agent(self, agent_id: str, task_id: str, reason: str) -> None:
        try:
            await self.fx.lifecycle("suspend", {"agent_id": agent_id, "reason": reason[:900] or "policy violation"})
        except DomainError as exc:
            log.info("suspend not applied", agent_id=agent_id, task_id=task_id, error=str(exc))

    async def _host_lost(self, chore: HostLost) -> None:
        rec = self.model.tasks[chore.task_id]
        stop = rec.state.stop
        if stop is not None and stop.reason == "cancelled":  # it was being cancelled: it is not run again
            await self.fx.record(chore.task_id, _cancelled(stop))
            log.warning("host lost", host=chore.host_id, task_id=chore.task_id, requeued=False)
            await self.agent_done(AgentDone(rec.agent_id, rec.task_id, "cancelled"))
            return
        if chore.attempt >= self.max_attempts:
            detail = f"host {chore.host_id} was lost on attempt {chore.attempt} of {self.max_attempts}"
            await self.fx.record(
                chore.task_id,
                TaskCompleted(outcome="lost", attempt=chore.attempt, host_id=chore.host_id, detail=detail),
            )
            outcome = "failed"
        else:
            await self.fx.record(
                chore.task_id, TaskPreempted(host_id=chore.host_id, attempt=chore.attempt, reason="host_lost")
            )
            outcome = "cancelled"
        log.warning("host lost", host=chore.host_id, task_id=chore.task_id, requeued=outcome == "cancelled")
        await self.agent_done(AgentDone(rec.agent_id, rec.task_id, outcome))


def _cancelled(stop: TaskStopRequested) -> TaskCancelled:
    """How a task whose cancel was requested ends when its run never ran (refused, or its host lost)."""
    return TaskCancelled(reason=stop.detail or "cancelled on request", cancelled_by=stop.requested_by)
