"""The scheduler's own CPU per trivial task, through the real runtime (issue 15).

Starts a :class:`~symbi_cli.runtime.LocalRuntime` as ``bench/e2e.py`` does (six services as processes,
embedded policy with the baseline set), registers ``--concurrency`` tier-1 agents with the e2e workload,
warms them up, then runs ``--windows`` windows of ``--tasks`` tasks each (closed loop, one worker per
agent: submit over HTTP, wait for ``task.completed``, fetch the output). For each window it prints
the CPU (utime + stime of the process tree, from ``/proc``) per task of every service, the scheduler
first; the last line is the median over the windows. ``--profile FILE`` records the scheduler with
py-spy (``uvx py-spy``, samples holding the GIL) over all windows, ``--perf FILE`` with ``perf record``
(on-CPU samples, kernel included: where its system time goes). The scheduler's user and system CPU are
printed apart. ``--connz`` starts nats-server with its monitoring endpoint and prints, per window, how many
messages each NATS client (by connection name) sent and was sent per task, and per subscription: the round
trips and deliveries a task costs.

    flock /tmp/symbi-bench.lock uv run python bench/sched_cost.py [--tasks 64] [--windows 3] [--profile FILE] [--connz]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import signal
import statistics
import subprocess
import tempfile
import uuid
from pathlib import Path

import httpx
from _cpu import CLK_TCK, CpuSources, proc_stats, tree_cpu
from _e2e_ours import Ours, TaskWatch, register_agent
from _e2e_workload import MEMORY_MB, Limits
from e2e import closed_loop, loadavg, require_every_service, runtime_options
from symbi_cli import runtime as runtime_module
from symbi_cli.credentials import auth_headers
from symbi_cli.nats_server import NatsServer
from symbi_cli.runtime import LocalRuntime

SERVICES = ("scheduler", "lifecycle", "sandbox-agent", "audit", "policy", "context")


def user_sys(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_of(sources: CpuSources) -> dict[str, float]:
    children, cpu = proc_stats()
    return {name: tree_cpu([pid], children, cpu) for name, pid in sources.runtime_roots.items()}


async def connz(url: str) -> dict[str, tuple[int, int]]:
    """Messages each client name (and each of its subscriptions, ``name subject``) has sent to / been sent by
    nats-server so far (``/connz``, summed by name)."""
    async with httpx.AsyncClient(timeout=10) as http:  # no operator token: the monitoring endpoint needs none
        body = (await http.get(f"{url}/connz", params={"limit": 4096, "subs": "detail"})).json()
    out: dict[str, tuple[int, int]] = {}
    for c in body["connections"]:
        name = c.get("name") or "?"
        sent, received = out.get(name, (0, 0))
        out[name] = (sent + c["in_msgs"], received + c["out_msgs"])
        for sub in c.get("subscriptions_list_detail") or []:
            key = f"{name}   {sub['subject']}"
            out[key] = (0, out.get(key, (0, 0))[1] + sub.get("msgs", 0))
    return out


def print_connz(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], tasks: int) -> None:
    for name in sorted(after):
        b = before.get(name, (0, 0))
        sent, received = (after[name][0] - b[0]) / tasks, (after[name][1] - b[1]) / tasks
        if sent or received:
            print(f"  nats {name}: sends {sent:.1f}, receives {received:.1f} messages per task", flush=True)


def start_profiler(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def http_costs(http: httpx.AsyncClient, pid: int, n: int, agent_id: str) -> None:
    """The scheduler's CPU per request of each kind, ``n`` sequential requests (a finished task's views)."""
    r = await http.get("/v1/tasks", params={"limit": 1, "state": "finished"})
    task_id = r.json()["items"][0]["task_id"]
    kinds = {
        "GET /healthz (no auth)": lambda: http.get("/healthz"),
        "GET /v1/tasks/{id}": lambda: http.get(f"/v1/tasks/{task_id}"),
        "GET /v1/tasks/{id}/output": lambda: http.get(f"/v1/tasks/{task_id}/output"),
        "GET /v1/tasks/nope (404)": lambda: http.get("/v1/tasks/nope"),
    }
    for name, call in kinds.items():
        for _ in range(20):
            await call()
        t0 = sum(user_sys(pid))
        for _ in range(n):
            await call()
        per = (sum(user_sys(pid)) - t0) / n * 1e3
        print(f"  http {name}: {per:.2f} ms scheduler CPU per request ({n} requests)", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=64, help="tasks per window")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--profile", type=Path, help="py-spy --service (GIL samples) into this file (collapsed)")
    parser.add_argument("--perf", type=Path, help="perf record (cpu-clock, kernel and native) --service into this file")
    parser.add_argument("--service", default="scheduler", choices=SERVICES, help="the service --profile/--perf record")
    parser.add_argument("--connz", action="store_true", help="messages per task per NATS client (nats-server /connz)")
    parser.add_argument("--http", type=int, default=0, help="then time N requests of each kind alone")
    args = parser.parse_args()
    print(f"load average before: {loadavg()}", flush=True)
    host_id = f"sc-{uuid.uuid4().hex[:8]}"
    if args.connz:
        runtime_module.NatsServer = functools.partial(NatsServer, monitoring=True)  # type: ignore[misc]
    with tempfile.TemporaryDirectory(prefix="symbi-bench-sc-") as tmp:
        rt = LocalRuntime(runtime_options(Path(tmp), host_id))
        watch = TaskWatch()
        limits = Limits(MEMORY_MB, min(0.5, int((os.cpu_count() or 2) / args.concurrency * 10) / 10))
        spies: list[subprocess.Popen[bytes]] = []
        per_window: list[dict[str, float]] = []
        try:
            await rt.start()
            await rt.wait_ready(timeout=120)
            require_every_service(rt)
            await watch.start(rt.nats_url)
            sources = CpuSources.of(rt, [])
            async with (
                httpx.AsyncClient(base_url=rt.url_of("lifecycle"), timeout=30, headers=auth_headers(rt.home)) as lc,
                httpx.AsyncClient(base_url=rt.url_of("scheduler"), timeout=30, headers=auth_headers(rt.home)) as sch,
            ):
                ours = Ours(sch, watch)
                agents = [f"sc-tier1-{i}" for i in range(args.concurrency)]
                for agent in agents:
                    await register_agent(lc, agent, "tier1", limits)
                for agent in agents:
                    await ours.warm_up(agent)
                for _ in range(2 * args.concurrency):  # settle: images, pools, caches
                    await ours.run(agents[0])
                pid = str(sources.runtime_roots[args.service])
                commands = []
                if args.profile:
                    commands.append(
                        [
                            *("uvx", "py-spy", "record", "--pid", pid, "--rate", "250", "--format", "raw"),
                            *("--nonblocking", "--gil", "--output", str(args.profile)),
                        ]
                    )
                if args.perf:
                    commands.append(["perf", "record", "-F", "499", "-g", "-p", pid, "-o", str(args.perf)])
                spies.extend(map(start_profiler, commands))
                if spies:
                    await asyncio.sleep(2.0)  # the profilers attach

                async def one(agent_id: str) -> None:
                    await ours.run(agent_id)

                workers = [functools.partial(one, a) for a in agents]
                for w in range(args.windows):
                    monitor = rt.nats.monitoring_url if args.connz and rt.nats is not None else ""
                    conns = await connz(monitor) if monitor else {}
                    before, us0 = cpu_of(sources), user_sys(int(pid))
                    retries = ours.output_retries
                    wall = await closed_loop(workers, args.tasks)  # type: ignore[arg-type]
                    after, us1 = cpu_of(sources), user_sys(int(pid))
                    per = {n: (after[n] - before[n]) / args.tasks * 1e3 for n in after}
                    per_window.append(per)
                    cells = "  ".join(f"{n} {per[n]:.1f}" for n in (*SERVICES, "nats-server", "postgres") if n in per)
                    print(
                        f"window {w + 1}: {args.tasks} tasks in {wall:.1f} s, output retries"
                        f" {ours.output_retries - retries}, load {loadavg()}; ms CPU per task: {cells};"
                        f" {args.service} user {(us1[0] - us0[0]) / args.tasks * 1e3:.1f}"
                        f" sys {(us1[1] - us0[1]) / args.tasks * 1e3:.1f}",
                        flush=True,
                    )
                    if monitor:
                        print_connz(conns, await connz(monitor), args.tasks)
                metrics = (await sch.get("/metrics")).text
                for line in metrics.splitlines():
                    if line.startswith("symbi_policy_decision_seconds_") and ("_sum" in line or "_count" in line):
                        print("  " + line, flush=True)
                if args.http:
                    await http_costs(sch, int(pid), args.http, agents[0])
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
            for spy in spies:
                spy.wait(30)
            await watch.close()
            await rt.stop()
    med = {n: statistics.median(w[n] for w in per_window) for n in per_window[0]} if per_window else {}
    services = sum(med.get(n, 0.0) for n in SERVICES)
    cells = "  ".join(f"{n} {med[n]:.1f}" for n in (*SERVICES, "nats-server", "postgres") if n in med)
    print(f"load average after: {loadavg()}")
    print(f"RESULT sched_cost scheduler={med.get('scheduler', 0):.2f} services={services:.1f} ms/task (median)")
    print(f"  median ms CPU per task: {cells}")


if __name__ == "__main__":
    asyncio.run(main())
