"""Filesystem grants against real Docker (runc and gVisor), real NATS and real Cedar policies (docs/grants.md).

A grant of the agent's definition becomes a bind mount at ``/symbi/data/<root>/…``: read-only unless granted
write, ungranted roots invisible, each mount decided at ``sandbox-agent.data_mount`` and recorded in
``execution.started``. Over the channel, ``data.read`` / ``data.list`` / ``data.write`` are confined to the
grants, decided by policy, and every one is on the task's audit trail with the digest of what moved.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from symbi_common.commands import CommandClient
from symbi_common.settings import Settings
from symbi_contracts.lifecycle.config import PathAccess
from symbi_contracts.sandbox_agent.events import ExecutionExited, ExecutionRefused, ExecutionStarted

from .conftest import Scheduler, running_agent
from .test_actions import BASELINE, actions, context_service, register_policies
from .test_channel import agent_image

__all__ = ["agent_image", "context_service"]  # fixtures, used by name

SANDBOX_USER = 65534


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    """Three data roots: reports (a file in q1/), outbox (writable by the sandbox's user), secrets."""
    base = tmp_path / "roots"
    (base / "reports" / "q1").mkdir(parents=True)
    (base / "reports" / "q1" / "summary.txt").write_text("revenue up\n")
    (base / "outbox" / "private").mkdir(parents=True)
    for d in (base / "outbox", base / "outbox" / "private"):
        d.chmod(0o777)
    (base / "secrets").mkdir()
    (base / "secrets" / "key").write_text("hunter2")
    return base


def with_roots(make: Callable[..., Settings], base: Path, **extra: str) -> Settings:
    return make(
        SYMBI_POLICY__ENFORCEMENT="embedded",
        SYMBI_POLICY__DECISION_LOG="false",
        SYMBI_SANDBOX__DATA_ROOTS__REPORTS=str(base / "reports"),
        SYMBI_SANDBOX__DATA_ROOTS__OUTBOX=str(base / "outbox"),
        SYMBI_SANDBOX__DATA_ROOTS__SECRETS__PATH=str(base / "secrets"),
        SYMBI_SANDBOX__DATA_ROOTS__SECRETS__CLASSIFICATION="secret",
        **extra,
    )


def grants(base: Path) -> tuple[PathAccess, ...]:
    """reports/q1 read-only by its portable path, outbox writable by its host path."""
    return (PathAccess(path="/symbi/data/reports/q1"), PathAccess(path=str(base / "outbox"), mode="read_write"))


MOUNTED = r"""
cat /symbi/data/reports/q1/summary.txt
if echo x > /symbi/data/reports/q1/new 2>/dev/null; then echo ro:WROTE; else echo ro:refused; fi
if echo out > /symbi/data/outbox/result.txt; then echo rw:ok; fi
echo roots: $(ls /symbi/data)
if [ -e /symbi/data/secrets ]; then echo secrets:VISIBLE; else echo secrets:absent; fi
grep " /symbi/data/" /proc/mounts | awk '{split($4, o, ","); print "mount:", $2, o[1]}' | sort
"""


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
async def test_a_sandbox_sees_its_grants_mounted_read_only_unless_granted_write_and_nothing_else(
    tier: str, roots: Path, make_store: Any, scheduler: Scheduler, agent_settings: Callable[..., Settings]
) -> None:
    await register_policies(make_store, {"baseline": BASELINE.read_text()})
    async with running_agent(with_roots(agent_settings, roots)) as agent:
        task_id = await scheduler.submit(
            agent.host_id, ["sh", "-c", MOUNTED], tier=tier, filesystem_access=grants(roots)
        )
        r = await scheduler.result(task_id)
    assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stderr[-2000:])
    assert r.stdout.decode().splitlines() == [
        "revenue up",
        "ro:refused",
        "rw:ok",
        "roots: outbox reports",
        "secrets:absent",
        "mount: /symbi/data/outbox rw",  # the kernel's (runc) or the sentry's (gVisor) view of the flags
        "mount: /symbi/data/reports/q1 ro",
    ]
    assert not (roots / "reports" / "q1" / "new").exists()
    written = roots / "outbox" / "result.txt"
    assert (written.read_text(), written.stat().st_uid) == ("out\n", SANDBOX_USER)
    # The mounts and their decisions are on the audit trail, in mounting order.
    [started] = r.of(ExecutionStarted)
    assert [(m.root, m.path, m.target, m.mode) for m in started.data_mounts] == [
        ("outbox", "", "/symbi/data/outbox", "read_write"),
        ("reports", "q1", "/symbi/data/reports/q1", "read"),
    ]
    decisions = [[(d.action, d.effect, d.point) for d in m.decisions] for m in started.data_mounts]
    mount_point = "sandbox-agent.data_mount"
    assert decisions == [
        [("data.read", "allow", mount_point), ("data.write", "allow", mount_point)],
        [("data.read", "allow", mount_point)],
    ]
    assert started.hardening["data"] == "/symbi/data/outbox rw, /symbi/data/reports/q1 ro"


