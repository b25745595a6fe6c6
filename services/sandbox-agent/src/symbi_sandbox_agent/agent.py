"""The sandbox-agent daemon: registers its host, consumes ``work.<host_id>``, runs each task in a sandbox.

Flow of one work item (see docs/contracts/tasks.md): load the task's events, check that its latest
assignment is for this host and attempt, build the sandbox spec (or refuse), ask the policy
decision point (``sandbox.start`` on ``Task::"<id>"``), record the task in this host's heartbeat,
append ``execution.started``, ack the work item, then run the container: input on stdin (and as a
read-only file), stdout/stderr as ``execution.output`` chunks, usage sampled from the cgroup, a
hard timeout and an output cap, and one terminal event. The container is always removed.

Crash safety: a task is in this host's ``HOSTS`` entry before its ``execution.started`` exists, and
its container carries this host's label, so after a crash the start-up reconciliation finds every
task this host may have been running, removes their containers and reports them failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.js.api import ConsumerConfig
from symbi_common.aggregate import Repository
from symbi_common.decisions import AllowWithConditions, DecisionRecord, DecisionRequest, Deny, EntityRef
from symbi_common.errors import AppendFailed, ConfigError, InfrastructureError
from symbi_common.policy.conditions import resource_caps
from symbi_common.policy.enforcement import SANDBOX_START
from symbi_common.policy.hooks import Enforcer, resources_context
from symbi_common.service import ServiceRuntime
from symbi_common.settings import SandboxSettings
from symbi_common.streams import EVENTS_STREAM, BacklogFetch, require_streams
from symbi_common.telemetry import continue_trace, traced
from symbi_contracts.sandbox_agent.errors import ExecutionStateError, InvalidWorkload, SandboxRefused, UnknownExecution
from symbi_contracts.sandbox_agent.events import (
    HOST_CODEC,
    ExecutionAction,
    ExecutionEvent,
    ExecutionExited,
    ExecutionFailed,
    ExecutionKilled,
    ExecutionOomKilled,
    ExecutionOutput,
    ExecutionPaused,
    ExecutionRefused,
    ExecutionResumed,
    ExecutionStarted,
    ExecutionTimedOut,
    HostEvent,
    HostReconciled,
    HostRegistered,
    Usage,
)
from symbi_contracts.scheduler.events import TaskAssigned

from symbi_sandbox_agent.docker_host import CgroupUsage, DockerHost, ExitState, HostInfo, remove_cgroup_tree
from symbi_sandbox_agent.execution import EXECUTION, ExecutionState
from symbi_sandbox_agent.gateway import ActionGateway
from symbi_sandbox_agent.metrics import CPU_SECONDS, EXECUTIONS, PEAK_MEMORY, RUNNING
from symbi_sandbox_agent.output import STREAMS, OutputCollector, Stream
from symbi_sandbox_agent.spec import CGROUP_PARENT, SandboxDefaults, SandboxSpec, apply_caps, build_spec
from symbi_sandbox_agent.tasks import TASK_CODEC, TaskView, fold_task

log = structlog.get_logger(__name__)
T = TypeVar("T")

WORK_STREAM = "WORK"
HOSTS_BUCKET = "HOSTS"
_HOST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Output is flushed at least this often while a workload keeps printing less than a chunk.
FLUSH_INTERVAL_S = 0.5
SAMPLE_INTERVAL_S = 0.2
#: Usage is also sampled as output arrives (while the container surely lives), at most this often.
SAMPLE_MIN_GAP_S = 0.05
#: After a kill, how long the output stream may take to end before the run gives up on it.
KILL_GRACE_S = 10.0
#: Tries to store an output or terminal event (backing off to 5 s between tries: about 2 minutes in all).
TERMINAL_ATTEMPTS = 30
#: Delay before a work item is offered again while an older attempt of its task is still being stopped.
BUSY_RETRY_S = 0.5
#: Conditions of an allow that a sandbox start honours: it logs everything anyway, and lowers its limits to caps.
HONOURED_CONDITIONS = SANDBOX_START.conditions


class WorkItem(msgspec.Struct, frozen=True):
    task_id: str
    attempt: int


def resolve_host_id(configured: str) -> str:
    """``[sandbox] host_id``, or the hostname made safe for NATS subjects and consumer names."""
    if configured:
        if not _HOST_ID_RE.match(configured):
            raise ConfigError(
                f"{configured!r} is not a valid host id: use 1-64 letters, digits, '-' or '_'",
                setting="sandbox.host_id",
            )
        return configured
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "host"


def check_settings(s: SandboxSettings) -> None:
    """Refuse ``[sandbox]`` values that would leave sandboxes unlimited or the host looking lost."""
    checks = [
        (s.output_cap_bytes > 0, "output_cap_bytes", "must be more than 0"),
        (s.scratch_mb >= 1, "scratch_mb", "must be at least 1"),
        (s.pids_limit >= 16, "pids_limit", "must be at least 16"),
        (0 < s.heartbeat_interval_s <= 2.5, "heartbeat_interval_s", "must be in (0, 2.5]: a host is lost after 5 s"),
        (
            re.fullmatch(r"\d+:\d+", s.user) is not None and not s.user.startswith("0:"),
            "user",
            "must be a non-root uid:gid",
        ),
    ]
    for ok, name, message in checks:
        if not ok:
            raise ConfigError(message, setting=f"sandbox.{name}")


class _HostAggregate:
    """``host.<host_id>``: a log of registrations and reconciliations; every event is accepted."""

    aggregate_type = "host"
    codec = HOST_CODEC
    state_type = int

    def initial(self, aggregate_id: str) -> int:
        return 0

    def apply(self, state: int, event: HostEvent) -> int:
        return state + 1

    def decide(self, state: int, command: HostEvent) -> list[HostEvent]:
        return [command]


@dataclass
class Running:
    """One sandbox this daemon runs."""

    spec: SandboxSpec
    agent_id: str
    started_at: float = field(default_factory=time.time)
    container_id: str = ""
    paused_since: float | None = None
    paused_total: float = 0.0
    kill_reason: str = ""
    killed_at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: str = ""
    #: Whether the terminal event is stored (until then the task stays in the heartbeat entry).
    stored: bool = False
    #: The action gateway of a workload with ``actions: true`` (set while it runs).
    gateway: ActionGateway | None = None

    def active_seconds(self, now: float) -> float:
        """Run time that counts against the timeout (time spent paused does not)."""
        paused = self.paused_total + (now - self.paused_since if self.paused_since is not None else 0.0)
        return now - self.started_at - paused


class SandboxAgent:
    def __init__(self, runtime: ServiceRuntime, settings: SandboxSettings, host_id: str) -> None:
        self.rt = runtime
        self.settings = settings
        self.host_id = host_id
        self.defaults = SandboxDefaults(
            output_cap_bytes=settings.output_cap_bytes,
            scratch_mb=settings.scratch_mb,
            pids_limit=settings.pids_limit,
            user=settings.user,
        )
        self.work_dir = Path(settings.work_dir or Path(tempfile.gettempdir()) / "symbi-sandbox") / host_id
        self.running: dict[str, Running] = {}
        self.executions: Repository[ExecutionState, ExecutionEvent, ExecutionEvent] = runtime.repository(EXECUTION)
        self.hosts: Repository[int, HostEvent, HostEvent] = Repository(runtime.store, _HostAggregate(), snapshots=None)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="docker")
        self.docker: DockerHost
        self.info: HostInfo
        self.kv: Any = None
        self.last_heartbeat = 0.0
        self.reconciled: HostReconciled | None = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking Docker call on the daemon's own threads."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- start-up -------------------------------------------------------------------------------

    async def start(self) -> None:
        self.docker = await self._call(DockerHost, self.settings.docker_url)
        self.info = await self._call(self.docker.info)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        await self._ensure_jetstream()
        await self.reconcile()
        await self.hosts.execute(
            self.host_id,
            HostRegistered(
                host_id=self.host_id,
                cpu_cores=self.info.cpu_cores,
                memory_mb=self.info.memory_mb,
                tiers=self.info.capabilities.tiers,
                docker_version=self.info.docker_version,
                runtimes=self.info.runtimes,
            ),
        )
        await self.heartbeat()
        self.rt.spawn(self._heartbeat_loop(), "sandbox:heartbeat")
        sub = await self.rt.js.pull_subscribe(
            f"work.{self.host_id}",
            durable=f"sandbox_{self.host_id}",
            stream=WORK_STREAM,
            config=ConsumerConfig(ack_wait=60, max_deliver=-1),
        )
        self.rt.spawn(self._consume(sub), "sandbox:work")
        log.info("sandbox-agent started", host_id=self.host_id, tiers=self.info.capabilities.tiers)

    async def _ensure_jetstream(self) -> None:
        """The ``WORK`` stream and ``HOSTS`` bucket are provisioned by the NATS admin; refuse to start without them."""
        await require_streams(self.rt.js, (WORK_STREAM, "KV_" + HOSTS_BUCKET))
        self.kv = await self.rt.js.key_value(HOSTS_BUCKET)

    async def reconcile(self) -> HostReconciled:
        """Leave nothing running unaccounted: remove this host's containers, report their tasks failed,
        and kill runtime processes (shims, gVisor sandboxes) whose container Docker no longer knows."""
        previous: list[str] = []
        try:
            entry = await self.kv.get(self.host_id)
            previous = list(msgspec.json.decode(entry.value).get("running", []))
        except (nats.js.errors.KeyNotFoundError, msgspec.DecodeError, AttributeError):
            pass
        containers = await self._call(self.docker.owned, self.host_id)
        for c in containers:
            await self._call(self.docker.remove, c.id)
        killed = await self._kill_leftovers()
        with_container = {c.task_id for c in containers}
        failed: list[str] = []
        for task_id in sorted(set(previous) | with_container):
            if not task_id:
                continue
            state = (await self.executions.load(task_id, fresh=True)).state
            if state.status not in ("running", "paused") or state.host_id != self.host_id:
                continue
            reason = (
                "the sandbox-agent restarted while the task ran; its container was removed"
                if task_id in with_container
                else "the task's container vanished while the sandbox-agent was down"
            )
            _, recs = await self.executions.execute(task_id, ExecutionFailed(attempt=state.attempt, reason=reason))
            if recs:
                failed.append(task_id)
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        remove_cgroup_tree(f"{CGROUP_PARENT}/{self.host_id}")
        event = HostReconciled(
            removed_containers=tuple(c.name for c in containers),
            failed_tasks=tuple(failed),
            killed_processes=tuple(killed),
        )
        await self.hosts.execute(self.host_id, event)
        self.reconciled = event
        if containers or failed or killed:
            log.warning("reconciled", removed=event.removed_containers, failed=failed, killed_processes=killed)
        return event

    async def _kill_leftovers(self) -> list[int]:
        """Kill runtime processes of containers Docker no longer knows, until a scan finds none (a killed
        shim's runtime may still be spawning helpers while it dies)."""
        killed: list[int] = []
        for _ in range(5):
            found = await self._call(self.docker.kill_processes, await self._call(self.docker.leftover_processes))
            if not found:
                break
            killed.extend(found)
            await asyncio.sleep(0.3)
        return killed

    # --- heartbeat ------------------------------------------------------------------------------

    def host_entry(self) -> dict[str, Any]:
        return {
            "host_id": self.host_id,
            "cpu_cores": self.info.cpu_cores,
            "memory_mb": self.info.memory_mb,
            "tiers": list(self.info.capabilities.tiers),
            "running": sorted(self.running),
            "heartbeat_at": time.time(),
        }

    async def heartbeat(self) -> None:
        entry = self.host_entry()
        await self.kv.put(self.host_id, msgspec.json.encode(entry))
        self.last_heartbeat = entry["heartbeat_at"]

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            try:
                await self.heartbeat()
            except Exception as exc:  # NATS away for a moment: the next beat tries again
                self.rt.note_error(f"heartbeat: {exc}")

    # --- work -----------------------------------------------------------------------------------

    async def _consume(self, sub: Any) -> None:
        try:
            fetch = BacklogFetch(sub, 8)
            while True:
                try:
                    msgs = await fetch(timeout=1.0)
                except Exception as exc:
                    self.rt.note_error(f"work fetch: {exc}")
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    await self._on_work(msg)
        finally:
            # Drop the fetch's inbox now: a status reply left in it would hold up the connection's drain.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_work(self, msg: Any) -> None:
        try:
            item = msgspec.json.decode(msg.data, type=WorkItem)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("malformed work item dropped", error=str(exc), data=msg.data[:200])
            await msg.term()
            return
        try:
            headers = await self._trace_headers(item, msg.headers)
            with continue_trace(
                "sandbox.work", headers, attributes={"symbi.task_id": item.task_id, "symbi.attempt": item.attempt}
            ):
                handled = await self.dispatch(item)
        except Exception as exc:
            log.exception("work item failed, redelivering", task_id=item.task_id)
            self.rt.note_error(f"work {item.task_id}: {exc!r}")
            await msg.nak(delay=1.0)
            return
        if handled:
            await msg.ack()
        else:
            await msg.nak(delay=BUSY_RETRY_S)

    async def _trace_headers(self, item: WorkItem, headers: dict[str, str] | None) -> dict[str, str]:
        """The trace a work item continues: the scheduler's ``traceparent`` on the item, else the one stored
        with the task's latest ``task.assigned`` event."""
        if headers and "traceparent" in headers:
            return dict(headers)
        try:
            records = await self.rt.store.load("task", item.task_id, TASK_CODEC)
            assigned = [r for r in records if isinstance(r.event, TaskAssigned)]
            if assigned:
                raw = await self.rt.js.get_msg(EVENTS_STREAM, seq=assigned[-1].sequence)
                return dict(raw.headers or {})
        except Exception as exc:  # tracing must never hold up a task
            log.debug("no trace context for work item", task_id=item.task_id, error=str(exc))
        return dict(headers or {})

    async def dispatch(self, item: WorkItem) -> bool:
        """Start (or refuse) the task's sandbox; returns once ``execution.started``/``refused`` is stored.

        False: not now — an older attempt of the task is still being stopped here; try again shortly."""
        task_id = item.task_id
        task = fold_task(task_id, [r.event for r in await self.rt.store.load("task", task_id, TASK_CODEC)])
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
        if state.attempt >= item.attempt:
            return True  # redelivered: this attempt already started or was refused
        try:
            spec = build_spec(task, self.host_id, self.info.capabilities, self.defaults)
            if not await self._call(self.docker.image_present, spec.image):
                raise InvalidWorkload(f"image {spec.image} is not on host {self.host_id}; images are not pulled here")
        except SandboxRefused as err:
            await self._refuse(item, err.code, str(err), None, assigned.tier)
            return True
        request = self._decision_request(task, spec)
        # The service's one enforcer: checks the allow's conditions against what a sandbox start enforces
        # (an unenforceable one denies) and logs the decision under the id the event below records.
        verdict = await Enforcer.around(await self.rt.decision_point()).decide(request, SANDBOX_START)
        decision, record = verdict.decision, verdict.record
        if verdict.undecided:  # no decision could be had: nothing starts, the work item comes back later
            raise InfrastructureError(f"sandbox.start for task {task_id} not decided: {record.reason}")
        if isinstance(decision, Deny):
            reason = f"policy denied sandbox.start: {decision.reason}"
            code = "condition_not_honoured" if decision.code == "unenforceable_condition" else "policy_denied"
            await self._refuse(item, code, reason, record, spec.tier)
            return True
        if isinstance(decision, AllowWithConditions):
            try:
                spec = apply_caps(spec, resource_caps(decision.conditions))
            except SandboxRefused as err:
                await self._refuse(item, err.code, str(err), record, spec.tier)
                return True
        run = Running(spec, task.agent_id)
        self.running[task_id] = run
        try:
            await self.heartbeat()  # a crash from here on finds the task in this host's entry
            _, recs = await self.executions.execute(
                task_id,
                ExecutionStarted(
                    attempt=spec.attempt,
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
                ),
            )
        except BaseException:
            self.running.pop(task_id, None)
            raise
        if not recs:
            self.running.pop(task_id, None)
            return True
        self.rt.spawn(self._run(run, task.input), f"sandbox:{task_id}")
        return True

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
                    network_io_mbps=0,
                    execution_timeout_s=lim.execution_timeout_s,
                ),
                "security_tier": spec.tier,
                "image": spec.image,
                "network": False,
            },
        )

    async def _refuse(
        self, item: WorkItem, code: str, reason: str, decision: DecisionRecord | None, tier: str = ""
    ) -> None:
        log.warning("task refused", task_id=item.task_id, code=code, reason=reason)
        _, recs = await self.executions.execute(
            item.task_id, ExecutionRefused(attempt=item.attempt, code=code, reason=reason, decision=decision)
        )
        if recs:
            EXECUTIONS.labels("refused", tier or "unknown").inc()

    # --- one sandbox ----------------------------------------------------------------------------

    def _stage_input(self, spec: SandboxSpec, data: bytes) -> Path:
        folder = self.work_dir / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        path = folder / "input"
        path.write_bytes(data)
        path.chmod(0o644)
        return path

    async def _run(self, run: Running, data: bytes) -> None:
        spec = run.spec
        collector = OutputCollector(spec.limits.output_cap_bytes)
        usage: CgroupUsage | None = None
        terminal: ExecutionEvent
        attributes = {"symbi.task_id": spec.task_id, "symbi.tier": spec.tier, "symbi.container": spec.name}
        try:
            try:
                with traced("sandbox.container.start", attributes=attributes):
                    input_file = self._stage_input(spec, data)
                    run.container_id = await self._call(self.docker.create, spec, str(input_file))
                    sock = await self._call(self.docker.attach, run.container_id)
                    await self._call(self.docker.start, run.container_id)
            except Exception as exc:
                terminal = ExecutionFailed(attempt=spec.attempt, reason=f"the sandbox did not start: {exc}")
                await self._discard(run)
            else:
                usage = CgroupUsage(spec.cgroup_parent)
                usage.sample()
                RUNNING.labels(spec.tier).inc()
                try:
                    with traced("sandbox.container.run", attributes=attributes):
                        exit_state = await self._supervise(run, sock, data, collector, usage)
                except Exception as exc:  # e.g. output that could not be stored for minutes: stop the run
                    log.exception("supervising the sandbox failed", container=spec.name)
                    await self._discard(run)
                    terminal = ExecutionFailed(
                        attempt=spec.attempt,
                        usage=usage.sample(),
                        output=collector.digest(),
                        duration_s=round(time.time() - run.started_at, 3),
                        reason=f"the sandbox-agent could not follow the run: {exc}",
                    )
                else:
                    await self._discard(run)
                    terminal = self._terminal(run, exit_state, collector, usage.sample())
                finally:
                    RUNNING.labels(spec.tier).dec()
        except asyncio.CancelledError:
            # The daemon is shutting down: the sandbox must not outlive it unaccounted.
            run.kill_reason = run.kill_reason or "shutdown"
            await self._discard(run)
            await self._append(run, self._terminal(run, None, collector, usage.last if usage else Usage()), 1)
            self._finish(run)
            raise
        await self._append(run, terminal)
        self._finish(run)
        if spec.runtime == "runsc":
            # After the result is out: a gVisor sandbox that failed or hung can leave its shim behind.
            try:
                await self._kill_leftovers()
            except Exception as exc:
                self.rt.note_error(f"runtime clean-up after {spec.name}: {exc}")

    async def _supervise(
        self, run: Running, sock: Any, data: bytes, collector: OutputCollector, usage: CgroupUsage
    ) -> ExitState:
        """Feed stdin, stream the output, enforce the timeout and the output cap; the container's exit state."""
        loop = asyncio.get_running_loop()
        frames: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()

        def pump() -> None:
            try:
                for frame in self.docker.frames(sock):
                    loop.call_soon_threadsafe(frames.put_nowait, frame)
            finally:
                loop.call_soon_threadsafe(frames.put_nowait, None)
                self.docker.close_socket(sock)

        threading.Thread(target=pump, name=f"output:{run.spec.name}", daemon=True).start()
        gateway: ActionGateway | None = None
        writer: asyncio.Future[None] | None = None
        if run.spec.actions:
            # stdin stays open as the reply channel; the input is only the file $SYMBI_INPUT.
            async def reply(line: bytes) -> None:
                await self._call(self.docker.send_line, sock, line)

            gateway = run.gateway = ActionGateway(self, run, reply)
            gateway.start()
        else:
            # Not awaited here: a workload that never reads its stdin must still meet its timeout.
            writer = loop.run_in_executor(self._pool, self.docker.send_input, sock, data)
        try:
            return await self._follow(run, frames, collector, usage, gateway, writer)
        finally:
            if gateway is not None:
                await gateway.close()

    async def _follow(
        self,
        run: Running,
        frames: asyncio.Queue[tuple[int, bytes] | None],
        collector: OutputCollector,
        usage: CgroupUsage,
        gateway: ActionGateway | None,
        writer: asyncio.Future[None] | None,
    ) -> ExitState:
        """Stream the output and enforce the timeout and the output cap until the output ends."""
        timeout = run.spec.limits.execution_timeout_s
        last_flush = last_sample = time.monotonic()
        while True:
            now = time.time()
            if not run.kill_reason and run.active_seconds(now) >= timeout:
                await self._kill(run, "timeout")
            if run.killed_at is not None and now - run.killed_at > KILL_GRACE_S:
                log.error("output stream did not end after kill", container=run.spec.name)
                break
            try:
                frame = await asyncio.wait_for(frames.get(), timeout=SAMPLE_INTERVAL_S)
            except TimeoutError:
                frame = (0, b"")
            if frame is None:
                break
            stream, chunk = frame
            if chunk:
                name = STREAMS.get(stream, "stderr")
                if gateway is not None and name == "stderr":
                    gateway.feed(chunk)
                for s, piece in collector.feed(name, chunk):
                    await self._emit(run, s, piece)
                if collector.exceeded and not run.kill_reason:
                    await self._kill(run, "output_cap")
            mono = time.monotonic()
            if mono - last_sample >= SAMPLE_MIN_GAP_S:
                usage.sample()
                last_sample = mono
            if not chunk or mono - last_flush >= FLUSH_INTERVAL_S:
                for s, piece in collector.flush():
                    await self._emit(run, s, piece)
                last_flush = mono
        usage.sample()
        for s, piece in collector.flush():
            await self._emit(run, s, piece)
        if gateway is not None:
            await gateway.close()  # the requests still being served are recorded before the terminal event
        exit_state = await self._call(self.docker.wait, run.container_id, KILL_GRACE_S)
        if writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, KILL_GRACE_S)  # the container is gone: the write failed or ended
        return exit_state

    async def _emit(self, run: Running, stream: Stream, data: bytes) -> None:
        event = ExecutionOutput(attempt=run.spec.attempt, stream=stream, offset=0, data=data)
        if not await self._store(run, event, TERMINAL_ATTEMPTS):
            raise AppendFailed(f"output of {run.spec.task_id} could not be stored; the run is stopped")

    async def _kill(self, run: Running, reason: str) -> None:
        run.kill_reason = run.kill_reason or reason
        run.killed_at = time.time()
        if run.container_id:
            await self._call(self.docker.kill, run.container_id)

    def _terminal(
        self, run: Running, exit_state: ExitState | None, collector: OutputCollector, usage: Usage
    ) -> ExecutionEvent:
        spec = run.spec
        common: dict[str, Any] = {
            "attempt": spec.attempt,
            "exit_code": exit_state.exit_code if exit_state else None,
            "usage": usage,
            "output": collector.digest(),
            "duration_s": round(time.time() - run.started_at, 3),
        }
        if run.kill_reason == "timeout":
            return ExecutionTimedOut(
                **common,
                timeout_s=spec.limits.execution_timeout_s,
                reason=f"ran past its {spec.limits.execution_timeout_s} s timeout",
            )
        if exit_state is not None and exit_state.oom_killed:
            limit = spec.limits.memory_mb * 1024 * 1024
            return ExecutionOomKilled(
                **common, memory_limit_bytes=limit, reason=f"allocated past its {spec.limits.memory_mb} MB limit"
            )
        if run.kill_reason:
            reasons = {
                "output_cap": f"printed more than {spec.limits.output_cap_bytes} bytes",
                "terminated": "terminated by command",
                "shutdown": "the sandbox-agent shut down",
            }
            return ExecutionKilled(**common, reason=run.kill_reason + ": " + reasons.get(run.kill_reason, ""))
        if exit_state is None or exit_state.exit_code is None:
            why = exit_state.error if exit_state else "unknown"
            return ExecutionFailed(**common, reason=f"no exit status: {why}")
        return ExecutionExited(**common)

    async def _discard(self, run: Running) -> None:
        """Remove the container and the staged input."""
        try:
            if run.container_id:
                await self._call(self.docker.remove, run.container_id)
        except Exception as exc:
            log.error("sandbox clean-up failed", container=run.spec.name, error=str(exc))
            self.rt.note_error(f"clean-up {run.spec.name}: {exc}")
        shutil.rmtree(self.work_dir / run.spec.name, ignore_errors=True)

    def _release_cgroup(self, run: Running) -> None:
        remove_cgroup_tree(run.spec.cgroup_parent)

    async def _append(self, run: Running, terminal: ExecutionEvent, attempts: int = TERMINAL_ATTEMPTS) -> None:
        """Store the terminal event, retrying while NATS is away. If it never lands, the task stays in this
        host's heartbeat entry, so the next start-up reports it failed: no task is left without an end."""
        run.outcome = type(terminal).__struct_config__.tag  # type: ignore[assignment]
        run.stored = await self._store(run, terminal, attempts)
        tier = run.spec.tier
        EXECUTIONS.labels(run.outcome.removeprefix("execution."), tier).inc()
        usage = getattr(terminal, "usage", None)
        if isinstance(usage, Usage) and run.container_id:
            CPU_SECONDS.labels(tier).observe(usage.cpu_seconds)
            PEAK_MEMORY.labels(tier).observe(usage.peak_memory_bytes)

    async def _store(self, run: Running, event: ExecutionEvent, attempts: int) -> bool:
        """Append ``event``, retrying with back-off while NATS is away; whether it was stored."""
        delay = 0.5
        for attempt in range(1, attempts + 1):
            try:
                await self.executions.execute(run.spec.task_id, event)
                return True
            except Exception as exc:
                kind = type(event).__struct_config__.tag
                log.error("event not stored", task_id=run.spec.task_id, event=kind, attempt=attempt, error=str(exc))
                self.rt.note_error(f"{kind} {run.spec.task_id}: {exc!r}")
                if attempt < attempts:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        return False

    async def store_action(self, run: Running, event: ExecutionAction) -> None:
        """Record one decision of the action gateway (retrying while NATS is away)."""
        if not await self._store(run, event, TERMINAL_ATTEMPTS):
            raise AppendFailed(f"execution.action {event.seq} of {run.spec.task_id} could not be stored")

    def _finish(self, run: Running) -> None:
        self._release_cgroup(run)
        if run.stored:
            self.running.pop(run.spec.task_id, None)
        run.done.set()

    # --- control --------------------------------------------------------------------------------

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
        await self._call(self.docker.pause, run.container_id)
        run.paused_since = time.time()
        await self.executions.execute(task_id, ExecutionPaused(attempt=run.spec.attempt, reason=reason))

    async def thaw(self, run: Running, reason: str) -> dict[str, Any]:
        """Unpause the container and record it; the time it spent paused does not count against its timeout."""
        task_id = run.spec.task_id
        if run.paused_since is None:
            raise ExecutionStateError(f"task {task_id} is not suspended")
        await self._call(self.docker.unpause, run.container_id)
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
        await self._kill(run, "terminated")
        run.paused_since = None
        await asyncio.wait_for(run.done.wait(), timeout=KILL_GRACE_S + 5)
        return {"task_id": task_id, "status": "ended", "outcome": run.outcome.removeprefix("execution.")}

    def status(self) -> dict[str, Any]:
        return {
            **self.host_entry(),
            "heartbeat_at": self.last_heartbeat,
            "docker_version": self.info.docker_version,
            "runtimes": list(self.info.runtimes),
            "blkio_device": self.info.capabilities.blkio_device,
            "tasks": [
                {
                    "task_id": tid,
                    "attempt": r.spec.attempt,
                    "tier": r.spec.tier,
                    "container": r.spec.name,
                    "paused": r.paused_since is not None,
                    "pending_action": r.gateway.pending.request.action
                    if r.gateway is not None and r.gateway.pending is not None
                    else None,
                    "running_s": round(time.time() - r.started_at, 1),
                }
                for tid, r in sorted(self.running.items())
            ],
            "reconciled": msgspec.to_builtins(self.reconciled) if self.reconciled else None,
        }

    async def drain(self, timeout: float = KILL_GRACE_S + 5) -> None:
        """Wait until every sandbox has been cleaned up and reported (they are being cancelled)."""
        pending = [r.done.wait() for r in self.running.values()]
        if pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pending), timeout)

    def close(self) -> None:
        remove_cgroup_tree(f"{CGROUP_PARENT}/{self.host_id}")  # only what is empty: nothing runs any more
        self._pool.shutdown(wait=False, cancel_futures=True)
        if hasattr(self, "docker"):
            self.docker.close()
