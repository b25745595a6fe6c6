"""Fixtures of the sandbox-agent tests: real Docker (runc and runsc), real NATS, the daemon in-process.

The tests play the scheduler's side of docs/contracts/tasks.md with real signed events: a store
signing as ``scheduler`` appends ``task.submitted`` + ``task.assigned`` and publishes ``work.<host_id>``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import msgspec
import pytest
from fastapi import FastAPI
from nats.aio.client import Client as NatsClient
from symbi_common.decisions import DecisionRecord
from symbi_common.eventstore import EventStore
from symbi_common.operator_tokens import bearer_header, issue_local_token
from symbi_common.sealing import ChainTip
from symbi_common.settings import Settings, load_settings
from symbi_contracts.lifecycle.config import PathAccess, ResourceLimits, Workload
from symbi_contracts.sandbox_agent.events import EXECUTION_CODEC, TERMINAL_TYPES, ExecutionEvent, output_chunks
from symbi_contracts.scheduler.events import CODEC as TASKS
from symbi_contracts.scheduler.events import ResourceRequest, TaskAssigned, TaskEvent, TaskSubmitted
from symbi_contracts.tools.declarations import McpServerSpec
from symbi_sandbox_agent.host import SandboxHost
from symbi_sandbox_agent.main import build_app

IMAGE = "symbi/busybox:1"
SETUP = "deploy/host/setup-docker.sh"


# --- Docker ----------------------------------------------------------------------------------------


def _operator_headers(app: FastAPI, keyring: Path | None = None) -> dict[str, str]:
    """An admin operator's token header for ``app``'s keyring (``keyring``: when its keys directory is a host's,
    not the keyring)."""
    return bearer_header(issue_local_token(keyring or Path(app.state.runtime.settings.keys.dir)))


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The host's Docker engine with runc, runsc and the workload image; fails (never skips) without them."""
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"Docker is not reachable ({exc}); run {SETUP} as root first", pytrace=False)
    runtimes = client.api.info().get("Runtimes") or {}
    if "runsc" not in runtimes or "runc" not in runtimes:
        pytest.fail(f"Docker lacks the runc or runsc runtime (has {sorted(runtimes)}); run {SETUP}", pytrace=False)
    try:
        client.api.inspect_image(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"the workload image {IMAGE} is missing; run {SETUP}", pytrace=False)
    yield client
    client.close()


def containers_of(client: docker.DockerClient, host_id: str) -> list[dict[str, Any]]:
    return list(client.api.containers(all=True, filters={"label": f"symbi.host_id={host_id}"}))


# --- the scheduler's side of the contract (its types: symbi_contracts.scheduler.events) --------------


def limits(**overrides: Any) -> ResourceLimits:
    base = {"memory_mb": 128, "cpu_cores": 1.0, "disk_io_mbps": 50, "network_io_mbps": 10, "execution_timeout_s": 20}
    return ResourceLimits(**{**base, **overrides})


@dataclass
class Result:
    task_id: str
    events: list[ExecutionEvent]

    @property
    def terminal(self) -> Any:
        return self.events[-1]

    @property
    def outcome(self) -> str:
        return str(type(self.terminal).__struct_config__.tag)

    def stream(self, name: str) -> bytes:
        """The stream reassembled from its ``execution.output`` chunks and the terminal event's tail, each
        checked to continue the one before."""
        chunks = [c for e in self.events for c in output_chunks(e) if c.stream == name]
        offset = 0
        for c in chunks:
            assert c.offset == offset, f"{name} chunk at {c.offset}, expected {offset}"
            assert len(c.data) <= 64 * 1024
            offset += len(c.data)
        return b"".join(c.data for c in chunks)

    @property
    def stdout(self) -> bytes:
        return self.stream("stdout")

    @property
    def stderr(self) -> bytes:
        return self.stream("stderr")

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


