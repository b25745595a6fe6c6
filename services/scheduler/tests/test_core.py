"""The pure scheduling core: priority order, FIFO within a level, aging, strategies, preemption choice."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from symbi_contracts.lifecycle.config import AgentConfig, ResourceLimits, Workload
from symbi_contracts.lifecycle.events import AgentConfigured, AgentReady, AgentRegistered
from symbi_scheduler.core import (
    AgingQueue,
    Entry,
    Host,
    Place,
    Placer,
    Preempt,
    Running,
    Scheduler,
    brute_force_decide,
    choose_victim,
    never_fits,
)
from symbi_scheduler.domain import ResourceRequest, effective_limits
from symbi_scheduler.model import Model


def entry(task_id: str, level: int, at: float, cpu: float = 1.0, mem: int = 100, tier: str = "tier1") -> Entry:
    return Entry(task_id, f"agent-{task_id}", level, at, cpu, mem, tier)


def host(host_id: str, cpu: float = 4.0, mem: int = 4096, tiers: tuple[str, ...] = ("tier1", "tier2")) -> Host:
    return Host(host_id, cpu, mem, frozenset(tiers))


def drain(queue: AgingQueue, now: float) -> list[str]:
    out = []
    while (e := queue.ordered(now, lambda _: "take", 0)) is not None:
        out.append(e.task_id)
    return out


def test_priority_order_and_fifo_within_a_level() -> None:
    q = AgingQueue(aging_s=1000)
    for i, (name, level) in enumerate([("l1", 0), ("n1", 1), ("h1", 2), ("c1", 3), ("l2", 0), ("h2", 2), ("c2", 3)]):
        q.push(entry(name, level, float(i)))
    assert drain(q, 10.0) == ["c1", "c2", "h1", "h2", "n1", "l1", "l2"]


def test_aging_lifts_a_waiting_task_to_high_but_never_to_critical() -> None:
    q = AgingQueue(aging_s=10)
    q.push(entry("old-low", 0, 0.0))
    q.push(entry("new-high", 2, 95.0))
    q.push(entry("new-critical", 3, 99.0))
    # At t=100 the low task has waited 10 intervals: it counts as high (capped), and it is older.
    assert q.effective(q.entries["old-low"], 100.0) == 2
    assert drain(q, 100.0) == ["new-critical", "old-low", "new-high"]


def test_no_aging_before_an_interval_has_passed() -> None:
    q = AgingQueue(aging_s=10)
    q.push(entry("low", 0, 0.0))
    q.push(entry("normal", 1, 5.0))
    assert drain(q, 9.0) == ["normal", "low"]


def test_skipped_tasks_keep_their_place_and_parked_ones_leave() -> None:
    q = AgingQueue(aging_s=1000)
    for i, name in enumerate(["a", "b", "c"]):
        q.push(entry(name, 1, float(i)))
    taken = q.ordered(10.0, lambda e: "skip" if e.task_id == "a" else "park" if e.task_id == "b" else "take", 5)
    assert taken is not None
    assert taken.task_id == "c"
    assert list(q.entries) == ["a"]
    assert drain(q, 10.0) == ["a"]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("first_fit", "a"), ("best_fit", "b"), ("priority", "c")],
)
def test_strategies_choose_their_host(strategy: str, expected: str) -> None:
    placer = Placer(strategy, reserve=0.2)  # type: ignore[arg-type]
    a, b, c = host("a", cpu=4), host("b", cpu=4), host("c", cpu=4)
    a.cpu_used, b.cpu_used, c.cpu_used = 1.0, 2.5, 0.5
    placer.set_hosts([a, b, c])
    chosen = placer.choose(1.0, 100, "tier1", critical=False)
    assert chosen is not None
    assert chosen.host_id == expected


def test_priority_strategy_keeps_headroom_for_critical_work() -> None:
    placer = Placer("priority", reserve=0.25)
    h = host("a", cpu=4)
    h.cpu_used = 2.5
    placer.set_hosts([h])
    assert placer.choose(1.0, 100, "tier1", critical=False) is None  # 3.5 > 75 % of 4
    assert placer.choose(1.0, 100, "tier1", critical=True) is h


def test_placement_honours_tier_memory_and_liveness() -> None:
    placer = Placer("best_fit")
    only1, small, dead = host("only1", tiers=("tier1",)), host("small", mem=256), host("dead")
    dead.alive = False
    placer.set_hosts([only1, small, dead])
    assert placer.choose(1.0, 512, "tier2", critical=False) is None
    chosen = placer.choose(1.0, 512, "tier1", critical=False)
    assert chosen is not None
    assert chosen.host_id == "only1"


def test_a_task_larger_than_every_host_never_fits() -> None:
    hosts = [host("a", cpu=4, mem=1024), host("b", cpu=2, mem=8192, tiers=("tier2",))]
    assert never_fits(1.0, 512, "tier1", hosts) is None
    reason = never_fits(1.0, 2048, "tier1", hosts)  # b is large enough but not of tier1
    assert reason is not None
    assert "2048 MB" in reason
    assert "1024 MB" in reason
    assert never_fits(8.0, 10, "tier2", hosts) is not None
    assert never_fits(1.0, 10**9, "tier1", []) is None  # no host known yet: the task waits for one
    hosts[0].alive = False
    assert never_fits(1.0, 2048, "tier1", hosts) is None


def test_no_task_starts_while_max_running_tasks_run() -> None:
    placer = Placer("first_fit")
    placer.set_hosts([host("a", cpu=8)])
    queue = AgingQueue(aging_s=1000)
    core = Scheduler(placer, queue, max_running=1)
    queue.push(entry("t1", 1, 0.0))
    queue.push(entry("t2", 1, 1.0))
    first = core.decide(2.0)
    assert isinstance(first, Place)
    assert first.entry.task_id == "t1"
    core.running["t1"] = Running("t1", "a", 1, 2.0, 1.0, 100)
    assert core.decide(3.0) is None  # room on the host, but the runtime's limit is reached
    del core.running["t1"]
    second = core.decide(4.0)
    assert isinstance(second, Place)
    assert second.entry.task_id == "t2"


def test_victim_is_the_lowest_priority_then_the_latest_started() -> None:
    hosts = {"a": host("a", cpu=2), "b": host("b", cpu=2)}
    hosts["a"].cpu_used = hosts["b"].cpu_used = 2.0
    running = [
        Running("normal-a", "a", 1, 1.0, 1.0, 100),
        Running("low-old", "a", 0, 1.0, 1.0, 100),
        Running("low-new", "b", 0, 5.0, 1.0, 100),
        Running("high-b", "b", 2, 0.0, 1.0, 100),
    ]
    victim = choose_victim(entry("crit", 3, 0.0), hosts, running, "requeue")
    assert isinstance(victim, Running)
    assert victim.task_id == "low-new"


def test_a_victim_too_small_to_make_room_is_not_chosen() -> None:
    hosts = {"a": host("a", cpu=2)}
    hosts["a"].cpu_used = 2.0
    running = [Running("low", "a", 0, 1.0, 0.5, 100), Running("normal", "a", 1, 1.0, 1.5, 100)]
    victim = choose_victim(entry("crit", 3, 0.0, cpu=1.0), hosts, running, "requeue")
    assert isinstance(victim, Running)
    assert victim.task_id == "normal"
    assert choose_victim(entry("crit", 3, 0.0, cpu=3.0), hosts, running, "requeue") is None


def test_suspend_mode_frees_cpu_but_not_memory() -> None:
    hosts = {"a": host("a", cpu=2, mem=1000)}
    hosts["a"].cpu_used, hosts["a"].memory_used = 2.0, 900
    running = [Running("low", "a", 0, 1.0, 1.0, 800)]
    assert choose_victim(entry("crit", 3, 0.0, cpu=1.0, mem=500), hosts, running, "suspend") is None
    victim = choose_victim(entry("crit", 3, 0.0, cpu=1.0, mem=500), hosts, running, "requeue")
    assert isinstance(victim, Running)


def test_a_stop_under_way_makes_the_critical_task_wait() -> None:
    hosts = {"a": host("a", cpu=1)}
    hosts["a"].cpu_used, hosts["a"].cpu_releasing, hosts["a"].memory_releasing = 1.0, 1.0, 100
    running = [Running("low", "a", 0, 1.0, 1.0, 100, stopping=True)]
    assert choose_victim(entry("crit", 3, 0.0), hosts, running, "requeue") == "wait"


def test_scheduler_preempts_only_for_critical_work() -> None:
    placer = Placer("first_fit")
    h = host("a", cpu=1)
    h.cpu_used = 1.0
    placer.set_hosts([h])
    sched = Scheduler(placer, AgingQueue(1000))
    sched.running["low"] = Running("low", "a", 0, 1.0, 1.0, 100)
    sched.queue.push(entry("high", 2, 0.0))
    assert sched.decide(1.0) is None
    sched.queue.push(entry("crit", 3, 0.5))
    decision = sched.decide(1.0)
    assert isinstance(decision, Preempt)
    assert decision.victim.task_id == "low"
    assert decision.entry.task_id == "crit"
    assert "crit" in sched.queue  # stays queued until the victim's resources are free


@settings(max_examples=60, deadline=None)
@given(
    levels=st.lists(st.integers(0, 3), min_size=1, max_size=40),
    free=st.lists(st.floats(0.0, 4.0), min_size=1, max_size=6),
)
def test_decision_matches_the_brute_force_scan(levels: list[int], free: list[float]) -> None:
    entries = [entry(f"t{i}", lvl, float(i)) for i, lvl in enumerate(levels)]
    hosts = [host(f"h{i}", cpu=4) for i in range(len(free))]
    for h, f in zip(hosts, free, strict=True):
        h.cpu_used = 4.0 - f
    placer = Placer("first_fit")
    placer.set_hosts(hosts)
    q = AgingQueue(aging_s=5)
    for e in entries:
        q.push(e)
    ours = Scheduler(placer, q, max_skips=len(entries)).decide(30.0)
    baseline = brute_force_decide(entries, hosts, 30.0, 5)
    if baseline is None:
        assert ours is None or isinstance(ours, Preempt)
    else:
        assert isinstance(ours, Place)
        assert (ours.entry.task_id, ours.host_id) == (baseline.entry.task_id, baseline.host_id)


def test_the_final_config_of_agent_ready_and_configured_replaces_the_provisional_one() -> None:
    """A definition-registered agent's ``agent.registered`` holds a provisional config; the workload and
    limits the scheduler uses come from ``agent.ready`` and later ``agent.configured``."""
    model = Model()
    provisional = AgentConfig(name="reporter")
    final = AgentConfig(name="reporter", workload=Workload(image="symbi/busybox:1", command=("cat",)))
    assert model.apply("agent", "a1", 1, 1, 0.0, AgentRegistered(agent_id="a1", config=provisional))
    assert model.agents["a1"].config == provisional
    assert model.apply("agent", "a1", 2, 2, 0.0, AgentReady(config=final))
    assert model.agents["a1"].config == final
    resized = AgentConfig(name="reporter", workload=final.workload, resources=ResourceLimits(memory_mb=64))
    assert model.apply("agent", "a1", 3, 3, 0.0, AgentConfigured(config=resized))
    assert model.agents["a1"].config == resized


def test_a_task_request_lowers_its_agents_limits_and_never_raises_them() -> None:
    agent = ResourceLimits(memory_mb=512, cpu_cores=2.0, execution_timeout_s=300.0)
    assert effective_limits(agent, None) is agent
    asked = ResourceRequest(cpu_cores=0.5, memory_mb=1024, execution_timeout_s=None)
    assert effective_limits(agent, asked) == ResourceLimits(memory_mb=512, cpu_cores=0.5, execution_timeout_s=300.0)
    assert effective_limits(agent, ResourceRequest(execution_timeout_s=20)).execution_timeout_s == 20.0
