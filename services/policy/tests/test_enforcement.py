"""Enforcement points: a denied action is refused, logged as an event, and suspends the Running agent.

Runs the real lifecycle service (PostgreSQL) and the real policy service in-process on one nats-server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest
from symbi_common.decision_queue import DECISIONS_STREAM, decisions_backlog, wait_decisions_stored
from symbi_common.decisions import DecisionRequest, EntityRef
from symbi_common.errors import PolicyDenied
from symbi_common.eventstore import EventStore
from symbi_common.policy import Enforcer
from symbi_common.policy.conditions import CONDITION_KINDS, redact, requires_approval
from symbi_common.policy.enforcement import ALL_CAPS, EnforcementPoint
from symbi_common.server_sync import synced
from symbi_common.settings import Settings, load_settings
from symbi_common.stream_provisioning import provision_streams
from symbi_policy.main import build_app

from .conftest import RunningPolicy, StartRuntime, example, running_agent, stored_decisions

MakeStore = Callable[..., Awaitable[EventStore]]
PHI = EntityRef(type="Data", id="rec-1", attrs={"classification": "phi"})
#: A point that enforces every condition (the tests below check what the hooks hand it).
EVERYTHING = EnforcementPoint("test.everything", conditions=frozenset(CONDITION_KINDS), caps=ALL_CAPS)


async def state_of(lifecycle: httpx.AsyncClient, agent_id: str, min_sequence: int = 0) -> str:
    view = (await lifecycle.get(f"/v1/agents/{agent_id}?min_sequence={min_sequence}")).json()
    return str(view["state"])


async def wait_state(lifecycle: httpx.AsyncClient, agent_id: str, state: str) -> None:
    for _ in range(200):
        if await state_of(lifecycle, agent_id) == state:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"agent {agent_id} is {await state_of(lifecycle, agent_id)}, not {state}")


async def own_decisions_stored(policy: RunningPolicy) -> None:
    """Wait until the policy service's own decision log has stored what it holds."""
    log = getattr(await policy.runtime.decision_point(), "log", None)
    assert log is not None, "the policy service logs its own decisions"
    await log.flush(timeout=10)
    await wait_decisions_stored(policy.runtime.js)


async def test_a_denied_action_suspends_the_running_agent_and_is_an_event(
    policy: RunningPolicy, start_runtime: StartRuntime, lifecycle: httpx.AsyncClient, make_store: MakeStore
) -> None:
    await policy.http.post("/v1/policy-sets", json={"set_id": "flow", "cedar": example("data_flow")})
    runtime = await start_runtime("context")
    enforcer = await Enforcer.for_runtime(runtime)
    sequence = (await running_agent(await make_store("lifecycle"), "reader-1")).sequence

    cleared = await enforcer.check_data(
        EntityRef(type="Agent", id="reader-1", attrs={"clearances": ["phi"]}), PHI, point=EVERYTHING
    )
    assert cleared.effect == "allow_with_conditions"
    assert redact({"ssn": "1", "name": "n"}, cleared.conditions) == {"ssn": "[REDACTED]", "name": "n"}
    assert cleared.policy_version == policy.service.follower.version
    assert await state_of(lifecycle, "reader-1", sequence) == "Running"

    with pytest.raises(PolicyDenied) as err:
        await enforcer.check_data(EntityRef(type="Agent", id="reader-1"), PHI)
    assert err.value.policies == ["phi-read-needs-clearance"]
    assert "phi data may only be read by an agent with the phi clearance" in str(err.value)
    await wait_state(lifecycle, "reader-1", "Suspended")
    history = (await lifecycle.get("/v1/agents/reader-1/events")).json()["items"]
    suspended = [e for e in history if e["type"] == "agent.suspended"]
    assert len(suspended) == 1
    assert suspended[0]["data"]["policy_id"] == "phi-read-needs-clearance"

    # A second denial of a Suspended agent is refused too, and leaves the agent as it is.
    with pytest.raises(PolicyDenied):
        await enforcer.check_data(EntityRef(type="Agent", id="reader-1"), PHI)
    assert await state_of(lifecycle, "reader-1") == "Suspended"

    await enforcer.log.flush()  # type: ignore[union-attr]
    logged, denied = await stored_decisions(policy.runtime)
    assert [d.entry.record.policies for d in denied] == [("phi-read-needs-clearance",)] * 2
    assert all(d.entry.service == "context" for d in denied)
    # (The API calls of this test are logged too, as api.* decisions of the policy and lifecycle services.)
    allowed = [e for event in logged for e in event.entries if not e.request.action.startswith("api.")]
    assert [e.record.effect for e in allowed] == ["allow_with_conditions"]
    assert allowed[0].request.principal.id == "reader-1"


