"""The scheduler's one state (no I/O): the write path, the leader and the API see the same task for the same events.

The task repository folds a task's events with :func:`symbi_scheduler.domain.apply` to check commands; the
replica's model — what the leader decides on and what the API shows — must hold exactly that state, and its
indices (queue, running set, busy agents, active set) must agree with it after any sequence of events.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from symbi_common.decisions import DecisionRecord
from symbi_common.errors import DomainError, ValidationError
from symbi_contracts.lifecycle.config import AgentConfig, ResourceLimits, ScheduleSpec, Workload
from symbi_contracts.lifecycle.events import AgentReady, AgentRegistered, AgentTaskAssigned
from symbi_contracts.sandbox_agent.events import (
    ExecutionExited,
    ExecutionKilled,
    ExecutionRefused,
    ExecutionStarted,
    Limits,
)
from symbi_contracts.scheduler.events import (
    STOP_REFUSED,
    TaskAssigned,
    TaskCancelled,
    TaskCompleted,
    TaskEvent,
    TaskPreempted,
    TaskResumed,
    TaskStopRequested,
    TaskSubmitted,
    TaskSuspended,
)
from symbi_scheduler.chores import AgentDone, Complete, Stopped, StopRun, due, firings_due
from symbi_scheduler.domain import (
    Record,
    TaskState,
    TaskStatus,
    agent_outcome,
    apply,
    decide,
    initial,
    task_data_key,
)
from symbi_scheduler.model import HostInfo, Model
from symbi_scheduler.projections import TaskView
from symbi_scheduler.schedules import SCHEDULE, ScheduleFired

NOW = 1_000_000.0
ALLOW = DecisionRecord(action="task.allocate", effect="allow", policy_version=1)
DENY = DecisionRecord(action="task.allocate", effect="deny", policy_version=1, reason="no")
WORKLOAD = Workload(image="symbi/busybox:1", command=("cat",))


def ready_model(schedules: tuple[ScheduleSpec, ...] = ()) -> Model:
    """A model with one Ready agent ``a1`` (1 CPU, 256 MB per task) and one live host ``h1``."""
    model = Model(host_lost_after_s=1e9)
    config = AgentConfig(
        name="a1", workload=WORKLOAD, resources=ResourceLimits(cpu_cores=1.0, memory_mb=256), schedules=schedules
    )
    model.apply("agent", "a1", 1, 1, NOW, AgentRegistered(agent_id="a1", config=config))
    model.apply("agent", "a1", 2, 2, NOW, AgentReady())
    model.host_seen(
        HostInfo(host_id="h1", cpu_cores=4.0, memory_mb=4096, tiers=("tier1", "tier2"), heartbeat_at=NOW), NOW
    )
    model.check_hosts(NOW)
    return model


def assigned(attempt: int) -> TaskAssigned:
    return TaskAssigned(
        host_id="h1",
        tier="tier2",
        risk_score=0.5,
        risk_factors={},
        workload=WORKLOAD,
        limits=ResourceLimits(cpu_cores=1.0, memory_mb=256),
        attempt=attempt,
        decision=ALLOW,
    )


def started(attempt: int) -> ExecutionStarted:
    limits = Limits(
        memory_mb=256,
        cpu_cores=1.0,
        disk_io_mbps=100,
        network_io_mbps=10,
        execution_timeout_s=300.0,
        pids=64,
        output_cap_bytes=1024,
        scratch_mb=64,
    )
    return ExecutionStarted(
        attempt=attempt,
        host_id="h1",
        tier="tier2",
        runtime="runsc",
        container="c",
        image=WORKLOAD.image,
        command=WORKLOAD.command,
        limits=limits,
        hardening={},
        decision=ALLOW,
    )


def candidates(state: TaskState) -> list[TaskEvent]:
    """Every kind of task event, shaped for ``state`` (the aggregate's ``decide`` then says which apply)."""
    a = state.attempt
    return [
        assigned(a + 1),
        TaskPreempted(host_id="h1", attempt=a, reason="preempted"),
        TaskPreempted(host_id="h1", attempt=a, reason="host_lost"),
        *(TaskSuspended(reason=r, attempt=a, host_id="h1") for r in ("preempted", "agent_suspended", "action_denied")),
        TaskSuspended(reason="policy_denied", attempt=a, host_id="h1", decision=DENY),
        TaskResumed(reason="go on", attempt=a),
        TaskCompleted(outcome="succeeded", attempt=a, host_id="h1", exit_code=0),
        TaskCompleted(outcome="lost", attempt=a, host_id="h1", detail="host gone"),
        TaskCancelled(reason="asked to"),
        TaskStopRequested(attempt=a, host_id="h1", reason="cancelled", requested_by="ops", detail="asked to"),
        TaskStopRequested(attempt=a, host_id="h1", reason="preempted", requested_by="scheduler", by_task="t9"),
    ]


def accepted(state: TaskState, event: TaskEvent) -> bool:
    try:
        return decide(state, Record(event=event)) == [event]
    except (DomainError, ValidationError):
        return False


def check_same_state(model: Model, task_id: str, folded: TaskState) -> None:
    """The model holds the aggregate's state, the API shows it, and the leader's indices agree with it."""
    rec = model.tasks[task_id]
    assert rec.state == folded
    view = TaskView.of(rec)
    assert folded.status is not None
    assert (view.status, view.attempt, view.host_id, view.outcome) == (
        folded.status.value,
        folded.attempt,
        folded.host_id,
        folded.outcome,
    )
    assert view.pause_reason == (folded.pause_reason if folded.status == TaskStatus.PAUSED else "")
    assert (task_id in model.queue) == (folded.status == TaskStatus.QUEUED)
    assert (model.busy.get(folded.agent_id) == task_id) == folded.placed
    assert (task_id in model.active) == (not folded.finished)
    running = model.core.running.get(task_id)
    if running is not None:
        assert folded.placed
        assert running.paused == (folded.status == TaskStatus.PAUSED)
    if folded.status == TaskStatus.ASSIGNED:
        assert running is not None
        assert running.host_id == folded.host_id
    _, by_status = model.counts()
    assert sum(by_status.values()) == (0 if folded.finished else 1)
    if not folded.finished:
        assert by_status[folded.status] == 1


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_event_sequence_leaves_the_model_with_the_aggregates_state(data: st.DataObject) -> None:
    model = ready_model()
    folded = apply(initial("t1"), TaskSubmitted(agent_id="a1", input=b"hi", priority="normal"))
    model.apply("task", "t1", 1, 10, NOW, TaskSubmitted(agent_id="a1", input=b"hi", priority="normal"))
    check_same_state(model, "t1", folded)
    version, sequence, exec_version = 1, 10, 0
    for _ in range(data.draw(st.integers(1, 12))):
        if folded.finished:
            break
        if folded.placed and data.draw(st.booleans()):  # the sandbox reports on the attempt first
            exec_version += 1
            sequence += 1
            report = data.draw(
                st.sampled_from(
                    [
                        started(folded.attempt),
                        ExecutionExited(attempt=folded.attempt, exit_code=0),
                        ExecutionKilled(attempt=folded.attempt, exit_code=137, reason="terminated"),
                        ExecutionRefused(attempt=folded.attempt, code=STOP_REFUSED, reason="stop requested"),
                    ]
                )
            )
            assert model.apply("execution", "t1", exec_version, sequence, NOW, report)
        options = [e for e in candidates(folded) if accepted(folded, e)]
        event = data.draw(st.sampled_from(options))
        version += 1
        sequence += 1
        folded = apply(folded, event)
        assert model.apply("task", "t1", version, sequence, NOW, event)
        assert not model.apply("task", "t1", version, sequence, NOW, event)  # a repeat changes nothing
        check_same_state(model, "t1", folded)


def test_the_leader_and_the_api_read_an_ended_attempt_the_same_way() -> None:
    model = ready_model()
    events: list[TaskEvent] = [TaskSubmitted(agent_id="a1", input=b"x", priority="high"), assigned(1)]
    for version, event in enumerate(events, start=1):
        model.apply("task", "t1", version, version, NOW, event)
    model.apply("agent", "a1", 3, 3, NOW, AgentTaskAssigned(task_id="t1"))
    model.apply(
        "execution",
        "t1",
        1,
        4,
        NOW,
        started(1),
    )
    assert TaskView.of(model.tasks["t1"]).running
    model.apply("execution", "t1", 2, 5, NOW, ExecutionExited(attempt=1, exit_code=3))
    # The API: still assigned (task.completed not appended yet), no longer running.
    view = TaskView.of(model.tasks["t1"])
    assert (view.status, view.running, view.attempt, view.host_id) == ("assigned", False, 1, "h1")
    # The leader: the same attempt on the same host is to be completed, as failed (exit code 3).
    chores = due(model, NOW, dispatched=set())
    assert Complete("t1", 1, "failed", 3, "", False) in chores
    model.apply("task", "t1", 3, 6, NOW, TaskCompleted(outcome="failed", attempt=1, host_id="h1", exit_code=3))
    assert AgentDone("a1", "t1", "failed") in due(model, NOW, dispatched=set())
    assert TaskView.of(model.tasks["t1"]).status == "completed"
    assert model.core.running == {}
    assert model.placer.hosts["h1"].cpu_used == 0.0


def test_a_preempted_task_keeps_its_host_until_its_attempt_ends() -> None:
    """The host stays on the state after ``task.preempted``: its stopping attempt still holds resources there."""
    model = ready_model()
    model.apply("task", "t1", 1, 1, NOW, TaskSubmitted(agent_id="a1", input=b"", priority="low"))
    model.apply("task", "t1", 2, 2, NOW, assigned(1))
    model.apply(
        "execution",
        "t1",
        1,
        3,
        NOW,
        started(1),
    )
    model.apply("task", "t1", 3, 4, NOW, TaskPreempted(host_id="h1", attempt=1, reason="preempted"))
    assert model.tasks["t1"].state.host_id == "h1"
    assert model.placer.hosts["h1"].cpu_releasing == 1.0
    model.apply("execution", "t1", 2, 5, NOW, ExecutionExited(attempt=1, exit_code=137))
    assert model.placer.hosts["h1"].cpu_used == 0.0
    assert model.placer.hosts["h1"].cpu_releasing == 0.0


def test_a_cancelled_task_leaves_the_active_set() -> None:
    model = ready_model()
    model.apply("task", "t1", 1, 1, NOW, TaskSubmitted(agent_id="a1", input=b"", priority="normal"))
    model.apply("task", "t1", 2, 2, NOW, TaskCancelled(reason="no longer needed"))
    assert "t1" not in model.active
    assert "t1" not in model.queue
    assert model.counts() == (
        {"low": 0, "normal": 0, "high": 0, "critical": 0},
        dict.fromkeys((TaskStatus.QUEUED, TaskStatus.ASSIGNED, TaskStatus.PAUSED, TaskStatus.DENIED), 0),
    )


def test_the_model_folds_schedules_with_the_schedule_aggregate() -> None:
    model = ready_model()
    state = SCHEDULE.initial("a1")
    firings = [
        ScheduleFired(schedule="s", cron="* * * * *", timezone="UTC", fire_at=t, task_id=f"x{t:.0f}")
        for t in (120.0, 60.0, 180.0)
    ]
    for version, fired in enumerate(firings, start=1):
        state = SCHEDULE.apply(state, fired)
        model.apply("schedule", "a1", version, 100 + version, NOW, fired)
    assert model.schedules["a1"] == state
    assert model.last_fired("a1", "s") == 180.0
    assert model.last_fired("a1", "other") is None
    assert set(model.fired_pending) == {"x120", "x60", "x180"}  # recorded, their tasks not submitted yet


def test_firings_due_counts_from_the_last_firing_and_reports_broken_schedules() -> None:
    every_minute = ScheduleSpec(name="tick", cron="* * * * *")
    broken = ScheduleSpec(name="bad", cron="not a cron")
    model = ready_model((every_minute, broken))
    model.agents["a1"].enabled_at = 0.0
    model.apply(
        "schedule",
        "a1",
        1,
        50,
        NOW,
        ScheduleFired(schedule="tick", cron="* * * * *", timezone="UTC", fire_at=600.0, task_id="t"),
    )
    firings, bad = firings_due(model, 900.0, broken=set())
    assert [(agent, f.fire_at, f.missed) for agent, f in firings] == [("a1", 900.0, 4)]
    assert [key for key, _ in bad] == [("a1", "bad")]
    assert firings_due(model, 900.0, broken={("a1", "bad")})[1] == []


def test_the_agent_is_told_succeeded_cancelled_or_failed() -> None:
    assert [agent_outcome(o) for o in ("succeeded", "cancelled", "failed", "timed_out", "lost", "refused")] == [
        "succeeded",
        "cancelled",
        "failed",
        "failed",
        "failed",
        "failed",
    ]


def test_a_task_is_sealed_with_its_agents_key() -> None:
    submitted = TaskSubmitted(agent_id="a1", input=b"x", priority="normal")
    assert task_data_key(initial("t1"), [submitted]) == "task.by-agent.a1"
    assert task_data_key(apply(initial("t1"), submitted), [assigned(1)]) == "task.by-agent.a1"
    assert task_data_key(initial("t1"), []) is None  # nothing names an agent: the task's own key


def test_only_a_heartbeat_that_changes_placement_wakes_the_leader() -> None:
    """An unchanged heartbeat of a live host needs no scheduling round; a new host, other capacity or
    tiers, and a host coming back after its loss (or deletion) do."""
    model = Model(host_lost_after_s=3.0)

    def beat(at: float, cpu: float = 4.0, tiers: tuple[str, ...] = ("tier1",)) -> bool:
        info = HostInfo(host_id="h1", cpu_cores=cpu, memory_mb=4096, tiers=tiers, heartbeat_at=at)
        return model.host_seen(info, at)

    assert beat(NOW)  # a new host
    model.check_hosts(NOW)
    assert not beat(NOW + 1)  # same capacity, alive
    assert not beat(NOW + 2)
    assert beat(NOW + 3, cpu=2.0)  # capacity changed
    assert beat(NOW + 4, cpu=2.0, tiers=("tier1", "tier2"))  # tiers changed
    assert not beat(NOW + 5, cpu=2.0, tiers=("tier1", "tier2"))
    # silent for longer than host_lost_after_s: the next heartbeat brings it back, even before a check
    assert beat(NOW + 20, cpu=2.0, tiers=("tier1", "tier2"))
    model.check_hosts(NOW + 20)
    assert not beat(NOW + 21, cpu=2.0, tiers=("tier1", "tier2"))
    model.host_gone("h1")
    model.check_hosts(NOW + 21)
    assert beat(NOW + 22, cpu=2.0, tiers=("tier1", "tier2"))  # deleted, then back


def test_an_event_applied_when_it_was_appended_is_known_by_its_version() -> None:
    """The follower skips (no verify, no decrypt) what the model has: the leader's own appends coming back."""
    model = ready_model()
    model.apply("task", "t1", 1, 10, NOW, TaskSubmitted(agent_id="a1", input=b"hi", priority="normal"))
    assert model.has("task", "t1", 1, 12)
    assert model.position == 12
    assert not model.has("task", "t1", 2, 13)  # the next version: to be verified and applied
    assert not model.has("task", "t1", 0, 13)  # a header that could not be read: verified (and rejected)
    assert not model.has("task", "t2", 1, 13)
    assert not model.has("execution", "t1", 1, 13)
    assert model.has("agent", "a1", 2, 14)
    assert not model.has("agent", "a1", 3, 15)
    assert not model.has("schedule", "a1", 1, 15)
    assert model.position == 14


def test_an_event_decided_on_an_older_attempt_is_refused() -> None:
    """A leader deposed while it decided (a quota refusal, a host's loss) on attempt 1 must not end or move
    attempt 2, which the new leader placed meanwhile."""
    state = apply(initial("t1"), TaskSubmitted(agent_id="a1", input=b"hi", priority="normal"))
    for event in (
        assigned(1),
        TaskPreempted(host_id="h1", attempt=1, reason="host_lost"),
        assigned(2),
    ):
        state = apply(state, event)
    late = (
        TaskCompleted(outcome="refused", attempt=1, detail="over quota"),
        TaskPreempted(host_id="h1", attempt=1, reason="host_lost"),
        TaskSuspended(reason="agent_suspended", attempt=1, host_id="h1"),
    )
    for event in late:
        with pytest.raises(DomainError, match="at attempt 2"):
            decide(state, Record(event=event))
    current = TaskCompleted(outcome="lost", attempt=2, host_id="h2")
    assert decide(state, Record(event=current)) == [current]


def placed_model(*, started_attempt: bool) -> Model:
    """``ready_model`` with task ``t1`` (low) assigned to ``h1`` as attempt 1, started there if asked."""
    model = ready_model()
    model.apply("task", "t1", 1, 1, NOW, TaskSubmitted(agent_id="a1", input=b"", priority="low"))
    model.apply("task", "t1", 2, 2, NOW, assigned(1))
    if started_attempt:
        model.apply("execution", "t1", 1, 3, NOW, started(1))
    return model


def test_a_stop_request_is_recorded_once_per_attempt_and_a_cancel_outranks_a_preemption() -> None:
    state = apply(apply(initial("t1"), TaskSubmitted(agent_id="a1", input=b"", priority="low")), assigned(1))
    preempt = TaskStopRequested(attempt=1, host_id="h1", reason="preempted", requested_by="scheduler", by_task="t9")
    cancel = TaskStopRequested(attempt=1, host_id="h1", reason="cancelled", requested_by="ops", detail="not needed")
    assert decide(state, Record(event=preempt)) == [preempt]
    preempting = apply(state, preempt)
    assert preempting.status == TaskStatus.ASSIGNED
    assert preempting.stop == preempt
    assert decide(preempting, Record(event=preempt)) == []  # asked already
    assert decide(preempting, Record(event=cancel)) == [cancel]  # the task is to end, not to be requeued
    cancelling = apply(preempting, cancel)
    assert decide(cancelling, Record(event=cancel)) == []
    assert decide(cancelling, Record(event=preempt)) == []
    with pytest.raises(DomainError, match="at attempt 1"):
        decide(state, Record(event=TaskStopRequested(attempt=2, host_id="h1", reason="cancelled")))
    with pytest.raises(ValidationError):
        decide(state, Record(event=TaskStopRequested(attempt=1, host_id="h1", reason="because")))
    with pytest.raises(DomainError, match="being stopped"):  # a stopping run is not paused or resumed any more
        decide(cancelling, Record(event=TaskSuspended(reason="agent_suspended", attempt=1, host_id="h1")))
    # A placed task is cancelled only after a cancel was requested for its attempt (and its run is over).
    with pytest.raises(DomainError, match="stop request"):
        decide(state, Record(event=TaskCancelled(reason="no")))
    with pytest.raises(DomainError, match="stop request"):
        decide(preempting, Record(event=TaskCancelled(reason="no")))
    done = TaskCancelled(reason="not needed", cancelled_by="ops")
    assert decide(cancelling, Record(event=done)) == [done]
    # A new assignment starts without a stop request.
    requeued = apply(apply(preempting, TaskPreempted(host_id="h1", attempt=1, reason="preempted")), assigned(2))
    assert requeued.stop is None


def test_a_preempted_victim_keeps_its_place_and_resources_until_its_attempt_ends() -> None:
    """The critical task waits for the victim's resources (they are releasing), nothing else is evicted, and the
    victim is requeued only once its host reported the attempt killed."""
    model = placed_model(started_attempt=True)
    stop = TaskStopRequested(attempt=1, host_id="h1", reason="preempted", requested_by="scheduler", by_task="t9")
    model.apply("task", "t1", 3, 4, NOW, stop)
    host = model.placer.hosts["h1"]
    assert (host.cpu_used, host.cpu_releasing) == (1.0, 1.0)
    assert model.core.running["t1"].stopping
    assert TaskView.of(model.tasks["t1"]).stopping == "preempted"
    chores = due(model, NOW, dispatched={("t1", 1)})
    assert StopRun("t1", 1, "h1") in chores
    assert not [c for c in chores if isinstance(c, Stopped | Complete)]
    model.apply("execution", "t1", 2, 5, NOW, ExecutionKilled(attempt=1, exit_code=137, reason="terminated"))
    assert model.tasks["t1"].status == TaskStatus.ASSIGNED
    assert host.cpu_used == 1.0
    chores = due(model, NOW, dispatched={("t1", 1)})
    assert Stopped("t1", 1) in chores
    assert not [c for c in chores if isinstance(c, StopRun | Complete)]
    model.apply("task", "t1", 4, 6, NOW, TaskPreempted(host_id="h1", attempt=1, reason="preempted", by_task="t9"))
    assert "t1" in model.queue
    assert (host.cpu_used, host.cpu_releasing) == (0.0, 0.0)


def test_an_attempt_refused_for_its_cancel_ends_the_task_cancelled_and_frees_its_host() -> None:
    model = placed_model(started_attempt=False)
    stop = TaskStopRequested(attempt=1, host_id="h1", reason="cancelled", requested_by="ops", detail="not needed")
    model.apply("task", "t1", 3, 4, NOW, stop)
    # Not started yet: its work item goes out (again, if need be) so the host refuses it and says so.
    chores = due(model, NOW, dispatched=set())
    assert StopRun("t1", 1, "h1") in chores
    refused = ExecutionRefused(attempt=1, code=STOP_REFUSED, reason="stop requested before it started")
    model.apply("execution", "t1", 1, 5, NOW, refused)
    chores = due(model, NOW, dispatched={("t1", 1)})
    assert Stopped("t1", 1) in chores
    assert not [c for c in chores if isinstance(c, Complete)]
    model.apply("task", "t1", 4, 6, NOW, TaskCancelled(reason="not needed", cancelled_by="ops"))
    assert "t1" not in model.active
    assert model.placer.hosts["h1"].cpu_used == 0.0
    assert model.core.running == {}


def test_a_cancelled_run_that_was_killed_completes_as_killed() -> None:
    """As before the stop request existed: a cancelled run that ran ends ``completed`` with outcome ``killed``."""
    model = placed_model(started_attempt=True)
    stop = TaskStopRequested(attempt=1, host_id="h1", reason="cancelled", requested_by="ops", detail="not needed")
    model.apply("task", "t1", 3, 4, NOW, stop)
    model.apply("execution", "t1", 2, 5, NOW, ExecutionKilled(attempt=1, exit_code=137, reason="terminated"))
    chores = due(model, NOW, dispatched={("t1", 1)})
    assert Complete("t1", 1, "killed", 137, "terminated", False) in chores
    assert not [c for c in chores if isinstance(c, Stopped)]


def test_a_stopped_attempt_that_ends_after_its_task_moved_to_another_host_frees_its_first_host() -> None:
    """A stream of the previous version (``task.preempted`` straight after the assignment, the run still going):
    the task runs again on ``h2`` before the end of attempt 1 on ``h1`` is reported. That end frees ``h1``
    (before, only the task's current host was counted again, and ``h1`` stayed full for good)."""
    model = placed_model(started_attempt=True)
    model.host_seen(
        HostInfo(host_id="h2", cpu_cores=4.0, memory_mb=4096, tiers=("tier1", "tier2"), heartbeat_at=NOW), NOW
    )
    model.apply("task", "t1", 3, 4, NOW, TaskPreempted(host_id="h1", attempt=1, reason="preempted"))
    model.apply("task", "t1", 4, 5, NOW, msgspec.structs.replace(assigned(2), host_id="h2"))
    h1, h2 = model.placer.hosts["h1"], model.placer.hosts["h2"]
    assert (h1.cpu_used, h1.cpu_releasing, h2.cpu_used) == (1.0, 1.0, 1.0)
    model.apply("execution", "t1", 2, 6, NOW, ExecutionKilled(attempt=1, exit_code=137, reason="terminated"))
    assert (h1.cpu_used, h1.cpu_releasing, h1.memory_used) == (0.0, 0.0, 0)
    assert h2.cpu_used == 1.0
    assert model.holds_on("h1") == []
