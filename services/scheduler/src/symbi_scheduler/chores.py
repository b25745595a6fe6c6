"""What the leader has to do besides placing queued tasks, derived from the model (no I/O).

These are exactly the steps a crash can leave half done — an execution that ended without
``task.completed``, an assignment whose work item may not have gone out, an agent whose lifecycle state
lags behind its task, a host that stopped heartbeating — plus the reactions to agents changing state
(suspended while running, resumed after a denial, terminated with queued tasks) and to the action
gateway (a running task whose request the policy denied is paused and its agent suspended; once the
agent is resumed the sandbox is asked to decide the request again). The leader runs :func:`due` every
round and does each chore; each is safe to repeat.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from symbi_common.errors import SymbiError
from symbi_contracts.lifecycle.events import AgentStatus

from symbi_scheduler.core import Host
from symbi_scheduler.domain import TaskStatus, agent_outcome
from symbi_scheduler.model import Model, TaskRec
from symbi_scheduler.schedules import Due, check_spec
from symbi_scheduler.schedules import due as schedule_due

#: The outcome of ``task.completed`` for each terminal execution event type.
TERMINAL_OUTCOME: dict[str, str] = {
    "execution.exited": "succeeded",  # or failed, by exit code
    "execution.oom_killed": "oom_killed",
    "execution.timed_out": "timed_out",
    "execution.killed": "killed",
    "execution.refused": "refused",
    "execution.failed": "failed",
}


@dataclass(frozen=True, slots=True)
class Complete:
    """Append ``task.completed`` for the attempt whose execution ended."""

    task_id: str
    attempt: int
    outcome: str
    exit_code: int | None
    detail: str
    #: The sandbox refused it because the policy denied ``sandbox.start``: suspend the agent.
    policy_violation: bool = False


@dataclass(frozen=True, slots=True)
class Stopped:
    """The attempt a stop was requested for was killed, or refused before it started: send the task back to the
    queue (preempted), or end it (cancelled; it never ran)."""

    task_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class StopRun:
    """A stop was requested for the attempt and its host has not reported its end yet: ask the host to
    terminate it (again)."""

    task_id: str
    attempt: int
    host_id: str


@dataclass(frozen=True, slots=True)
class Dispatch:
    """(Re)publish the work item of an assigned attempt that has not started."""

    task_id: str
    attempt: int
    host_id: str


@dataclass(frozen=True, slots=True)
class AgentDone:
    """The agent still runs a task that is over (completed, cancelled or requeued): ``complete_task``."""

    agent_id: str
    task_id: str
    outcome: str


@dataclass(frozen=True, slots=True)
class AgentViolated:
    """The sandbox refused the agent's task on the policy's word and the agent is not suspended yet."""

    agent_id: str
    task_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class AgentDenied:
    """A denied task's agent is not suspended yet: ``assign_task`` (if Ready), then ``suspend``."""

    agent_id: str
    task_id: str
    assign_first: bool


@dataclass(frozen=True, slots=True)
class ResumeDenied:
    """The agent's policy violation was cleared: put the denied task back in the queue."""

    task_id: str


@dataclass(frozen=True, slots=True)
class CancelForAgent:
    """The agent was terminated (or failed): cancel its task."""

    task_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class HostLost:
    """The host stopped heartbeating while ``task_id`` ran there."""

    task_id: str
    attempt: int
    host_id: str


@dataclass(frozen=True, slots=True)
class StopStray:
    """A live host says it runs ``task_id``, which is not placed there any more (the host was taken for lost, or
    the attempt was preempted before it started): stop it there, so no task runs twice."""

    task_id: str
    host_id: str


@dataclass(frozen=True, slots=True)
class PauseForAgent:
    """The agent was suspended (policy violation) while its task ran: pause the task in place."""

    task_id: str
    attempt: int
    host_id: str


@dataclass(frozen=True, slots=True)
class StopForAgent:
    """The agent was terminated while its task was paused: stop the sandbox (the task ends as killed)."""

    task_id: str
    attempt: int
    host_id: str


@dataclass(frozen=True, slots=True)
class PauseForAction:
    """The policy denied a request of the running attempt (the sandbox froze it): append ``task.suspended``
    (reason ``action_denied``), then suspend the agent."""

    task_id: str
    attempt: int
    host_id: str


@dataclass(frozen=True, slots=True)
class SuspendForAction:
    """The task is paused on a denied request and its agent has not been suspended since: suspend it."""

    agent_id: str
    task_id: str
    #: Stream sequence of the denial (one suspension per denial).
    denied_seq: int


@dataclass(frozen=True, slots=True)
class ResumeAction:
    """The agent of a task paused on a denied request was resumed: ask the sandbox to decide it again."""

    task_id: str
    attempt: int
    host_id: str
    #: Stream sequence of the agent's resumption (one request per resumption).
    resumed_seq: int


