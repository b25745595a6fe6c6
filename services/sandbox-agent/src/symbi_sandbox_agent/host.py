"""The sandbox-agent daemon on one host: registers it, keeps its heartbeat, consumes ``work.<host_id>``.

Start-up: connect to the Docker engine, reconcile (leave nothing running unaccounted: remove this host's
containers, report their tasks failed, kill runtime processes whose container is gone), append
``host.registered``, start the heartbeat (``HOSTS`` entry: capacity, tiers and the tasks it runs) and
the work consumer, which hands each item to :class:`~symbi_sandbox_agent.application.SandboxService`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import time
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.js.api import ConsumerConfig
from symbi_common.aggregate import Repository
from symbi_common.consuming import ensure_consumer
from symbi_common.live_pull import LivePull
from symbi_common.reader import Recorded
from symbi_common.secret_source import SecretSource
from symbi_common.service import ServiceRuntime
from symbi_common.settings_sandbox import SandboxSettings
from symbi_common.stream_provisioning import require_streams
from symbi_common.telemetry import continue_trace
from symbi_contracts.sandbox_agent.events import (
    ExecutionEvent,
    ExecutionFailed,
    HostEvent,
    HostReconciled,
    HostRegistered,
)
from symbi_contracts.sandbox_agent.heartbeat import signed_headers
from symbi_contracts.scheduler.events import TaskAssigned

from symbi_sandbox_agent.application import SandboxService
from symbi_sandbox_agent.cgroups import remove_cgroup_tree
from symbi_sandbox_agent.config import data_roots, sandbox_defaults, work_root
from symbi_sandbox_agent.docker_host import DockerHost
from symbi_sandbox_agent.domain import EXECUTION, ExecutionState, HostAggregate, WorkItem, execution_data_key
from symbi_sandbox_agent.egress.internal import MODELS_HOST
from symbi_sandbox_agent.exits import ExitWatch
from symbi_sandbox_agent.models.wiring import model_gateway
from symbi_sandbox_agent.run import Running
from symbi_sandbox_agent.runner import HostInfo, SandboxEngine, Threads, sweep_leftovers
from symbi_sandbox_agent.secret_files import host_secrets, open_secrets, remove_secret_files
from symbi_sandbox_agent.spec import CGROUP_PARENT, host_channels
from symbi_sandbox_agent.supervisor import KILL_GRACE_S
from symbi_sandbox_agent.tasks import TASK_CODEC, TaskEvent
from symbi_sandbox_agent.tools.wiring import attach_all, tool_service

log = structlog.get_logger(__name__)

WORK_STREAM = "WORK"
HOSTS_BUCKET = "HOSTS"
#: Delay before a work item is offered again while an older attempt of its task is still being stopped.
BUSY_RETRY_S = 0.5
#: How long the work pull request stays open before a new one replaces it (the idle cost: one request per this).
WORK_PULL_EXPIRES_S = 30.0


class SandboxHost:
    """This host's daemon: start-up and reconciliation, heartbeat, the work consumer, status and shutdown."""

    def __init__(
        self, runtime: ServiceRuntime, settings: SandboxSettings, host_id: str, secrets: SecretSource | None = None
    ) -> None:
        self.rt = runtime
        #: Where provider credentials are read from (default: the secrets store); None: no provider may name one.
        self.secrets = secrets
        self.settings = settings
        self.host_id = host_id
        self.defaults = sandbox_defaults(settings)
        self.work_dir = Path(work_root(settings)) / host_id
        self.data_roots = data_roots(settings)
        self.running: dict[str, Running] = {}
        self.executions: Repository[ExecutionState, ExecutionEvent, ExecutionEvent] = runtime.repository(
            EXECUTION, data_key=execution_data_key
        )
        self.hosts: Repository[int, HostEvent, HostEvent] = Repository(runtime.store, HostAggregate(), snapshots=None)
        self.threads = Threads()
        self.docker: SandboxEngine
        self.info: HostInfo
        self.service: SandboxService
        self.kv: Any = None
        self.last_heartbeat = 0.0
        self.reconciled: HostReconciled | None = None
        self.exits: ExitWatch | None = None

    # --- start-up -------------------------------------------------------------------------------

    async def start(self) -> None:
        self.docker = await self.threads(DockerHost, self.settings.docker_url)
        self.info = await self.threads(self.docker.info)
        self.service = SandboxService(
            self.rt,
            self.host_id,
            self.docker,
            self.threads,
            self.info.capabilities,
            self.defaults,
            self.work_dir,
            self.running,
            self.executions,
            self.heartbeat,
            self.data_roots,
        )
        # Exit codes come from one stream of the engine's die events (no wait call per run); started before
        # any run, with the stream replaying from a second before it was opened.
        self.exits = ExitWatch(functools.partial(self.docker.die_events, self.host_id))
        self.exits.start()
        self.service.supervisor.exits = self.exits
        self.service.tools = tool_service(self.rt, self.settings, self.rt.settings.mcp)
        store = await open_secrets(self.rt)
        self.service.secrets = store
        # Provider credentials come from the same store unless one was given (tests give their own).
        self.secrets = self.secrets or store
        self.service.models = model_gateway(self.rt, self.rt.settings.models, self.secrets)
        if self.service.models is not None:  # ordinary OpenAI clients in a sandbox: http://models.symbi.internal/v1
            self.service.supervisor.egress.register(MODELS_HOST, self.service.models)
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
        self.rt.spawn(self._consume(await self._work_feed()), "sandbox:work")
        self.rt.spawn(attach_all(self.rt, self.service.tools), "sandbox:tools")
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
        containers = await self.threads(self.docker.owned, self.host_id)
        for c in containers:
            await self.threads(self.docker.remove, c.id)
        killed = await sweep_leftovers(self.docker, self.threads)
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
        if self.defaults.channel_root:  # channel directories of sandboxes that ran before a crash
            shutil.rmtree(host_channels(self.defaults.channel_root, self.host_id), ignore_errors=True)
        if self.defaults.secrets_root:  # and their secret files
            remove_secret_files(host_secrets(self.defaults.secrets_root, self.host_id))
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
        """Rewrite this host's ``HOSTS`` entry, signed with the daemon's signing key (the host's own, if it has one:
        symbi_contracts.sandbox_agent.heartbeat)."""
        entry = self.host_entry()
        value = msgspec.json.encode(entry)
        headers = signed_headers(value, self.rt.store.signer)
        await self.rt.js.publish(f"$KV.{HOSTS_BUCKET}.{self.host_id}", value, headers=headers)
        self.last_heartbeat = entry["heartbeat_at"]

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            try:
                await self.heartbeat()
            except Exception as exc:  # NATS away for a moment: the next beat tries again
                self.rt.note_error(f"heartbeat: {exc}")

    # --- work -----------------------------------------------------------------------------------

    async def _work_feed(self) -> LivePull:
        """This host's work items (durable consumer ``sandbox_<host>``, created on first start) through one open
        pull request: no request per work item, and one per ``WORK_PULL_EXPIRES_S`` while none come."""
        durable = f"sandbox_{self.host_id}"
        config = ConsumerConfig(
            name=durable, durable_name=durable, filter_subject=f"work.{self.host_id}", ack_wait=60, max_deliver=-1
        )
        await ensure_consumer(self.rt.js, WORK_STREAM, config)
        return await LivePull(self.rt.js, WORK_STREAM, durable, batch=8, expires=WORK_PULL_EXPIRES_S).open()

    async def _consume(self, feed: LivePull) -> None:
        try:
            while True:
                try:
                    msgs = await feed.take(8, timeout=WORK_PULL_EXPIRES_S)
                except Exception as exc:
                    self.rt.note_error(f"work fetch: {exc}")
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    await self._on_work(msg)
        finally:
            # Drop the inbox now: a status reply left in it would hold up the connection's drain.
            await feed.close()

    async def _on_work(self, msg: Any) -> None:
        try:
            item = msgspec.json.decode(msg.data, type=WorkItem)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("malformed work item dropped", error=str(exc), data=msg.data[:200])
            await msg.term()
            return
        try:
            # The task's events are read once: for the trace the item continues and for the task itself.
            records = await self.rt.store.load("task", item.task_id, TASK_CODEC)
            headers = self._trace_headers(records, msg.headers)
            with continue_trace(
                "sandbox.work", headers, attributes={"symbi.task_id": item.task_id, "symbi.attempt": item.attempt}
            ):
                handled = await self.service.dispatch(item, records)
        except Exception as exc:
            log.exception("work item failed, redelivering", task_id=item.task_id)
            self.rt.note_error(f"work {item.task_id}: {exc!r}")
            await msg.nak(delay=1.0)
            return
        if handled:
            await msg.ack()
        else:
            await msg.nak(delay=BUSY_RETRY_S)

    @staticmethod
    def _trace_headers(records: list[Recorded[TaskEvent]], headers: dict[str, str] | None) -> dict[str, str]:
        """The trace a work item continues: the scheduler's ``traceparent`` on the item, else the one stored
        with the task's latest ``task.assigned`` event (of ``records``, the task's events as loaded)."""
        if headers and "traceparent" in headers:
            return dict(headers)
        assigned = [r for r in records if isinstance(r.event, TaskAssigned)]
        if assigned and assigned[-1].trace:
            return {**(headers or {}), **assigned[-1].trace}
        return dict(headers or {})

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
        if getattr(self, "service", None) is not None and self.service.tools is not None:
            await self.service.tools.close()
        if getattr(self, "service", None) is not None and self.service.models is not None:
            await self.service.models.aclose()
        pending = [r.done.wait() for r in self.running.values()]
        if pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pending), timeout)

    def close(self) -> None:
        remove_cgroup_tree(f"{CGROUP_PARENT}/{self.host_id}")  # only what is empty: nothing runs any more
        if self.exits is not None:
            self.exits.close()
        self.threads.shutdown()
        if hasattr(self, "docker"):
            self.docker.close()
