"""The SDK's data namespace and typed errors, and the test harness, against a real gateway: a running
sandbox-agent on real NATS with embedded Cedar policies, real data roots on disk, and (for a container) real
Docker. Nothing is faked: every request below is decided, performed and recorded by the runtime."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from symbi_agent import Agent, AsyncAgent, Denied, Exists, NotFound, ReadOnly, SymbiAgentError, TooLarge
from symbi_agent.data import MAX_DATA_BYTES, content_bytes
from symbi_agent.testing import agent_program, call_agent, is_async
from symbi_contracts.lifecycle.config import PathAccess
from symbi_contracts.sandbox_agent.events import ExecutionExited
from symbi_fixtures.agent_images import build_agent_image
from symbi_sandbox_agent.harness import GatewayHarness
from symbi_sandbox_agent.mounts import MountDenied

ROOT = Path(__file__).resolve().parents[3]
GRANTS = (PathAccess(path="/symbi/data/notes"), PathAccess(path="/symbi/data/drafts", mode="read_write"))

DRAFTS_SECRET = """
@id("drafts-secret")
forbid(principal, action == Action::"data.read", resource == Data::"drafts")
when { context has path && context.path like "secret*" };
"""


@pytest.fixture
def policies() -> dict[str, str]:
    baseline = (ROOT / "services" / "policy" / "src" / "symbi_policy" / "baseline.cedar").read_text()
    return {"baseline": baseline, "drafts-secret": DRAFTS_SECRET}


def caught(call: Any, kind: type[SymbiAgentError]) -> str:
    """The code of the error ``call`` raised, which must be of class ``kind``."""
    try:
        call()
    except kind as err:
        return err.code
    raise AssertionError(f"no {kind.__name__} was raised")


def notes_agent(agent: Agent) -> dict[str, Any]:
    """A synchronous agent: reads its notes, keeps drafts, and meets each typed error once."""
    out: dict[str, Any] = {"hello": agent.hello()["agent_id"]}
    out["list"] = [e["name"] for e in agent.data.list("notes")["entries"]]
    out["todo"] = agent.data.read("notes/todo.txt")["content"]
    out["wrote"] = agent.data.write("drafts/plan.bin", b"\x00\x01\xff")["sha256"]
    out["back"] = content_bytes(agent.data.read("drafts/plan.bin", binary=True)).hex()
    agent.data.write("drafts/secret.txt", "s")
    out["errors"] = [
        caught(lambda: agent.data.write("notes/todo.txt", "overwritten"), ReadOnly),
        caught(lambda: agent.data.read("notes/missing.txt"), NotFound),
        caught(lambda: agent.data.write("drafts/big.txt", "x" * (MAX_DATA_BYTES + 1)), TooLarge),
        caught(lambda: agent.data.read("notes/todo.txt", length=MAX_DATA_BYTES + 1), TooLarge),
        caught(lambda: agent.data.write("drafts/plan.bin", "again", mode="create"), Exists),
        caught(lambda: agent.data.read("elsewhere/file"), Denied),
    ]
    try:
        agent.data.read("drafts/secret.txt")
    except Denied as err:
        out["policy"] = err.details["policies"]
    return out


async def test_a_callable_agent_uses_its_grants_through_a_real_gateway_and_meets_typed_errors(
    harness: GatewayHarness, data: Path
) -> None:
    run = await harness.run_callable(agent_program(notes_agent), agent_id="note-taker", filesystem_access=GRANTS)
    assert run.value == {
        "hello": "note-taker",
        "list": ["todo.txt"],
        "todo": "ship the SDK\n",
        "wrote": hashlib.sha256(b"\x00\x01\xff").hexdigest(),
        "back": "0001ff",
        "errors": ["read_only", "not_found", "too_large", "too_large", "exists", "denied"],
        "policy": ["drafts-secret"],
    }
    assert (data / "notes" / "todo.txt").read_text() == "ship the SDK\n"
    assert (data / "drafts" / "plan.bin").read_bytes() == b"\x00\x01\xff"
    assert not (data / "drafts" / "big.txt").exists()
    # The run is on the audit trail like a sandbox's: its start with the mounts' decisions, every request, its end.
    assert run.started is not None
    assert [(m.root, m.mode) for m in run.started.data_mounts] == [("drafts", "read_write"), ("notes", "read")]
    assert [(a.action, a.outcome) for a in run.actions] == [
        ("data.read", "allowed"),
        ("data.read", "allowed"),
        ("data.write", "allowed"),
        ("data.read", "allowed"),
        ("data.write", "allowed"),
        ("data.write", "failed"),
        ("data.read", "failed"),
        ("data.write", "failed"),
        ("data.read", "failed"),
        ("data.write", "failed"),
        ("data.read", "failed"),
        ("data.read", "refused"),
    ]
    assert {a.agent_id for a in run.actions} == {"note-taker"}
    assert isinstance(run.terminal, ExecutionExited)
    assert run.terminal.exit_code == 0


async def drafting_agent(agent: AsyncAgent) -> list[str]:
    """An asynchronous agent: many requests in flight on one connection."""
    await asyncio.gather(*(agent.data.write(f"drafts/d{i}.txt", str(i)) for i in range(12)))
    reads = await asyncio.gather(*(agent.data.read(f"drafts/d{i}.txt") for i in range(12)))
    assert [r["content"] for r in reads] == [str(i) for i in range(12)]
    return [e["name"] for e in (await agent.data.list("drafts"))["entries"]]


async def test_an_async_agent_keeps_many_requests_in_flight(harness: GatewayHarness) -> None:
    assert is_async(drafting_agent)
    assert not is_async(notes_agent)
    run = await harness.run_callable(agent_program(drafting_agent), filesystem_access=GRANTS)
    assert run.value == sorted(f"d{i}.txt" for i in range(12))
    assert [a.outcome for a in run.actions] == ["allowed"] * 25


async def test_an_agent_error_is_raised_after_its_run_is_recorded_and_a_denied_grant_never_runs(
    harness: GatewayHarness, data: Path
) -> None:
    def failing(agent: Agent) -> None:
        agent.data.read("notes/missing.txt")

    with pytest.raises(NotFound, match="does not exist"):
        await harness.run_callable(agent_program(failing), filesystem_access=GRANTS, task_id="failing-run")
    [recorded] = (await harness.events("failing-run"))[1:-1]
    assert recorded.detail.startswith("not_found")  # type: ignore[union-attr]
    assert (await harness.events("failing-run"))[-1].exit_code == 1  # type: ignore[union-attr]
    # Mounting drafts/secrets is data.read of path "secrets": the drafts-secret policy forbids it.
    (data / "drafts" / "secrets").mkdir()
    with pytest.raises(MountDenied, match="policy denied mounting /symbi/data/drafts/secrets") as err:
        await harness.run_callable(
            agent_program(failing), filesystem_access=[PathAccess(path="/symbi/data/drafts/secrets")]
        )
    assert err.value.decision.policies == ("drafts-secret",)
    assert err.value.decision.point == "sandbox-agent.data_mount"


CONTAINER_AGENT = """
import json
from symbi_agent import Agent
with Agent() as a:
    mounted = open("/symbi/data/notes/todo.txt").read()
    read = a.data.read("notes/todo.txt")["content"]
    a.data.write("drafts/from-container.txt", "hi")
print(json.dumps({"channel": a.channel, "same": mounted == read}))
"""


async def test_the_harness_runs_a_container_agent_like_a_scheduled_task(harness: GatewayHarness, data: Path) -> None:
    tag = await asyncio.to_thread(build_agent_image)
    run = await harness.run_container(tag, ["python3", "-c", CONTAINER_AGENT], filesystem_access=GRANTS)
    assert isinstance(run.terminal, ExecutionExited), (run.terminal, run.output("stderr")[-2000:])
    assert json.loads(run.output()) == {"channel": "socket", "same": True}
    assert (data / "drafts" / "from-container.txt").read_text() == "hi"
    assert [(a.action, a.outcome) for a in run.actions] == [("data.read", "allowed"), ("data.write", "allowed")]
    assert run.started is not None
    assert run.started.runtime == "runc"


def test_call_agent_closes_the_channel_and_reports_a_missing_gateway(tmp_path: Path) -> None:
    from symbi_agent import ChannelError

    with pytest.raises(ChannelError, match="cannot connect"):
        call_agent(notes_agent, str(tmp_path / "no.sock"))
