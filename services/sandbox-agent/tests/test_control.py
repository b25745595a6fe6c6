"""Suspend, resume and terminate over NATS; refusals; redelivery; the host's registration and heartbeat."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest
from symbi_common.commands import CommandClient
from symbi_common.decisions import Allow, Decision, DecisionRecord, DecisionRequest, Deny
from symbi_common.sealing import ChainTip
from symbi_contracts.sandbox_agent.errors import ExecutionStateError, UnknownExecution
from symbi_contracts.sandbox_agent.events import (
    EXECUTION_CODEC,
    HOST_CODEC,
    ExecutionExited,
    ExecutionFailed,
    ExecutionKilled,
    ExecutionOutput,
    ExecutionPaused,
    ExecutionRefused,
    ExecutionResumed,
    ExecutionStarted,
    HostReconciled,
    HostRegistered,
    output_chunks,
)
from symbi_contracts.scheduler.events import CODEC as TASKS
from symbi_contracts.scheduler.events import TaskAssigned
from symbi_sandbox_agent.supervisor import FLUSH_INTERVAL_S

from .conftest import Agent, Scheduler, containers_of, limits
from .test_pure import LIMITS

TICKS = "i=0; while [ $i -lt 20 ]; do echo tick $i; i=$((i+1)); sleep 0.1; done"


async def settled_outputs(scheduler: Scheduler, task_id: str) -> int:
    """The task's output events once none has come for three flush intervals (held output goes out by then)."""
    count, quiet_since = -1, 0.0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline:
        now = outputs(await scheduler.events(task_id))
        if now != count:
            count, quiet_since = now, loop.time()
        elif loop.time() - quiet_since >= 3 * FLUSH_INTERVAL_S:
            return count
        await asyncio.sleep(0.1)
    raise AssertionError(f"output of {task_id} still growing after 10 s")


def outputs(events: list[Any]) -> int:
    return sum(1 for e in events if isinstance(e, ExecutionOutput))


async def command(agent: Agent, action: str, task_id: str, nc: Any = None) -> dict[str, Any]:
    client = CommandClient(nc or agent.app.state.runtime.nc, timeout=30)
    result: dict[str, Any] = await client.call(f"sandbox-agent.{agent.host_id}", action, {"task_id": task_id}, dict)
    return result


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
async def test_suspend_freezes_and_resume_continues(
    agent: Agent, scheduler: Scheduler, docker_client: Any, tier: str
) -> None:
    # 2 s of work, paused for 3 s, under a 5 s timeout: time spent suspended does not count.
    task_id = await scheduler.submit(agent.host_id, ["sh", "-c", TICKS], tier=tier, lim=limits(execution_timeout_s=5))
    await scheduler.wait_for(task_id, lambda ev: outputs(ev) >= 1)
    assert (await command(agent, "suspend", task_id))["status"] == "paused"
    [container] = containers_of(docker_client, agent.host_id)
    assert docker_client.api.inspect_container(container["Id"])["State"]["Paused"] is True
    frozen = await settled_outputs(scheduler, task_id)  # output printed before the freeze may still be on its way
    await asyncio.sleep(2.5)
    assert outputs(await scheduler.events(task_id)) == frozen
    with pytest.raises(ExecutionStateError):
        await command(agent, "suspend", task_id)
    assert (await command(agent, "resume", task_id))["status"] == "running"
    r = await scheduler.result(task_id)
    assert isinstance(r.terminal, ExecutionExited), r.terminal
    assert r.terminal.exit_code == 0
    assert r.stdout == b"".join(f"tick {i}\n".encode() for i in range(20))
    assert len(r.of(ExecutionPaused)) == len(r.of(ExecutionResumed)) == 1


async def test_terminate_stops_and_removes_even_a_suspended_gvisor_sandbox(
    agent: Agent, scheduler: Scheduler, docker_client: Any
) -> None:
    task_id = await scheduler.submit(agent.host_id, ["sh", "-c", "echo up; sleep 60"], tier="tier2")
    await scheduler.wait_for(task_id, lambda ev: outputs(ev) >= 1)
    await command(agent, "suspend", task_id)
    reply = await command(agent, "terminate", task_id)
    assert reply == {"task_id": task_id, "status": "ended", "outcome": "killed"}
    r = await scheduler.result(task_id)
    assert isinstance(r.terminal, ExecutionKilled)
    assert r.terminal.reason.startswith("terminated")
    assert containers_of(docker_client, agent.host_id) == []
    # Terminating again answers with the outcome; an unknown task is a typed error.
    assert (await command(agent, "terminate", task_id))["outcome"] == "killed"
    with pytest.raises(UnknownExecution):
        await command(agent, "suspend", "no-such-task")


