"""The action gateway against real Docker, a real context service and real Cedar policy events.

The workload is the shipped example ``examples/agents/note-keeper.symbi`` (its command, compiled from the
definition) or a shell script speaking the same protocol: ``@symbi {json}`` lines on stderr, one JSON reply
per request on stdin. Memories are checked in the context service's own signed events (``memory.<agent>``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import msgspec
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from symbi_common.commands import CommandClient
from symbi_common.policy.cedar import compile_policies
from symbi_common.policy.events import (
    AGGREGATE_TYPE,
    POLICY_SET_CODEC,
    PolicySetRegistered,
    PolicySetRetired,
)
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.settings import Settings, load_settings
from symbi_common.telemetry import capture_spans, trace_id_of, traced
from symbi_context.domain import MEMORY, MemoryStored
from symbi_context.main import build_app as build_context_app
from symbi_contracts.sandbox_agent.errors import ActionDenied
from symbi_contracts.sandbox_agent.events import (
    EXECUTION_CODEC,
    ExecutionAction,
    ExecutionExited,
    ExecutionKilled,
    ExecutionPaused,
    ExecutionResumed,
)
from symbi_dsl import compile_agent

from .conftest import Agent, Scheduler, containers_of, limits, running_agent
from .test_control import command

ROOT = Path(__file__).resolve().parents[3]
NOTE_KEEPER = ROOT / "examples" / "agents" / "note-keeper.symbi"
BASELINE = ROOT / "services" / "policy" / "src" / "symbi_policy" / "baseline.cedar"
AGENT = "agent-1"


def note_keeper() -> dict[str, Any]:
    """The example compiled for ``agent-1``: its workload command and its own policy set."""
    config = compile_agent(NOTE_KEEPER.read_text(), agent_id=AGENT)
    assert config["workload"]["actions"] is True
    return config


@pytest.fixture
async def context_service(nats_url: str, keys_dir: Path, tmp_path: Path) -> AsyncIterator[CommandClient]:
    """The real context service in this event loop (it performs the allowed memory actions)."""
    settings = load_settings(
        env={
            "SYMBI_NATS_URL": nats_url,
            "SYMBI_KEYS_DIR": str(keys_dir),
            "SYMBI_LOG_LEVEL": "warning",
            "SYMBI_POLICY__ENFORCEMENT": "allow-all",
            "SYMBIONT_VECTOR_DATA_PATH": str(tmp_path / "vectors"),
        }
    )
    app = build_context_app(settings)
    async with app.router.lifespan_context(app):
        yield CommandClient(app.state.runtime.nc, timeout=10.0)


Memories = Callable[[], Awaitable[list[MemoryStored]]]


@pytest.fixture
async def memories(make_store: Any) -> Memories:
    """The memories the context service stored for the agent (its own signed events), read as the audit
    service reads them: memory payloads are sealed to the context and audit services only."""
    reader = await make_store("audit")

    async def read() -> list[MemoryStored]:
        return [r.event for r in await reader.load("memory", AGENT, MEMORY.codec)]

    return read


def actions(events: list[Any]) -> list[ExecutionAction]:
    return [e for e in events if isinstance(e, ExecutionAction)]


def replies(stdout: bytes) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in stdout.splitlines() if line.startswith(b"{")]


# --- allowed ---------------------------------------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[list[ReadableSpan]]:
    """Every span this process finishes during the test (the daemon runs in-process)."""
    with capture_spans() as finished:
        yield finished


async def test_an_allowed_write_is_performed_answered_traced_and_counted(
    agent: Agent,
    scheduler: Scheduler,
    context_service: CommandClient,
    spans: list[ReadableSpan],
    scrape_metrics: Any,
    memories: Memories,
) -> None:
    before = await scrape_metrics(agent.http)
    cmd = note_keeper()["workload"]["command"]
    trace_id = uuid.uuid4().hex
    task_id = await scheduler.submit(
        agent.host_id,
        cmd,
        actions=True,
        input=b'Remember: the "launch" is Friday\n',
        headers={"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"},
    )
    r = await scheduler.result(task_id)
    assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stdout, r.stderr)
    assert r.terminal.exit_code == 0, r.stdout
    out = msgspec.json.decode(r.stdout)
    assert out["stored"] is True
    assert out["note"] == "Remember: the launch is Friday"
    # The request is in the task's log, its decision in the task's audit trail.
    assert r.stderr.startswith(b'@symbi {"action":"memory.write","resource":"notes"')
    [action] = actions(r.events)
    assert (action.seq, action.action, action.resource, action.outcome) == (1, "memory.write", "notes", "allowed")
    assert action.context == {"classification": "confidential"}
    assert action.decision is not None
    assert action.decision.effect == "allow"
    assert action.decision.action == "memory.write"
    # The memory exists, as the agent's own, with the task as origin.
    [memory] = await memories()
    assert memory.memory_id == out["memory_id"]
    assert memory.text == "Remember: the launch is Friday"
    assert memory.origin.task_id == task_id
    assert memory.metadata == {"collection": "notes"}
    assert memory.tags == ("note",)

    # One trace from the scheduler's work item: the work, the container, the action, and the stored events.
    names = {s.name for s in spans if f"{s.context.trace_id:032x}" == trace_id}
    assert {"sandbox.work", "sandbox.container.start", "sandbox.container.run", "action.memory.write"} <= names
    [action_span] = [s for s in spans if s.name == "action.memory.write"]
    assert action_span.attributes is not None
    assert action_span.attributes["symbi.decision"] == "allow"
    js = scheduler.nc.jetstream()
    records = await scheduler.store.load("execution", task_id, EXECUTION_CODEC)
    for rec in records:
        headers = (await js.get_msg("EVENTS", seq=rec.sequence)).headers or {}
        assert headers.get("traceparent", "").split("-")[1] == trace_id, type(rec.event).__name__

    # Metrics: the execution, its measured usage, the action; nothing left running.
    after = await scrape_metrics(agent.http)

    assert after.since(before, "symbi_sandbox_actions_total", action="memory.write", outcome="allowed") == 1
    assert after.since(before, "symbi_sandbox_executions_total", outcome="exited", tier="tier1") == 1
    assert after.since(before, "symbi_sandbox_container_cpu_seconds_count", tier="tier1") == 1
    assert after.since(before, "symbi_sandbox_container_peak_memory_bytes_count", tier="tier1") == 1
    assert after.since(before, "symbi_sandbox_container_peak_memory_bytes_sum", tier="tier1") > 0
    assert after[("symbi_sandbox_running_containers", (("tier", "tier1"),))] == 0


async def test_gvisor_serves_actions_and_a_large_result_still_comes_through(
    agent: Agent, scheduler: Scheduler, context_service: CommandClient
) -> None:
    # stdin stays open for replies while one write(2) of 400 KiB goes to stdout under runsc.
    script = (
        'echo \'@symbi {"action":"memory.write","resource":"r","args":{"text":"big result"}}\' >&2; read -r reply; '
        "head -c 409600 /dev/zero | tr '\\0' a > /tmp/r; dd if=/tmp/r bs=409600 count=1 2>/dev/null; "
        'echo \'@symbi {"action":"memory.read","resource":"r","args":{"query":"big result"}}\' >&2; read -r found; '
        'echo; echo "$reply"; echo "$found"'
    )
    task_id = await scheduler.submit(agent.host_id, ["sh", "-c", script], tier="tier2", actions=True)
    r = await scheduler.result(task_id)
    assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stderr)
    assert r.terminal.exit_code == 0
    assert r.terminal.output.stdout_bytes > 409600
    payload, _, tail = r.stdout.partition(b"\n")
    assert payload == b"a" * 409600
    written, read = replies(tail)
    assert (written["seq"], written["outcome"]) == (1, "allowed")
    assert (read["seq"], read["outcome"]) == (2, "allowed")
    assert [m["id"] for m in read["result"]["memories"]] == [written["result"]["memory_id"]]
    assert [a.outcome for a in actions(r.events)] == ["allowed", "allowed"]


async def test_bad_requests_get_error_replies_and_the_task_goes_on(
    agent: Agent, scheduler: Scheduler, context_service: CommandClient, spans: list[ReadableSpan], memories: Memories
) -> None:
    requests = [
        "not json",
        '{"action":"sandbox.start","resource":"x"}',
        '{"action":"memory.write","resource":"n","context":{"classification":5},"args":{"text":"x"}}',
        '{"action":"memory.write","resource":"n","context":{"owner":"x"},"args":{"text":"x"}}',
        '{"action":"memory.write","resource":"n","args":{"txt":"x"}}',
        '{"action":"memory.write","resource":"n","args":{"text":""}}',
        '{"action":"tool.invoke","resource":"search","context":{"arguments":["q"]}}',
    ]
    script = "".join(f"echo '@symbi {q}' >&2; read -r a; echo \"$a\"; " for q in requests)
    # An oversized request (70 000 bytes on one line) and one split across two writes.
    script += "printf '@symbi ' >&2; head -c 70000 /dev/zero | tr '\\0' a >&2; echo >&2; read -r a; echo \"$a\"; "
    script += 'printf \'log line\\n@symbi {"action":"memory.wr\' >&2; sleep 0.3; '
    script += 'printf \'ite","resource":"n","args":{"text":"split note"}}\\n\' >&2; read -r a; echo "$a"; echo done'
    # The work item carries no traceparent: the daemon continues the trace stored with task.assigned.
    with traced("scheduler.assign") as assign:
        task_id = await scheduler.submit(agent.host_id, ["sh", "-c", script], actions=True)
    r = await scheduler.result(task_id)
    assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stderr[-300:])
    assert r.stdout.endswith(b"done\n")
    [work] = [s for s in spans if s.name == "sandbox.work"]
    assert trace_id_of(work) == trace_id_of(assign)
    got = replies(r.stdout)
    assert [g["seq"] for g in got] == list(range(1, 10))
    codes = [g["error"]["code"] if g["outcome"] == "error" else g["outcome"] for g in got]
    assert codes == [
        "malformed_request",
        "unknown_action",
        "invalid_request",
        "invalid_request",
        "malformed_request",
        "invalid_context",  # the context service refused the empty text
        "unsupported_action",
        "request_too_large",
        "allowed",
    ]
    assert "is not valid for" in got[2]["error"]["message"]
    assert "should not exist" in got[3]["error"]["message"]
    recorded = actions(r.events)
    assert [(a.seq, a.outcome) for a in recorded] == [(i, "failed") for i in range(1, 9)] + [(9, "allowed")]
    assert recorded[1].action == "sandbox.start"
    assert recorded[1].decision is None
    # Decided (and allowed) but not performed: an action the runtime cannot check is never done.
    assert recorded[6].decision is not None
    assert recorded[6].decision.effect == "allow"
    assert recorded[6].detail.startswith("unsupported_action")
    [memory] = await memories()
    assert memory.text == "split note"


# --- denied ----------------------------------------------------------------------------------------


async def register_policies(make_store: Any, sets: dict[str, str]) -> Any:
    policy = await make_store("policy")
    for set_id, cedar in sets.items():
        compile_policies(set_id, cedar)  # as the policy service would check it
        event = PolicySetRegistered(set_id=set_id, cedar=cedar)
        await policy.append(AGGREGATE_TYPE, set_id, [event], POLICY_SET_CODEC, expected=NEW_AGGREGATE)
    return policy


async def paused(scheduler: Scheduler, task_id: str) -> list[Any]:
    return await scheduler.wait_for(task_id, lambda ev: any(isinstance(e, ExecutionPaused) for e in ev))


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
async def test_a_denied_write_freezes_the_task_until_a_policy_change_and_resume(
    tier: str,
    make_store: Any,
    scheduler: Scheduler,
    agent_settings: Callable[..., Settings],
    docker_client: docker.DockerClient,
    context_service: CommandClient,
    host_id: str,
    memories: Memories,
) -> None:
    config = note_keeper()
    [own] = config["policies"]
    policy = await register_policies(make_store, {"baseline": BASELINE.read_text(), f"agent-{AGENT}": own["cedar"]})
    settings = agent_settings(SYMBI_POLICY__ENFORCEMENT="embedded", SYMBI_POLICY__DECISION_LOG="false")
    cmd = config["workload"]["command"]
    async with running_agent(settings) as agent:
        started = time.monotonic()
        # 6 s timeout: the task spends longer than that frozen, which does not count.
        lim = limits(execution_timeout_s=6)
        kept = await scheduler.submit(agent.host_id, cmd, tier=tier, actions=True, input=b"keep this", lim=lim)
        dropped = await scheduler.submit(agent.host_id, cmd, tier=tier, actions=True, input=b"drop this", lim=lim)
        for task_id in (kept, dropped):
            events = await paused(scheduler, task_id)
            [denied] = actions(events)
            assert (denied.seq, denied.action, denied.outcome) == (1, "memory.write", "denied")
            assert denied.decision is not None
            assert denied.decision.effect == "deny"
            assert denied.decision.policies == (f"{AGENT}.confidential_notes.1",)
            [pause] = [e for e in events if isinstance(e, ExecutionPaused)]
            assert pause.reason == "action_denied"
        containers = {c["Labels"]["symbi.task_id"]: c["Id"] for c in containers_of(docker_client, host_id)}
        assert all(docker_client.api.inspect_container(c)["State"]["Paused"] for c in containers.values())
        assert await memories() == []  # the action did not happen

        # Terminating a held task: killed, and its write never happens.
        reply = await command(agent, "terminate", dropped)
        assert reply["outcome"] == "killed"

        # Resumed while the policy still denies: a typed error, another denial on record, still frozen.
        with pytest.raises(ActionDenied) as err:
            await command(agent, "resume", kept)
        assert "still denied" in str(err.value)
        assert err.value.code == "action_denied"
        assert [a.outcome for a in actions(await scheduler.events(kept))] == ["denied", "denied"]
        assert docker_client.api.inspect_container(containers[kept])["State"]["Paused"] is True

        # The operator lifts the rule (retires the agent's own policy set) and resumes at once.
        await asyncio.sleep(max(0.0, 7.0 - (time.monotonic() - started)))
        set_id = f"agent-{AGENT}"
        tip = (await policy.load(AGGREGATE_TYPE, set_id, POLICY_SET_CODEC))[-1].tip
        retired = PolicySetRetired(reason="notes may be confidential", revision=2)
        [change] = await policy.append(AGGREGATE_TYPE, set_id, [retired], POLICY_SET_CODEC, expected=tip)
        assert (await command(agent, "resume", kept))["status"] == "running"
        # Read-your-writes: the resume was decided by a policy view that includes the change.
        assert (await agent.app.state.runtime.decision_point()).version >= change.sequence

        r = await scheduler.result(kept)
        assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stdout)
        out = msgspec.json.decode(r.stdout)
        assert out == {"stored": True, "memory_id": out["memory_id"], "note": "keep this"}
        assert [a.outcome for a in actions(r.events)] == ["denied", "denied", "allowed"]
        [resumed] = [e for e in r.events if isinstance(e, ExecutionResumed)]
        assert resumed.reason == "action_allowed"
        killed = await scheduler.result(dropped)
        assert isinstance(killed.terminal, ExecutionKilled)
        [memory] = await memories()
        assert (memory.memory_id, memory.text, memory.origin.task_id) == (out["memory_id"], "keep this", kept)
    assert not containers_of(docker_client, host_id)
