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
``--trace`` prints when each sequential task's events were stored. ``--profile DIR`` samples each
service process with py-spy (``uvx py-spy``, not a dependency; only samples holding the GIL, i.e.
Python on CPU) during tier 1's idle window (DIR/tier1/idle) and throughput windows (DIR/tier1), and
writes <service>.txt (collapsed stacks) and summary.txt (where each one's samples went) there.

Target (last line, tier 1 throughput): ours ≥ 0.5 x raw. Per task the runtime stores about eight
signed, encrypted events, makes two policy decisions and verifies everything for the audit log,
all on the same cores as Docker; ≥ 0.5 means that costs the machine at most as much again as
starting the container itself. Needs ``deploy/host/setup-docker.sh`` (tier 2 is skipped without runsc).

    uv run python bench/e2e.py [--quick] [--tasks N] [--rounds N] [--concurrency C] [--trace] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import os
import random
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common
import httpx
import nats
from nats.js.api import DeliverPolicy
from symbi_cli.credentials import auth_headers
from symbi_cli.runtime import SERVICE_PORT_OFFSETS, LocalRuntime, RuntimeOptions
from symbi_cli.supervisor import RestartPolicy
from symbi_common.decisions import DecisionRecord
from symbi_common.eventstore import H_EVENT_TYPE
from symbi_contracts.lifecycle.config import ResourceLimits, Workload
from symbi_contracts.scheduler.events import TaskAssigned, TaskSubmitted
from symbi_sandbox_agent.cgroups import remove_cgroup_tree
from symbi_sandbox_agent.docker_host import DockerHost
from symbi_sandbox_agent.spec import CGROUP_PARENT, GVISOR_MIN_PIDS, HostCapabilities, SandboxDefaults, build_spec
from symbi_sandbox_agent.tasks import fold_task

IMAGE = "symbi/busybox:1"
COMMAND = ("cat",)
INPUT = b"hello from the e2e benchmark\n"
MEMORY_MB = 64
DISK_IO_MBPS = 50
TIMEOUT_S = 30.0
TARGET = 0.5
#: Where the runtime's events land, in the order a task goes through them.
STAGES = (
    "task.submitted",
    "task.assigned",
    "execution.started",
    "execution.output",
    "execution.exited",
    "task.completed",
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A task or a raw run did not give the expected result; the measurement would be meaningless."""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# --- CPU accounting -------------------------------------------------------------------------------


def _proc_stats() -> tuple[dict[int, list[int]], dict[int, float]]:
    """Every live process's children and its CPU seconds so far (own utime + stime and reaped children's)."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        cpu[pid] = sum(int(f) for f in fields[11:15]) / CLK_TCK
    return children, cpu


def _tree_cpu(roots: list[int], children: dict[int, list[int]], cpu: dict[int, float]) -> float:
    """CPU seconds of the live processes under ``roots`` (a child that exited is in its parent's figure)."""
    seen: set[int] = set()
    stack = [r for r in roots if r in cpu]
    while stack:
        pid = stack.pop()
        if pid not in seen:
            seen.add(pid)
            stack.extend(children.get(pid, ()))
    return sum(cpu[p] for p in seen)


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle (``/proc/stat``: user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def cgroup_cpu_seconds(relative: str) -> float:
    """CPU seconds charged to a cgroup and its (also removed) descendants; 0 if it does not exist yet."""
    relative = relative.strip("/")
    v1 = Path("/sys/fs/cgroup/cpuacct", relative, "cpuacct.usage")
    with contextlib.suppress(OSError, ValueError):
        return int(v1.read_text()) / 1e9
    v2 = Path("/sys/fs/cgroup", relative, "cpu.stat")
    with contextlib.suppress(OSError, ValueError):
        for line in v2.read_text().splitlines():
            if line.startswith("usage_usec"):
                return int(line.split()[1]) / 1e6
    return 0.0


def pids_named(name: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and Path(entry.path, "comm").read_text().strip() == name:
                found.append(int(entry.name))
    return found


@dataclass(frozen=True)
class CpuSample:
    wall: float = 0.0
    busy: float = 0.0
    runtime: float = 0.0
    client: float = 0.0
    docker: float = 0.0
    sandboxes: float = 0.0

    def __add__(self, other: CpuSample) -> CpuSample:
        return CpuSample(*(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(*(a - b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[float, ...]:
        return (self.wall, self.busy, self.runtime, self.client, self.docker, self.sandboxes)

    @property
    def rest(self) -> float:
        return self.busy - self.runtime - self.client - self.docker - self.sandboxes


@dataclass
class CpuSources:
    """Whose CPU is counted as what: the runtime's process trees, Docker's daemons, the sandboxes' cgroups."""

    #: The runtime's processes by name: each service, ``nats-server``, ``postgres`` (each with its children).
    runtime_roots: dict[str, int]
    docker_roots: list[int]
    cgroups: list[str]

    @classmethod
    def of(cls, rt: LocalRuntime, cgroups: list[str]) -> CpuSources:
        state = rt.state()
        services = state["services"]
        entries = dict(services) if isinstance(services, dict) else {}
        entries |= {"nats-server": state.get("nats"), "postgres": state.get("postgres")}
        roots = {
            name: int(e["pid"]) for name, e in entries.items() if isinstance(e, dict) and isinstance(e.get("pid"), int)
        }
        return cls(roots, pids_named("dockerd") or pids_named("containerd"), cgroups)

    def sample(self) -> tuple[CpuSample, dict[str, float]]:
        """The totals, and the runtime's CPU by process."""
        children, cpu = _proc_stats()
        parts = {name: _tree_cpu([pid], children, cpu) for name, pid in self.runtime_roots.items()}
        total = CpuSample(
            wall=time.perf_counter(),
            busy=machine_busy_seconds(),
            runtime=sum(parts.values()),
            client=time.process_time(),
            docker=_tree_cpu(self.docker_roots, children, cpu),
            sandboxes=sum(cgroup_cpu_seconds(c) for c in self.cgroups),
        )
        return total, parts


@dataclass
class CpuTally:
    """CPU used per named window (summed over its repetitions), in total and by runtime process."""

    totals: dict[str, CpuSample] = field(default_factory=dict)
    parts: dict[str, dict[str, float]] = field(default_factory=dict)

    @contextlib.contextmanager
    def window(self, sources: CpuSources, key: str) -> Iterator[None]:
        total0, parts0 = sources.sample()
        yield
        total1, parts1 = sources.sample()
        self.totals[key] = self.totals.get(key, CpuSample()) + (total1 - total0)
        mine = self.parts.setdefault(key, {})
        for name, value in parts1.items():
            mine[name] = mine.get(name, 0.0) + value - parts0.get(name, 0.0)


# --- the raw side ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpu_cores: float

    def spec(self) -> ResourceLimits:
        return ResourceLimits(
            memory_mb=self.memory_mb,
            cpu_cores=self.cpu_cores,
            disk_io_mbps=DISK_IO_MBPS,
            network_io_mbps=0,
            execution_timeout_s=TIMEOUT_S,
        )

    def config(self) -> dict[str, Any]:
        return {
            "memory_mb": self.memory_mb,
            "cpu_cores": self.cpu_cores,
            "disk_io_mbps": DISK_IO_MBPS,
            "network_io_mbps": 0,
            "execution_timeout_s": TIMEOUT_S,
        }


class RawDocker:
    """The sandbox-agent's container, run straight through the Docker SDK (its host id only names cgroups)."""

    def __init__(self, host_id: str, limits: Limits, work: Path) -> None:
        self.docker = DockerHost()
        self.caps: HostCapabilities = self.docker.info().capabilities
        self.host_id = host_id
        self.limits = limits
        self.work = work
        work.mkdir(parents=True, exist_ok=True)

    @property
    def tiers(self) -> tuple[str, ...]:
        return self.caps.tiers

    def run(self, tier: str) -> float:
        task_id = uuid.uuid4().hex[:16]
        assigned = TaskAssigned(
            host_id=self.host_id,
            tier=tier,
            workload=Workload(image=IMAGE, command=COMMAND),
            limits=self.limits.spec(),
            risk_score=0.0,
            risk_factors={},
            attempt=1,
            decision=DecisionRecord(action="task.allocate", effect="allow", policy_version=0),
        )
        task = fold_task(task_id, [TaskSubmitted(agent_id="raw", input=INPUT, priority="normal"), assigned])
        spec = build_spec(task, self.host_id, self.caps, SandboxDefaults())
        started = time.perf_counter()
        input_file = self.work / spec.name
        input_file.write_bytes(INPUT)
        runner = self.docker.runner(spec.runtime)
        cid = runner.create(spec, str(input_file))
        try:
            sock = runner.attach(cid)
            runner.start(cid)
            runner.send_input(sock, INPUT)
            out = b"".join(data for stream, data in runner.frames(sock) if stream == 1)
            runner.close_socket(sock)
            state = runner.wait(cid, TIMEOUT_S)
        finally:
            self.docker.remove(cid)
            remove_cgroup_tree(spec.cgroup_parent)
            input_file.unlink(missing_ok=True)
        took = time.perf_counter() - started
        if out != INPUT or state.exit_code != 0:
            raise BenchError(f"raw {tier} run: exit {state.exit_code}, stdout {out[:80]!r}")
        return took

    def cli_argv(self, tier: str) -> list[str]:
        """``docker run`` with the limits and hardening of the sandbox spec."""
        defaults = SandboxDefaults()
        pids = max(defaults.pids_limit, GVISOR_MIN_PIDS) if tier == "tier2" else defaults.pids_limit
        mem = f"{self.limits.memory_mb}m"
        device = self.caps.blkio_device
        rate = f"{device}:{DISK_IO_MBPS}mb"
        blkio = ("--device-read-bps", rate, "--device-write-bps", rate) if device else ()
        return [
            *("docker", "run", "--rm", "-i", "--runtime", "runsc" if tier == "tier2" else "runc", "--network", "none"),
            *("--memory", mem, "--memory-swap", mem, "--cpus", str(self.limits.cpu_cores)),
            *("--pids-limit", str(pids), "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,noexec,size=16m"),
            *("--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", defaults.user),
            *("--log-driver", "none", "--cgroup-parent", f"{CGROUP_PARENT}/{self.host_id}"),
            *blkio,
            *(IMAGE, *COMMAND),
        ]

    async def cli_run(self, tier: str) -> float:
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *self.cli_argv(tier), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await proc.communicate(INPUT)
        took = time.perf_counter() - started
        if proc.returncode != 0 or out != INPUT:
            raise BenchError(f"docker run {tier} failed ({proc.returncode}): {err.decode(errors='replace')[:300]}")
        return took

    def close(self) -> None:
        remove_cgroup_tree(f"{CGROUP_PARENT}/{self.host_id}")
        self.docker.close()


# --- our side -------------------------------------------------------------------------------------


class TaskWatch:
    """When each watched task's events were stored: ordered JetStream consumers on ``evt.task.>`` and
    ``evt.execution.>`` (headers only), as ``symbi task run`` follows a task."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[float, str]]] = {}
        self.completed: dict[str, asyncio.Future[float]] = {}
        self.nc: Any = None

    async def start(self, nats_url: str) -> None:
        self.nc = await nats.connect(nats_url, max_reconnect_attempts=0, connect_timeout=5)
        js = self.nc.jetstream()
        for subject in ("evt.task.>", "evt.execution.>"):
            await js.subscribe(
                subject, cb=self._on_event, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW, headers_only=True
            )

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()

    def expect(self, task_id: str) -> asyncio.Future[float]:
        self.events[task_id] = []
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.completed[task_id] = future
        return future

    def finish(self, task_id: str) -> list[tuple[float, str]]:
        self.completed.pop(task_id, None)
        return self.events.pop(task_id, [])

    async def _on_event(self, msg: Any) -> None:
        now = time.perf_counter()
        task_id = msg.subject.split(".", 2)[2]
        events = self.events.get(task_id)
        if events is None:
            return
        kind = (msg.headers or {}).get(H_EVENT_TYPE, "")
        events.append((now, kind))
        future = self.completed.get(task_id)
        if kind == "task.completed" and future is not None and not future.done():
            future.set_result(now)


@dataclass
class TaskTiming:
    total: float
    #: Seconds from the submit to the first time each event type was stored, plus "accepted" (the
    #: submit's HTTP reply) and "result" (the output fetched).
    marks: dict[str, float] = field(default_factory=dict)


class Ours:
    """Submits tasks through the scheduler's HTTP API and waits for each one's result."""

    def __init__(self, http: httpx.AsyncClient, watch: TaskWatch) -> None:
        self.http = http
        self.watch = watch
        self.output_retries = 0

    async def submit(self, agent_id: str, task_id: str) -> httpx.Response:
        body = {"agent_id": agent_id, "input": INPUT.decode(), "task_id": task_id}
        return await self.http.post("/v1/tasks", json=body, headers={"X-Submitted-By": "bench:e2e"})

    async def run(self, agent_id: str) -> TaskTiming:
        task_id = f"e2e-{uuid.uuid4().hex[:16]}"
        done = self.watch.expect(task_id)
        try:
            started = time.perf_counter()
            r = await self.submit(agent_id, task_id)
            accepted = time.perf_counter()
            if r.status_code != 201:
                raise BenchError(f"submit to {agent_id} refused ({r.status_code}): {r.text[:300]}")
            await asyncio.wait_for(done, 120)
            view = await self._output(task_id)
            took = time.perf_counter() - started
        finally:
            events = self.watch.finish(task_id)
        data = base64.b64decode(view["data_base64"])
        if view.get("outcome") != "succeeded" or data != INPUT:
            raise BenchError(f"task {task_id}: outcome {view.get('outcome')}, stdout {data[:80]!r}")
        marks = {"accepted": accepted - started, "result": took}
        for at, kind in events:
            marks.setdefault(kind, at - started)
        return TaskTiming(took, marks)

    async def _output(self, task_id: str) -> dict[str, Any]:
        """The task's stdout; asked again (briefly) if the scheduler has not applied the completion yet."""
        for _ in range(200):
            r = await self.http.get(f"/v1/tasks/{task_id}/output")
            if r.status_code != 200:
                raise BenchError(f"output of {task_id} ({r.status_code}): {r.text[:300]}")
            view: dict[str, Any] = r.json()
            if view.get("done"):
                return view
            self.output_retries += 1
            await asyncio.sleep(0.005)
        raise BenchError(f"task {task_id}: task.completed is stored but the scheduler's output is not done")

    async def warm_up(self, agent_id: str) -> None:
        """One task, retried while the scheduler does not know the freshly registered agent yet."""
        deadline = time.monotonic() + 60
        while True:
            try:
                await self.run(agent_id)
                return
            except BenchError as exc:
                if time.monotonic() > deadline or ("(404)" not in str(exc) and "(409)" not in str(exc)):
                    raise
                await asyncio.sleep(0.2)


async def register_agent(http: httpx.AsyncClient, agent_id: str, tier: str, limits: Limits) -> None:
    config = {
        "name": agent_id,
        "version": "1.0.0",
        "description": "the e2e benchmark's trivial workload: its result is its input",
        "security_tier": tier,
        "resources": limits.config(),
        "network_access": [],
        "workload": {"image": IMAGE, "command": list(COMMAND)},
    }
    r = await http.post("/v1/agents", json={"agent_id": agent_id, "config": config})
    if r.status_code != 201 or r.json().get("state") != "Ready":
        raise BenchError(f"registering {agent_id}: {r.status_code} {r.text[:400]}")


# --- measuring ------------------------------------------------------------------------------------


@contextlib.contextmanager
def sampled(pids: dict[str, int], out: Path | None) -> Iterator[None]:
    """py-spy samples each named process (on-CPU stacks only, 200 Hz) while the block runs."""
    if out is None:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    procs = [
        subprocess.Popen(
            [
                *("uvx", "py-spy", "record", "--pid", str(pid), "--rate", "200", "--format", "raw"),
                *("--nonblocking", "--gil", "--output", str(out / f"{name}.txt")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]
    time.sleep(2.0)  # py-spy attaches
    try:
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(30)
        summarise_profiles(out, list(pids))


def summarise_profiles(out: Path, names: list[str]) -> None:
    """Per process: the share of samples in each function (self) and under each of our functions (total)."""
    lines = []
    for name in names:
        own: dict[str, int] = {}
        under: dict[str, int] = {}
        total = 0
        path = out / f"{name}.txt"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [
                f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
                for f in stack.split(";")
                if f
            ]
            if frames:
                own[frames[-1]] = own.get(frames[-1], 0) + n
            for f in set(frames):
                under[f] = under.get(f, 0) + n
        lines.append(f"== {name}: {total} samples")
        lines += [f"  self  {v / total:6.1%}  {k}" for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:40]]
        lines += [f"  total {v / total:6.1%}  {k}" for k, v in sorted(under.items(), key=lambda kv: -kv[1])[:80]]
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print(f"  profiles in {out} (summary.txt)", flush=True)


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


# --- report ---------------------------------------------------------------------------------------


def ms(v: float) -> str:
    return f"{v * 1e3:.0f}"


def _marks_row(label: str, timings: list[TaskTiming], q: float = 0.5) -> str:
    cells = []
    for mark in ("accepted", *STAGES, "result"):
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
    names = [m.removeprefix("execution.").removeprefix("task.") for m in ("accepted", *STAGES, "result")]
    print(" " * 24 + "  ".join(f"{n:>9}" for n in names))
    for tier, r in results.items():
        print(_marks_row(f"{tier} sequential", r.ours_latency))
        print(_marks_row(f"{tier} sequential p95", r.ours_latency, 0.95))
        print(_marks_row(f"{tier} {concurrency} at once", r.ours_loaded))
        print(_marks_row(f"{tier} {concurrency} at once p95", r.ours_loaded, 0.95))
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


# --- main -----------------------------------------------------------------------------------------


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


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
        "--profile", type=Path, help="py-spy each service during tier 1's throughput into this directory"
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
        env = {k: v for k, v in os.environ.items() if k not in ("SYMBI_DATABASE_URL", "SYMBI_HOME", "SYMBI_KEYS_DIR")}
        env.update(
            {
                "SYMBI_LOG_LEVEL": "warning",
                "PYTHONUNBUFFERED": "1",
                "SYMBI_SANDBOX__HOST_ID": host_id,
                "SYMBI_SANDBOX__WORK_DIR": str(Path(tmp) / "work"),
            }
        )
        options = RuntimeOptions(
            home=Path(tmp) / "home",
            base_port=free_base_port(),
            nats_port=None,
            grace_period=5.0,
            restart=RestartPolicy(initial_backoff=0.1),
            env=env,
        )
        rt = LocalRuntime(options)
        watch = TaskWatch()
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="raw")
        results: dict[str, TierResult] = {}
        retries = 0
        try:
            started = time.perf_counter()
            await rt.start()
            await rt.wait_ready(timeout=120)
            missing = [s for s in SERVICE_PORT_OFFSETS if s not in rt.running_services]
            if missing:
                raise SystemExit(f"the runtime runs without {', '.join(missing)}: {rt.unavailable}")
            print(f"runtime up in {time.perf_counter() - started:.1f} s (host {host_id})", flush=True)
            await watch.start(rt.nats_url)
            cgroups = [f"{CGROUP_PARENT}/{host_id}", f"{CGROUP_PARENT}/{host_id}-raw"]
            sources = CpuSources.of(rt, cgroups)
            children, cpu = _proc_stats()
            print(
                f"runtime: {', '.join(sources.runtime_roots)} ({len(sources.runtime_roots)} process trees),"
                f" {_tree_cpu(list(sources.runtime_roots.values()), children, cpu):.1f} CPU-s used so far;"
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