async def test_a_missing_image_is_refused(agent: Agent, scheduler: Scheduler) -> None:
    task_id = await scheduler.submit(agent.host_id, ["true"], publish=False)
    # Same task, a second attempt whose workload names an image this host does not have.
    assigned = scheduler.tips[task_id]
    assert assigned.version == 2
    [first] = [r.event for r in await scheduler.store.load("task", task_id, TASKS) if isinstance(r.event, TaskAssigned)]
    bad = msgspec.structs.replace(
        first, attempt=2, workload=msgspec.structs.replace(first.workload, image="nowhere/none:0")
    )
    await scheduler.store.append("task", task_id, [bad], TASKS, expected=assigned)
    await scheduler.publish(agent.host_id, task_id, 2)
    r = await scheduler.result(task_id)
    assert isinstance(r.terminal, ExecutionRefused)
    assert r.terminal.attempt == 2
    assert "nowhere/none:0 is not on host" in r.terminal.reason


class DenySandboxes:
    """A decision point that denies every sandbox start (the policy engine's answer, without its engine)."""

    version = 7

    async def decide(self, request: DecisionRequest) -> Decision:
        if request.action == "sandbox.start":
            return Deny(reason="tier1 is not allowed for agent-1", policies=("no-tier1",), policy_version=7)
        return Allow()

    async def decide_batch(self, requests: list[DecisionRequest]) -> list[Decision]:
        return [await self.decide(r) for r in requests]


async def test_a_policy_denial_is_refused_with_its_record(agent: Agent, scheduler: Scheduler) -> None:
    agent.app.state.runtime._decisions = DenySandboxes()
    task_id = await scheduler.submit(agent.host_id, ["echo", "hi"])
    r = await scheduler.result(task_id)
    assert isinstance(r.terminal, ExecutionRefused)
    assert r.terminal.code == "policy_denied"
    assert "tier1 is not allowed" in r.terminal.reason
    assert r.terminal.decision is not None
    assert (r.terminal.decision.effect, r.terminal.decision.policies) == ("deny", ("no-tier1",))
    assert r.terminal.decision.action == "sandbox.start"
    assert r.terminal.decision.policy_version == 7


async def test_a_redelivered_or_stale_work_item_does_not_run_twice(agent: Agent, scheduler: Scheduler) -> None:
    task_id = await scheduler.submit(agent.host_id, ["echo", "once"])
    first = await scheduler.result(task_id)
    await scheduler.publish(agent.host_id, task_id, 1, msg_id="again")
    await scheduler.publish(agent.host_id, task_id, 0, msg_id="stale")
    await scheduler.publish(agent.host_id, "never-submitted", 1)
    # The consumer drained all three (work-queue retention removes acked items).
    js = scheduler.nc.jetstream()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (await js.stream_info("WORK")).state.messages == 0:
            break
        await asyncio.sleep(0.1)
    assert (await js.stream_info("WORK")).state.messages == 0
    events = await scheduler.events(task_id)
    assert events == first.events
    assert len([e for e in events if isinstance(e, ExecutionStarted)]) == 1


async def test_a_start_that_landed_unconfirmed_ends_its_attempt_when_the_item_comes_back(
    agent: Agent, scheduler: Scheduler, make_store: Any, docker_client: Any
) -> None:
    """The daemon's ``execution.started`` landed but its append was not confirmed, so it started no container and
    left the work item to be delivered again. The redelivered item ends that attempt as failed, saying why,
    instead of taking it for a run under way: its task would wait for an end that never comes."""
    task_id = await scheduler.submit(agent.host_id, ["echo", "never"], publish=False)
    sandbox = await make_store("sandbox-agent")
    decision = DecisionRecord(action="sandbox.start", effect="allow", policy_version=0)
    landed = ExecutionStarted(
        attempt=1, agent_id="agent-1", host_id=agent.host_id, tier="tier1", runtime="runc", container="c",
        image="i", command=(), limits=LIMITS, hardening={}, decision=decision,
    )  # fmt: skip
    await sandbox.append("execution", task_id, [landed], EXECUTION_CODEC, expected=ChainTip())
    await scheduler.publish(agent.host_id, task_id, 1)
    events = await scheduler.wait_for(task_id, lambda ev: isinstance(ev[-1], ExecutionFailed), timeout=15)
    assert [type(e).__name__ for e in events] == ["ExecutionStarted", "ExecutionFailed"]
    assert "never ran" in events[-1].reason  # type: ignore[attr-defined]
    assert containers_of(docker_client, agent.host_id) == []


