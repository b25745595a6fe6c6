"""Helpers of the scheduler tests: app runners, polling, and :class:`FakeHost` (a sandbox host on the wire).

A :class:`FakeHost` does what a sandbox-agent does on the wire, without Docker: it heartbeats into the
``HOSTS`` bucket, consumes ``work.<host_id>`` from ``WORK``, reads the task's events, appends signed
``execution.*`` events (as the ``sandbox-agent`` key) and answers ``cmd.sandbox-agent.<host_id>.*``.
Its workload is a function of the input (upper-casing by default); a held task runs until the test
finishes it, so tests can control what is running when. A running task can ask for an action
(:meth:`FakeHost.request_action`), decided by the host's ``allow_actions`` like the action gateway does:
a denial is recorded, the task frozen, and a ``resume`` decides the pending request again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats.errors
import nats.js.errors
from fastapi import FastAPI
from nats.aio.client import Client as NatsClient
from nats.js.api import ConsumerConfig, KeyValueConfig
from symbi_common.aggregate import Repository
from symbi_common.commands import CommandMeta, CommandServer
from symbi_common.decisions import Allow, Decision, DecisionRecord, DecisionRequest, Deny
from symbi_common.errors import InfrastructureError
from symbi_common.eventstore import EventStore
from symbi_common.operator_tokens import bearer_header, issue_local_token
from symbi_common.settings import Settings
from symbi_common.telemetry import continue_trace
from symbi_contracts.sandbox_agent.errors import ActionDenied, UnknownExecution
from symbi_contracts.sandbox_agent.events import (
    EXECUTION_CODEC,
    ExecutionAction,
    ExecutionExited,
    ExecutionKilled,
    ExecutionOutput,
    ExecutionPaused,
    ExecutionRefused,
    ExecutionResumed,
    ExecutionStarted,
    Limits,
    OutputChunk,
    OutputDigest,
    Usage,
)
from symbi_contracts.sandbox_agent.heartbeat import signed_headers
from symbi_contracts.scheduler.events import CODEC, STOP_REFUSED, TaskAssigned, TaskStopRequested, TaskSubmitted
from symbi_scheduler.work import ensure_work_stream

MakeStore = Callable[..., Awaitable[EventStore]]

WORKLOAD = {"image": "symbi/busybox:1", "command": ["sh", "-c", "tr a-z A-Z"]}


def scheduler_env(nats_url: str, keys_dir: Path, **settings: str) -> dict[str, str]:
    """The ``SYMBI_*`` environment of a scheduler for the test's servers (fast ticks, short lease)."""
    env = {
        "SYMBI_NATS_URL": nats_url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_LOG_LEVEL": os.environ.get("SCHEDULER_TEST_LOG_LEVEL", "warning"),
        "SYMBI_POLICY__ENFORCEMENT": "allow-all",
        "SYMBI_SCHEDULER__TICK_S": "0.1",
        "SYMBI_SCHEDULER__LEASE_TTL_S": "1.5",
        # Fake hosts heartbeat from the test's event loop, which a loaded machine can stall for a second or two:
        # only the tests about a lost host ask for a shorter wait (host_lost_after_s="2").
        "SYMBI_SCHEDULER__HOST_LOST_AFTER_S": "10",
    }
    env.update({f"SYMBI_SCHEDULER__{k.upper()}": v for k, v in settings.items()})
    return env


@dataclass
class App:
    """A service app running in this test's event loop."""

    app: FastAPI
    http: httpx.AsyncClient

    async def json(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        r = await self.http.request(method, path, json=body)
        assert r.status_code == status, r.text
        return r.json()


@contextlib.asynccontextmanager
async def running_app(app: FastAPI, name: str) -> AsyncIterator[App]:
    transport = httpx.ASGITransport(app=app)
    headers = bearer_header(issue_local_token(Path(app.state.runtime.settings.keys.dir)))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=f"http://{name}", headers=headers) as http,
    ):
        yield App(app, http)


class DenyAgents:
    """A decision point (the :class:`~symbi_common.decisions.DecisionPoint` port) denying listed agents."""

    def __init__(self, *agents: str) -> None:
        self.denied = set(agents)
        self.requests: list[DecisionRequest] = []

    @property
    def version(self) -> int:
        return 7

    async def decide(self, request: DecisionRequest) -> Decision:
        self.requests.append(request)
        if request.principal.id in self.denied:
            return Deny(reason="host pool closed to this agent", policies=("no-untrusted-hosts",), policy_version=7)
        return Allow(policies=("allow-known",), policy_version=7)

    async def decide_batch(self, requests: list[DecisionRequest]) -> list[Decision]:
        return [await self.decide(r) for r in requests]


