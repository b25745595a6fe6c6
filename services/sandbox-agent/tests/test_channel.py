"""The agent channel against real Docker (runc and gVisor), a real context service and real Cedar policies.

The workload is Python with the SDK (``symbi_agent``) in the image built by ``deploy/host/agent-image.sh``
(tagged by a hash of what it is made of, so a changed SDK or DSL runner gets a fresh image). It talks to its gateway over
the socket mounted at ``/symbi/run`` (docs/agent-protocol.md), or over stdio.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import msgspec
import pytest
from symbi_agent import AsyncAgent, Denied
from symbi_agent._wire import decode_reply, encode_request, unwrap
from symbi_agent.errors import ERRORS as SDK_ERRORS
from symbi_common.commands import CommandClient
from symbi_common.decisions import DecisionRecord, DecisionRequest, EntityRef
from symbi_common.settings import Settings
from symbi_context.domain import KNOWLEDGE, MEMORY
from symbi_contracts.agent_protocol import ERROR_CODES, Reply, Request, Result, encode_reply, error
from symbi_contracts.lifecycle.config import ResourceLimits, Workload
from symbi_contracts.sandbox_agent.events import ExecutionExited
from symbi_contracts.scheduler.events import TaskAssigned, TaskSubmitted
from symbi_fixtures.agent_images import build_agent_image
from symbi_sandbox_agent.actions import RequestLine, check_against_schema
from symbi_sandbox_agent.channel import Channel
from symbi_sandbox_agent.config import channel_root
from symbi_sandbox_agent.errors import ActionRequestError
from symbi_sandbox_agent.spec import HostCapabilities, SandboxDefaults, build_spec, channel_dir, container_name
from symbi_sandbox_agent.tasks import fold_task

from .conftest import Agent, Scheduler, running_agent
from .test_actions import BASELINE, actions, context_service, register_policies

__all__ = ["context_service"]  # a fixture, used by name


@pytest.fixture(scope="session")
def agent_image(docker_client: docker.DockerClient) -> str:
    """The workload image with Python, the SDK and the DSL runner (built once per content, in a few seconds)."""
    return build_agent_image()


SOCKET_AGENT = """
import asyncio, json, os, socket, stat, time
from symbi_agent import Agent, AsyncAgent, SymbiAgentError

def code(call):
    try:
        call()
        return "ok"
    except SymbiAgentError as err:
        return err.code

st = os.stat("/symbi/run")
out = {"dir": [st.st_uid, oct(stat.S_IMODE(st.st_mode))]}
with Agent() as a:
    out["channel"] = a.channel
    out["hello"] = a.hello()
    stored = a.memory.store("the launch is Friday", collection="notes")
    found = a.memory.recall("launch", collection="notes")["memories"]
    out["recalled"] = [m["id"] for m in found] == [stored["memory_id"]]
    out["secret"] = code(lambda: a.memory.store("x", context={"classification": "secret"}))
    out["big"] = code(lambda: a.memory.store("x" * 1100000))
    out["later"] = code(lambda: a.models.complete("m", "hi"))
    out["owner"] = code(lambda: a.call("memory.store", {"text": "t", "owner": "agent-2"}))
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(os.environ["SYMBI_SOCKET"])
    f = raw.makefile("rwb")
    forged = {"v": 1, "id": "f", "op": "memory.store", "agent_id": "agent-2", "args": {"text": "forged"}}
    f.write(json.dumps(forged).encode() + b"\\n")
    f.flush()
    out["forged"] = json.loads(f.readline())["error"]["code"]
    # The SDK refuses a request over the limit itself ("big"); the gateway refuses (and records) one sent anyway.
    f.write(b'{"v": 1, "id": "big", "op": "memory.store", "args": {"text": "' + b"x" * 1100000 + b'"}}\\n')
    f.flush()
    out["big_raw"] = json.loads(f.readline())["error"]["code"]
    out["after"] = code(lambda: a.memory.store("still me"))
    # A retry (after ``unavailable``, say) with the same memory_id is answered again and stores nothing.
    again = a.memory.store("the launch is Friday", collection="notes", memory_id=stored["memory_id"])
    out["retried"] = again["ids"] == [stored["memory_id"]]
    out["conflict"] = code(lambda: a.memory.store("the launch is Monday", collection="notes",
                                                  memory_id=stored["memory_id"]))
    # Nested past the bound (deeper than anything here decodes, at 1200): refused at once, the socket still served.
    for name, depth in (("deep", 600), ("deeper", 1200)):
        nested = "[" * depth + "]" * depth
        line = '{"v": 1, "id": "%s", "op": "memory.recall", "args": {"query": "x"}, "context": {"c": %s}}' % (name, nested)
        began = time.monotonic()
        f.write(line.encode() + b"\\n")
        f.flush()
        out[name] = [json.loads(f.readline())["error"]["code"], time.monotonic() - began < 2.0]

