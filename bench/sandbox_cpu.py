"""The sandbox-agent's own CPU per trivial task: the daemon alone, as its own process, against real Docker.

The sandbox-agent runs as ``python -m symbi_sandbox_agent`` (policy ``allow-all``: the ``sandbox.start``
decision is not what this measures); this process plays the scheduler: it appends ``task.submitted`` and
``task.assigned`` and publishes ``work.<host>``, ``--concurrency`` tasks at a time, and waits for each task's
terminal event. The figure is the daemon's CPU (utime + stime of all its threads, ``/proc/<pid>/stat``)
over each window of ``--tasks`` tasks, per task, with its idle CPU rate (measured first, over
``--idle`` seconds) taken off: what one more task costs it. ``/proc`` counts in 10 ms ticks, so the figure
resolves 10 ms / tasks per window. Rounds repeat the window; the median is the result.

Workload: ``cat`` in ``symbi/busybox:1`` with a 1 KiB input, tier 1 (``--tier tier2`` for gVisor).
``--profile DIR`` adds py-spy (``uvx py-spy``, GIL samples) of the daemon over the windows:
``DIR/sandbox-agent.txt`` and ``DIR/summary.txt``. To run another checkout's daemon (an A/B pair), put its
``services/sandbox-agent/src`` first on ``PYTHONPATH``.

    uv run python bench/sandbox_cpu.py [--tasks N] [--rounds N] [--concurrency C] [--tier T] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _common
import msgspec
from _profile import sampled
from sandbox_run import HOST, IMAGE, INPUT, LIMITS, TASKS, TERMINAL, Assigned, Submitted
from symbi_common.decisions import DecisionRecord
from symbi_common.sealing import ChainTip

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` so far (all its threads, and its reaped children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


class Driver:
    """Plays the scheduler's side: one task = events, work item, wait for its terminal event."""

    def __init__(self, store: Any, nc: Any, tier: str) -> None:
        self.store = store
        self.nc = nc
        self.js = nc.jetstream()
        self.tier = tier
        self.waiting: dict[str, asyncio.Future[str]] = {}

    async def open(self) -> None:
        async def on_event(msg: Any) -> None:
            kind = (msg.headers or {}).get("Symbi-Event-Type", "")
            done = self.waiting.get(msg.subject.rsplit(".", 1)[-1])
            if kind in TERMINAL and done is not None and not done.done():
                done.set_result(kind)

        await self.nc.subscribe("evt.execution.*", cb=on_event)

    async def task(self) -> None:
        task_id = uuid.uuid4().hex[:16]
        done = self.waiting[task_id] = asyncio.get_running_loop().create_future()
        events = [
            Submitted(agent_id="bench", input=INPUT),
            Assigned(
                host_id=HOST,
                tier=self.tier,
                risk_score=0.0,
                risk_factors={},
                workload={"image": IMAGE, "command": ["cat"], "env": {}, "workdir": "/"},
                limits=LIMITS,
                attempt=1,
                decision=DecisionRecord(action="task.allocate", effect="allow", policy_version=0),
            ),
        ]
        await self.store.append("task", task_id, events, TASKS, expected=ChainTip())
        body = msgspec.json.encode({"task_id": task_id, "attempt": 1})
        await self.js.publish(f"work.{HOST}", body, headers={"Nats-Msg-Id": f"{task_id}:1"})
        try:
            kind = await asyncio.wait_for(done, 60)
        finally:
            del self.waiting[task_id]
        if kind != "execution.exited":
            raise SystemExit(f"task {task_id} ended with {kind}")

    async def window(self, tasks: int, concurrency: int) -> None:
        left = iter(range(tasks))

        async def worker() -> None:
            for _ in left:
                await self.task()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100, help="tasks per window")
    parser.add_argument("--rounds", type=int, default=3, help="windows")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tier", default="tier1")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of the idle window")
    parser.add_argument("--profile", type=Path, default=None)
    args = parser.parse_args()
    print(_common.machine_summary())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"PYTHONPATH={os.environ.get('PYTHONPATH', '')!r}")
    async with _common.nats_server() as server:
        with _common.keyring() as keys_dir, tempfile.TemporaryDirectory(prefix="symbi-bench-sbxcpu-") as tmp:
            env = {
                "SYMBI_NATS_URL": server.url,
                "SYMBI_KEYS_DIR": str(keys_dir),
                "SYMBI_POLICY__ENFORCEMENT": "allow-all",
                "SYMBI_SANDBOX__HOST_ID": HOST,
                "SYMBI_SANDBOX__WORK_DIR": str(Path(tmp) / "work"),
            }
            nc = await _common.connect(server.url)
            store = await _common.make_store(nc, keys_dir, producer="scheduler")
            async with _common.service_process("symbi_sandbox_agent", env) as daemon:
                driver = Driver(store, nc, args.tier)
                await driver.open()
                await driver.window(8, args.concurrency)  # warm-up
                await asyncio.sleep(1.0)
                before = process_cpu(daemon.pid)
                await asyncio.sleep(args.idle)
                idle_rate = (process_cpu(daemon.pid) - before) / args.idle
                print(f"idle: {idle_rate * 1000:.1f} ms CPU/s", flush=True)
                figures: list[float] = []
                with sampled({"sandbox-agent": daemon.pid}, args.profile):
                    for r in range(args.rounds):
                        cpu0, wall0 = process_cpu(daemon.pid), time.perf_counter()
                        await driver.window(args.tasks, args.concurrency)
                        cpu, wall = process_cpu(daemon.pid) - cpu0, time.perf_counter() - wall0
                        per_task = (cpu - idle_rate * wall) / args.tasks
                        figures.append(per_task)
                        print(
                            f"round {r + 1}: {args.tasks} tasks in {wall:.1f} s ({args.tasks / wall:.1f}/s), "
                            f"daemon {cpu * 1000 / args.tasks:.2f} ms CPU per task, {per_task * 1000:.2f} without idle; "
                            f"load {os.getloadavg()[0]:.1f}",
                            flush=True,
                        )
            await nc.drain()
    print(
        f"RESULT sandbox_cpu {args.tier}: median {statistics.median(figures) * 1000:.2f} ms CPU per task "
        f"(rounds {' '.join(f'{f * 1000:.2f}' for f in figures)}); load {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
