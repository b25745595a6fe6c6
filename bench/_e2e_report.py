"""The e2e benchmark's results per tier and their report: latency, where the time goes, throughput, CPU."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from _cpu import CpuTally
from _e2e_ours import TaskTiming
from _e2e_workload import COMMAND, IMAGE, INPUT, Limits

#: Where the runtime's events land, in the order a task goes through them. A result short enough to be
#: still held when its run ends comes in ``execution.exited`` (its tail): such a task has no ``execution.output``.
STAGES = (
    "task.submitted",
    "task.assigned",
    "execution.started",
    "execution.output",
    "execution.exited",
    "task.completed",
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def ms(v: float) -> str:
    return f"{v * 1e3:.0f}"


@dataclass
class TierResult:
    ours_latency: list[TaskTiming] = field(default_factory=list)
    ours_loaded: list[TaskTiming] = field(default_factory=list)
    raw_latency: list[float] = field(default_factory=list)
    cli_latency: list[float] = field(default_factory=list)
    ours_wall: float = 0.0
    raw_wall: float = 0.0
    tasks: int = 0
    cpu: CpuTally = field(default_factory=CpuTally)

    @property
    def ours_rate(self) -> float:
        return self.tasks / self.ours_wall if self.ours_wall else 0.0

    @property
    def raw_rate(self) -> float:
        return self.tasks / self.raw_wall if self.raw_wall else 0.0


def _marks_row(label: str, timings: list[TaskTiming], stages: tuple[str, ...], q: float = 0.5) -> str:
    cells = []
    for mark in ("accepted", *stages, "result"):
        values = [t.marks[mark] for t in timings if mark in t.marks]
        cells.append(f"{ms(percentile(values, q)) if values else '-':>9}")
    return f"  {label:<22}" + "  ".join(cells)


#: Hand-overs between two services through a JetStream pull consumer: the scheduler's follower sees
#: ``execution.exited``, the sandbox-agent's work consumer sees the work item published with ``task.assigned``.
HANDOVERS = (("task.assigned", "execution.started"), ("execution.exited", "task.completed"))


def _slow_handovers(timings: list[TaskTiming], first: str, then: str, threshold: float = 0.1) -> list[float]:
    """Gaps between a task's ``first`` and ``then`` events longer than ``threshold``, longest first."""
    gaps = [t.marks[then] - t.marks[first] for t in timings if first in t.marks and then in t.marks]
    return sorted((g for g in gaps if g > threshold), reverse=True)


