"""Sandbox-agent overhead: one task through the daemon vs the same hardened container run directly.

* ours: the scheduler's side appends ``task.submitted`` + ``task.assigned`` and publishes
  ``work.<host_id>``; timed until the terminal ``execution.exited`` event is stored (a NATS
  subscription on ``evt.execution.<id>``). In between: the work item, reading the task's events,
  the spec and the ``sandbox.start`` decision (allow-all), the heartbeat, ``execution.started``, the
  container (create, attach, start, stdin, output, exit, remove) and the output and terminal events.
* baseline: the same hardened container through the Docker SDK directly: create with the same host
  config, attach, start, write the input, read the output, wait, remove.

Workload: ``cat`` in ``symbi/busybox:1`` with a 1 KiB input. Rounds alternate (ABBA) per tier.
Target per tier: median ours <= 1.3 x median baseline + 50 ms. Needs ``deploy/host/setup-docker.sh``.

    uv run python bench/sandbox_run.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _common
from symbi_common.decisions import DecisionRecord
from symbi_common.settings import load_settings
from symbi_contracts.lifecycle.config import ResourceLimits, Workload
from symbi_contracts.scheduler.events import TaskAssigned, TaskSubmitted
from symbi_sandbox_agent.docker_host import DockerHost
from symbi_sandbox_agent.main import build_app
from symbi_sandbox_agent.spec import HostCapabilities, SandboxDefaults, build_spec
from symbi_sandbox_agent.tasks import fold_task

IMAGE = "symbi/busybox:1"
HOST = "bench"
INPUT = b"x" * 1024
LIMITS = {"memory_mb": 128, "cpu_cores": 1.0, "disk_io_mbps": 50, "network_io_mbps": 10, "execution_timeout_s": 30}


async def ours(store: Any, nc: Any, tier: str) -> float:
    task_id = uuid.uuid4().hex[:16]
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_event(msg: Any) -> None:
        kind = (msg.headers or {}).get("Symbi-Event-Type", "")
        if kind in _common.TERMINAL and not done.done():
            done.set_result(kind)

    sub = await nc.subscribe(f"evt.execution.{task_id}", cb=on_event)
    started = time.perf_counter()
    await _common.place_task(
        store,
        nc,
        task_id,
        agent_id="bench",
        host=HOST,
        tier=tier,
        workload={"image": IMAGE, "command": ["cat"], "env": {}, "workdir": "/"},
        limits=LIMITS,
        input=INPUT,
    )
    kind = await asyncio.wait_for(done, 60)
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    if kind != "execution.exited":
        raise SystemExit(f"task {task_id} ended with {kind}")
    return elapsed


def baseline(docker: DockerHost, caps: HostCapabilities, tier: str, work: Path) -> float:
    """The same hardened sandbox, straight through the Docker SDK (the same calls the daemon makes)."""
    assigned = TaskAssigned(
        host_id=HOST,
        tier=tier,
        workload=Workload(image=IMAGE, command=("cat",)),
        limits=ResourceLimits(**LIMITS),
        risk_score=0.0,
        risk_factors={},
        attempt=1,
        decision=DecisionRecord(action="task.allocate", effect="allow", policy_version=0),
    )
    task = fold_task(uuid.uuid4().hex[:16], [TaskSubmitted(agent_id="bench", input=INPUT, priority="normal"), assigned])
    spec = build_spec(task, "bench-raw", caps, SandboxDefaults())
    started = time.perf_counter()
    input_file = work / spec.name
    input_file.write_bytes(INPUT)
    runner = docker.runner(spec.runtime)
    cid = runner.create(spec, str(input_file))
    sock = runner.attach(cid)
    runner.start(cid)
    runner.send_input(sock, INPUT)
    out = b"".join(data for stream, data in runner.frames(sock) if stream == 1)
    runner.close_socket(sock)
    state = runner.wait(cid, 30)
    docker.remove(cid)
    elapsed = time.perf_counter() - started
    if out != INPUT or state.exit_code != 0:
        raise SystemExit(f"baseline run failed: exit {state.exit_code}, {len(out)} bytes")
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=0)
    args = parser.parse_args()
    rounds = args.rounds or (4 if args.quick else 20)
    docker = DockerHost()
    info = docker.info()
    tiers = [t for t in ("tier1", "tier2") if t in info.capabilities.tiers]
    print(_common.machine_summary())
    print(f"docker {info.docker_version}, tiers {tiers}, {rounds} rounds per tier (ABBA)")
    async with _common.nats_server() as server:
        with _common.keyring() as keys_dir, tempfile.TemporaryDirectory(prefix="symbi-bench-sbx-") as tmp:
            env = {
                "SYMBI_NATS_URL": server.url,
                "SYMBI_KEYS_DIR": str(keys_dir),
                "SYMBI_LOG_LEVEL": "warning",
                "SYMBI_POLICY__ENFORCEMENT": "allow-all",
                "SYMBI_SANDBOX__HOST_ID": HOST,
                "SYMBI_SANDBOX__WORK_DIR": str(Path(tmp) / "work"),
            }
            app = build_app(load_settings(env=env))
            async with app.router.lifespan_context(app):
                nc = await _common.connect(server.url)
                store = await _common.make_store(nc, keys_dir, producer="scheduler")
                results: dict[str, tuple[list[float], list[float]]] = {}
                for tier in tiers:
                    await ours(store, nc, tier)  # warm-up
                    await asyncio.to_thread(baseline, docker, info.capabilities, tier, Path(tmp))
                    o: list[float] = []
                    b: list[float] = []
                    for i in range(rounds):
                        order = ("ours", "base") if i % 4 in (0, 3) else ("base", "ours")
                        for which in order:
                            if which == "ours":
                                o.append(await ours(store, nc, tier))
                            else:
                                b.append(await asyncio.to_thread(baseline, docker, info.capabilities, tier, Path(tmp)))
                    results[tier] = (o, b)
                await nc.drain()
    docker.close()
    lines = []
    for name, (o, b) in results.items():
        mo, mb = statistics.median(o), statistics.median(b)
        print(
            f"{name}: ours median {mo * 1000:.0f} ms (p90 {sorted(o)[int(len(o) * 0.9) - 1] * 1000:.0f}), "
            f"baseline median {mb * 1000:.0f} ms"
        )
        lines.append(
            _common.result_line(f"sandbox_run_{name}", mo * 1000, mb * 1000, "ms", "<=1.3x+50ms", mo <= 1.3 * mb + 0.05)
        )
    for line in lines:
        print(line)
    total_o = sum(statistics.median(o) for o, _ in results.values())
    total_b = sum(statistics.median(b) for _, b in results.values())
    ok = all(statistics.median(o) <= 1.3 * statistics.median(b) + 0.05 for o, b in results.values())
    print(_common.result_line("sandbox_run", total_o * 1000, total_b * 1000, "ms", "<=1.3x+50ms per tier", ok))


if __name__ == "__main__":
    asyncio.run(main())