@dataclass(frozen=True, slots=True)
class ResumedOnHost:
    """The sandbox allowed the request on a second look and unfroze the task: append ``task.resumed``."""

    task_id: str
    attempt: int
    host_id: str


@dataclass(frozen=True, slots=True)
class ResumePaused:
    """A task paused for critical work can run again: its host has room for its CPU."""

    task_id: str
    attempt: int
    host_id: str


Chore = (
    Complete
    | Stopped
    | StopRun
    | Dispatch
    | AgentDone
    | AgentViolated
    | AgentDenied
    | ResumeDenied
    | CancelForAgent
    | HostLost
    | StopStray
    | PauseForAgent
    | StopForAgent
    | PauseForAction
    | SuspendForAction
    | ResumeAction
    | ResumedOnHost
    | ResumePaused
)


def outcome_of(kind: str, exit_code: int | None) -> str:
    outcome = TERMINAL_OUTCOME.get(kind, "failed")
    if outcome == "succeeded" and exit_code not in (0, None):
        return "failed"
    return outcome


def due(model: Model, now: float, *, dispatched: set[tuple[str, int]]) -> list[Chore]:
    """What the leader has to do besides new placements, most urgent first."""
    out: list[Chore] = []
    model.check_hosts(now)
    for rec in [model.tasks[t] for t in model.active]:
        if rec.state.placed:
            ended = rec.ended.get(rec.attempt)
            host = model.placer.hosts.get(rec.host_id)
            if ended is not None:
                kind, code, reason = ended
                violation = rec.attempt in rec.refused_by_policy
                if _stopped_on_request(rec, kind):
                    out.append(Stopped(rec.task_id, rec.attempt))
                else:
                    out.append(Complete(rec.task_id, rec.attempt, outcome_of(kind, code), code, reason, violation))
            elif host is None or not host.alive:
                out.append(HostLost(rec.task_id, rec.attempt, rec.host_id))
            elif rec.state.stop is not None:
                unstarted = rec.status == TaskStatus.ASSIGNED and rec.attempt not in rec.started
                if unstarted and (rec.task_id, rec.attempt) not in dispatched:
                    out.append(Dispatch(rec.task_id, rec.attempt, rec.host_id))  # its host refuses it, saying so
                out.append(StopRun(rec.task_id, rec.attempt, rec.host_id))
            elif rec.status == TaskStatus.ASSIGNED and rec.attempt not in rec.started:
                if (rec.task_id, rec.attempt) not in dispatched:
                    out.append(Dispatch(rec.task_id, rec.attempt, rec.host_id))
            else:
                out.extend(_paused(model, rec, host))
        elif rec.status == TaskStatus.DENIED:
            out.extend(_denied(model, rec))
        elif rec.status == TaskStatus.QUEUED:
            agent = model.agents.get(rec.agent_id)
            if agent is not None and agent.status in (AgentStatus.TERMINATED, AgentStatus.FAILED):
                out.append(CancelForAgent(rec.task_id, f"agent {rec.agent_id} is {agent.status.value}"))
    out.extend(_strays(model))
    model.release_lost_stopped()
    for agent in model.agents.values():
        if agent.status != AgentStatus.RUNNING or agent.current_task is None:
            continue
        current = model.tasks.get(agent.current_task)
        if current is None:
            continue
        rec = current
        if rec.state.finished and rec.attempt in rec.refused_by_policy and agent.suspended_seq < rec.finished_seq:
            out.append(AgentViolated(agent.agent_id, rec.task_id, f"sandbox.start denied: {rec.detail}"))
        elif rec.state.finished:
            out.append(AgentDone(agent.agent_id, rec.task_id, agent_outcome(rec.outcome)))
        elif rec.status == TaskStatus.QUEUED and agent.assigned_seq < rec.queued_seq:
            out.append(AgentDone(agent.agent_id, rec.task_id, "cancelled"))
    return out


def _stopped_on_request(rec: TaskRec, kind: str) -> bool:
    """Whether the current attempt ended because of its stop request: refused before it started, or killed for
    a preemption. (A cancelled run that was killed completes as ``killed``; one that ended by itself
    completes as it ended.)"""
    stop = rec.state.stop
    if stop is None:
        return False
    if rec.attempt in rec.refused_for_stop:
        return True
    return stop.reason == "preempted" and kind == "execution.killed"


def _strays(model: Model) -> Iterable[Chore]:
    """The runs live hosts report (their heartbeat's ``running``) of tasks that are not over but not placed on
    them. (A task that is over may still be listed for a heartbeat: its run ends by itself.)"""
    for host_id, info in model.capacity.host_info.items():
        host = model.placer.hosts.get(host_id)
        if host is None or not host.alive:
            continue
        for task_id in info.running:
            rec = model.tasks.get(task_id)
            if rec is None or rec.state.finished or (rec.state.placed and rec.host_id == host_id):
                continue
            yield StopStray(task_id, host_id)


