"""End-to-end task latency: submit → ``task.completed`` through the whole runtime, vs a raw ``docker run --rm``.

The runtime runs here on a throwaway nats-server, keyring and PostgreSQL: the lifecycle service, the
scheduler and one sandbox-agent daemon (each its real app and lifespan, in this process), with policy
enforcement off (``allow-all``, as a single-node development setup). One agent per sandbox tier is
registered with the workload ``symbi/busybox:1`` running ``cat`` (the trivial workload: its result is
its input).

* ours: a task is submitted (``cmd.scheduler.submit``) and timed until its ``task.completed`` event is
  stored (a plain NATS subscription on ``evt.task.<id>``): queueing, the ``task.allocate`` decision,
  ``Ready → Running``, ``task.assigned``, the work item, the sandbox (hardened container with limits,
  input on stdin), output and terminal events, ``task.completed``.
* baseline: ``docker run --rm -i [--runtime runsc] symbi/busybox:1 cat`` with the same input.

Rounds alternate (ABBA) per tier. Target per tier: median ours <= 1.3 x median baseline + 50 ms.

Cost per task, over the "ours" tasks only: the CPU time of this process (the three services; the client's
own share — one command, one subscription — is small) and of nats-server, separately; the events stored
per task by type (a plain subscription on ``evt.>``) and the NATS messages each service's connection sent
and received per task (nats-py's counters: publishes, requests, replies, acks, pull requests, KV). The
idle rate (CPU of this process while nothing runs) is printed too: it is part of each figure.
Needs Docker with runc (tier1) and runsc (tier2, skipped when missing) and the image
(``deploy/host/setup-docker.sh``).

    uv run python bench/task_e2e.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _common
import httpx
from symbi_cli.postgres_server import create_database, database_url_or_start
from symbi_common.commands import CommandClient
from symbi_common.settings import load_settings
from symbi_lifecycle.main import build_app as build_lifecycle
from symbi_sandbox_agent.main import build_app as build_sandbox
from symbi_scheduler.main import build_app as build_scheduler

IMAGE = "symbi/busybox:1"
RUNTIMES = {"tier1": "runc", "tier2": "runsc"}
INPUT = b"hello from the benchmark\n"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def pid_cpu(pid: int) -> float:
    """CPU seconds (utime + stime) of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Cost:
    """CPU, events and NATS messages summed over the timed "ours" tasks."""

    def __init__(self, nats_pid: int, clients: dict[str, Any]) -> None:
        self.nats_pid = nats_pid
        self.clients = clients  # service name → its nats-py client
        self.tasks = 0
        self.cpu = 0.0
        self.nats_cpu = 0.0
        self.events: collections.Counter[str] = collections.Counter()
        self.msgs: collections.Counter[str] = collections.Counter()
        self.counting = False
        self.subjects: collections.Counter[str] = collections.Counter()

    async def on_any(self, msg: Any) -> None:
        if self.counting:
            parts = msg.subject.split(".")
            if parts[0] == "_INBOX":
                key = "_INBOX (replies, pull deliveries)"
            elif parts[0] == "$JS" and parts[1] == "API":
                key = ".".join(parts[:4])
            elif parts[0] == "$JS" and parts[1] == "ACK":
                key = "$JS.ACK"
            elif parts[0] == "$JS" and parts[1] == "FC":
                key = "$JS.FC"
            else:
                key = ".".join(parts[:2])
            self.subjects[key] += 1

    async def on_event(self, msg: Any) -> None:
        if self.counting:
            self.events[(msg.headers or {}).get("Symbi-Event-Type", msg.subject)] += 1

    def _stats(self) -> dict[str, int]:
        return {f"{name} {k}": int(nc.stats[k]) for name, nc in self.clients.items() for k in ("out_msgs", "in_msgs")}

    @contextlib.asynccontextmanager
    async def task(self) -> Any:
        stats0, cpu0, nats0 = self._stats(), time.process_time(), pid_cpu(self.nats_pid)
        self.counting = True
        try:
            yield
            await asyncio.sleep(0.3)  # let the followers of the last events finish (counted: they are per task)
        finally:
            self.counting = False
        self.cpu += time.process_time() - cpu0
        self.nats_cpu += pid_cpu(self.nats_pid) - nats0
        self.msgs.update({k: v - stats0[k] for k, v in self._stats().items()})
        self.tasks += 1

    def report(self, idle_cpu_per_s: float) -> list[str]:
        n = max(1, self.tasks)
        lines = [
            f"runtime CPU per task (lifecycle + scheduler + sandbox-agent, this process): {self.cpu / n * 1e3:.1f} ms"
            f" (of which idle for the 0.3 s settle: {idle_cpu_per_s * 0.3 * 1e3:.1f} ms); nats-server:"
            f" {self.nats_cpu / n * 1e3:.1f} ms",
            "events stored per task: "
            + ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(self.events.items(), key=lambda kv: -kv[1]))
            + f" (total {sum(self.events.values()) / n:.1f})",
            "NATS messages per task (sent/received by each service's connection): "
            + ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(self.msgs.items()))
            + f" (total sent {sum(v for k, v in self.msgs.items() if k.endswith('out_msgs')) / n:.1f})",
            "NATS messages per task by subject: "
            + ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(self.subjects.items(), key=lambda kv: -kv[1])),
        ]
        return lines


