"""A sandbox host's own key writing about an attempt placed on another host is a finding (``foreign_host_report``)."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from symbi_audit.host_reports import FOREIGN_HOST_REPORT
from symbi_common.datakeys import DataKeys
from symbi_common.decisions import DecisionRecord
from symbi_common.eventstore import EventStore
from symbi_common.key_material import load_signer
from symbi_common.keyfiles import add_host_key, host_dir, init_keyring
from symbi_common.keyring import KeyRegistry
from symbi_common.sealing import ChainTip
from symbi_contracts.lifecycle.config import ResourceLimits, Workload
from symbi_contracts.sandbox_agent.events import (
    EXECUTION_CODEC,
    ExecutionExited,
    ExecutionStarted,
    Limits,
    OutputDigest,
    Usage,
)
from symbi_contracts.scheduler.events import CODEC as TASK_CODEC
from symbi_contracts.scheduler.events import TaskAssigned, TaskSubmitted

from .conftest import Running

ALLOW = DecisionRecord(action="task.allocate", effect="allow", policy_version=0)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    """The keyring, with a key of its own for sandbox hosts h1 and h2."""
    path = tmp_path / "keys"
    init_keyring(path)
    for host in ("h1", "h2"):
        add_host_key(path, host)
    return path


async def _place(scheduler: EventStore, task_id: str, host: str) -> None:
    """``task.submitted`` and ``task.assigned`` (attempt 1 on ``host``), as the scheduler appends them."""
    assigned = TaskAssigned(
        host_id=host,
        tier="tier1",
        risk_score=0.0,
        risk_factors={},
        workload=Workload(image="symbi/busybox:1", command=("cat",)),
        limits=ResourceLimits(),
        attempt=1,
        decision=ALLOW,
    )
    submitted = TaskSubmitted(agent_id="a1", input=b"", priority="normal")
    await scheduler.append("task", task_id, [submitted, assigned], TASK_CODEC, expected=ChainTip())


def _exited() -> ExecutionExited:
    return ExecutionExited(
        attempt=1, exit_code=0, output=OutputDigest(stdout_bytes=0, stdout_sha256=hashlib.sha256(b"").hexdigest()),
        usage=Usage(),
    )  # fmt: skip


def _started(host: str) -> ExecutionStarted:
    return ExecutionStarted(
        attempt=1, host_id=host, tier="tier1", runtime="runc", container="c", image="symbi/busybox:1",
        command=("cat",),
        limits=Limits(
            memory_mb=256, cpu_cores=0.5, disk_io_mbps=10, network_io_mbps=0, execution_timeout_s=30, pids=64,
            output_cap_bytes=1 << 20, scratch_mb=64,
        ),
        hardening={}, decision=DecisionRecord(action="sandbox.start", effect="allow", policy_version=0),
    )  # fmt: skip


async def test_a_host_key_writing_about_another_hosts_attempt_is_a_finding(
    running: Running,
    keys_dir: Path,
    registry: KeyRegistry,
    make_store: Callable[..., Awaitable[EventStore]],
    provisioned: NatsClient,
    datakeys_for: Callable[[NatsClient, str], Awaitable[DataKeys]],
) -> None:
    scheduler = await make_store("scheduler")

    async def host_store(host: str) -> EventStore:
        return EventStore(
            provisioned,
            signer=load_signer(host_dir(keys_dir, host) / "signing.key"),
            producer="sandbox-agent",
            registry=registry,
            datakeys=await datakeys_for(provisioned, "sandbox-agent"),
        )

    h1, h2, service = await host_store("h1"), await host_store("h2"), await make_store("sandbox-agent")
    await _place(scheduler, "t1", "h1")
    own = await h1.append("execution", "t1", [_started("h1")], EXECUTION_CODEC, expected=ChainTip())
    forged = await h2.append("execution", "t1", [_exited()], EXECUTION_CODEC, expected=own[-1].tip)
    # The service's key is not a host's: it speaks for any host (a deployment without host keys).
    await _place(scheduler, "t2", "h2")
    last = await service.append("execution", "t2", [_started("h2"), _exited()], EXECUTION_CODEC, expected=ChainTip())

    await running.wait_for(last[-1].sequence)
    items = (await running.json("/v1/audit/findings"))["items"]
    assert [(f["sequence"], f["kind"]) for f in items] == [(forged[-1].sequence, FOREIGN_HOST_REPORT)]
    assert "sandbox host h2" in items[0]["reason"]
    assert "placed on h1" in items[0]["reason"]