NO_WRITABLE_OUTBOX = """
@id("no-writable-outbox")
forbid(principal, action == Action::"data.write", resource == Data::"outbox")
when { context has access && context.access == "mount" };
"""
#: Reading reports is allowed only if every access is logged in full: a mount cannot honour that.
REPORTS_LOGGED = """
@id("reports-logged")
@log_full("true")
permit(principal, action == Action::"data.read", resource == Data::"reports");
"""


async def test_a_grant_the_policy_denies_or_that_leaves_the_roots_refuses_the_task(
    roots: Path, make_store: Any, scheduler: Scheduler, agent_settings: Callable[..., Settings]
) -> None:
    sets = {"baseline": BASELINE.read_text(), "no-writable-outbox": NO_WRITABLE_OUTBOX, "logged": REPORTS_LOGGED}
    await register_policies(make_store, sets)
    async with running_agent(with_roots(agent_settings, roots)) as agent:

        async def run(*access: PathAccess) -> Any:
            task_id = await scheduler.submit(agent.host_id, ["true"], filesystem_access=access)
            return (await scheduler.result(task_id)).terminal

        writable = await run(PathAccess(path="/symbi/data/outbox", mode="read_write"))
        readable = await run(PathAccess(path="/symbi/data/outbox"))  # the forbid is about writing only
        classified = await run(PathAccess(path="/symbi/data/secrets"))  # the baseline permits no "secret" data
        outside = await run(PathAccess(path="/etc"))
        escape = await run(PathAccess(path="/symbi/data/reports/../secrets"))
        logged = await run(PathAccess(path="/symbi/data/reports"))
    assert isinstance(writable, ExecutionRefused)
    assert writable.code == "policy_denied"
    assert "/symbi/data/outbox" in writable.reason
    assert writable.decision is not None
    assert (writable.decision.action, writable.decision.policies) == ("data.write", ("no-writable-outbox",))
    assert writable.decision.point == "sandbox-agent.data_mount"
    assert isinstance(readable, ExecutionExited)
    assert isinstance(classified, ExecutionRefused)
    assert (classified.code, classified.decision and classified.decision.effect) == ("policy_denied", "deny")
    assert isinstance(outside, ExecutionRefused)
    assert (outside.code, outside.decision) == ("grant_refused", None)
    assert "outside every data root" in outside.reason
    assert isinstance(escape, ExecutionRefused)
    assert escape.code == "grant_refused"
    assert isinstance(logged, ExecutionRefused)
    assert logged.code == "condition_not_honoured"
    assert logged.decision is not None
    assert logged.decision.reason_code == "unenforceable_condition"


DATA_AGENT = """
import json
from symbi_agent import Agent, SymbiAgentError

def code(call):
    try:
        call()
        return "ok"
    except SymbiAgentError as err:
        return err.code

out = {}
with Agent() as a:
    out["list"] = [e["name"] for e in a.data.list("reports/q1")["entries"]]
    read = a.data.read("/symbi/data/reports/q1/summary.txt")
    out["read"] = [read["content"], read["sha256"]]
    out["ro"] = code(lambda: a.data.write("reports/q1/x.txt", "no"))
    out["written"] = a.data.write("outbox/report.txt", "hello")["written"]
    a.data.write("outbox/report.txt", " world", mode="append")
    out["through_mount"] = open("/symbi/data/outbox/report.txt").read()
    out["create"] = code(lambda: a.data.write("outbox/report.txt", "x", mode="create"))
    out["ungranted"] = code(lambda: a.data.read("secrets/key"))
    out["private"] = code(lambda: a.data.write("outbox/private/p.txt", "x"))
    out["big"] = code(lambda: a.data.write("outbox/big.bin", b"x" * 600000))
    out["missing"] = code(lambda: a.data.read("reports/q1/none.txt"))
    out["escape"] = code(lambda: a.data.read("reports/q1/../../secrets/key"))
    out["far"] = code(lambda: a.data.read("reports/q1/summary.txt", offset=2**63 - 1, length=1))
print(json.dumps(out))
"""

