"""A test harness for agents, with no fakes: a running sandbox-agent's real gateway for an agent written as a
Python callable, or a container run exactly as a scheduled task runs (the SDK side: ``symbi_agent.testing``).

:meth:`GatewayHarness.run_callable` gives the callable a channel of its own, served by the daemon like a
sandbox's: the policy decides ``sandbox.start`` and each filesystem grant (enforcement point
``sandbox-agent.data_mount``), ``execution.started`` is appended (runtime ``in-process``: the callable runs
in the test's process, unsandboxed — it is the code under test, not a workload), every request is decided by
the real policies, performed (context service, data roots) and recorded as ``execution.action``, and
``execution.exited`` closes the run. :meth:`GatewayHarness.run_container` appends ``task.submitted`` and
``task.assigned`` (as the scheduler: it needs a store signing as the scheduler, which a test runtime has)
and posts the work item: the daemon then runs it like any task, in runc or gVisor.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from symbi_common.decisions import DecisionRecord, DecisionRequest, EntityRef
from symbi_common.errors import DomainError
from symbi_common.eventstore import EventStore
from symbi_common.key_names import agent_data_key
from symbi_common.policy.enforcement import SANDBOX_START, SCHEDULER_TASK_ALLOCATE
from symbi_common.policy.hooks import Enforcer
from symbi_common.sealing import ChainTip
from symbi_contracts.lifecycle.config import Messaging, PathAccess, ResourceLimits, Workload
from symbi_contracts.sandbox_agent.events import (
    EXECUTION_CODEC,
    TERMINAL_TYPES,
    ExecutionAction,
    ExecutionEvent,
    ExecutionExited,
    ExecutionStarted,
    Limits,
    output_chunks,
)
from symbi_contracts.scheduler.events import CODEC as TASK_EVENTS
from symbi_contracts.scheduler.events import TaskAssigned, TaskEvent, TaskSubmitted

from symbi_sandbox_agent.application import SandboxService
from symbi_sandbox_agent.config import channel_root
from symbi_sandbox_agent.data_roots import resolve
from symbi_sandbox_agent.gateway import ActionGateway
from symbi_sandbox_agent.mounts import decide_mounts
from symbi_sandbox_agent.run import Running
from symbi_sandbox_agent.spec import SandboxSpec, channel_dir, container_name

T = TypeVar("T")
#: A callable agent as the harness runs it: given the socket path, on a thread of its own
#: (``symbi_agent.testing.agent_program(fn)`` makes one of an SDK agent function).
Program = Callable[[str], T]
POLL_S = 0.1


class HarnessRefused(DomainError):
    """The harness could not start the run (the policy denied it, or it lacks what it needs)."""

    code = "harness_refused"


@dataclass
class HarnessRun:
    """What one run did: the callable's value (None for a container) and every execution event it left."""

    task_id: str
    value: Any
    events: list[ExecutionEvent] = field(default_factory=list)

    @property
    def actions(self) -> list[ExecutionAction]:
        return [e for e in self.events if isinstance(e, ExecutionAction)]

    @property
    def started(self) -> ExecutionStarted | None:
        return next((e for e in self.events if isinstance(e, ExecutionStarted)), None)

    @property
    def terminal(self) -> ExecutionEvent | None:
        return self.events[-1] if self.events and isinstance(self.events[-1], TERMINAL_TYPES) else None

    def output(self, stream: str = "stdout") -> bytes:
        return b"".join(c.data for e in self.events for c in output_chunks(e) if c.stream == stream)