async def many():
    async with AsyncAgent() as b:  # more requests in flight than the gateway serves at once
        found = await asyncio.gather(*(b.memory.recall("launch", collection="notes") for _ in range(20)))
        return sum(len(f["memories"]) for f in found)

out["concurrent"] = asyncio.run(many())
print(json.dumps(out))
"""

NO_SECRETS = """
@id("no-secret-memories")
forbid(principal, action == Action::"memory.write", resource)
when { context has classification && context.classification == "secret" };
"""


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
async def test_an_agent_acts_over_its_socket_as_itself_only(
    tier: str,
    agent_image: str,
    make_store: Any,
    scheduler: Scheduler,
    agent_settings: Callable[..., Settings],
    context_service: CommandClient,
    host_id: str,
) -> None:
    await register_policies(make_store, {"baseline": BASELINE.read_text(), "no-secrets": NO_SECRETS})
    settings = agent_settings(SYMBI_POLICY__ENFORCEMENT="embedded", SYMBI_POLICY__DECISION_LOG="false")
    async with running_agent(settings) as agent:
        cmd = ["python3", "-c", SOCKET_AGENT]
        task_id = await scheduler.submit(agent.host_id, cmd, tier=tier, actions=True, image=agent_image)
        r = await scheduler.result(task_id)
    assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stderr[-2000:])
    assert r.stdout.strip(), r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["dir"] == [65534, "0o700"]
    assert out["channel"] == "socket"
    assert (out["hello"]["agent_id"], out["hello"]["task_id"], out["hello"]["version"]) == ("agent-1", task_id, 1)
    assert out["recalled"] is True
    assert (out["secret"], out["big"], out["later"]) == ("denied", "request_too_large", "not_available")
    assert out["big_raw"] == "request_too_large"
    # hello tells what this run can have performed: no model providers on this host, no network for this agent.
    ops = out["hello"]["ops"]
    assert ops["memory.store"] is ops["messages.send"] is ops["data.read"] is ops["tools.call"] is True
    assert ops["models.complete"] is ops["http.request"] is False
    assert (out["owner"], out["forged"], out["after"]) == ("malformed_request", "identity_refused", "ok")
    assert out["concurrent"] == 20
    assert (out["retried"], out["conflict"]) == (True, "memory_conflict")
    assert out["deep"] == out["deeper"] == ["malformed_request", True]
    # Every request is on the task's audit trail, as the listener's agent (hello is not an action).
    recorded = actions(r.events)
    assert [a.outcome for a in recorded] == [
        *["allowed", "allowed", "refused", *["failed"] * 4, "allowed"],
        *["allowed", "failed"],  # the retried store and the conflicting one
        *["failed", "failed"],  # the requests nested too deep
        *["allowed"] * 20,
    ]
    assert {a.agent_id for a in recorded} == {"agent-1"}
    refused = recorded[2]
    assert refused.decision is not None
    assert refused.decision.policies == ("no-secret-memories",)
    assert recorded[5].detail.startswith("identity_refused")
    assert recorded[6].detail.startswith("request_too_large")  # sent past the SDK, refused and recorded
    # The memories are agent-1's; nothing was written as agent-2.
    reader = await make_store("audit")
    mine = [rec.event.text for rec in await reader.load("memory", "agent-1", MEMORY.codec)]
    assert mine == ["the launch is Friday", "still me"]
    assert await reader.load("memory", "agent-2", MEMORY.codec) == []
    # The channel directory went with the container.
    assert not await asyncio.to_thread(
        os.path.exists, channel_dir(channel_root(), host_id, container_name(host_id, task_id, 1))
    )


KNOWLEDGE_AGENT = """
import json
from symbi_agent import Agent, Denied, SymbiAgentError
with Agent() as a:
    shared = a.knowledge.share("handbook", "holidays", "Friday the 13th is a company holiday", tags=["hr"])
    # A retry (after ``unavailable``, say) with the same document_id is answered again and stores nothing.
    again = a.knowledge.share("handbook", "holidays", "Friday the 13th is a company holiday", tags=["hr"],
                              document_id=shared["document_id"])
    try:
        a.knowledge.share("handbook", "holidays", "Monday is a holiday", document_id=shared["document_id"])
        conflict = "ok"
    except SymbiAgentError as err:
        conflict = err.code
    found = a.knowledge.query("handbook", "which day is a holiday")["results"]
    try:
        a.knowledge.query("payroll", "salaries")
        other = "allowed"
    except Denied as err:
        other = err.code
print(json.dumps({"shared": bool(shared["document_id"]), "retried": again == shared, "conflict": conflict,
                  "found": [r["text"] for r in found], "other": other}))