OUTBOX_PRIVATE = """
@id("outbox-private")
forbid(principal, action == Action::"data.write", resource == Data::"outbox")
when { context has path && context.path like "private/*" };
"""


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
async def test_data_requests_over_the_socket_are_confined_decided_and_audited(
    tier: str,
    roots: Path,
    agent_image: str,
    make_store: Any,
    scheduler: Scheduler,
    agent_settings: Callable[..., Settings],
    context_service: CommandClient,
) -> None:
    await register_policies(make_store, {"baseline": BASELINE.read_text(), "outbox-private": OUTBOX_PRIVATE})
    async with running_agent(with_roots(agent_settings, roots)) as agent:
        cmd = ["python3", "-c", DATA_AGENT]
        access = grants(roots)
        task_id = await scheduler.submit(
            agent.host_id, cmd, tier=tier, actions=True, image=agent_image, filesystem_access=access
        )
        r = await scheduler.result(task_id)
    assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stderr[-2000:])
    summary_sha = hashlib.sha256(b"revenue up\n").hexdigest()
    assert json.loads(r.stdout) == {
        "list": ["summary.txt"],
        "read": ["revenue up\n", summary_sha],
        "ro": "read_only",
        "written": 5,
        "through_mount": "hello world",
        "create": "exists",
        "ungranted": "denied",
        "private": "denied",
        "big": "too_large",
        "missing": "not_found",
        "escape": "malformed_request",
        "far": "malformed_request",  # (before: internal, and the allowed read not recorded)
    }
    report = roots / "outbox" / "report.txt"
    assert (report.read_text(), report.stat().st_uid) == ("hello world", SANDBOX_USER)
    assert not (roots / "outbox" / "private" / "p.txt").exists()
    assert not (roots / "outbox" / "big.bin").exists()
    recorded = actions(r.events)
    assert [(a.action, a.resource, a.outcome) for a in recorded] == [
        ("data.read", "reports", "allowed"),
        ("data.read", "reports", "allowed"),
        ("data.write", "reports", "failed"),
        ("data.write", "outbox", "allowed"),
        ("data.write", "outbox", "allowed"),
        ("data.write", "outbox", "failed"),
        ("data.read", "", "failed"),
        ("data.write", "outbox", "refused"),
        ("data.write", "outbox", "failed"),
        ("data.read", "reports", "failed"),
        ("data.read", "", "failed"),
        ("data.read", "", "failed"),
    ]
    assert {a.agent_id for a in recorded} == {"agent-1"}
    listed, read, ro, wrote, _, exists, ungranted, private, big, missing, escape, _far = recorded
    assert read.context == {"access": "gateway", "path": "q1/summary.txt", "size_bytes": 11}  # the runtime's
    assert summary_sha in read.detail
    assert hashlib.sha256(b"hello").hexdigest() in wrote.detail
    assert wrote.context == {"access": "gateway", "path": "report.txt", "size_bytes": 5}
    assert wrote.decision is not None
    assert (wrote.decision.effect, wrote.decision.point) == ("allow", "sandbox-agent.gateway_action")
    assert ro.detail.startswith("read_only")
    assert ro.decision is None
    assert exists.detail.startswith("exists")
    assert exists.decision is not None
    assert ungranted.detail.startswith("denied: no filesystem grant")
    assert private.decision is not None
    assert private.decision.policies == ("outbox-private",)
    assert big.detail.startswith("too_large")
    assert big.decision is None
    assert missing.detail.startswith("not_found")
    assert escape.detail.startswith("malformed_request")
    assert listed.detail == "data.list 1 entries"
    assert os.listdir(roots / "secrets") == ["key"]