@dataclass
class Scheduler:
    """Submits tasks the way the scheduler does and reads back their execution events."""

    store: EventStore
    nc: NatsClient
    tips: dict[str, ChainTip] = field(default_factory=dict)
    #: Reads host events, which only the sandbox agent and the audit service may decrypt.
    auditor: EventStore | None = None

    async def submit(
        self,
        host_id: str,
        command: list[str],
        *,
        tier: str = "tier1",
        input: bytes = b"",
        lim: ResourceLimits | None = None,
        network_access: list[str] | None = None,
        attempt: int = 1,
        task_id: str | None = None,
        publish: bool = True,
        actions: bool = False,
        agent_id: str = "agent-1",
        headers: dict[str, str] | None = None,
        image: str = IMAGE,
        filesystem_access: tuple[PathAccess, ...] = (),
        workload: Workload | None = None,
        secrets: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        mcp_servers: tuple[McpServerSpec, ...] = (),
    ) -> str:
        """Submit and assign a task; ``workload`` (e.g. an agent's compiled one) replaces the one made of
        ``image``, ``command`` and ``actions``."""
        task_id = task_id or f"t{uuid.uuid4().hex[:12]}"
        decision = DecisionRecord(action="task.allocate", effect="allow", policy_version=0)
        events: list[TaskEvent] = []
        if task_id not in self.tips:
            events.append(
                TaskSubmitted(
                    agent_id=agent_id,
                    input=input,
                    priority="normal",
                    resources=ResourceRequest(memory_mb=64),
                    submitted_by="test",
                )
            )
        env = {"GREETING": "hi", **(env or {})}
        workload = workload or Workload(image=image, command=tuple(command), env=env, workdir="/", actions=actions)
        events.append(
            TaskAssigned(
                host_id=host_id,
                tier=tier,
                risk_score=0.2,
                risk_factors={"network_access": 0.0},
                workload=workload,
                limits=lim or limits(),
                network_access=tuple(network_access or ()),
                filesystem_access=filesystem_access,
                secrets=secrets,
                mcp_servers=mcp_servers,
                attempt=attempt,
                decision=decision,
            )
        )
        recs = await self.store.append("task", task_id, events, TASKS, expected=self.tips.get(task_id, ChainTip()))
        self.tips[task_id] = recs[-1].tip
        if publish:
            await self.publish(host_id, task_id, attempt, headers=headers)
        return task_id

    async def publish(
        self,
        host_id: str,
        task_id: str,
        attempt: int,
        msg_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        js = self.nc.jetstream()
        body = msgspec.json.encode({"task_id": task_id, "attempt": attempt})
        hdrs = {**(headers or {}), "Nats-Msg-Id": msg_id or f"{task_id}:{attempt}"}
        await js.publish(f"work.{host_id}", body, headers=hdrs)

    async def events(self, task_id: str) -> list[ExecutionEvent]:
        return [r.event for r in await self.store.load("execution", task_id, EXECUTION_CODEC)]

    async def wait_for(
        self, task_id: str, done: Callable[[list[ExecutionEvent]], bool], timeout: float = 30.0
    ) -> list[ExecutionEvent]:
        deadline = time.monotonic() + timeout
        while True:
            events = await self.events(task_id)
            if done(events):
                return events
            if time.monotonic() > deadline:
                kinds = [type(e).__struct_config__.tag for e in events]
                raise AssertionError(f"task {task_id}: condition not met within {timeout} s; events: {kinds}")
            await asyncio.sleep(0.1)

    async def result(self, task_id: str, timeout: float = 40.0) -> Result:
        events = await self.wait_for(task_id, lambda ev: bool(ev) and isinstance(ev[-1], TERMINAL_TYPES), timeout)
        return Result(task_id, events)


@pytest.fixture
async def scheduler(make_store: Any, provisioned: NatsClient) -> Scheduler:
    return Scheduler(await make_store("scheduler"), provisioned, auditor=await make_store("audit"))


# --- the daemon ----------------------------------------------------------------------------------


def agent_env(nats_url: str, keys_dir: Path, host_id: str, work_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "SYMBI_NATS_URL": nats_url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_LOG_LEVEL": "warning",
        "SYMBI_POLICY__ENFORCEMENT": "allow-all",
        "SYMBI_SANDBOX__HOST_ID": host_id,
        "SYMBI_SANDBOX__WORK_DIR": str(work_dir),
        "SYMBI_SANDBOX__OUTPUT_CAP_BYTES": str(2 * 1024 * 1024),
        **extra,
    }


@dataclass
class Agent:
    app: FastAPI
    http: httpx.AsyncClient
    daemon: SandboxHost
    host_id: str


@pytest.fixture
def host_id() -> str:
    return f"h{uuid.uuid4().hex[:8]}"


@pytest.fixture
def agent_settings(nats_url: str, keys_dir: Path, tmp_path: Path, host_id: str) -> Callable[..., Settings]:
    def make(host: str = host_id, **extra: str) -> Settings:
        return load_settings(env=agent_env(nats_url, keys_dir, host, tmp_path / "work", **extra))

    return make


@asynccontextmanager
async def running_agent(settings: Settings, keyring: Path | None = None) -> AsyncIterator[Agent]:
    """The real daemon app with its lifespan run in this event loop (``keyring``: the keyring its operator token
    comes from, when its own keys directory is a sandbox host's)."""
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://sandbox-agent", headers=_operator_headers(app, keyring)
        ) as http:
            daemon: SandboxHost = app.state.sandbox
            yield Agent(app, http, daemon, daemon.host_id)


@pytest.fixture
async def agent(
    docker_client: docker.DockerClient, agent_settings: Callable[..., Settings], host_id: str
) -> AsyncIterator[Agent]:
    """One daemon for ``host_id``; after the test no container of that host may be left."""
    async with running_agent(agent_settings()) as a:
        yield a
    left = containers_of(docker_client, host_id)
    assert not left, f"containers left behind: {[c['Names'] for c in left]}"