def docker_runtimes() -> set[str]:
    out = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"docker is not usable: {out.stderr.strip()}")
    return set(json.loads(out.stdout or "{}"))


async def docker_run(tier: str) -> float:
    argv = ["docker", "run", "--rm", "-i", "--network", "none"]
    if tier == "tier2":
        argv += ["--runtime", "runsc"]
    t = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, IMAGE, "cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate(INPUT)
    took = time.perf_counter() - t
    if proc.returncode != 0 or out != INPUT:
        raise SystemExit(f"docker run failed ({proc.returncode}): {err.decode(errors='replace')}")
    return took


async def submit_and_wait(nc: Any, client: CommandClient, agent_id: str) -> tuple[float, str]:
    task_id = f"bench-{uuid.uuid4().hex[:16]}"
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_event(msg: Any) -> None:
        if (msg.headers or {}).get("Symbi-Event-Type") == "task.completed" and not done.done():
            done.set_result(None)

    sub = await nc.subscribe(f"evt.task.{task_id}", cb=on_event)
    try:
        t = time.perf_counter()
        body = {"agent_id": agent_id, "input_base64": base64.b64encode(INPUT).decode(), "task_id": task_id}
        await client.call("scheduler", "submit", body, dict)
        await asyncio.wait_for(done, 120)
        return time.perf_counter() - t, task_id
    finally:
        await sub.unsubscribe()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=0)
    args = parser.parse_args()
    rounds = args.rounds or (4 if args.quick else 12)
    cost_lines: list[str] = []
    print(_common.machine_summary())
    available = docker_runtimes()
    tiers = [t for t, runtime in RUNTIMES.items() if runtime in available]
    print(f"docker runtimes: {sorted(available)}; measuring {tiers}")

    with _common.keyring() as keys_dir, tempfile.TemporaryDirectory(prefix="symbi-bench-e2e-") as tmp:
        pg_url, pg = database_url_or_start(Path(tmp) / "pg", env={}, cleanup="delete")
        try:
            async with _common.nats_server() as server, contextlib.AsyncExitStack() as stack:
                db = await create_database(pg_url, f"bench_e2e_{uuid.uuid4().hex[:8]}")
                base = {
                    "SYMBI_NATS_URL": server.url,
                    "SYMBI_KEYS_DIR": str(keys_dir),
                    "SYMBI_LOG_LEVEL": "warning",
                    "SYMBI_POLICY__ENFORCEMENT": "allow-all",
                }
                lifecycle = build_lifecycle(load_settings(env={**base, "SYMBI_DATABASE_URL": db}))
                await stack.enter_async_context(lifecycle.router.lifespan_context(lifecycle))
                scheduler = build_scheduler(load_settings(env=base))
                await stack.enter_async_context(scheduler.router.lifespan_context(scheduler))
                sandbox_env = {**base, "SYMBI_SANDBOX__HOST_ID": "bench-host", "SYMBI_SANDBOX__WORK_DIR": f"{tmp}/work"}
                sandbox = build_sandbox(load_settings(env=sandbox_env))
                await stack.enter_async_context(sandbox.router.lifespan_context(sandbox))
                transport = httpx.ASGITransport(app=lifecycle)
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://lifecycle", headers=_common.AUTH
                ) as http:
                    for tier in tiers:
                        config = {
                            "name": f"e2e-{tier}",
                            "security_tier": tier,
                            "workload": {"image": IMAGE, "command": ["cat"]},
                        }
                        r = await http.post("/v1/agents", json={"agent_id": f"e2e-{tier}", "config": config})
                        assert r.status_code == 201, r.text
                nc = await _common.connect(server.url)
                client = CommandClient(nc, timeout=30.0)
                results: dict[str, tuple[float, float]] = {}
                apps = {"lifecycle": lifecycle, "scheduler": scheduler, "sandbox-agent": sandbox}
                cost = Cost(server.proc.pid, {k: a.state.runtime.nc for k, a in apps.items()})
                await nc.subscribe("evt.>", cb=cost.on_event)
                await nc.subscribe(">", cb=cost.on_any)
                try:
                    for tier in tiers:
                        agent = f"e2e-{tier}"
                        _, warm_id = await submit_and_wait(nc, client, agent)  # warm-up, and a correctness check
                        out = await client.call("scheduler", "output", {"task_id": warm_id}, dict)
                        view = await client.call("scheduler", "get", {"task_id": warm_id}, dict)
                        assert view["outcome"] == "succeeded", view
                        assert view["tier"] == tier, view
                        assert base64.b64decode(out["data_base64"]) == INPUT, out
                        await docker_run(tier)
                        ours, baseline = [], []
                        for r in range(rounds):
                            order = ("ours", "baseline") if r % 2 == 0 else ("baseline", "ours")
                            for side in order:
                                if side == "ours":
                                    async with cost.task():
                                        ours.append((await submit_and_wait(nc, client, agent))[0])
                                else:
                                    baseline.append(await docker_run(tier))
                            print(
                                f"  {tier} round {r + 1}: ours {ours[-1] * 1000:7.1f} ms   docker run {baseline[-1] * 1000:7.1f} ms"
                            )
                        results[tier] = (statistics.median(ours), statistics.median(baseline))
                    cpu0 = time.process_time()
                    await asyncio.sleep(3.0)
                    idle = (time.process_time() - cpu0) / 3.0
                    print(f"idle: this process {idle * 1e3:.1f} ms CPU per second")
                    cost_lines = cost.report(idle)
                finally:
                    await nc.close()
        finally:
            if pg is not None:
                pg.stop()

    worst: tuple[str, float, float] | None = None
    lines = []
    for tier, (o, b) in results.items():
        ok = o <= 1.3 * b + 0.05
        print(f"{tier}: median ours {o * 1000:.1f} ms, docker run {b * 1000:.1f} ms, ratio {o / b:.3f}")
        lines.append(_common.result_line(f"task_e2e_{tier}", o * 1000, b * 1000, "ms", "<=1.3x+50ms", ok))
        if worst is None or (o - 0.05) / b > (worst[1] - 0.05) / worst[2]:
            worst = (tier, o, b)
    for line in cost_lines:
        print(line)
    for line in lines:
        print(line)
    if worst is not None:
        _, o, b = worst
        print(_common.result_line("task_e2e", o * 1000, b * 1000, "ms", "<=1.3x+50ms", o <= 1.3 * b + 0.05))


if __name__ == "__main__":
    asyncio.run(main())