async def test_a_task_terminated_before_its_container_is_made_never_starts(
    agent: Agent, scheduler: Scheduler, docker_client: Any
) -> None:
    """The scheduler preempts (terminates) an attempt the host is still starting: its run is known, its container
    not made yet. The container is never made; the attempt ends killed. Before, the kill found no container to
    stop, and the container was started afterwards: the task could run twice."""
    service = agent.daemon.service
    beat = service.heartbeat
    task_id = await scheduler.submit(agent.host_id, ["sleep", "30"], publish=False)
    terminated: list[asyncio.Task[Any]] = []

    async def beat_then_terminate() -> None:  # the step between knowing the run and making its container
        await beat()
        if task_id in service.running and not terminated:
            terminated.append(asyncio.create_task(service.terminate(task_id)))

    service.heartbeat = beat_then_terminate
    since = int(time.time()) - 1
    await scheduler.publish(agent.host_id, task_id, 1)
    result = await scheduler.result(task_id, timeout=20)
    assert isinstance(result.terminal, ExecutionKilled), result.terminal
    assert (await terminated[0])["outcome"] == "killed"
    created = docker_client.events(
        since=since,
        until=int(time.time()) + 1,
        filters={"type": "container", "event": "create", "label": f"symbi.task_id={task_id}"},
        decode=True,
    )
    assert list(created) == []


async def test_the_host_registers_and_keeps_a_heartbeat(agent: Agent, scheduler: Scheduler, docker_client: Any) -> None:
    status0 = (await agent.http.get("/v1/host")).json()
    kv = await scheduler.nc.jetstream().key_value("HOSTS")
    first = msgspec.json.decode((await kv.get(agent.host_id)).value)
    assert first["host_id"] == agent.host_id
    assert set(first["tiers"]) == {"tier1", "tier2"}
    assert first["cpu_cores"] >= 1
    assert first["memory_mb"] > 0
    task_id = await scheduler.submit(agent.host_id, ["sleep", "3"])
    await asyncio.sleep(1.5)
    later = msgspec.json.decode((await kv.get(agent.host_id)).value)
    assert later["heartbeat_at"] > first["heartbeat_at"]
    assert later["running"] == [task_id]
    # Docker's own view of the running sandbox: every limit and hardening flag is in place.
    [container] = containers_of(docker_client, agent.host_id)
    hc = docker_client.api.inspect_container(container["Id"])["HostConfig"]
    assert hc["Runtime"] == "runc"
    assert (hc["NetworkMode"], hc["ReadonlyRootfs"], hc["CapDrop"]) == ("none", True, ["ALL"])
    assert hc["SecurityOpt"] == ["no-new-privileges"]
    assert (hc["Memory"], hc["MemorySwap"], hc["NanoCpus"], hc["PidsLimit"]) == (128 * 2**20, 128 * 2**20, 10**9, 256)
    assert (
        hc["BlkioDeviceReadBps"] == hc["BlkioDeviceWriteBps"] == [{"Path": status0["blkio_device"], "Rate": 50 * 2**20}]
    )
    assert hc["LogConfig"]["Type"] == "none"
    assert "/tmp" in hc["Tmpfs"]
    status = (await agent.http.get("/v1/host")).json()
    assert status["host_id"] == agent.host_id
    assert [t["task_id"] for t in status["tasks"]] == [task_id]
    assert status["blkio_device"].startswith("/dev/")
    await scheduler.result(task_id)
    host_events = [r.event for r in await scheduler.auditor.load("host", agent.host_id, HOST_CODEC)]
    assert isinstance(host_events[0], HostReconciled)
    assert isinstance(host_events[1], HostRegistered)
    assert host_events[1].tiers == ("tier1", "tier2")


async def test_a_new_attempt_waits_until_the_old_one_is_stopped(agent: Agent, scheduler: Scheduler) -> None:
    task_id = await scheduler.submit(agent.host_id, ["sh", "-c", "echo first; sleep 60"])
    await scheduler.wait_for(task_id, lambda ev: outputs(ev) >= 1)
    # The scheduler re-assigns the task to this host as attempt 2 before attempt 1 is stopped.
    await scheduler.submit(agent.host_id, ["sh", "-c", "echo second"], task_id=task_id, attempt=2)
    await asyncio.sleep(1.0)
    assert [e.attempt for e in await scheduler.events(task_id) if isinstance(e, ExecutionStarted)] == [1]
    await command(agent, "terminate", task_id)
    events = await scheduler.wait_for(task_id, lambda ev: isinstance(ev[-1], ExecutionExited), timeout=20)
    kinds = [(type(e).__name__, e.attempt) for e in events if not isinstance(e, ExecutionOutput)]
    assert kinds == [("ExecutionStarted", 1), ("ExecutionKilled", 1), ("ExecutionStarted", 2), ("ExecutionExited", 2)]
    assert [c.data for e in events for c in output_chunks(e)] == [b"first\n", b"second\n"]
