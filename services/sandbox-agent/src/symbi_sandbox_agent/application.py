"""The sandbox-agent's write path: work items become sandboxes (or refusals), commands act on running ones.

Flow of one work item (see docs/contracts/tasks.md): load the task's events, check that its latest
assignment is for this host and attempt, build the sandbox spec (or refuse), ask the policy
decision point (``sandbox.start`` on ``Task::"<id>"``), record the task in this host's heartbeat,
append ``execution.started``, then hand the run to the :class:`~symbi_sandbox_agent.supervisor.Supervisor`.

Crash safety: a task is in this host's ``HOSTS`` entry before its ``execution.started`` exists, and
its container carries this host's label, so after a crash the start-up reconciliation
(:mod:`symbi_sandbox_agent.host`) finds every task this host may have been running.

Commands (``suspend``, ``resume``, ``terminate``) pause, thaw or kill a running sandbox and record it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from symbi_common.aggregate import Repository
from symbi_common.caps import resource_caps
from symbi_common.decisions import AllowWithConditions, DecisionRecord, DecisionRequest, Deny, EntityRef
from symbi_common.errors import InfrastructureError
from symbi_common.policy.enforcement import SANDBOX_START
from symbi_common.policy.hooks import Enforcer, resources_context
from symbi_common.reader import Recorded
from symbi_common.service import ServiceRuntime
from symbi_contracts.sandbox_agent.errors import (
    ExecutionStateError,
    InvalidWorkload,
    SandboxRefused,
    SecretsUnavailable,
    UnknownExecution,
)
from symbi_contracts.sandbox_agent.events import (
    ExecutionAction,
    ExecutionEvent,
    ExecutionFailed,
    ExecutionPaused,
    ExecutionRefused,
    ExecutionResumed,
    ExecutionStarted,
    SecretFileRecord,
)
from symbi_contracts.scheduler.events import STOP_REFUSED
from symbi_contracts.tools.errors import ToolError, ToolServerUnavailable

from symbi_sandbox_agent.data_roots import resolve
from symbi_sandbox_agent.domain import ExecutionState, WorkItem
from symbi_sandbox_agent.grants import DataRoot
from symbi_sandbox_agent.metrics import EXECUTIONS
from symbi_sandbox_agent.mounts import MountDenied, MountUndecided, decide_mounts
from symbi_sandbox_agent.recorder import ExecutionRecorder
from symbi_sandbox_agent.run import Running
from symbi_sandbox_agent.runner import SandboxEngine, Threads
from symbi_sandbox_agent.secret_files import (
    SecretUndecided,
    VersionedSecrets,
    decide_secrets,
    fetch_secrets,
    remove_secret_files,
    secrets_dir,
    write_secret_files,
)
from symbi_sandbox_agent.spec import HostCapabilities, SandboxDefaults, SandboxSpec, apply_caps, build_spec
from symbi_sandbox_agent.supervisor import KILL_GRACE_S, Supervisor
from symbi_sandbox_agent.tasks import TASK_CODEC, TaskEvent, TaskView, fold_task, refusal_reason
from symbi_sandbox_agent.tools.declared import register_declared

if TYPE_CHECKING:
    from symbi_sandbox_agent.models.gateway import ModelGateway
    from symbi_sandbox_agent.tools.service import ToolService

log = structlog.get_logger(__name__)

#: Conditions of an allow that a sandbox start honours: it logs everything anyway, and lowers its limits to caps.
HONOURED_CONDITIONS = SANDBOX_START.conditions


class SandboxService:
    """Handles this host's work items and the commands on its running sandboxes."""

    def __init__(
        self,
        rt: ServiceRuntime,
        host_id: str,
        engine: SandboxEngine,
        threads: Threads,
        capabilities: HostCapabilities,
        defaults: SandboxDefaults,
        work_dir: Path,
        running: dict[str, Running],
        executions: Repository[ExecutionState, ExecutionEvent, ExecutionEvent],
        heartbeat: Callable[[], Awaitable[None]],
        data_roots: Mapping[str, DataRoot] | None = None,
    ) -> None:
        self.rt = rt
        self.host_id = host_id
        self.engine = engine
        self.threads = threads
        self.capabilities = capabilities
        self.defaults = defaults
        #: The heartbeat that records this host's running tasks (see the crash safety above).
        self.heartbeat = heartbeat
        #: The sandboxes this host runs, by task id (shared with the host's heartbeat and status).
        self.running = running
        self.executions = executions
        #: The operator's data roots, which the agents' filesystem grants are mounted from (docs/grants.md).
        self.data_roots = dict(data_roots or {})
        self.recorder = ExecutionRecorder(rt, self.executions)
        #: The MCP tools agents of this host may call (``tools.*`` of the protocol); None: none configured.
        self.tools: ToolService | None = None
        #: The model gateway (``models.*`` of the protocol, and ``models.symbi.internal``); None: no providers.
        self.models: ModelGateway | None = None
        #: The secrets store the tasks' secret files are read from (docs/secrets.md); None: no secrets here.
        self.secrets: VersionedSecrets | None = None
        self.supervisor = Supervisor(rt, engine, threads, self.recorder, self.running, work_dir, controls=self)

    # --- work -----------------------------------------------------------------------------------

    async def dispatch(self, item: WorkItem, records: list[Recorded[TaskEvent]] | None = None) -> bool:
        """Start (or refuse) the task's sandbox; returns once ``execution.started``/``refused`` is stored.
        ``records``: the task's events if the caller has just read them (else they are read here).

        An attempt whose task has a stop request for it (``task.stop_requested``: cancelled or preempted) never
        starts: it is refused (``execution.refused``, code ``stop_requested``). The events stored after
        ``records`` are read once more after the run is listed here, before it starts (usually none: one read, no
        decryption), so a request made meanwhile is either seen then or finds the run here when the host is asked
        to stop it (the scheduler records the request before it asks).

        False: not now — an older attempt of the task is still being stopped here; try again shortly."""
        task_id = item.task_id
        if records is None:
            records = await self.rt.store.load("task", task_id, TASK_CODEC)
        events = [r.event for r in records]
        task = fold_task(task_id, events)
        assigned = task.assigned
        if assigned is None or assigned.host_id != self.host_id or assigned.attempt != item.attempt or task.ended:
            log.warning(
                "stale or misrouted work item ignored",
                task_id=task_id,
                attempt=item.attempt,
                assigned_to=assigned.host_id if assigned else None,
                assigned_attempt=assigned.attempt if assigned else None,
                ended=task.ended,
            )
            return True
        current = self.running.get(task_id)
        if current is not None:
            return current.spec.attempt >= item.attempt  # an older attempt still stopping: retry later
        state = (await self.executions.load(task_id, fresh=True)).state
        if state.attempt == item.attempt and state.host_id == self.host_id and state.status in ("running", "paused"):
            # Started here, yet this daemon runs no sandbox for it: its execution.started landed although the
            # append could not be confirmed, so no container was started. End the attempt as failed, saying why.
            reason = "the sandbox-agent could not confirm the start of the task, so its sandbox never ran"
            await self.executions.execute(task_id, ExecutionFailed(attempt=state.attempt, reason=reason))
            return True
        if state.attempt >= item.attempt:
            return True  # redelivered: this attempt already started or was refused
        if task.stop is not None:
            await self._refuse(item, task.agent_id, STOP_REFUSED, refusal_reason(task.stop), None, assigned.tier)
            return True
        try:
            spec = build_spec(task, self.host_id, self.capabilities, self.defaults)
            # No thread hop for what needs no I/O: an image seen present a moment ago, a task without grants.
            if not self.engine.image_known(spec.image) and not await self.threads(
                self.engine.image_present, spec.image
            ):
                raise InvalidWorkload(f"image {spec.image} is not on host {self.host_id}; images are not pulled here")
            access = assigned.filesystem_access
            grants = await self.threads(resolve, access, self.data_roots) if access else ()
        except SandboxRefused as err:
            await self._refuse(item, task.agent_id, err.code, str(err), None, assigned.tier)
            return True
        request = self._decision_request(task, spec)
        # The service's one enforcer: checks the allow's conditions against what a sandbox start enforces
        # (an unenforceable one denies) and logs the decision under the id the event below records.
        enforcer = Enforcer.around(await self.rt.decision_point())
        verdict = await enforcer.decide(request, SANDBOX_START)
        decision, record = verdict.decision, verdict.record
        if verdict.undecided:  # no decision could be had: nothing starts, the work item comes back later
            raise InfrastructureError(f"sandbox.start for task {task_id} not decided: {record.reason}")
        if isinstance(decision, Deny):
            reason = f"policy denied sandbox.start: {decision.reason}"
            code = "condition_not_honoured" if decision.code == "unenforceable_condition" else "policy_denied"
            await self._refuse(item, task.agent_id, code, reason, record, spec.tier)
            return True
        if isinstance(decision, AllowWithConditions):
            try:
                spec = apply_caps(spec, resource_caps(decision.conditions))
            except SandboxRefused as err:
                await self._refuse(item, task.agent_id, err.code, str(err), record, spec.tier)
                return True
        if assigned.mcp_servers:  # the definition's MCP servers, registered as `symbi tools add` would
            try:
                await register_declared(self.tools, task.agent_id, assigned.mcp_servers)
            except (ToolError, ToolServerUnavailable) as err:
                await self._refuse(
                    item, task.agent_id, err.code, f"the definition's MCP servers: {err}", record, spec.tier
                )
                return True
        try:  # each grant is a decision of its own (enforcement point sandbox-agent.data_mount)
            mounts = await decide_mounts(enforcer, task.agent_id, grants)
        except MountUndecided as exc:
            raise InfrastructureError(f"task {task_id}: {exc}") from None
        except MountDenied as err:
            await self._refuse(item, task.agent_id, err.code, str(err), err.decision, spec.tier)
            return True
        spec = replace(spec, data_mounts=tuple(m.mount for m in mounts))
        try:  # each secret is a decision of its own (enforcement point sandbox-agent.secret_file)
            spec, secret_files = await self._secret_files(spec, task.agent_id, enforcer)
        except SecretUndecided as exc:
            raise InfrastructureError(f"task {task_id}: {exc}") from None
        except SandboxRefused as err:
            await self._refuse(item, task.agent_id, err.code, str(err), getattr(err, "decision", None), spec.tier)
            return True
        run = Running(spec, task.agent_id)
        self.running[task_id] = run
        try:
            newer = await self.rt.store.load("task", task_id, TASK_CODEC, after=records[-1].tip if records else None)
            latest = fold_task(task_id, events + [r.event for r in newer])
            reassigned = latest.assigned is None or latest.assigned.attempt != item.attempt
            if latest.stop is not None or latest.ended or reassigned:
                # Stopped (or moved on) while it was being checked: it does not start.
                self.running.pop(task_id, None)
                remove_secret_files(spec.secrets_dir)
                if latest.stop is not None and not reassigned:
                    reason = refusal_reason(latest.stop)
                    await self._refuse(item, task.agent_id, STOP_REFUSED, reason, None, spec.tier)
                run.outcome = "execution.refused"
                run.done.set()  # a stop that found the run listed here waits for this
                return True
            await self.heartbeat()  # a crash from here on finds the task in this host's entry
            _, recs = await self.executions.execute(
                task_id,
                ExecutionStarted(
                    attempt=spec.attempt,
                    agent_id=task.agent_id,
                    host_id=self.host_id,
                    tier=spec.tier,
                    runtime=spec.runtime,
                    container=spec.name,
                    image=spec.image,
                    command=spec.command,
                    limits=spec.limits,
                    hardening=spec.hardening(),
                    decision=record,
                    risk_score=assigned.risk_score,
                    risk_factors=dict(assigned.risk_factors),
                    started_at=run.started_at,
                    data_mounts=tuple(m.record() for m in mounts),
                    secret_files=tuple(secret_files),
                ),
            )
        except BaseException:
            self.running.pop(task_id, None)
            remove_secret_files(spec.secrets_dir)
            raise
        if not recs:
            self.running.pop(task_id, None)
            remove_secret_files(spec.secrets_dir)
            return True
        self.rt.spawn(self.supervisor.run(run, task.input), f"sandbox:{task_id}")
        return True

    async def _secret_files(
        self, spec: SandboxSpec, agent_id: str, enforcer: Enforcer
    ) -> tuple[SandboxSpec, list[SecretFileRecord]]:
        """The task's secrets decided, read and written to tmpfs: the spec with their directory, and the records."""
        if not spec.secrets:
            return spec, []
        decided = await decide_secrets(enforcer, agent_id, spec.secrets)
        values = await fetch_secrets(self.secrets, decided)
        if not self.defaults.secrets_root:
            raise SecretsUnavailable("this host has no secrets directory ([sandbox] secrets on tmpfs) configured")
        directory = secrets_dir(self.defaults.secrets_root, self.host_id, spec.name)
        remove_secret_files(directory)  # a previous attempt's leftovers, if its clean-up did not run
        records = await self.threads(write_secret_files, directory, values, spec.owner, self.defaults.secrets_root)
        log.info("secret files written", task_id=spec.task_id, secrets=[f"{r.name} v{r.version}" for r in records])
        return replace(spec, secrets_dir=directory), records

    def _decision_request(self, task: TaskView, spec: SandboxSpec) -> DecisionRequest:
        """``Agent::"<agent>"`` may ``sandbox.start`` ``Task::"<id>"``, in the policy schema's vocabulary."""
        lim = spec.limits
        return DecisionRequest(
            principal=EntityRef(type="Agent", id=task.agent_id or "unknown"),
            action="sandbox.start",
            resource=EntityRef(type="Task", id=task.task_id, attrs={"agent": task.agent_id}),
            context={
                "resources": resources_context(
                    memory_mb=lim.memory_mb,
                    cpu_cores=lim.cpu_cores,
                    disk_io_mbps=lim.disk_io_mbps,
                    network_io_mbps=lim.network_io_mbps,
                    execution_timeout_s=lim.execution_timeout_s,
                ),
                "security_tier": spec.tier,
                "image": spec.image,
                "network": spec.network,
            },
        )

    async def _refuse(
        self, item: WorkItem, agent_id: str, code: str, reason: str, decision: DecisionRecord | None, tier: str = ""
    ) -> None:
        log.warning("task refused", task_id=item.task_id, code=code, reason=reason)
        refused = ExecutionRefused(attempt=item.attempt, agent_id=agent_id, code=code, reason=reason, decision=decision)
        _, recs = await self.executions.execute(item.task_id, refused)
        if recs:
            EXECUTIONS.labels("refused", tier or "unknown").inc()

    # --- control --------------------------------------------------------------------------------

    async def store_action(self, run: Running, event: ExecutionAction) -> None:
        """Record one decision of a run's action gateway (retrying while NATS is away)."""
        await self.recorder.store_action(run, event)

    def _get(self, task_id: str) -> Running:
        run = self.running.get(task_id)
        if run is None:
            raise UnknownExecution(f"task {task_id} is not running on host {self.host_id}", task_id=task_id)
        return run

    async def suspend(self, task_id: str) -> dict[str, Any]:
        run = self._get(task_id)
        if run.paused_since is not None:
            raise ExecutionStateError(f"task {task_id} is already suspended")
        await self.freeze(run, "suspended")
        return {"task_id": task_id, "status": "paused"}

    async def resume(self, task_id: str) -> dict[str, Any]:
        """Thaw the task; one held by a denied action has it decided again first (see ``gateway``)."""
        run = self._get(task_id)
        if run.gateway is not None and run.gateway.pending is not None:
            return await run.gateway.resume()
        return await self.thaw(run, "resumed")

    async def freeze(self, run: Running, reason: str) -> None:
        """Pause the container (cgroup freezer) and record it; a container paused already stays so."""
        task_id = run.spec.task_id
        if run.paused_since is not None:
            return
        if not run.container_id or run.kill_reason:
            raise ExecutionStateError(f"task {task_id} is not running (starting or being stopped)")
        await self.threads(self.supervisor.runner(run).pause, run.container_id)
        run.paused_since = time.time()
        await self.executions.execute(task_id, ExecutionPaused(attempt=run.spec.attempt, reason=reason))

    async def thaw(self, run: Running, reason: str) -> dict[str, Any]:
        """Unpause the container and record it; the time it spent paused does not count against its timeout."""
        task_id = run.spec.task_id
        if run.paused_since is None:
            raise ExecutionStateError(f"task {task_id} is not suspended")
        await self.threads(self.supervisor.runner(run).unpause, run.container_id)
        run.paused_total += time.time() - run.paused_since
        run.paused_since = None
        await self.executions.execute(task_id, ExecutionResumed(attempt=run.spec.attempt, reason=reason))
        return {"task_id": task_id, "status": "running"}

    async def terminate(self, task_id: str) -> dict[str, Any]:
        run = self.running.get(task_id)
        if run is None:
            state = (await self.executions.load(task_id, fresh=True)).state
            if state.status == "ended":
                return {"task_id": task_id, "status": "ended", "outcome": state.outcome}
            raise UnknownExecution(f"task {task_id} is not running on host {self.host_id}", task_id=task_id)
        await self.supervisor.kill(run, "terminated")
        run.paused_since = None
        await asyncio.wait_for(run.done.wait(), timeout=KILL_GRACE_S + 5)
        return {"task_id": task_id, "status": "ended", "outcome": run.outcome.removeprefix("execution.")}
