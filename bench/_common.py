"""Shared helpers for the benchmarks: a throwaway nats-server, a throwaway keyring, an EventStore.

Nothing here is part of the product. Every bench starts its own nats-server with JetStream in a
temporary directory on a free loopback port and removes it again on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
from nats.aio.client import Client as NatsClient
from symbi_cli.nats_cluster import free_port
from symbi_cli.provisioning import provision_nats_async
from symbi_common.datakeys import open_service_datakeys
from symbi_common.decisions import DecisionRecord
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.key_material import load_signer
from symbi_common.keyfiles import init_keyring
from symbi_common.keyring import KeyRegistry
from symbi_common.nats_client import server_options
from symbi_common.operator_tokens import bearer_header, issue_local_token
from symbi_common.policy.events import AGGREGATE_TYPE as POLICY_SET
from symbi_common.policy.events import POLICY_SET_CODEC, PolicySetRegistered
from symbi_common.sealing import NEW_AGGREGATE, ChainTip
from symbi_common.stream_provisioning import provision_streams
from symbi_contracts.lifecycle.config import ResourceLimits, Workload
from symbi_contracts.scheduler.events import CODEC as TASK_CODEC
from symbi_contracts.scheduler.events import TaskAssigned, TaskSubmitted

# --- a small, realistic event ----------------------------------------------------------------------


class AgentHeartbeat(Event, frozen=True, tag="agent.heartbeat"):
    """What a lifecycle service might record often: a status report of one running agent."""

    agent_id: str
    status: str
    host: str
    cpu_millis: int
    memory_bytes: int
    tasks_running: int
    note: str = ""


CODEC: EventCodec[AgentHeartbeat] = EventCodec([AgentHeartbeat])
AGGREGATE_TYPE = "agent"  # written by the "lifecycle" service's key
PRODUCER = "lifecycle"


def heartbeat(agent_id: str, i: int) -> AgentHeartbeat:
    return AgentHeartbeat(
        agent_id=agent_id,
        status="running",
        host="worker-03.internal",
        cpu_millis=1200 + i % 97,
        memory_bytes=268_435_456 + i * 4096,
        tasks_running=i % 5,
        note="periodic heartbeat",
    )


# --- nats-server ----------------------------------------------------------------------------------


def nats_server_binary() -> str:
    candidate = Path(sys.prefix) / "bin" / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise SystemExit("nats-server not found (expected in the venv's bin/ or on PATH)")
    return found


def nats_server_version() -> str:
    out = subprocess.run([nats_server_binary(), "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip()


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    store_dir: Path


def _spawn(port: int, store: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as log_fh:
        return subprocess.Popen(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
            stdout=log_fh,
            stderr=subprocess.STDOUT,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.asynccontextmanager
async def nats_server() -> AsyncIterator[Server]:
    """A fresh nats-server with JetStream (file storage) in a temp dir, on a free loopback port."""
    with tempfile.TemporaryDirectory(prefix="symbi-bench-nats-") as tmp:
        port = free_port()
        store = Path(tmp) / "js"
        log = Path(tmp) / "nats.log"
        proc = _spawn(port, store, log)
        try:
            deadline = time.monotonic() + 15
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"nats-server exited early:\n{log.read_text(errors='replace')}")
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    await w.wait_closed()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("nats-server did not start within 15 s") from None
                    await asyncio.sleep(0.05)
            url = f"nats://127.0.0.1:{port}"
            await provision_nats_async(url)  # as the admin does before any service starts
            yield Server(url=url, proc=proc, store_dir=store)
        finally:
            _stop(proc)


def _spawn_module(module: str, env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", module], env=env, stdout=log, stderr=log)


@dataclass(frozen=True)
class ServiceProcess:
    url: str
    pid: int


@contextlib.asynccontextmanager
async def service_process(
    module: str, env: dict[str, str], *, ready_timeout: float = 60.0
) -> AsyncIterator[ServiceProcess]:
    """``python -m <module>`` as a child process on a free port (``env`` on top of ours); yields its URL and
    pid once ``/readyz`` is green, and stops it (SIGTERM, then SIGKILL) on exit."""
    port = free_port()
    full_env = {**os.environ, "SYMBI_LOG_LEVEL": "warning", **env, "SYMBI_HTTP_PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = _spawn_module(module, full_env, log)
        try:
            deadline = time.monotonic() + ready_timeout
            async with httpx.AsyncClient(base_url=url) as http:
                while True:
                    if proc.poll() is not None:
                        log.seek(0)
                        raise SystemExit(f"{module} exited:\n{log.read().decode(errors='replace')[-3000:]}")
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{module} not ready within {ready_timeout:g} s")
                    await asyncio.sleep(0.1)
            yield ServiceProcess(url, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def connect(url: str) -> NatsClient:
    return await nats.connect(**server_options(url), max_reconnect_attempts=0, connect_timeout=5)


# --- keyring and event store ----------------------------------------------------------------------

#: The ``Authorization`` header of an admin operator of the last :func:`keyring` (every API call needs one).
AUTH: dict[str, str] = {}


@contextlib.contextmanager
def keyring() -> Any:
    """A fresh keyring (root, every service's key, master key, signed registry) in a temp dir."""
    with tempfile.TemporaryDirectory(prefix="symbi-bench-keys-") as tmp:
        keys_dir = Path(tmp) / "keys"
        init_keyring(keys_dir)
        AUTH.clear()
        AUTH.update(bearer_header(issue_local_token(keys_dir, name="bench")))
        yield keys_dir


async def make_store(nc: NatsClient, keys_dir: Path, *, producer: str = PRODUCER) -> EventStore:
    js = nc.jetstream()
    await provision_streams(js)
    datakeys = await open_service_datakeys(js, keys_dir / producer, producer, KeyRegistry.load(keys_dir))
    return EventStore(
        nc,
        signer=load_signer(keys_dir / producer / "signing.key"),
        producer=producer,
        registry=KeyRegistry.load(keys_dir),
        datakeys=datakeys,
    )


#: The policy service's baseline set, as the benches that decide with the embedded Cedar point register it.
BASELINE_CEDAR = Path(__file__).resolve().parent.parent / "services/policy/src/symbi_policy/baseline.cedar"


async def register_policy_sets(nc: NatsClient, keys_dir: Path, sets: dict[str, str]) -> None:
    """Register policy sets (id → Cedar text) on the stream as the policy service does."""
    policy = await make_store(nc, keys_dir, producer="policy")
    for set_id, cedar in sets.items():
        event = PolicySetRegistered(set_id=set_id, cedar=cedar)
        await policy.append(POLICY_SET, set_id, [event], POLICY_SET_CODEC, expected=NEW_AGGREGATE)


def embedded_policy_env(url: str, keys_dir: Path, **extra: str) -> dict[str, str]:
    """Service settings that decide with the embedded Cedar point (no decision log), plus ``extra``."""
    return {
        "SYMBI_NATS_URL": url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_LOG_LEVEL": "warning",
        "SYMBI_POLICY__ENFORCEMENT": "embedded",
        "SYMBI_POLICY__DECISION_LOG": "false",
        **extra,
    }


# --- reporting ------------------------------------------------------------------------------------


def machine_summary() -> str:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"machine: nproc={os.cpu_count()} cpu={cpu!r} python={platform.python_version()} "
        f"msgspec={msgspec.__version__} {nats_server_version()}"
    )


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Wall time, this process's CPU time and the nats-server's CPU time over a block."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.wall = self.client_cpu = self.server_cpu = 0.0

    def __enter__(self) -> CpuMeter:
        self._t = (time.perf_counter(), time.process_time(), proc_cpu_seconds(self.server_pid))
        return self

    def __exit__(self, *exc: object) -> None:
        w, c, s = self._t
        self.wall += time.perf_counter() - w
        self.client_cpu += time.process_time() - c
        self.server_cpu += proc_cpu_seconds(self.server_pid) - s