def print_report(results: dict[str, TierResult], concurrency: int, limits: Limits, retries: int) -> None:
    print()
    print(
        f"workload: {IMAGE} {' '.join(COMMAND)}, {len(INPUT)} B input; limits {limits.memory_mb} MB, "
        f"{limits.cpu_cores} cores, no network; concurrency {concurrency}"
    )
    print()
    print("latency, sequential (ms)             p50    p95    max    n")
    for tier, r in results.items():
        rows = (
            ("ours: submit → stdout", [t.total for t in r.ours_latency]),
            ("raw: same container, SDK", r.raw_latency),
            ("docker run --rm -i (CLI)", r.cli_latency),
        )
        for label, values in rows:
            print(
                f"  {tier} {label:<26} {ms(statistics.median(values)):>5}  {ms(percentile(values, 0.95)):>5}  "
                f"{ms(max(values)):>5}  {len(values):>3}"
            )
    print()
    print("where the time goes (ours): ms after the submit at which each event is stored (p50 unless p95)")
    timings = {tier: [*r.ours_latency, *r.ours_loaded] for tier, r in results.items()}
    stages = tuple(s for s in STAGES if any(s in t.marks for ts in timings.values() for t in ts))
    names = [m.removeprefix("execution.").removeprefix("task.") for m in ("accepted", *stages, "result")]
    print(" " * 24 + "  ".join(f"{n:>9}" for n in names))
    for tier, r in results.items():
        print(_marks_row(f"{tier} sequential", r.ours_latency, stages))
        print(_marks_row(f"{tier} sequential p95", r.ours_latency, stages, 0.95))
        print(_marks_row(f"{tier} {concurrency} at once", r.ours_loaded, stages))
        print(_marks_row(f"{tier} {concurrency} at once p95", r.ours_loaded, stages, 0.95))
    for tier, ts in timings.items():
        streamed = sum("execution.output" in t.marks for t in ts)
        print(
            f"  {tier}: {streamed} of {len(ts)} tasks sent execution.output events"
            " (the others' results came in their terminal event)"
        )
    for tier, r in results.items():
        for first, then in HANDOVERS:
            slow = _slow_handovers(r.ours_latency, first, then)
            print(
                f"  {tier}: {then} > 100 ms after {first} in {len(slow)} of {len(r.ours_latency)} sequential tasks"
                + (f" ({', '.join(ms(g) for g in slow[:8])} ms)" if slow else "")
            )
    if retries:
        print(f"  (output asked again {retries} time(s): task.completed stored before the scheduler applied it)")
    print()
    print(f"throughput, {concurrency} concurrent (tasks/s)   ours    raw   ratio   tasks per side")
    for tier, r in results.items():
        ratio = r.ours_rate / r.raw_rate if r.raw_rate else 0.0
        print(f"  {tier}                         {r.ours_rate:6.2f}  {r.raw_rate:5.2f}  {ratio:6.3f}   {r.tasks}")
    print()
    print("CPU seconds per window (and share of the machine's busy CPU); idle = nothing submitted")
    print("  tier  window  wall   busy   runtime      client    docker daemons  sandboxes   rest")
    for tier, r in results.items():
        for side, c in r.cpu.totals.items():
            busy = c.busy or 1.0
            print(
                f"  {tier} {side:>5} {c.wall:6.1f} {c.busy:6.1f}"
                + "".join(f"  {v:6.2f} {v / busy:4.0%}" for v in (c.runtime, c.client, c.docker, c.sandboxes, c.rest))
            )
    print(
        "  runtime: six services, nats-server, PostgreSQL; client: this process; docker daemons: dockerd +"
        " containerd;\n  sandboxes: their cgroups (incl. runsc); rest: exited shims and runc, kernel, other work"
    )
    print()
    for tier, r in results.items():
        o, w, idle = r.cpu.totals["ours"], r.cpu.totals["raw"], r.cpu.totals["idle"]
        work = o.docker + o.sandboxes
        others = o.busy - o.runtime - o.client
        per_task = o.runtime / r.tasks
        print(
            f"  {tier}: the runtime used {o.runtime / o.busy:.0%} of the machine's busy CPU while it ran the tasks;"
            f" {o.runtime / work:.2f}x the CPU of docker daemons + sandboxes, {o.runtime / others:.2f}x everything"
            " else busy\n"
            f"    {per_task * 1e3:.0f} ms runtime CPU per task (idle runtime: {idle.runtime / idle.wall:.3f} cores);"
            f" docker daemons + sandboxes per task: ours {work / r.tasks * 1e3:.0f} ms, raw"
            f" {(w.docker + w.sandboxes) / r.tasks * 1e3:.0f} ms (+ {w.client / r.tasks * 1e3:.0f} ms SDK client);"
            f" the runtime stays < 5 % of a task's CPU only for tasks of ≥ {per_task / 0.05:.1f} CPU-seconds"
        )
        parts = sorted(r.cpu.parts["ours"].items(), key=lambda kv: kv[1], reverse=True)
        print("    runtime CPU per task by process: " + ", ".join(f"{n} {v / r.tasks * 1e3:.1f} ms" for n, v in parts))
        idle_parts = sorted(r.cpu.parts["idle"].items(), key=lambda kv: kv[1], reverse=True)
        print(
            "    idle runtime by process (ms CPU per second): "
            + ", ".join(f"{n} {v / idle.wall * 1e3:.1f}" for n, v in idle_parts)
        )
