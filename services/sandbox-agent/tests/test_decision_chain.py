"""Decision → action, from a real run: the sandbox-agent decides through its one enforcer, the policy service
stores each decision in the decision log, and the events of the actions it allowed name the same decision.

Real Docker, the real policy service (baseline + a set with conditions) and context service in-process, the
sandbox-agent with its embedded decision point and the decision log on (as in production).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from symbi_common.commands import CommandClient
from symbi_common.policy.events import (
    DECISION_LOG_CODEC,
    DECISION_LOG_SUBJECT,
    ActionDenied,
    DecisionsLogged,
    LoggedDecision,
)
from symbi_common.settings import Settings, load_settings
from symbi_common.streams import EVENTS_STREAM, read_subject
from symbi_contracts.sandbox_agent.events import ExecutionExited, ExecutionKilled, ExecutionStarted
from symbi_policy.main import build_app as build_policy_app

from .conftest import Scheduler, running_agent
from .test_actions import actions, context_service, paused, replies
from .test_control import command

__all__ = ["context_service"]  # a fixture of this module too

CONDITIONS = """
@id("reads-redacted")
@redact("text")
permit(principal is Agent, action == Action::"memory.read", resource is Memory) when { resource in principal };

@id("shell-needs-approval")
@require_approval("true")
permit(principal is Agent, action == Action::"tool.invoke", resource == Tool::"shell");
"""


@pytest.fixture
async def policy_service(
    nats_url: str, keys_dir: Path, operator_headers: dict[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    """The real policy service (it registers the baseline) with the conditions above; yields its HTTP client."""
    env = {"SYMBI_NATS_URL": nats_url, "SYMBI_KEYS_DIR": str(keys_dir), "SYMBI_LOG_LEVEL": "warning"}
    app = build_policy_app(load_settings(env=env))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://policy", headers=operator_headers) as http:
            created = await http.post("/v1/policy-sets", json={"set_id": "conditions", "cedar": CONDITIONS})
            assert created.status_code == 201, created.text
            yield http


async def decision_log(scheduler: Scheduler) -> dict[str, LoggedDecision]:
    """Every logged decision, by decision id."""
    out: dict[str, LoggedDecision] = {}
    async for batch in read_subject(scheduler.nc, EVENTS_STREAM, DECISION_LOG_SUBJECT):
        for raw in batch:
            event = (await scheduler.store.open_one(raw.data, raw.subject, raw.sequence, DECISION_LOG_CODEC)).event
            entries = [event.entry] if isinstance(event, ActionDenied) else list(event.entries)  # type: ignore[union-attr]
            assert isinstance(event, ActionDenied | DecisionsLogged)
            out.update((e.record.decision_id, e) for e in entries)
    return out


async def test_each_action_names_the_logged_decision_that_allowed_it_and_conditions_are_enforced_or_deny(
    scheduler: Scheduler,
    agent_settings: Callable[..., Settings],
    context_service: CommandClient,
    policy_service: httpx.AsyncClient,
) -> None:
    settings = agent_settings(SYMBI_POLICY__ENFORCEMENT="embedded", SYMBI_POLICY__LOG_INTERVAL_S="0.05")
    script = (
        'echo \'@symbi {"action":"memory.write","resource":"notes","args":{"text":"the code is 1234"}}\' >&2; '
        'read -r w; echo "$w"; '
        'echo \'@symbi {"action":"memory.read","resource":"notes","args":{"query":"code"}}\' >&2; '
        'read -r r; echo "$r"'
    )
    async with running_agent(settings) as agent:
        task_id = await scheduler.submit(agent.host_id, ["sh", "-c", script], actions=True)
        r = await scheduler.result(task_id)
        assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stderr)
        written, read = replies(r.stdout)
        assert written["outcome"] == "allowed"
        # The read's allow carried redact, which the gateway enforces on what it returns.
        [memory] = read["result"]["memories"]
        assert memory["id"] == written["result"]["memory_id"]
        assert memory["text"] == "[REDACTED]"

        # The shell needs an approval the gateway cannot enforce: denied, the run frozen, nothing done.
        shell = await scheduler.submit(
            agent.host_id,
            ["sh", "-c", 'echo \'@symbi {"action":"tool.invoke","resource":"shell"}\' >&2; read -r a; echo "$a"'],
            actions=True,
        )
        [refused] = actions(await paused(scheduler, shell))
        assert refused.outcome == "denied"
        assert refused.decision is not None
        assert refused.decision.reason_code == "unenforceable_condition"
        assert "cannot enforce require_approval (policy shell-needs-approval)" in refused.decision.reason
        assert refused.decision.point == "sandbox-agent.gateway_action"
        assert (await command(agent, "terminate", shell))["outcome"] == "killed"
        assert isinstance((await scheduler.result(shell)).terminal, ExecutionKilled)
        point = await agent.app.state.runtime.decision_point()
        await point.log.flush(timeout=10)

    # The chain: the start and each action record the decision that gated them, stored in the decision log.
    logged = await decision_log(scheduler)
    [started] = [e for e in r.events if isinstance(e, ExecutionStarted)]
    gated: list[Any] = [started, *actions(r.events), refused]
    assert [g.decision.action for g in gated] == ["sandbox.start", "memory.write", "memory.read", "tool.invoke"]
    for g in gated:
        assert g.decision is not None
        assert g.decision.decision_id, g
        entry = logged[g.decision.decision_id]
        assert entry.record == g.decision
        assert entry.service == "sandbox-agent"
    assert [g.decision.point for g in gated] == [
        "sandbox-agent.sandbox_start",
        "sandbox-agent.gateway_action",
        "sandbox-agent.gateway_read",
        "sandbox-agent.gateway_action",
    ]
    read_decision = actions(r.events)[1].decision
    assert read_decision is not None
    assert read_decision.effect == "allow_with_conditions"
    assert [c.kind for c in read_decision.conditions] == ["redact"]
    assert (
        msgspec.json.decode(msgspec.json.encode(logged[read_decision.decision_id].request))["action"] == "memory.read"
    )


async def test_no_sandbox_starts_without_a_decision_and_the_task_runs_once_one_can_be_had(
    scheduler: Scheduler, agent_settings: Callable[..., Settings], nats_url: str, keys_dir: Path
) -> None:
    settings = agent_settings(SYMBI_POLICY__ENFORCEMENT="remote", SYMBI_NATS__REQUEST_TIMEOUT_S="1")
    async with running_agent(settings) as agent:
        task_id = await scheduler.submit(agent.host_id, ["sh", "-c", "echo ran"])
        await asyncio.sleep(3.0)  # the work item is offered again and again: the policy service is not running
        assert await scheduler.events(task_id) == []  # neither started nor refused
        assert (await agent.app.state.runtime.health())["checks"]["policy-service"] is False
        env = {"SYMBI_NATS_URL": nats_url, "SYMBI_KEYS_DIR": str(keys_dir), "SYMBI_LOG_LEVEL": "warning"}
        app = build_policy_app(load_settings(env=env))
        async with app.router.lifespan_context(app):  # the policy service comes up: the task is decided and runs
            r = await scheduler.result(task_id)
        assert isinstance(r.terminal, ExecutionExited), r.terminal
        assert r.stdout == b"ran\n"
        [started] = [e for e in r.events if isinstance(e, ExecutionStarted)]
        assert started.decision is not None
        assert started.decision.effect == "allow"
