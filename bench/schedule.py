"""Scheduling decision latency: the scheduler's model with 10,000 agents, 10,000 queued tasks, 100 hosts.

The scheduler's state (:class:`symbi_scheduler.model.Model`) is built by folding synthetic events, as a
replica does after a restart: 10,000 registered agents, 10,000 tasks submitted over the last ten minutes
(mixed priorities, so aging is in play; some agents have several tasks and must run them one at a time)
and 100 hosts of mixed size and tiers. Then decisions are taken one after another:

* ours: ``model.core.decide(now, model.agent_verdict)`` — the next task by effective priority whose agent
  is free, and a host for it with the configured strategy — timed per decision; the placement is then
  applied to the model as its ``task.assigned`` event (not timed), and once 5,000 tasks run the oldest is
  completed (not timed), so the hosts stay busy and decisions keep having to search.
* baseline: a brute-force scan of every queued task against every host for the best task that fits
  (``symbi_scheduler.core.brute_force_decide``) over the same state.

Reported: p50 / p99 decision latency and decisions per second. Target: p99 < 1 ms.

    uv run python bench/schedule.py [--quick] [--decisions N] [--strategy best_fit|first_fit|priority]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time

import _common
from symbi_common.decisions import DecisionRecord
from symbi_contracts.lifecycle.config import PRIORITIES, AgentConfig, ResourceLimits, Workload
from symbi_contracts.lifecycle.events import AgentReady, AgentRegistered
from symbi_contracts.scheduler.events import TaskAssigned, TaskCompleted, TaskSubmitted
from symbi_scheduler.core import Place, brute_force_decide
from symbi_scheduler.model import HostInfo, Model

TARGET_MS = 1.0
WORKLOAD = Workload(image="symbi/busybox:1", command=("cat",))
DECISION = DecisionRecord(action="task.allocate", effect="allow", policy_version=0)


def build(agents: int, tasks: int, hosts: int, strategy: str, seed: int = 7) -> tuple[Model, dict[str, int]]:
    rng = random.Random(seed)
    model = Model(strategy=strategy, aging_s=30.0)  # type: ignore[arg-type]
    seq = 0
    now = time.time()
    for i in range(agents):
        limits = ResourceLimits(memory_mb=rng.choice((256, 512, 1024, 2048)), cpu_cores=rng.choice((0.5, 1.0, 2.0)))
        config = AgentConfig(
            name=f"agent-{i}", resources=limits, workload=WORKLOAD, security_tier="tier1" if i % 3 else "tier2"
        )
        for v, event in enumerate((AgentRegistered(agent_id=f"a{i}", config=config), AgentReady()), 1):
            seq += 1
            model.apply("agent", f"a{i}", v, seq, now - 3600, event)
    for i in range(hosts):
        tiers = ("tier1", "tier2") if i % 4 else ("tier1",)
        model.host_seen(
            HostInfo(
                host_id=f"h{i:03d}",
                cpu_cores=rng.choice((32.0, 64.0)),
                memory_mb=rng.choice((65536, 131072)),
                tiers=tiers,
                heartbeat_at=now + 1e6,
            ),
            now,
        )
    weights = (0.4, 0.35, 0.2, 0.05)
    for i in range(tasks):
        priority = rng.choices(PRIORITIES, weights)[0]
        seq += 1
        agent = f"a{rng.randrange(agents)}"
        model.apply(
            "task",
            f"t{i}",
            1,
            seq,
            now - 600 + i * 600 / tasks,
            TaskSubmitted(agent_id=agent, input=b"x", priority=priority),
        )
    return model, {"seq": seq}


def place(model: Model, decision: Place, counter: dict[str, int], now: float) -> None:
    rec = model.tasks[decision.entry.task_id]
    limits = model.limits_of(rec)
    assert limits is not None
    counter["seq"] += 1
    event = TaskAssigned(
        host_id=decision.host_id,
        tier=decision.entry.tier,
        risk_score=0.0,
        risk_factors={},
        workload=WORKLOAD,
        limits=limits,
        attempt=rec.attempt + 1,
        decision=DECISION,
    )
    model.apply("task", rec.task_id, rec.version + 1, counter["seq"], now, event)


def complete_oldest(model: Model, running: list[str], counter: dict[str, int], now: float) -> None:
    task_id = running.pop(0)
    rec = model.tasks[task_id]
    counter["seq"] += 1
    model.apply(
        "task", task_id, rec.version + 1, counter["seq"], now, TaskCompleted(outcome="succeeded", attempt=rec.attempt)
    )


def resubmit(model: Model, counter: dict[str, int], agents: int, rng: random.Random, now: float) -> None:
    """Keep the queue at its size: every placed task is replaced by a new submission."""
    counter["seq"] += 1
    counter["next"] = counter.get("next", 10**7) + 1
    event = TaskSubmitted(agent_id=f"a{rng.randrange(agents)}", input=b"x", priority=rng.choice(PRIORITIES[:3]))
    model.apply("task", f"t{counter['next']}", 1, counter["seq"], now, event)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--decisions", type=int, default=0)
    parser.add_argument("--baseline-decisions", type=int, default=0)
    parser.add_argument("--strategy", default="best_fit", choices=("first_fit", "best_fit", "priority"))
    args = parser.parse_args()
    n = args.decisions or (2_000 if args.quick else 20_000)
    nb = args.baseline_decisions or (20 if args.quick else 100)
    agents, tasks, hosts = 10_000, 10_000, 100
    print(_common.machine_summary())
    t0 = time.perf_counter()
    model, counter = build(agents, tasks, hosts, args.strategy)
    print(
        f"state: {agents} agents, {len(model.queue)} queued tasks, {hosts} hosts, strategy {args.strategy} "
        f"(folded in {time.perf_counter() - t0:.2f} s)"
    )
    rng = random.Random(11)
    running: list[str] = []

    # Baseline first, on the fresh state (it does not change the state).
    gc.collect()
    base_times = []
    now = time.time()
    for _ in range(nb):
        t = time.perf_counter()
        decision = brute_force_decide(model.queue.entries.values(), model.placer.hosts.values(), now, 30.0)
        base_times.append(time.perf_counter() - t)
        assert decision is not None

    ours_times = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(n):
            now = time.time()
            t = time.perf_counter()
            decision = model.core.decide(now, model.agent_verdict)
            ours_times.append(time.perf_counter() - t)
            if isinstance(decision, Place):
                place(model, decision, counter, now)
                running.append(decision.entry.task_id)
                resubmit(model, counter, agents, rng, now)
            if len(running) > 5_000 or decision is None:
                for _ in range(50 if decision is None else 1):
                    if running:
                        complete_oldest(model, running, counter, now)
    finally:
        gc.enable()

    def pct(values: list[float], p: float) -> float:
        return sorted(values)[min(len(values) - 1, int(len(values) * p))] * 1000

    ours_p50, ours_p99 = pct(ours_times, 0.50), pct(ours_times, 0.99)
    base_p50, base_p99 = pct(base_times, 0.50), pct(base_times, 0.99)
    print(
        f"ours:     {n} decisions  p50 {ours_p50:.3f} ms  p99 {ours_p99:.3f} ms  "
        f"mean {statistics.fmean(ours_times) * 1000:.3f} ms  {n / sum(ours_times):,.0f} decisions/s"
    )
    print(
        f"baseline: {nb} decisions  p50 {base_p50:.3f} ms  p99 {base_p99:.3f} ms  "
        f"{nb / sum(base_times):,.0f} decisions/s (brute-force scan of queued tasks x hosts)"
    )
    print(
        f"end state: {len(model.queue)} queued, {len(running)} running, {sum(len(v) for v in model.parked.values())} parked"
    )
    print(_common.result_line("schedule", ours_p99, base_p99, "ms_p99", f"<{TARGET_MS}", ours_p99 < TARGET_MS))


if __name__ == "__main__":
    main()