async def test_denials_of_non_agents_do_not_suspend_anything(
    policy: RunningPolicy, start_runtime: StartRuntime, lifecycle: httpx.AsyncClient, make_store: MakeStore
) -> None:
    sequence = (await running_agent(await make_store("lifecycle"), "bystander")).sequence
    enforcer = await Enforcer.for_runtime(await start_runtime("scheduler"))
    user = EntityRef(type="User", id="mallory")
    with pytest.raises(PolicyDenied):
        await enforcer.enforce(DecisionRequest(principal=user, action="memory.write", resource=PHI))
    await asyncio.sleep(0.2)
    assert await state_of(lifecycle, "bystander", sequence) == "Running"


async def test_high_rate_decisions_are_logged_in_batches_and_none_is_lost(
    policy: RunningPolicy, start_runtime: StartRuntime
) -> None:
    runtime = await start_runtime("scheduler")
    enforcer = await Enforcer.for_runtime(runtime)
    host = EntityRef(type="Host", id="h1")
    for i in range(1500):
        await enforcer.enforce(
            DecisionRequest(principal=EntityRef(type="Agent", id=f"a{i}"), action="task.allocate", resource=host)
        )
    await enforcer.log.flush(timeout=20)  # type: ignore[union-attr]
    logged, _ = await stored_decisions(policy.runtime)
    ids = [e.request.principal.id for event in logged for e in event.entries]
    assert ids == [f"a{i}" for i in range(1500)]  # in order, each exactly once
    assert len(logged) < 1500 / 10  # batched
    assert all(len(event.entries) <= 200 for event in logged)


def _batch(source: str, batch_id: str, service: str = "scheduler", principal: str = "a") -> bytes:
    from symbi_common.decisions import Allow, DecisionRecord
    from symbi_common.policy.events import LoggedDecision

    request = DecisionRequest(principal=EntityRef(type="Agent", id=principal), action="task.allocate", resource=PHI)
    entry = LoggedDecision(
        request=request, record=DecisionRecord.of(request, Allow(policies=("p",))), at_ns=1, service=service
    )
    return msgspec.json.encode({"source": source, "batch_id": batch_id, "entries": [entry]})


async def test_a_retried_batch_is_stored_once(policy: RunningPolicy) -> None:
    """The stream drops a batch id it holds (within its duplicate window); the store one it has stored."""
    js = policy.runtime.js
    body = _batch("scheduler-x", "b-1")
    first = await js.publish("dlog.scheduler", body, headers={"Nats-Msg-Id": "b-1"})
    again = await js.publish("dlog.scheduler", body, headers={"Nats-Msg-Id": "b-1"})
    assert (first.duplicate, again.duplicate) == (None, True)
    await wait_decisions_stored(js)
    # Past the duplicate window (or redelivered after a lost acknowledgement): the same batch comes again.
    await js.publish("dlog.scheduler", body, headers={"Nats-Msg-Id": "b-1-later"})
    logged, _ = await stored_decisions(policy.runtime)
    assert [e.batch_id for e in logged] == ["b-1"]
    assert policy.app.state.decision_intake.stored == 2


async def test_a_batch_that_speaks_for_another_service_or_cannot_be_read_is_refused(
    policy: RunningPolicy, scrape_metrics: Any
) -> None:
    """NATS lets each service publish only its own dlog.<service>: the subject names the sender."""
    js = policy.runtime.js
    before = await scrape_metrics(policy.http)
    await js.publish("dlog.context", _batch("scheduler-x", "forged-source", principal="forged"))
    await js.publish("dlog.context", _batch("context-y", "forged-entry", service="scheduler", principal="forged"))
    await js.publish("dlog.context", b'{"source": "context-y", "batch_id": 7}')
    await js.publish("dlog.context", _batch("context-y", "fine", service="context", principal="genuine"))
    logged, _ = await stored_decisions(policy.runtime)
    principals = [e.request.principal.id for event in logged for e in event.entries]
    assert principals.count("genuine") == 1
    assert "forged" not in principals
    assert policy.app.state.decision_intake.refused == 3
    after = await scrape_metrics(policy.http)
    assert after.since(before, "symbi_policy_decision_batches_total", outcome="refused") == 3