"""

HANDBOOK = """
@id("agent-1-handbook")
permit(principal == Agent::"agent-1", action in [Action::"memory.read", Action::"memory.write"], resource == Memory::"handbook");
"""


async def test_knowledge_is_shared_and_queried_under_policy(
    agent_image: str,
    make_store: Any,
    scheduler: Scheduler,
    agent_settings: Callable[..., Settings],
    context_service: CommandClient,
) -> None:
    await register_policies(make_store, {"baseline": BASELINE.read_text(), "handbook": HANDBOOK})
    settings = agent_settings(SYMBI_POLICY__ENFORCEMENT="embedded", SYMBI_POLICY__DECISION_LOG="false")
    async with running_agent(settings) as agent:
        cmd = ["python3", "-c", KNOWLEDGE_AGENT]
        r = await scheduler.result(await scheduler.submit(agent.host_id, cmd, actions=True, image=agent_image))
    assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stderr[-2000:])
    assert json.loads(r.stdout) == {
        "shared": True,
        "retried": True,
        "conflict": "document_conflict",
        "found": ["Friday the 13th is a company holiday"],  # once: the retry stored nothing
        "other": "denied",
    }
    recorded = actions(r.events)
    assert [(a.action, a.resource, a.outcome) for a in recorded] == [
        ("memory.write", "handbook", "allowed"),
        ("memory.write", "handbook", "allowed"),  # the retried share
        ("memory.write", "handbook", "failed"),  # the conflicting one
        ("memory.read", "handbook", "allowed"),
        ("memory.read", "payroll", "refused"),
    ]
    assert recorded[2].detail.startswith("document_conflict")
    stored = await (await make_store("audit")).load("knowledge", "handbook", KNOWLEDGE.codec)
    assert [type(rec.event).__name__ for rec in stored] == ["KnowledgeIngested"]


STDIO_AGENT = """
import json
from symbi_agent import Agent, NotAvailable
with Agent(stdio=True) as a:
    stored = a.memory.store("kept over stdio")
    found = a.memory.recall("kept")["memories"]
    try:
        a.models.complete("m", "hi")
        late = "no error"
    except NotAvailable as err:
        late = err.code
print(json.dumps({"channel": a.channel, "same": found[0]["id"] == stored["memory_id"], "later": late}))
"""


async def test_stdio_is_the_fallback_with_the_same_protocol(
    agent: Agent, agent_image: str, scheduler: Scheduler, context_service: CommandClient
) -> None:
    cmd = ["python3", "-c", STDIO_AGENT]
    task_id = await scheduler.submit(agent.host_id, cmd, actions=True, image=agent_image)
    r = await scheduler.result(task_id)
    assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stderr[-2000:])
    assert json.loads(r.stdout) == {"channel": "stdio", "same": True, "later": "not_available"}
    assert [a.outcome for a in actions(r.events)] == ["allowed", "allowed", "failed"]


# --- the channel alone (real Unix sockets, no container) -----------------------------------------------


async def test_a_busy_agent_is_not_read_past_its_in_flight_bound(tmp_path: Path) -> None:
    """Past the bound the listener stops reading: requests wait in the socket, not in the daemon's memory."""
    running, most, release = 0, 0, asyncio.Event()

    async def answer(line: RequestLine, channel: str) -> Reply:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        return Result(id=json.loads(line.body)["id"], result={"channel": channel})

    root = tmp_path / "ch"
    channel = Channel(str(root / "one"), (os.getuid(), os.getgid()), answer, max_in_flight=4)
    await channel.open()
    assert (root / "one").stat().st_mode & 0o777 == 0o700
    assert (root / "one" / "agent.sock").stat().st_mode & 0o777 == 0o600
    async with AsyncAgent(str(channel.path)) as client:
        calls = [asyncio.ensure_future(client.call("memory.recall", {"query": str(i)})) for i in range(40)]
        await asyncio.sleep(0.3)
        assert (running, most) == (4, 4)
        release.set()
        assert [r["channel"] for r in await asyncio.gather(*calls)] == ["socket"] * 40
    # Connections are bounded too: past the bound one is answered and closed.
    channel.max_connections = 1
    async with AsyncAgent(str(channel.path)):
        reader, writer = await asyncio.open_unix_connection(str(channel.path))
        refused = json.loads(await reader.readline())
        assert (refused["error"]["code"], await reader.read()) == ("too_many_requests", b"")
        writer.close()
    await channel.close()
    assert not (root / "one").exists()