def _paused(model: Model, rec: TaskRec, host: Host) -> Iterable[Chore]:
    """A running task whose request was denied or whose agent was suspended is paused; a paused one
    resumes when it may."""
    agent = model.agents.get(rec.agent_id)
    agent_status = agent.status if agent is not None else None
    if rec.status == TaskStatus.ASSIGNED:
        if rec.action_denied_seq > rec.running_seq:
            return (PauseForAction(rec.task_id, rec.attempt, rec.host_id),)
        if agent is not None and agent_status == AgentStatus.SUSPENDED and agent.suspended_seq > rec.assigned_seq:
            return (PauseForAgent(rec.task_id, rec.attempt, rec.host_id),)
        return ()
    if rec.pause_reason == "action_denied":
        return _action_denied(model, rec, host)
    if rec.pause_reason == "agent_suspended":
        if agent_status == AgentStatus.TERMINATED:  # manual override while paused: stop it for good
            return (StopForAgent(rec.task_id, rec.attempt, rec.host_id),)
        if agent_status != AgentStatus.RUNNING:
            return ()
    elif model.critical_waiting():
        return ()
    hold = rec.holds.get(rec.attempt)
    if hold is not None and host.cpu_free >= hold.cpu:
        return (ResumePaused(rec.task_id, rec.attempt, rec.host_id),)
    return ()


def _action_denied(model: Model, rec: TaskRec, host: Host) -> Iterable[Chore]:
    """A task paused on a denied request: suspend its agent, and once the agent is resumed (a policy
    change) have the sandbox decide the request again; it runs on when the sandbox says it resumed."""
    if rec.exec_resumed_seq > rec.paused_seq:
        return (ResumedOnHost(rec.task_id, rec.attempt, rec.host_id),)
    agent = model.agents.get(rec.agent_id)
    if agent is None:
        return ()
    if agent.status in (AgentStatus.TERMINATED, AgentStatus.FAILED):  # the pending request never happens
        return (StopForAgent(rec.task_id, rec.attempt, rec.host_id),)
    if agent.status != AgentStatus.RUNNING or agent.current_task != rec.task_id:
        return ()
    if agent.resumed_seq < rec.action_denied_seq:  # not suspended (and resumed) since the latest denial
        return (SuspendForAction(rec.agent_id, rec.task_id, rec.action_denied_seq),)
    hold = rec.holds.get(rec.attempt)
    if hold is not None and host.cpu_free >= hold.cpu:
        return (ResumeAction(rec.task_id, rec.attempt, rec.host_id, agent.resumed_seq),)
    return ()


def _denied(model: Model, rec: TaskRec) -> Iterable[Chore]:
    agent = model.agents.get(rec.agent_id)
    if agent is None or agent.status is None:
        return ()
    if agent.status in (AgentStatus.TERMINATED, AgentStatus.FAILED):
        return (CancelForAgent(rec.task_id, f"agent {rec.agent_id} is {agent.status.value}"),)
    if agent.status == AgentStatus.READY and rec.agent_id not in model.busy:
        return (AgentDenied(rec.agent_id, rec.task_id, assign_first=True),)
    if agent.status == AgentStatus.RUNNING and agent.current_task == rec.task_id:
        if agent.suspended_seq > rec.denied_seq:
            return (ResumeDenied(rec.task_id),)
        return (AgentDenied(rec.agent_id, rec.task_id, assign_first=False),)
    return ()


def firings_due(
    model: Model, now: float, *, broken: set[tuple[str, str]]
) -> tuple[list[tuple[str, Due]], list[tuple[tuple[str, str], SymbiError]]]:
    """The schedules to fire now, per agent (Ready or Running), from the latest of their last firing and the
    agent's becoming Ready; and the (agent, schedule) pairs found unusable (skipped from then on: ``broken``)."""
    firings: list[tuple[str, Due]] = []
    bad: list[tuple[tuple[str, str], SymbiError]] = []
    for agent in list(model.agents.values()):
        if agent.config is None or not agent.config.schedules or agent.status not in ("Ready", "Running"):
            continue
        for spec in agent.config.schedules:
            key = (agent.agent_id, spec.name)
            if key in broken:
                continue
            last = model.last_fired(agent.agent_id, spec.name)
            if spec.one_shot and last is not None:
                continue
            try:
                check_spec(spec)
                firing = schedule_due(spec, after=max(last or 0.0, agent.enabled_at), now=now)
            except SymbiError as exc:
                bad.append((key, exc))
                continue
            if firing is not None:
                firings.append((agent.agent_id, firing))
    return firings, bad
