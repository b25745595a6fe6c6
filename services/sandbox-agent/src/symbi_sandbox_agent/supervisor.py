"""Supervising one sandbox: start its container, follow its output, enforce its limits, report how it ended.

Flow of one run: stage the input as a read-only file, create, attach and start the container with the
runner of its runtime, feed stdin (or, with the action gateway, keep stdin as the reply channel), stream
stdout/stderr as ``execution.output`` chunks, sample usage from the cgroup, enforce the hard timeout
(time spent paused does not count) and the output cap, and append one terminal event
(:func:`~symbi_sandbox_agent.domain.terminal_event`). The output still held when the output ends (at most a
chunk per stream: all of a short task's result) travels in that terminal event, as its ``tail``, rather than
in ``execution.output`` events of its own, unless the event would then pass the event size limit. The
container is always removed; a run cancelled by shutdown still reports its end. A run with the action gateway and a channel directory gets its socket
listener before its container is created, and loses it (directory included) when the container is removed.
A network-enabled run gets its egress proxy (``egress.sock`` in the same directory, docs/network.md) the same
way; its connections are recorded before its terminal event, whose usage carries the bytes they moved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog
from symbi_common.errors import AppendFailed
from symbi_common.policy.hooks import Enforcer
from symbi_common.service import ServiceRuntime
from symbi_common.telemetry import traced
from symbi_contracts.sandbox_agent.events import (
    ExecutionEgress,
    ExecutionEvent,
    ExecutionFailed,
    Terminal,
    Usage,
)

from symbi_sandbox_agent.bus.decisions import remembered
from symbi_sandbox_agent.cgroups import CgroupUsage, remove_cgroup_tree
from symbi_sandbox_agent.domain import ExitState, terminal_event
from symbi_sandbox_agent.egress.host import EgressHost
from symbi_sandbox_agent.egress.internal import Caller
from symbi_sandbox_agent.exits import ExitWatch
from symbi_sandbox_agent.gateway import ActionGateway
from symbi_sandbox_agent.metrics import CPU_SECONDS, EXECUTIONS, PEAK_MEMORY, RUNNING
from symbi_sandbox_agent.output import STREAMS, OutputCollector
from symbi_sandbox_agent.recorder import TERMINAL_ATTEMPTS, ExecutionRecorder
from symbi_sandbox_agent.run import Running
from symbi_sandbox_agent.run_ports import RunHost
from symbi_sandbox_agent.runner import SandboxEngine, SandboxRunner, Threads, sweep_leftovers
from symbi_sandbox_agent.secret_files import remove_secret_files
from symbi_sandbox_agent.spec import SandboxSpec

log = structlog.get_logger(__name__)

#: Output less than a chunk is held at most this long before it goes out as ``execution.output``; what is held
#: when the output ends travels in the terminal event instead (all of a short task's result: one event less).
FLUSH_INTERVAL_S = 0.5
#: Usage is sampled while the container runs at most this often, and once after its removal: the sandbox's
#: parent cgroup keeps the final figures (peak memory, CPU, and block I/O, which a removed child's
#: cgroup hands on to it), see ``CgroupUsage``.
SAMPLE_INTERVAL_S = 0.2
#: After a kill, how long the output stream may take to end before the run gives up on it.
KILL_GRACE_S = 10.0
#: After the output ends, how long the engine's die event may take before the run asks with ``wait``.
EXIT_EVENT_GRACE_S = 2.0


def _close_launched(runner: SandboxRunner, launched: asyncio.Future[Any]) -> None:
    if not launched.cancelled() and launched.exception() is None:
        runner.close_socket(launched.result())


class Supervisor:
    """Runs the sandboxes of this host, one :meth:`run` per task attempt."""

    def __init__(
        self,
        rt: ServiceRuntime,
        engine: SandboxEngine,
        threads: Threads,
        recorder: ExecutionRecorder,
        running: dict[str, Running],
        work_dir: Path,
        controls: RunHost,
        egress: EgressHost | None = None,
    ) -> None:
        self.rt = rt
        self.engine = engine
        self.threads = threads
        self.recorder = recorder
        self.running = running
        self.work_dir = work_dir
        #: What the action gateway of a run freezes, thaws and records through.
        self.controls = controls
        self._runners: dict[str, SandboxRunner] = {}
        #: The egress settings and agents' token buckets of this host (network-enabled runs).
        self.egress = egress or EgressHost(rt.settings.egress)
        #: The exit codes the engine reports (None: each run asks with ``wait``).
        self.exits: ExitWatch | None = None

    def runner(self, run: Running) -> SandboxRunner:
        """The runner of the run's runtime (runc for tier1, runsc for tier2)."""
        runtime = run.spec.runtime
        if runtime not in self._runners:
            self._runners[runtime] = self.engine.runner(runtime)
        return self._runners[runtime]

    def _stage_input(self, spec: SandboxSpec, data: bytes) -> Path:
        folder = self.work_dir / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        path = folder / "input"
        path.write_bytes(data)
        path.chmod(0o644)
        return path

    async def run(self, run: Running, data: bytes) -> None:
        """Run the sandbox to its end: start it, follow it, report its terminal event, clean up."""
        spec = run.spec
        collector = OutputCollector(spec.limits.output_cap_bytes)
        usage: CgroupUsage | None = None
        terminal: ExecutionEvent
        attributes = {"symbi.task_id": spec.task_id, "symbi.tier": spec.tier, "symbi.container": spec.name}
        runner = self.runner(run)
        if run.kill_reason:  # terminated (e.g. preempted) before its container was made: it never starts
            await self._discard(run)
            await self._append(run, self._terminal(run, None, collector, Usage()))
            self._finish(run)
            return
        try:
            try:
                with traced("sandbox.container.start", attributes=attributes):
                    input_file = self._stage_input(spec, data)
                    if spec.actions:
                        gateway = run.gateway = ActionGateway(self.controls, run)
                        if spec.channel_dir:
                            await gateway.open_channel(spec.channel_dir, spec.owner)
                    if spec.network:
                        await self._open_egress(run)
                    sock = await self._launch(runner, spec, str(input_file), run.created)
                if run.kill_reason:  # terminated while the container was being made, before its id was known
                    await self.threads(runner.kill, run.container_id)
            except Exception as exc:
                terminal = ExecutionFailed(attempt=spec.attempt, reason=f"the sandbox did not start: {exc}")
                await self._discard(run)
            else:
                usage = CgroupUsage(spec.cgroup_parent)
                RUNNING.labels(spec.tier).inc()
                try:
                    with traced("sandbox.container.run", attributes=attributes):
                        await self._supervise(run, sock, data, collector, usage)
                except Exception as exc:  # e.g. output that could not be stored for minutes: stop the run
                    log.exception("supervising the sandbox failed", container=spec.name)
                    await self._discard(run)
                    terminal = self._failed(run, collector, usage.sample(), exc)
                else:
                    exit_state = await self._finish_container(run)
                    limit_mb, killed_here = run.spec.limits.memory_mb, bool(run.kill_reason)
                    failed = exit_state.exit_code not in (0, None) and not exit_state.oom_killed
                    if failed and usage.out_of_memory(exit_state.exit_code, killed_here=killed_here, limit_mb=limit_mb):
                        exit_state = dataclasses.replace(exit_state, oom_killed=True)
                    await self._discard(run)
                    terminal = await self._ending(run, exit_state, collector, usage.sample())
                finally:
                    RUNNING.labels(spec.tier).dec()
        except asyncio.CancelledError:
            # The daemon is shutting down: the sandbox must not outlive it unaccounted.
            run.kill_reason = run.kill_reason or "shutdown"
            await self._discard(run)
            ending = self._terminal(run, None, collector, usage.sample() if usage else Usage())
            # Held output that would not fit the terminal event is dropped, as output cut short by a shutdown is.
            await self._append(run, self.recorder.carrying(ending, collector)[0], 1)
            self._finish(run)
            raise
        await self._append(run, terminal)
        self._finish(run)
        if runner.leaves_processes:
            # After the result is out: a gVisor sandbox that failed or hung can leave its shim behind.
            try:
                await sweep_leftovers(self.engine, self.threads)
            except Exception as exc:
                self.rt.note_error(f"runtime clean-up after {spec.name}: {exc}")

    async def _launch(
        self, runner: SandboxRunner, spec: SandboxSpec, input_file: str, created: Callable[[str], None]
    ) -> Any:
        """``runner.launch`` on a thread; if we are cancelled meanwhile, its attach socket is closed once it
        returns instead of being left to the garbage collector."""
        launched = self.threads.submit(runner.launch, spec, input_file, created)
        try:
            return await asyncio.shield(launched)
        except asyncio.CancelledError:
            launched.add_done_callback(functools.partial(_close_launched, runner))
            raise

    async def _open_egress(self, run: Running) -> None:
        spec = run.spec

        async def store(event: ExecutionEgress) -> None:
            if not await self.recorder.store(run, event, TERMINAL_ATTEMPTS):
                log.error("an egress record was not stored", task_id=spec.task_id, host=event.host)

        # One decision per connection through the one enforcer (logged, its own id); the embedded engine's
        # answer to an identical question is remembered per policy version, as for the bus's sends.
        enforcer = Enforcer.around(remembered(await self.rt.decision_point()))
        caller = Caller(agent_id=run.agent_id, task_id=spec.task_id, tier=spec.tier, attempt=spec.attempt)
        run.egress = await self.egress.start(
            caller,
            spec.network_access,
            spec.limits.network_io_mbps,
            enforcer,
            attempt=spec.attempt,
            store=store,
            socket_path=spec.egress_socket,
            owner=spec.owner,
        )

    async def _supervise(
        self, run: Running, sock: Any, data: bytes, collector: OutputCollector, usage: CgroupUsage
    ) -> None:
        """Feed stdin, stream the output, enforce the timeout and the output cap (the exit state comes after,
        from :meth:`_finish_container`)."""
        frames: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        stdio = self.runner(run).stdio(sock)

        async def pump() -> None:  # on the event loop: no output thread per run
            try:
                async for frame in stdio.frames():
                    frames.put_nowait(frame)
            finally:
                frames.put_nowait(None)
                await stdio.aclose()

        reader = asyncio.ensure_future(pump())
        gateway: ActionGateway | None = None
        writer: asyncio.Future[None] | None = None
        if isinstance(run.gateway, ActionGateway):
            # stdin stays open as the reply channel; the input is only the file $SYMBI_INPUT.
            gateway = run.gateway
            gateway.reply = stdio.send
            gateway.start()
        else:
            # Not awaited here: a workload that never reads its stdin must still meet its timeout.
            writer = asyncio.ensure_future(stdio.send_input(data))
        try:
            await self._follow(run, frames, collector, usage, gateway)
        finally:
            if gateway is not None:
                await gateway.close()
            if run.egress is not None:
                await run.egress.close()  # its connections are recorded before the terminal event
            if not reader.done():  # stopped waiting for the output (after a kill): stop reading it
                reader.cancel()
            await asyncio.wait((reader,))  # then the socket is closed, and a write still blocked stopped
            if writer is not None and not writer.done():
                writer.cancel()

    async def _follow(
        self,
        run: Running,
        frames: asyncio.Queue[tuple[int, bytes] | None],
        collector: OutputCollector,
        usage: CgroupUsage,
        gateway: ActionGateway | None,
    ) -> None:
        """Stream the output and enforce the timeout and the output cap until the output ends (or does not
        end within ``KILL_GRACE_S`` of a kill)."""
        timeout = run.spec.limits.execution_timeout_s
        last_flush = last_sample = time.monotonic()
        while True:
            now = time.time()
            if not run.kill_reason and run.active_seconds(now) >= timeout:
                await self.kill(run, "timeout")
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
                    await self.recorder.output(run, s, piece)
                if collector.exceeded and not run.kill_reason:
                    await self.kill(run, "output_cap")
            mono = time.monotonic()
            if mono - last_sample >= SAMPLE_INTERVAL_S:
                usage.sample()
                last_sample = mono
            if mono - last_flush >= FLUSH_INTERVAL_S:
                for s, piece in collector.flush():
                    await self.recorder.output(run, s, piece)
                last_flush = mono
        # What is still held goes out with the terminal event (:meth:`_ending`).
        if gateway is not None:
            await gateway.close()  # the requests still being served are recorded before the terminal event

    async def _finish_container(self, run: Running) -> ExitState:
        """The container's exit (from the engine's die event, else a ``wait``) and its removal, in one thread hop
        (a removal that fails is noted, and tried again by the clean-up)."""
        code = await self.exits.exit_code(run.container_id, EXIT_EVENT_GRACE_S) if self.exits is not None else None
        state, failed = await self.threads(self.runner(run).finish, run.container_id, KILL_GRACE_S, code)
        if failed:
            log.error("sandbox clean-up failed", container=run.spec.name, error=failed)
            self.rt.note_error(f"clean-up {run.spec.name}: {failed}")
        else:
            run.removed = True
        return state

    async def kill(self, run: Running, reason: str) -> None:
        """Kill the run's container; the first reason given is the one its terminal event reports."""
        run.kill_reason = run.kill_reason or reason
        run.killed_at = time.time()
        if run.container_id:
            await self.threads(self.runner(run).kill, run.container_id)

    async def _ending(
        self, run: Running, exit_state: ExitState, collector: OutputCollector, usage: Usage
    ) -> ExecutionEvent:
        """The terminal event of a run whose output ended, carrying the output still held (what a last flush
        would have sent) when the whole event fits the event size limit; else that output goes out first as
        ``execution.output`` events, as during the run."""
        terminal, left = self.recorder.carrying(self._terminal(run, exit_state, collector, usage), collector)
        try:
            for chunk in left:
                await self.recorder.output(run, chunk.stream, chunk.data)
        except AppendFailed as exc:
            return self._failed(run, collector, usage, exc)
        return terminal

    def _failed(self, run: Running, collector: OutputCollector, usage: Usage, exc: Exception) -> ExecutionEvent:
        return ExecutionFailed(
            attempt=run.spec.attempt,
            usage=usage,
            output=collector.digest(),
            duration_s=round(time.time() - run.started_at, 3),
            reason=f"the sandbox-agent could not follow the run: {exc}",
        )

    def _terminal(
        self, run: Running, exit_state: ExitState | None, collector: OutputCollector, usage: Usage
    ) -> Terminal:
        duration = round(time.time() - run.started_at, 3)
        if run.egress is not None:
            out, into = run.egress.bytes
            usage = msgspec.structs.replace(usage, net_out_bytes=out, net_in_bytes=into)
        last_error = collector.last_error_line()
        return terminal_event(run.spec, exit_state, run.kill_reason, collector.digest(), usage, duration, last_error)

    async def _discard(self, run: Running) -> None:
        """Remove the container and the staged input."""
        try:
            if run.container_id and not run.removed:
                await self.threads(self.runner(run).remove, run.container_id)
        except Exception as exc:
            log.error("sandbox clean-up failed", container=run.spec.name, error=str(exc))
            self.rt.note_error(f"clean-up {run.spec.name}: {exc}")
        shutil.rmtree(self.work_dir / run.spec.name, ignore_errors=True)
        if isinstance(run.gateway, ActionGateway):
            await run.gateway.remove_channel()
        if run.egress is not None:
            await run.egress.close()
        if run.spec.channel_dir:
            shutil.rmtree(run.spec.channel_dir, ignore_errors=True)
        if run.spec.secrets_dir:  # the secret files go with the container (docs/secrets.md)
            remove_secret_files(run.spec.secrets_dir)

    def _release_cgroup(self, run: Running) -> None:
        remove_cgroup_tree(run.spec.cgroup_parent)

    async def _append(self, run: Running, terminal: ExecutionEvent, attempts: int = TERMINAL_ATTEMPTS) -> None:
        """Store the terminal event, retrying while NATS is away; if it does not land, it is tried again in the
        background until it does. Till then the task stays in this host's heartbeat entry, so a restart meanwhile
        reports it failed: no task is left without an end."""
        run.outcome = type(terminal).__struct_config__.tag  # type: ignore[assignment]
        run.stored = await self.recorder.store(run, terminal, attempts)
        if not run.stored and attempts > 1:  # (not at shutdown, which tries once)
            done = functools.partial(self.running.pop, run.spec.task_id, None)
            self.rt.spawn(self.recorder.keep_storing(run, terminal, done), f"sandbox:terminal:{run.spec.task_id}")
        tier = run.spec.tier
        EXECUTIONS.labels(run.outcome.removeprefix("execution."), tier).inc()
        usage = getattr(terminal, "usage", None)
        if isinstance(usage, Usage) and run.container_id:
            CPU_SECONDS.labels(tier).observe(usage.cpu_seconds)
            PEAK_MEMORY.labels(tier).observe(usage.peak_memory_bytes)

    def _finish(self, run: Running) -> None:
        self._release_cgroup(run)
        if run.stored:
            self.running.pop(run.spec.task_id, None)
        run.done.set()
