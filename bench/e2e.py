"""The whole system: trivial tasks submit → result through a real runtime, vs the same containers run raw.

A :class:`~symbi_cli.runtime.LocalRuntime` is started as ``symbi up`` starts it (keyring, nats-server,
PostgreSQL, all six services as their own processes, embedded policy enforcement with the baseline
policy). Agents are registered through the lifecycle HTTP API with the trivial workload ``cat`` in
``symbi/busybox:1`` (no network, fixed limits), one per tier for latency and ``--concurrency`` per
tier for throughput (an agent runs one task at a time).

* ours: ``POST /v1/tasks`` to the scheduler, wait for the task's ``task.completed`` event (an ordered
  JetStream consumer, headers only, as ``symbi task run`` follows a task), then
  ``GET /v1/tasks/<id>/output``; timed from the submit to the returned stdout, which must equal the
  input. In between: queueing, the ``task.allocate`` decision, Ready → Running, ``task.assigned``,
  the work item, the ``sandbox.start`` decision, the hardened container, output and terminal events,
  ``task.completed``, Running → Ready — and the audit service verifying every event meanwhile.
* baseline ("raw"): the same hardened container (same spec: limits, no network, read-only root,
  pids ≥ 128 under runsc, same cgroup layout) through the Docker SDK with the calls the sandbox-agent
  makes — create, attach, start, write stdin, read stdout, wait, remove — i.e. the floor of what the
  runtime can reach. ``docker run --rm -i`` with the same limits is timed as well for reference (it
  also pays for starting the docker CLI).

Latency: sequential tasks, rounds alternating the sides; p50/p95 per tier, and the median time at
which each of the task's events was stored, to show where the time goes. Throughput: ``N`` tasks
by ``--concurrency`` closed-loop workers (each with its own agent), ours then raw then raw then ours.

CPU: in each throughput window (and in an idle window before them, which shows the machine's
background), the CPU seconds (utime + stime, with reaped children) of the runtime's own process
trees — the six services, nats-server, PostgreSQL; also given by process —, of this process (the
client; under raw it makes the Docker calls the sandbox-agent makes under ours), of dockerd and
containerd, and of the sandboxes (their cgroups, runsc's sentry and gofer included), against the
whole machine's busy CPU (``/proc/stat``). "rest" is what none of these account for: container
shims and ``runc`` (they exit and are reaped by init, so their CPU cannot be attributed), the
kernel, and other users of this machine. The runtime's share is therefore given against the
machine's busy CPU, against the measured work (docker daemons + sandboxes: a lower bound of the
work) and against everything else busy (an upper bound). How to read it: the runtime's CPU per
task is a fixed cost, so its share depends on the work; for trivial tasks it is of the order of
the container's own cost, and the per-task figure says how much CPU a task must use before the
runtime's part drops below 5 %.
``--trace`` prints when each sequential task's events were stored.

Target (last line, tier 1 throughput): ours ≥ 0.5 x raw. Per task the runtime stores about eight
signed, encrypted events, makes two policy decisions and verifies everything for the audit log,
all on the same cores as Docker; ≥ 0.5 means that costs the machine at most as much again as
starting the container itself. Needs ``deploy/host/setup-docker.sh`` (tier 2 is skipped without runsc).
Parts: ``_e2e_workload.py`` (the workload), ``_e2e_raw.py`` (the baseline), ``_e2e_ours.py`` (our side),
``_e2e_report.py`` (results and report), ``_cpu.py`` (CPU accounting), ``_profile.py`` (``--profile DIR``:
py-spy, ``uvx py-spy``, not a dependency, samples each service — only samples holding the GIL, i.e. Python
on CPU — during tier 1's idle window into DIR/tier1/idle and its throughput windows into DIR/tier1:
<service>.txt collapsed stacks and summary.txt, where each one's samples went).

    uv run python bench/e2e.py [--quick] [--tasks N] [--rounds N] [--concurrency C] [--trace] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import random
import socket
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _common
import httpx
from _cpu import CpuSources, proc_stats, tree_cpu
from _e2e_ours import Ours, TaskWatch, register_agent
from _e2e_raw import RawDocker
from _e2e_report import TierResult, ms, print_report
from _e2e_workload import MEMORY_MB, Limits
from _profile import sampled
from symbi_cli.credentials import auth_headers
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import SERVICE_PORT_OFFSETS, RuntimeOptions
from symbi_cli.supervisor import RestartPolicy
from symbi_sandbox_agent.spec import CGROUP_PARENT

TARGET = 0.5


# --- measuring ------------------------------------------------------------------------------------


async def closed_loop(workers: list[Callable[[], Awaitable[Any]]], n: int) -> float:
    """``n`` calls spread over the workers, each worker one call at a time; returns the wall time."""
    left = n

    async def worker(call: Callable[[], Awaitable[Any]]) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in workers))
    return time.perf_counter() - started


async def measure_tier(
    tier: str,
    ours: Ours,
    raw: RawDocker,
    sources: CpuSources,
    pool: ThreadPoolExecutor,
    *,
    latency_agent: str,
    throughput_agents: list[str],
    rounds: int,
    tasks: int,
    idle_s: float,
    trace: bool,
    profile: Path | None = None,
) -> TierResult:
    loop = asyncio.get_running_loop()
    result = TierResult()

    async def raw_once() -> float:
        return await loop.run_in_executor(pool, raw.run, tier)

    await raw_once()  # warm the image and the runtime binaries
    await raw.cli_run(tier)

    async def ours_side() -> None:
        timing = await ours.run(latency_agent)
        result.ours_latency.append(timing)
        if trace:
            marks = "  ".join(f"{k} {v * 1e3:.0f}" for k, v in sorted(timing.marks.items(), key=lambda kv: kv[1]))
            print(f"    {tier} task {len(result.ours_latency)}: {marks}", flush=True)

    async def raw_side() -> None:
        result.raw_latency.append(await raw_once())

    async def cli_side() -> None:
        result.cli_latency.append(await raw.cli_run(tier))

    sides: dict[str, Callable[[], Awaitable[None]]] = {"ours": ours_side, "raw": raw_side, "cli": cli_side}
    order = list(sides)
    for r in range(rounds):
        for name in order[r % 3 :] + order[: r % 3]:
            await sides[name]()
    ours_p50 = statistics.median(t.total for t in result.ours_latency)
    raw_p50 = statistics.median(result.raw_latency)
    print(
        f"  {tier} latency: {rounds} rounds  ours p50 {ms(ours_p50)} ms  raw p50 {ms(raw_p50)} ms",
        flush=True,
    )

    services = {n: p for n, p in sources.runtime_roots.items() if n not in ("nats-server", "postgres")}
    # The machine's background: an idle runtime and everyone else.
    with sampled(services, profile / "idle" if profile else None), result.cpu.window(sources, "idle"):
        await asyncio.sleep(idle_s)
    half = max(1, tasks // 2)

    async def ours_loaded(agent_id: str) -> None:
        result.ours_loaded.append(await ours.run(agent_id))

    ours_workers: list[Callable[[], Awaitable[Any]]] = [functools.partial(ours_loaded, a) for a in throughput_agents]
    raw_workers: list[Callable[[], Awaitable[Any]]] = [raw_once for _ in throughput_agents]
    for side in ("ours", "raw", "raw", "ours"):
        with sampled(services, profile if side == "ours" else None), result.cpu.window(sources, side):
            wall = await closed_loop(ours_workers if side == "ours" else raw_workers, half)
        if side == "ours":
            result.ours_wall += wall
        else:
            result.raw_wall += wall
        print(f"  {tier} throughput {side:>4}: {half} tasks in {wall:.1f} s ({half / wall:.2f} tasks/s)", flush=True)
    result.tasks = 2 * half
    return result


# --- main -----------------------------------------------------------------------------------------


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def require_every_service(rt: LocalRuntime) -> None:
    """Stop the bench at once when the runtime came up without a service (tasks would wait for it forever)."""
    missing = [s for s in SERVICE_PORT_OFFSETS if s not in rt.running_services]
    if missing:
        raise SystemExit(f"the runtime runs without {', '.join(missing)}: {rt.unavailable}")


def runtime_options(tmp: Path, host_id: str) -> RuntimeOptions:
    """The whole runtime as ``symbi up`` starts it, in ``tmp``, its sandbox-agent as host ``host_id``; quiet logs."""
    env = {k: v for k, v in os.environ.items() if k not in ("SYMBI_DATABASE_URL", "SYMBI_HOME", "SYMBI_KEYS_DIR")}
    env.update(
        {
            "SYMBI_LOG_LEVEL": "warning",
            "PYTHONUNBUFFERED": "1",
            "SYMBI_SANDBOX__HOST_ID": host_id,
            "SYMBI_SANDBOX__WORK_DIR": str(tmp / "work"),
        }
    )
    return RuntimeOptions(
        home=tmp / "home",
        base_port=free_base_port(),
        nats_port=None,
        grace_period=5.0,
        restart=RestartPolicy(initial_backoff=0.1),
        env=env,
    )


def free_base_port() -> int:
    """A base port whose service ports are free, below the ephemeral range."""
    last = max(SERVICE_PORT_OFFSETS.values())

    def free(port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

    for _ in range(500):
        base = random.randrange(20_000, 32_000 - last)
        if all(free(base + offset) for offset in range(1, last + 1)):
            return base
    raise SystemExit("no free block of service ports between 20000 and 32000")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (under ~2 minutes)")
    parser.add_argument("--rounds", type=int, default=0, help="sequential rounds per tier (ours, raw, CLI)")
    parser.add_argument("--tasks", type=int, default=0, help="tasks per side per tier in the throughput phase")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent tasks (agents per tier)")
    parser.add_argument("--trace", action="store_true", help="print when each sequential task's events were stored")
    parser.add_argument(
        "--profile", type=Path, help="py-spy each service during tier 1's idle and throughput windows into DIR"
    )
    args = parser.parse_args()
    rounds = args.rounds or (5 if args.quick else 30)
    tasks = args.tasks or (16 if args.quick else 160)
    concurrency = max(1, args.concurrency)
    print(_common.machine_summary())
    print(f"load average before: {loadavg()}")

    host_id = f"e2e-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="symbi-bench-e2e-") as tmp:
        raw = RawDocker(f"{host_id}-raw", Limits(MEMORY_MB, 0.5), Path(tmp) / "raw")
        info_cpus = raw.docker.info().cpu_cores
        # Every concurrent task must fit the host's advertised cores (the scheduler places by them).
        cores = min(0.5, int(info_cpus / concurrency * 10) / 10)
        if cores < 0.1:
            raise SystemExit(f"{concurrency} concurrent tasks do not fit {info_cpus:g} cores at 0.1 core each")
        limits = raw.limits = Limits(MEMORY_MB, cores)
        tiers = list(raw.tiers)
        print(f"tiers {tiers}; {rounds} sequential rounds, {tasks} tasks per side at concurrency {concurrency}")
        rt = LocalRuntime(runtime_options(Path(tmp), host_id))
        watch = TaskWatch()
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="raw")
        results: dict[str, TierResult] = {}
        retries = 0
        try:
            started = time.perf_counter()
            await rt.start()
            await rt.wait_ready(timeout=120)
            require_every_service(rt)
            print(f"runtime up in {time.perf_counter() - started:.1f} s (host {host_id})", flush=True)
            await watch.start(rt.nats_url)
            cgroups = [f"{CGROUP_PARENT}/{host_id}", f"{CGROUP_PARENT}/{host_id}-raw"]
            sources = CpuSources.of(rt, cgroups)
            children, cpu = proc_stats()
            print(
                f"runtime: {', '.join(sources.runtime_roots)} ({len(sources.runtime_roots)} process trees),"
                f" {tree_cpu(list(sources.runtime_roots.values()), children, cpu):.1f} CPU-s used so far;"
                f" docker daemons: pids {sources.docker_roots}",
                flush=True,
            )
            async with (
                httpx.AsyncClient(
                    base_url=rt.url_of("lifecycle"), timeout=30, headers=auth_headers(rt.home)
                ) as lifecycle,
                httpx.AsyncClient(
                    base_url=rt.url_of("scheduler"), timeout=30, headers=auth_headers(rt.home)
                ) as scheduler,
            ):
                ours = Ours(scheduler, watch)
                for tier in tiers:
                    agents = [f"e2e-{tier}-{i}" for i in range(concurrency)]
                    for agent in agents:
                        await register_agent(lifecycle, agent, tier, limits)
                    for agent in agents:
                        await ours.warm_up(agent)
                    results[tier] = await measure_tier(
                        tier,
                        ours,
                        raw,
                        sources,
                        pool,
                        latency_agent=agents[0],
                        throughput_agents=agents,
                        rounds=rounds,
                        tasks=tasks,
                        idle_s=3.0 if args.quick else 6.0,
                        trace=args.trace,
                        profile=args.profile / tier if args.profile and tier == "tier1" else None,
                    )
                retries = ours.output_retries
        finally:
            await watch.close()
            await rt.stop()
            pool.shutdown()
            raw.close()
    print(f"load average after: {loadavg()}")

    print_report(results, concurrency, limits, retries)
    t1 = results.get("tier1")
    if t1 is None:
        raise SystemExit("tier1 (runc) is not available: nothing to report")
    print()
    lat = " ".join(
        f"{t}_p50_ms ours={ms(statistics.median(x.total for x in r.ours_latency))} "
        f"raw={ms(statistics.median(r.raw_latency))}"
        for t, r in results.items()
    )
    share = " ".join(
        f"{t}_runtime_cpu={r.cpu.totals['ours'].runtime / r.cpu.totals['ours'].busy:.0%}_of_machine,"
        f"{r.cpu.totals['ours'].runtime / r.tasks * 1e3:.0f}ms/task"
        for t, r in results.items()
    )
    t2 = results.get("tier2")
    if t2 is not None:
        ok2 = t2.ours_rate >= TARGET * t2.raw_rate
        print(_common.result_line("e2e_tier2", t2.ours_rate, t2.raw_rate, "tasks/s", f">={TARGET}", ok2))
    print(f"SUMMARY e2e {lat} {share}")
    ok = t1.ours_rate >= TARGET * t1.raw_rate
    print(_common.result_line("e2e", t1.ours_rate, t1.raw_rate, "tasks/s", f">={TARGET}", ok))


if __name__ == "__main__":
    asyncio.run(main())