async def test_an_agent_that_does_not_read_its_answers_costs_no_cpu(tmp_path: Path) -> None:
    """Answers wait in the socket for an agent that stops reading: the daemon waits for them without polling
    (before, each answer in flight was checked every millisecond: ~8 % of a core per such agent)."""
    written: list[bool] = []

    async def answer(line: RequestLine, channel: str) -> Reply:
        return Result(id=json.loads(line.body)["id"], result={"pad": "x" * 16 * 1024})

    async def settled(reply: Reply, ok: bool) -> None:
        written.append(ok)

    channel = Channel(str(tmp_path / "ch"), (os.getuid(), os.getgid()), answer, written=settled, max_in_flight=4)
    await channel.open()
    _reader, writer = await asyncio.open_unix_connection(str(channel.path))
    for i in range(60):
        writer.write(json.dumps({"v": 1, "id": i, "op": "hello"}).encode() + b"\n")
    await writer.drain()
    await asyncio.sleep(0.5)  # the socket's buffers are full: four answers wait to be written
    began = time.process_time()
    await asyncio.sleep(1.0)
    assert time.process_time() - began < 0.02  # (polling cost 0.06 s here)
    writer.close()
    await asyncio.sleep(0.3)
    await channel.close()
    assert False in written  # what the agent never read is settled as not written


def test_the_sdk_knows_every_error_code_and_speaks_the_contract() -> None:
    assert set(ERROR_CODES) <= set(SDK_ERRORS)
    sent = msgspec.json.decode(encode_request(3, "memory.store", {"text": "t"}, {"classification": "x"}), type=Request)
    assert (sent.v, sent.id, sent.op, sent.args, sent.agent_id) == (1, 3, "memory.store", {"text": "t"}, None)
    answer = encode_reply(error(3, "denied", "no", policies=["p"], retry_after=2.0))
    with pytest.raises(Denied) as err:
        unwrap(decode_reply(answer))
    assert (err.value.code, err.value.retry_after, err.value.details) == ("denied", 2.0, {"policies": ["p"]})


# --- the spec (pure) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tier", "runtimes", "runtime", "has_socket"),
    [
        ("tier1", {"runc", "runsc"}, "runc", True),
        ("tier2", {"runc", "runsc", "runsc-uds"}, "runsc-uds", True),
        ("tier2", {"runc", "runsc"}, "runsc", False),  # no --host-uds runtime: stdio only
    ],
)
def test_a_gateway_sandbox_gets_its_channel_where_its_tier_can_reach_a_socket(
    tier: str, runtimes: set[str], runtime: str, has_socket: bool
) -> None:
    workload = Workload(image="img:1", command=("run",), actions=True)
    assigned = TaskAssigned(
        host_id="h1",
        tier=tier,
        risk_score=0.1,
        risk_factors={},
        workload=workload,
        limits=ResourceLimits(),
        attempt=1,
        decision=DecisionRecord(action="task.allocate", effect="allow", policy_version=0),
    )
    view = fold_task("t1", [TaskSubmitted(agent_id="a1", input=b"", priority="normal"), assigned])
    caps = HostCapabilities(runtimes=frozenset(runtimes), blkio_device="/dev/vda")
    spec = build_spec(view, "h1", caps, SandboxDefaults(channel_root="/run/symbi/channels"))
    binds = spec.host_config_kwargs("/x/input")["binds"]
    env = spec.create_kwargs("/x/input")["environment"]
    assert spec.runtime == runtime
    if has_socket:
        assert binds[spec.channel_dir] == {"bind": "/symbi/run", "mode": "ro"}
        assert env["SYMBI_SOCKET"] == "/symbi/run/agent.sock"
        assert len(f"{spec.channel_dir}/agent.sock") < 108  # sun_path
        assert spec.owner == (65534, 65534)
    else:
        assert (spec.channel_dir, len(binds), "SYMBI_SOCKET" in env) == ("", 1, False)


async def test_a_restarted_host_removes_the_channels_of_its_earlier_sandboxes(
    docker_client: docker.DockerClient, agent_settings: Callable[..., Settings], host_id: str
) -> None:
    stale = Path(channel_dir(channel_root(), host_id, "symbi-before-the-crash-1"))
    await asyncio.to_thread(stale.mkdir, parents=True)
    async with running_agent(agent_settings()):
        assert not await asyncio.to_thread(stale.exists)


def test_an_accepted_request_shape_skips_cedar_but_never_a_different_one() -> None:
    def ask(**context: Any) -> DecisionRequest:
        resource = EntityRef(type="Memory", id="n", parents=('Agent::"a"',))
        return DecisionRequest(
            principal=EntityRef(type="Agent", id="a"), action="memory.write", resource=resource, context=context
        )

    check_against_schema(ask(classification="secret"))
    check_against_schema(ask(classification="public"))  # same shape: remembered
    for bad in (ask(classification=5), ask(classification="x", owner="y"), ask(classification=2**70)):
        with pytest.raises(ActionRequestError):
            check_against_schema(bad)