async def test_what_if_reports_the_decisions_a_proposal_would_change(
    policy: RunningPolicy, start_runtime: StartRuntime
) -> None:
    enforcer = await Enforcer.for_runtime(await start_runtime("context"))
    enforcer.suspend_agents = False
    for i in range(5):
        try:
            await enforcer.check_data(
                EntityRef(type="Agent", id=f"a{i}"), PHI if i % 2 else EntityRef(type="Data", id="d")
            )
        except PolicyDenied:  # nothing permits phi reads yet (default deny)
            assert i % 2
    await enforcer.log.flush()  # type: ignore[union-attr]
    # The what-if replays every logged decision, the policy service's own too: each what-if call is an operator
    # API call it authorises (api.read, allowed by the baseline) and logs a moment later. Stored before each
    # next call, they are counted, so the numbers below do not depend on how fast that log is.
    await own_decisions_stored(policy)
    response = await policy.http.post("/v1/policy-sets/flow/what-if", json={"cedar": example("data_flow")})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["evaluated"] == 5
    assert report["changed"] == 2  # the phi reads: default deny -> denied by the data-flow policy
    assert {tuple(c["proposed"]["policies"]) for c in report["changes"]} == {("phi-read-needs-clearance",)}
    assert report["allow_to_deny"] == 0

    strict = '@id("no-data")\n@reason("closed")\nforbid(principal, action == Action::"data.read", resource);'
    await own_decisions_stored(policy)
    report = (await policy.http.post("/v1/policy-sets/lockdown/what-if", json={"cedar": strict})).json()
    assert (report["evaluated"], report["changed"], report["allow_to_deny"]) == (6, 5, 3)  # the data reads only
    await own_decisions_stored(policy)
    retire = (await policy.http.post("/v1/policy-sets/baseline/what-if", json={})).json()
    # Without the baseline the plain data reads lose their permit, and so do the two operator calls before.
    assert (retire["evaluated"], retire["allow_to_deny"]) == (7, 5)
    flipped = [(c["request"]["principal"]["type"], c["request"]["action"]) for c in retire["changes"]]
    assert sorted(flipped) == sorted([("Agent", "data.read")] * 3 + [("Operator", "api.read")] * 2)
    # Nothing was activated.
    assert (await policy.http.get("/v1/policy-sets/lockdown")).status_code == 404
    bad = await policy.http.post("/v1/policy-sets/lockdown/what-if", json={"cedar": "forbid(;"})
    assert bad.status_code == 422


async def denied_reads(enforcer: Enforcer, count: int) -> float:
    """``count`` data reads by a user, each denied (no policy set permits them); the seconds they took."""
    user = EntityRef(type="User", id="u")
    started = time.perf_counter()
    for i in range(count):
        with pytest.raises(PolicyDenied):
            await enforcer.enforce(
                DecisionRequest(principal=user, action="data.read", resource=EntityRef(type="Data", id=f"d{i}"))
            )
    return time.perf_counter() - started


async def test_decisions_made_while_the_policy_service_is_down_outlive_the_process_that_made_them(
    settings: Settings, start_runtime: StartRuntime
) -> None:
    runtime = await start_runtime("scheduler")  # no policy service yet: no policy set, default deny
    enforcer = await Enforcer.for_runtime(runtime)
    enforcer.suspend_agents = False
    log = enforcer.log
    assert log is not None
    assert await denied_reads(enforcer, 12) < 2.0  # each denial waits for JetStream, not for the policy service
    assert log.healthy
    assert log.pending == 0  # every denial is in DECISIONS, on disk
    assert await decisions_backlog(runtime.js) == 12
    # The enforcing process goes away (its connection dropped, nothing flushed) before the policy service comes.
    await runtime.nc.close()
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        _, denied = await stored_decisions(app.state.runtime)
        ids = [d.entry.request.resource.id for d in denied if d.entry.service == "scheduler"]
        assert ids == [f"d{i}" for i in range(12)]