async def register_agent(lifecycle: App, agent_id: str, **config: Any) -> dict[str, Any]:
    body = {"agent_id": agent_id, "config": {"name": agent_id.lower(), "workload": WORKLOAD, **config}}
    result: dict[str, Any] = await lifecycle.json("POST", "/v1/agents", body, status=201)
    return result


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail with its last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s; last value: {last!r}")


async def task_view(scheduler: App, task_id: str) -> dict[str, Any]:
    result: dict[str, Any] = await scheduler.json("GET", f"/v1/tasks/{task_id}")
    return result


async def until_status(scheduler: App, task_id: str, *statuses: str, timeout: float = 10.0) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        r = await scheduler.http.get(f"/v1/tasks/{task_id}")
        if r.status_code == 404:  # this replica has not read the submission yet
            return None
        assert r.status_code == 200, r.text
        view: dict[str, Any] = r.json()
        return view if view["status"] in statuses else None

    result: dict[str, Any] = await eventually(check, timeout)
    return result


async def task_events(store: EventStore, task_id: str) -> list[Any]:
    return [r.event for r in await store.load("task", task_id, CODEC)]


# --- the sandbox side --------------------------------------------------------------------------------


@dataclass
class Execution:
    task_id: str
    attempt: int
    agent_id: str
    input: bytes
    assigned: TaskAssigned
    done: asyncio.Event = field(default_factory=asyncio.Event)
    paused: bool = False
    #: The request left pending by a denial: (action, resource).
    pending: tuple[str, str] | None = None
    seq: int = 0


NO_MEMORY = DecisionRecord(
    action="memory.write", effect="deny", policy_version=3, policies=("no-memory-writes",), reason="notes are closed"
)


class _ExecAggregate:
    """Appends execution events in order (conditional appends on ``execution.<task_id>``)."""

    aggregate_type = "execution"
    codec = EXECUTION_CODEC
    state_type = int

    def initial(self, aggregate_id: str) -> int:
        return 0

    def apply(self, state: int, event: Any) -> int:
        return state + 1

    def decide(self, state: int, command: Any) -> list[Any]:
        return [command]