class GatewayHarness:
    """Runs agents against the daemon of a running sandbox-agent (``SandboxHost``: its ``service``)."""

    def __init__(self, service: SandboxService, tasks: EventStore | None = None) -> None:
        self.service = service
        #: A store signing as the scheduler, for :meth:`run_container` (task events are the scheduler's).
        self.tasks = tasks

    async def _enforcer(self) -> Enforcer:
        return Enforcer.around(await self.service.rt.decision_point())

    async def run_callable(
        self,
        program: Program[T],
        *,
        agent_id: str = "agent-1",
        filesystem_access: Sequence[PathAccess] = (),
        task_id: str | None = None,
        messaging: Messaging | None = None,
    ) -> HarnessRun:
        """Serve ``program`` (given the socket path) as a run of agent ``agent_id``; its exception is raised
        after the run is recorded, its value is :attr:`HarnessRun.value`."""
        svc = self.service
        task_id = task_id or f"harness-{uuid.uuid4().hex[:12]}"
        enforcer = await self._enforcer()
        question = DecisionRequest(
            principal=EntityRef(type="Agent", id=agent_id),
            action="sandbox.start",
            resource=EntityRef(type="Task", id=task_id, attrs={"agent": agent_id}),
            context={"security_tier": "tier1", "image": "in-process", "network": False},
        )
        verdict = await enforcer.decide(question, SANDBOX_START)
        if not verdict.allowed:
            raise HarnessRefused(f"sandbox.start of {task_id} denied: {verdict.record.reason}", task_id=task_id)
        mounts = await decide_mounts(
            enforcer, agent_id, await asyncio.to_thread(resolve, filesystem_access, svc.data_roots)
        )
        name = container_name(svc.host_id, task_id, 1)
        spec = SandboxSpec(
            task_id=task_id,
            attempt=1,
            host_id=svc.host_id,
            tier="tier1",
            image="in-process",
            command=(getattr(program, "__qualname__", type(program).__name__),),
            env={},
            workdir="/",
            limits=_limits(svc, 0),
            user=f"{os.getuid()}:{os.getgid()}",
            blkio_device=None,
            actions=True,
            channel_dir=channel_dir(svc.defaults.channel_root or channel_root(), svc.host_id, name),
            data_mounts=tuple(m.mount for m in mounts),
            messaging=messaging,
        )
        run = Running(spec, agent_id)
        await svc.executions.execute(task_id, _started(spec, verdict.record, [m.record() for m in mounts], run))
        gateway = ActionGateway(svc, run)
        run.gateway = gateway
        failure: BaseException | None = None
        value: Any = None
        try:
            await gateway.open_channel(spec.channel_dir, spec.owner)
            assert gateway.channel is not None
            value = await asyncio.to_thread(program, str(gateway.channel.path))
        except Exception as exc:
            failure = exc
        finally:
            await gateway.close()
            await gateway.remove_channel()
            shutil.rmtree(spec.channel_dir, ignore_errors=True)
        ended = ExecutionExited(
            attempt=1,
            exit_code=0 if failure is None else 1,
            duration_s=round(time.time() - run.started_at, 3),
            reason="" if failure is None else f"the callable raised {failure!r}"[:1000],
        )
        await svc.executions.execute(task_id, ended)
        if failure is not None:
            raise failure
        return HarnessRun(task_id, value, await self.events(task_id))

    async def run_container(
        self,
        image: str,
        command: Sequence[str],
        *,
        agent_id: str = "agent-1",
        tier: str = "tier1",
        filesystem_access: Sequence[PathAccess] = (),
        input: bytes = b"",
        actions: bool = True,
        limits: ResourceLimits | None = None,
        timeout: float = 120.0,
        messaging: Messaging | None = None,
    ) -> HarnessRun:
        """Run ``image`` as a task of agent ``agent_id`` on this daemon's host, and wait for its end."""
        if self.tasks is None:
            raise HarnessRefused("run_container needs tasks=: an event store signing as the scheduler")
        svc = self.service
        task_id = f"harness-{uuid.uuid4().hex[:12]}"
        question = DecisionRequest(
            principal=EntityRef(type="Agent", id=agent_id),
            action="task.allocate",
            resource=EntityRef(type="Host", id=svc.host_id),
            context={"agent": agent_id, "task": task_id, "priority": "normal"},
        )
        verdict = await (await self._enforcer()).decide(question, SCHEDULER_TASK_ALLOCATE)
        if not verdict.allowed:
            raise HarnessRefused(f"task.allocate of {task_id} denied: {verdict.record.reason}", task_id=task_id)
        lim = limits or ResourceLimits(memory_mb=128, cpu_cores=1.0, disk_io_mbps=50, execution_timeout_s=timeout)
        events: list[TaskEvent] = [
            TaskSubmitted(agent_id=agent_id, input=input, priority="normal", submitted_by="harness"),
            TaskAssigned(
                host_id=svc.host_id,
                tier=tier,
                risk_score=0.0,
                risk_factors={},
                workload=Workload(image=image, command=tuple(command), actions=actions),
                limits=lim,
                attempt=1,
                decision=verdict.record,
                filesystem_access=tuple(filesystem_access),
                messaging=messaging,
            ),
        ]
        await self.tasks.append(
            "task", task_id, events, TASK_EVENTS, expected=ChainTip(), data_key=agent_data_key("task", agent_id)
        )
        body = msgspec.json.encode({"task_id": task_id, "attempt": 1})
        await self.tasks.nc.jetstream().publish(f"work.{svc.host_id}", body, headers={"Nats-Msg-Id": f"{task_id}:1"})
        deadline = time.monotonic() + timeout + 30
        while time.monotonic() < deadline:
            found = await self.events(task_id)
            if found and isinstance(found[-1], TERMINAL_TYPES):
                return HarnessRun(task_id, None, found)
            await asyncio.sleep(POLL_S)
        raise TimeoutError(f"task {task_id} did not end within {timeout + 30} s")

    async def events(self, task_id: str) -> list[ExecutionEvent]:
        """The run's execution events, verified and decrypted (the daemon reads its own events)."""
        return [r.event for r in await self.service.rt.store.load("execution", task_id, EXECUTION_CODEC)]


def _limits(svc: SandboxService, timeout: float) -> Limits:
    d = svc.defaults
    return Limits(
        memory_mb=0,
        cpu_cores=0.0,
        disk_io_mbps=0,
        network_io_mbps=0,
        execution_timeout_s=timeout,
        pids=0,
        output_cap_bytes=d.output_cap_bytes,
        scratch_mb=0,
    )


def _started(spec: SandboxSpec, decision: DecisionRecord, mounts: list[Any], run: Running) -> ExecutionStarted:
    return ExecutionStarted(
        attempt=1,
        agent_id=run.agent_id,
        host_id=spec.host_id,
        tier="tier1",
        runtime="in-process",
        container=spec.name,
        image=spec.image,
        command=spec.command,
        limits=spec.limits,
        hardening={"sandbox": "none: an in-process callable of the test harness (symbi_agent.testing)"},
        decision=decision,
        started_at=run.started_at,
        data_mounts=tuple(mounts),
    )