async def test_decisions_wait_in_the_process_while_nats_does_not_take_them(start_runtime: StartRuntime) -> None:
    """No DECISIONS stream to take them (as when NATS is away): queued, retried, and not held up per denial."""
    runtime = await start_runtime("scheduler")
    enforcer = await Enforcer.for_runtime(runtime)
    enforcer.suspend_agents = False
    log = enforcer.log
    assert log is not None
    admin = await nats.connect(runtime.settings.nats.url)
    try:
        await admin.jetstream().delete_stream(DECISIONS_STREAM)
        assert await denied_reads(enforcer, 5) < log.timeout + 2.0  # one wait at most, not one per denial
        assert not log.healthy
        assert log.pending == 5
        assert log.failures > 0
        await provision_streams(admin.jetstream())
        await log.flush(timeout=15)
        assert log.pending == 0
        assert await decisions_backlog(runtime.js) >= 1
    finally:
        await admin.drain()


async def test_message_and_tool_hooks_return_the_conditions_to_honour(
    policy: RunningPolicy, start_runtime: StartRuntime
) -> None:
    for name in ("data_flow", "audit"):
        await policy.http.post("/v1/policy-sets", json={"set_id": name.replace("_", "-"), "cedar": example(name)})
    enforcer = await Enforcer.for_runtime(await start_runtime("sandbox-agent"))
    sender = EntityRef(type="Agent", id="s1")
    with pytest.raises(PolicyDenied) as err:
        await enforcer.check_message(sender, EntityRef(type="Agent", id="r1"), classification="phi")
    assert err.value.policies == ["phi-to-agent-needs-clearance"]
    sent = await enforcer.check_message(sender, EntityRef(type="Channel", id="general"), classification="internal")
    assert sent.effect == "allow"
    assert sent.policies == ("baseline-agents-message",)
    shell = await enforcer.check_tool(sender, EntityRef(type="Tool", id="shell"), arguments=["ls"], point=EVERYTHING)
    assert shell.effect == "allow_with_conditions"
    assert requires_approval(shell.conditions)
    with pytest.raises(PolicyDenied):
        await enforcer.check_tool(sender, EntityRef(type="Tool", id="translate"), classification="phi")
    written = await enforcer.check_data(sender, EntityRef(type="Data", id="d"), write=True, point=EVERYTHING)
    assert [c.kind for c in written.conditions] == ["log_full"]


async def test_an_oversized_decision_is_logged_without_its_attributes(
    policy: RunningPolicy, start_runtime: StartRuntime
) -> None:
    enforcer = await Enforcer.for_runtime(await start_runtime("context"))
    huge = EntityRef(type="Data", id="blob", attrs={"classification": "public", "owner": "x" * 300_000})
    record = await enforcer.check_data(EntityRef(type="Agent", id="a1"), huge)
    assert record.effect == "allow"
    await enforcer.log.flush()  # type: ignore[union-attr]
    logged, _ = await stored_decisions(policy.runtime)
    entry = logged[0].entries[0]
    assert entry.record == record
    assert entry.request.resource.id == "blob"
    assert entry.request.resource.attrs == {}
    assert entry.request.context["omitted_bytes"] > 300_000


async def test_a_condition_the_point_cannot_enforce_denies_and_is_logged(
    policy: RunningPolicy, start_runtime: StartRuntime, scrape_metrics: Any
) -> None:
    """data_flow grants a cleared phi read with redact + log_full: a point enforcing only redact must refuse."""
    before = await scrape_metrics(policy.http)
    await policy.http.post("/v1/policy-sets", json={"set_id": "flow", "cedar": example("data_flow")})
    enforcer = await Enforcer.for_runtime(await start_runtime("audit"), suspend_agents=False)
    cleared = EntityRef(type="Agent", id="reader-2", attrs={"clearances": ["phi"]})
    redacts_only = EnforcementPoint("test.redacts", conditions=frozenset({"redact"}))
    with pytest.raises(PolicyDenied) as err:
        await enforcer.check_data(cleared, PHI, point=redacts_only)
    assert err.value.details["reason_code"] == "unenforceable_condition"
    assert "unenforceable condition: test.redacts cannot enforce log_full (policy phi-read-cleared)" in str(err.value)
    # The default point enforces nothing: any condition denies there.
    verdict = await enforcer.decide(DecisionRequest(principal=cleared, action="data.read", resource=PHI))
    assert not verdict.allowed
    assert verdict.record.reason_code == "unenforceable_condition"
    # A cap on a resource the point cannot lower is as unenforceable as an unknown kind.
    caps_memory = EnforcementPoint("test.caps", conditions=frozenset({"cap_resources"}), caps=frozenset({"memory_mb"}))
    from symbi_common.decisions import AllowWithConditions, Condition

    capped = AllowWithConditions(conditions=(Condition(kind="cap_resources", params={"cpu_cores": 1}, policy="p"),))
    assert caps_memory.unenforceable(capped.conditions) == ["cap_resources of cpu_cores (policy p)"]
    assert EVERYTHING.check(capped) is capped
    after = await scrape_metrics(policy.http)  # the enforcer runs in this process: its counter shows here
    denials = "symbi_policy_enforcer_denials_total"
    assert after.since(before, denials, point="test.redacts", code="unenforceable_condition") == 1
    assert after.since(before, denials, point="unspecified", code="unenforceable_condition") == 1
    await enforcer.log.flush()  # type: ignore[union-attr]
    _, denied = await stored_decisions(policy.runtime)
    logged = [d.entry.record for d in denied if d.entry.request.principal.id == "reader-2"]
    assert [r.reason_code for r in logged] == ["unenforceable_condition"] * 2
    assert logged[0].point == "test.redacts"
    assert logged[1].decision_id == verdict.record.decision_id


