"""The lifecycle service's metrics, scraped from ``/metrics`` of the running service, and its part of a trace.

Agents by state come from the registry read model at each scrape; initializations are counted by outcome;
the registration decision, the appended events and the projection show in the shared metrics; and an
initialization is a span of the registering request's trace, with the decision inside it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from symbi_common.settings import load_settings
from symbi_common.telemetry import capture_spans, inject_trace, trace_id_of
from symbi_lifecycle.main import build_app

from .conftest import Running, service_env
from .test_api import GOOD, post, register


async def test_agents_by_state_follow_the_registry(running: Running, scrape_metrics: Any) -> None:
    http = running.http
    before = await scrape_metrics(http)
    assert before.value("symbi_agents", state="Ready") == 0
    for agent_id in ("m1", "m2", "m3"):
        await register(http, agent_id)
    running = await post(http, "m2", "assign-task", {"task_id": "t1"})
    assert running.status_code == 200, running.text
    # Read-your-writes first: the gauge is read from the read model.
    await http.get("/v1/agents/m2", params={"min_sequence": running.json()["sequence"]})
    after = await scrape_metrics(http)
    assert after.value("symbi_agents", state="Ready") == 2
    assert after.value("symbi_agents", state="Running") == 1
    assert after.value("symbi_agents", state="Failed") == 0
    ready = "symbi_agent_initializations_total"
    assert after.since(before, ready, outcome="ready") == 3
    appended = "symbi_events_appended_total"
    labels = {"service": "lifecycle", "aggregate_type": "agent"}
    assert after.since(before, appended, **labels) == 7  # 3 x 2 + the assignment
    latency = "symbi_event_append_seconds_count"
    assert after.since(before, latency, **labels) == 7  # one append per event here
    consumed = "symbi_events_consumed_total"
    assert after.since(before, consumed, consumer="lifecycle_agents") == 7
    lag = "symbi_event_lag_seconds_count"
    assert after.since(before, lag, consumer="lifecycle_agents") == 7


@pytest.fixture
async def enforcing(
    nats_url: str,
    database_url: str,
    keys_dir: Path,
    register_operator_policies: Any,
    operator_headers: dict[str, str],
) -> AsyncIterator[httpx.AsyncClient]:
    """The lifecycle service deciding with its embedded point and no policy set but the operators' rules:
    default deny for agents."""
    await register_operator_policies()
    env = service_env(nats_url, database_url, keys_dir)
    env.update({"SYMBI_POLICY__ENFORCEMENT": "embedded", "SYMBI_POLICY__DECISION_LOG": "false"})
    app = build_app(load_settings(env=env))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://lc", headers=operator_headers) as http,
    ):
        yield http


async def until_failed(http: httpx.AsyncClient, agent_id: str) -> None:
    """Wait until the read model shows the agent Failed (the projection applied the denial)."""
    for _ in range(100):
        view = await http.get(f"/v1/agents/{agent_id}")
        if view.status_code == 200 and view.json()["state"] == "Failed":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"agent {agent_id} did not show as Failed")


async def test_a_denied_registration_is_counted_and_traced(enforcing: httpx.AsyncClient, scrape_metrics: Any) -> None:
    before = await scrape_metrics(enforcing)
    with capture_spans() as spans:
        with trace.get_tracer("test").start_as_current_span("operator") as operator:
            headers = dict(inject_trace({}))
            r = await enforcing.post("/v1/agents", json={"agent_id": "nope", "config": GOOD}, headers=headers)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "policy_denied"
        await until_failed(enforcing, "nope")
    after = await scrape_metrics(enforcing)

    assert after.value("symbi_agents", state="Failed") == 1
    assert after.since(before, "symbi_agent_initializations_total", outcome="denied") == 1
    assert (
        after.since(before, "symbi_policy_decisions_total", point="embedded", action="agent.register", outcome="deny")
        == 1
    )
    assert after.since(before, "symbi_policy_decision_seconds_count", point="embedded", action="agent.register") == 1
    assert after.since(before, "symbi_security_events_total", kind="policy_denial") == 1

    mine = {s.context.span_id: s for s in spans if trace_id_of(s) == trace_id_of(operator)}
    (init,) = [s for s in mine.values() if s.name == "lifecycle.initialize"]
    assert init.attributes is not None
    assert init.attributes["symbi.outcome"] == "denied"
    assert init.parent is not None
    server = mine[init.parent.span_id]
    assert server.name == "POST /v1/agents"
    assert server.parent is not None
    assert server.parent.span_id == operator.get_span_context().span_id
    decisions = [s for s in mine.values() if s.name == "policy.decide"]
    (api,) = [s for s in decisions if (s.attributes or {}).get("symbi.policy.action") == "api.write"]
    assert api.attributes is not None
    assert api.attributes["symbi.policy.decision"] == "allow"  # the operator may call the API …
    (decide,) = [s for s in decisions if (s.attributes or {}).get("symbi.policy.action") == "agent.register"]
    assert decide.parent is not None
    assert decide.parent.span_id == init.context.span_id
    assert decide.attributes is not None
    assert decide.attributes["symbi.policy.decision"] == "deny"
    # The stored events are applied by the registry projection as spans of the same trace.
    projected = [s for s in mine.values() if s.name == "project lifecycle_agents"]
    assert len(projected) == 2