class FakeHost:
    """One sandbox host on the wire (see the module docstring)."""

    def __init__(
        self,
        host_id: str,
        nc: NatsClient,
        store: EventStore,
        *,
        cpu_cores: float = 4.0,
        memory_mb: int = 8192,
        tiers: tuple[str, ...] = ("tier1", "tier2"),
        hold: bool = False,
        delay: float = 0.0,
        refuse: bool = False,
        work: Callable[[bytes], bytes] = bytes.upper,
        allow_actions: bool = True,
        cpu_seconds: float = 0.0,
        chunk: int = 64 * 1024,
        tail: bool = True,
        fail_once: tuple[str, ...] = (),
        starting: float = 0.0,
        honours_stop: bool = True,
    ) -> None:
        self.host_id = host_id
        self.nc = nc
        self.js = nc.jetstream()
        self.store = store
        self.cpu_cores = cpu_cores
        self.memory_mb = memory_mb
        self.tiers = tiers
        self.hold = hold
        self.delay = delay
        self.refuse = refuse
        self.work = work
        self.allow_actions = allow_actions
        #: The CPU-seconds each task's terminal event reports as used.
        self.cpu_seconds = cpu_seconds
        #: The result goes out in pieces of ``chunk`` bytes: ``execution.output`` events, the last one in the
        #: terminal event's ``tail`` as the sandbox-agent sends it (``tail=False``: as its previous version did,
        #: every piece an ``execution.output`` event and a terminal event without a tail).
        self.chunk = chunk
        self.tail = tail
        #: Commands (``suspend``, ``resume`` …) whose first call fails as a host that did not get to it would.
        self.fail_once = set(fail_once)
        #: Seconds the host spends checking a task (image, policy, secrets) before it runs it; meanwhile, as the
        #: sandbox-agent does, it answers ``UnknownExecution`` to a command for it (0: it answers ``unknown``).
        self.starting = starting
        #: As the sandbox-agent does, it reads the task again once it has checked it and refuses an attempt with a
        #: stop request (False: a host that does not, so only a terminate stops the run).
        self.honours_stop = honours_stop
        #: The attempts it refused because of a stop request: (task, attempt).
        self.refused_for_stop: list[tuple[str, int]] = []
        self.executions: Repository[int, Any, Any] = Repository(store, _ExecAggregate())  # type: ignore[arg-type]
        self.running: dict[str, Execution] = {}
        self.started: list[tuple[str, int]] = []
        self.commands: list[tuple[str, str]] = []
        self.work_headers: dict[tuple[str, int], dict[str, str]] = {}
        self.max_running = 0
        self.beating = True
        self._tasks: list[asyncio.Task[Any]] = []
        self._server = CommandServer(nc, f"sandbox-agent.{host_id}")

    async def start(self, settings: Settings) -> None:
        await ensure_work_stream(self.js, settings)
        try:
            self.kv = await self.js.key_value("HOSTS")
        except nats.js.errors.BucketNotFoundError:
            self.kv = await self.js.create_key_value(KeyValueConfig(bucket="HOSTS", history=1))
        await self.heartbeat()
        for action in ("suspend", "resume", "terminate"):
            self._server.register(action, dict, self._command(action))
        await self._server.start()
        sub = await self.js.pull_subscribe(
            f"work.{self.host_id}",
            durable=f"sandbox_{self.host_id}",
            stream="WORK",
            config=ConsumerConfig(ack_wait=30),
        )
        self._tasks.append(asyncio.create_task(self._beat()))
        self._tasks.append(asyncio.create_task(self._consume(sub)))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.stop()
        await self.nc.close()  # its cancelled fetches would make a drain wait for its timeout

    async def heartbeat(self) -> None:
        entry = {
            "host_id": self.host_id,
            "cpu_cores": self.cpu_cores,
            "memory_mb": self.memory_mb,
            "tiers": list(self.tiers),
            "running": sorted(self.running),
            "heartbeat_at": time.time(),
        }
        value = msgspec.json.encode(entry)  # signed as the sandbox-agent signs it
        await self.js.publish(f"$KV.HOSTS.{self.host_id}", value, headers=signed_headers(value, self.store.signer))

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(0.3)
            if self.beating:
                with contextlib.suppress(Exception):
                    await self.heartbeat()

    async def _consume(self, sub: Any) -> None:
        task = asyncio.current_task()
        while task is None or not task.cancelling():  # nats-py's fetch may swallow a cancellation
            try:
                msgs = await sub.fetch(4, timeout=0.5)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            for msg in msgs:
                item = msgspec.json.decode(msg.data)
                self.work_headers[(item["task_id"], int(item["attempt"]))] = dict(msg.headers or {})
                with continue_trace("sandbox.run", msg.headers):  # as the sandbox-agent continues the task's trace
                    await self._run(item["task_id"], int(item["attempt"]))
                await msg.ack()

    async def append(self, task_id: str, event: Any) -> None:
        await self.executions.execute(task_id, event)

    async def _run(self, task_id: str, attempt: int) -> None:
        events = await task_events(self.store, task_id)
        submitted = next(e for e in events if isinstance(e, TaskSubmitted))
        assigned = [e for e in events if isinstance(e, TaskAssigned) and e.attempt == attempt]
        if not assigned or (task_id, attempt) in self.started:
            return
        a = assigned[0]
        if self.refuse:  # this host's policy denies sandbox.start
            deny = DecisionRecord(action="sandbox.start", effect="deny", policy_version=1, reason="no tier2 here")
            self.started.append((task_id, attempt))
            await self.append(
                task_id,
                ExecutionRefused(attempt=attempt, code="policy_denied", reason="policy denied", decision=deny),
            )
            return
        execution = Execution(task_id, attempt, submitted.agent_id, submitted.input, a)
        if self.starting:
            await asyncio.sleep(self.starting)
        if self.honours_stop and any(
            isinstance(e, TaskStopRequested) and e.attempt == attempt for e in await task_events(self.store, task_id)
        ):
            self.refused_for_stop.append((task_id, attempt))
            refused = ExecutionRefused(attempt=attempt, code=STOP_REFUSED, reason="stop requested before it started")
            await self.append(task_id, refused)
            return
        self.running[task_id] = execution
        self.started.append((task_id, attempt))
        self.max_running = max(self.max_running, len(self.running))
        lim = a.limits
        await self.append(
            task_id,
            ExecutionStarted(
                attempt=attempt,
                host_id=self.host_id,
                tier=a.tier,  # type: ignore[arg-type]
                runtime="runc",
                container=f"c-{task_id}",
                image=a.workload.image,
                command=a.workload.command,
                limits=Limits(
                    memory_mb=lim.memory_mb,
                    cpu_cores=lim.cpu_cores,
                    disk_io_mbps=lim.disk_io_mbps,
                    network_io_mbps=lim.network_io_mbps,
                    execution_timeout_s=lim.execution_timeout_s,
                    pids=64,
                    output_cap_bytes=1 << 20,
                    scratch_mb=64,
                ),
                hardening={},
                decision=DecisionRecord(action="sandbox.start", effect="allow", policy_version=0),
            ),
        )
        if self.delay:
            self._tasks.append(asyncio.create_task(self._finish_later(task_id)))
        elif not self.hold:
            await self.finish(task_id)

    async def _finish_later(self, task_id: str) -> None:
        await asyncio.sleep(self.delay)
        if task_id in self.running:
            await self.finish(task_id)

    async def finish(self, task_id: str, exit_code: int = 0) -> None:
        """The workload of ``task_id`` prints its result and exits."""
        execution = self.running.pop(task_id)
        out = self.work(execution.input)
        pieces = [out[i : i + self.chunk] for i in range(0, len(out), self.chunk)]
        held = pieces.pop() if self.tail and pieces else None
        offset = 0
        for piece in pieces:
            output = ExecutionOutput(attempt=execution.attempt, stream="stdout", offset=offset, data=piece)
            await self.append(task_id, output)
            offset += len(piece)
        tail = (OutputChunk(stream="stdout", offset=offset, data=held),) if held is not None else ()
        digest = OutputDigest(stdout_bytes=len(out), stdout_sha256=hashlib.sha256(out).hexdigest())
        usage = Usage(cpu_seconds=self.cpu_seconds)
        exited = ExecutionExited(attempt=execution.attempt, exit_code=exit_code, output=digest, usage=usage, tail=tail)
        await self.append(task_id, exited)
        execution.done.set()

    async def request_action(self, task_id: str, action: str = "memory.write", resource: str = "notes") -> bool:
        """The workload of ``task_id`` asks for ``action``; a denial freezes it (False) until a resume allows it."""
        execution = self.running[task_id]
        execution.seq += 1
        if await self._decide(execution, action, resource):
            return True
        execution.pending, execution.paused = (action, resource), True
        await self.append(task_id, ExecutionPaused(attempt=execution.attempt, reason="action_denied"))
        return False

    async def _decide(self, execution: Execution, action: str, resource: str) -> bool:
        allowed = self.allow_actions
        decision = (
            DecisionRecord(action=action, effect="allow", policy_version=4, policies=("notes-open",))
            if allowed
            else NO_MEMORY
        )
        event = ExecutionAction(
            attempt=execution.attempt,
            seq=execution.seq,
            action=action,
            resource=resource,
            decision=decision,
            outcome="allowed" if allowed else "denied",
        )
        await self.append(execution.task_id, event)
        return allowed

    def _command(self, action: str) -> Callable[[dict[str, Any], CommandMeta], Awaitable[Any]]:
        async def handle(body: dict[str, Any], meta: CommandMeta) -> Any:
            task_id = str(body["task_id"])
            self.commands.append((action, task_id))
            if action in self.fail_once:
                self.fail_once.discard(action)
                raise InfrastructureError(f"host {self.host_id} did not get to {action} {task_id}")
            execution = self.running.get(task_id)
            if execution is None:
                if self.starting:
                    raise UnknownExecution(f"no execution of task {task_id} runs on host {self.host_id}")
                return {"task_id": task_id, "status": "unknown"}
            if action == "terminate":
                self.running.pop(task_id)
                await self.append(
                    task_id, ExecutionKilled(attempt=execution.attempt, exit_code=137, reason="terminated")
                )
                execution.done.set()
            elif action == "suspend":
                execution.paused = True
                await self.append(task_id, ExecutionPaused(attempt=execution.attempt))
            elif execution.pending is not None:  # resume after a denial: decide the request again
                if not await self._decide(execution, *execution.pending):
                    raise ActionDenied(f"{execution.pending[0]} is still denied", action=execution.pending[0])
                execution.pending, execution.paused = None, False
                await self.append(task_id, ExecutionResumed(attempt=execution.attempt))
            else:
                execution.paused = False
                await self.append(task_id, ExecutionResumed(attempt=execution.attempt))
            return {"task_id": task_id, "status": action}

        return handle

    async def wait_running(self, task_id: str, timeout: float = 10.0) -> Execution:
        async def check() -> Execution | None:
            return self.running.get(task_id)

        result: Execution = await eventually(check, timeout)
        return result


async def agent_events(store: EventStore, agent_id: str) -> list[str]:
    """The agent's event types, straight from the stream (verified)."""
    from symbi_contracts.lifecycle.events import CODEC as AGENT_CODEC

    return [r.header.event_type for r in await store.load("agent", agent_id, AGENT_CODEC)]