async def test_an_unreachable_or_slow_policy_service_denies_with_a_typed_reason(
    policy: RunningPolicy, start_runtime: StartRuntime
) -> None:
    from symbi_common.policy import RemoteDecisionPoint

    runtime = await start_runtime("scheduler", enforcement="remote")
    point = await runtime.decision_point()
    assert isinstance(point, RemoteDecisionPoint)
    point.timeout = 2.0
    enforcer = Enforcer.around(point)
    host = EntityRef(type="Host", id="h1")
    request = DecisionRequest(principal=EntityRef(type="Agent", id="a1"), action="task.allocate", resource=host)
    assert (await enforcer.decide(request)).allowed  # the baseline allows it while the service answers
    assert (await runtime.health())["checks"]["policy-service"] is True

    # Unreachable: the policy service is gone (its command server stopped, nothing answers).
    await policy.runtime.commands.stop()  # returns once the server has seen the unsubscribe: no responder is left
    gone = await enforcer.decide(request)
    assert not gone.allowed
    assert gone.record.reason_code == "policy_unavailable"
    assert "no policy service is answering" in gone.record.reason
    assert (await runtime.health())["checks"]["policy-service"] is False
    batch = await enforcer.decide_batch([request, request])
    assert [v.record.reason_code for v in batch] == ["policy_unavailable"] * 2
    with pytest.raises(PolicyDenied) as err:
        await enforcer.enforce(request)
    assert err.value.details["reason_code"] == "policy_unavailable"

    # Hung: something takes the requests and never answers; the caller's timeout denies.
    hung = await policy.runtime.nc.subscribe("cmd.policy.*", queue="policy", cb=_ignore)
    await synced(policy.runtime.nc)  # the server has the subscription before the request is sent
    point.timeout = 0.3
    try:
        slow = await enforcer.decide(request)
    finally:
        await hung.unsubscribe()
    assert not slow.allowed
    assert slow.record.reason_code == "policy_timeout", slow.record.reason


async def _ignore(msg: object) -> None:
    """A responder that takes every request and never answers."""


async def test_the_policy_services_own_decisions_still_queued_at_stop_are_stored(
    nats_url: str, keys_dir: Path, operator_headers: dict[str, str]
) -> None:
    """Its decision log waits for an interval longer than the test: only the stop can send the decision, after
    the intake has stopped; the next start stores it."""
    from symbi_policy.main import build_app

    from .conftest import service_env

    settings = load_settings(env=service_env(nats_url, keys_dir, SYMBI_POLICY__LOG_INTERVAL_S="60"))
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        enforcer = await Enforcer.for_runtime(runtime)
        await enforcer.enforce(
            DecisionRequest(
                principal=EntityRef(type="Agent", id="queued-at-stop"), action="task.allocate", resource=PHI
            )
        )
        assert enforcer.log is not None
        assert enforcer.log.pending >= 1
    again = build_app(settings)
    async with again.router.lifespan_context(again):
        logged, _ = await stored_decisions(again.state.runtime)
        ids = [e.request.principal.id for event in logged for e in event.entries]
        assert ids.count("queued-at-stop") == 1