def fmt(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def result_line(name: str, ours: float, baseline: float, unit: str, target: str, ok: bool) -> str:
    ratio = ours / baseline if baseline else 0.0
    return (
        f"RESULT {name} ours={fmt(ours)} baseline={fmt(baseline)} ratio={ratio:.3f} unit={unit} "
        f"target={target} pass={'yes' if ok else 'no'}"
    )


#: The execution events that end a run.
TERMINAL = frozenset(
    {"execution.exited", "execution.failed", "execution.refused", "execution.killed", "execution.timed_out"}
)


async def place_task(
    store: EventStore,
    nc: NatsClient,
    task_id: str,
    *,
    agent_id: str,
    host: str,
    tier: str,
    workload: dict[str, Any],
    limits: dict[str, Any],
    input: bytes = b"",
) -> None:
    """Place a task on ``host`` as the scheduler does, without it: its ``task.submitted`` and ``task.assigned``
    events (the contracts' own types), then its work item on ``work.<host>``."""
    assigned = TaskAssigned(
        host_id=host,
        tier=tier,
        risk_score=0.0,
        risk_factors={},
        workload=msgspec.convert(workload, Workload),
        limits=msgspec.convert(limits, ResourceLimits),
        attempt=1,
        decision=DecisionRecord(action="task.allocate", effect="allow", policy_version=0),
    )
    submitted = TaskSubmitted(agent_id=agent_id, input=input, priority="normal")
    await store.append("task", task_id, [submitted, assigned], TASK_CODEC, expected=ChainTip())
    body = msgspec.json.encode({"task_id": task_id, "attempt": 1})
    await nc.jetstream().publish(f"work.{host}", body, headers={"Nats-Msg-Id": f"{task_id}:1"})
