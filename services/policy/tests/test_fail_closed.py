"""Policy fails closed, on the real policy service and another service's embedded point (one nats-server).

- a policy event that cannot be applied halts its policy set: every decision denies (``policy_halted``),
  ``/readyz`` and ``symbi_policy_set_halted`` show it, until a later event of the set applies;
- a forged policy event halts its set the same way (it is never skipped);
- a forbid whose evaluation errors denies (``forbid_error``), embedded and over HTTP alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import nats.errors
import pytest
from symbi_common.decisions import Allow, DecisionRequest, Deny, EntityRef
from symbi_common.eventstore import EventStore
from symbi_common.policy import EmbeddedDecisionPoint
from symbi_common.policy.events import AGGREGATE_TYPE, POLICY_SET_CODEC, PolicySetRegistered
from symbi_common.sealing import NEW_AGGREGATE

from .conftest import RunningPolicy, StartRuntime

MakeStore = Callable[..., Awaitable[EventStore]]
SHELL = DecisionRequest(
    principal=EntityRef(type="Agent", id="a1"), action="tool.invoke", resource=EntityRef(type="Tool", id="shell")
)
#: Valid Cedar, but not against the schema (an action it does not know): what a set stored before a schema
#: change looks like to a newer follower.
NO_SHELL = '@id("no-shell")\nforbid(principal, action == Action::"tool.invoke", resource == Tool::"shell");'
STALE = '@id("fly")\npermit(principal, action == Action::"fly", resource);'


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_an_event_that_cannot_be_applied_halts_the_set_until_a_later_event_fixes_it(
    policy: RunningPolicy, start_runtime: StartRuntime, make_store: MakeStore, scrape_metrics: object
) -> None:
    assert isinstance(await policy.service.decide(SHELL), Allow)  # the baseline lets agents call tools
    signer = await make_store("policy")  # the policy service's own key: the event verifies, its text does not compile
    await signer.append(
        AGGREGATE_TYPE,
        "legacy",
        [PolicySetRegistered(set_id="legacy", cedar=STALE)],
        POLICY_SET_CODEC,
        expected=NEW_AGGREGATE,
    )
    follower = policy.service.follower
    await until(lambda: "legacy" in follower.halted)

    # A service started afterwards replays the stream and halts the same set.
    runtime = await start_runtime("scheduler")
    point = await runtime.decision_point()
    assert isinstance(point, EmbeddedDecisionPoint)
    assert "legacy" in point.follower.halted
    for decision in (await point.decide(SHELL), await policy.service.decide(SHELL)):
        assert isinstance(decision, Deny)
        assert decision.code == "policy_halted"
        assert decision.policies == ("legacy",)
        assert "no longer compiles" in decision.reason
    # The operator API is gated by the same enforcer: it is refused too while the policy is halted.
    over_http = await policy.http.post("/v1/decisions", content=_encode(SHELL))
    assert over_http.status_code == 403
    assert over_http.json()["error"]["details"]["reason_code"] == "policy_halted"
    assert "legacy" not in follower.compiled  # the text never became current
    shown = await policy.client.call("policy", "get", {"set_id": "legacy"}, dict)
    assert "no longer compiles" in shown["halted"]
    assert "legacy" in (await policy.client.call("policy", "list", {}, dict))["halted"]

    remote_runtime = await start_runtime("context", enforcement="remote")  # asks the halted policy service
    remote = await remote_runtime.decision_point()
    remote_answer = await remote.decide(SHELL)
    assert isinstance(remote_answer, Deny)
    assert remote_answer.code == "policy_halted"
    assert (await remote_runtime.health())["checks"]["policy-service"] is False

    ready = await policy.http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["policy-sets"] is False
    assert (await runtime.health())["checks"]["policy-sets"] is False
    metrics = await scrape_metrics(policy.http)  # type: ignore[operator]
    assert metrics.value("symbi_policy_set_halted", set_id="legacy") == 1

    # Fixed by a later event of the set that applies: an update whose text compiles.
    # (through the policy service's command, with the admin's NATS credential: its HTTP API is refused now)
    fixed = await policy.client.call(
        "policy", "update", {"set_id": "legacy", "cedar": '@id("ok")\npermit(principal, action, resource);'}, dict
    )
    assert follower.halted == {}
    assert fixed["halted"] == ""
    await until(lambda: not point.follower.halted and point.version == follower.version)
    assert isinstance(await point.decide(SHELL), Allow)
    assert isinstance(await policy.service.decide(SHELL), Allow)
    assert (await policy.http.get("/readyz")).status_code == 200
    assert (await runtime.health())["checks"]["policy-sets"] is True
    assert isinstance(await remote.decide(SHELL), Allow)
    assert (await remote_runtime.health())["checks"]["policy-service"] is True
    metrics = await scrape_metrics(policy.http)  # type: ignore[operator]
    assert metrics.value("symbi_policy_set_halted", set_id="legacy") == 0


async def test_a_forged_policy_event_halts_its_set_it_is_not_skipped(
    policy: RunningPolicy, start_runtime: StartRuntime, make_store: MakeStore
) -> None:
    point = await (await start_runtime("scheduler")).decision_point()
    assert isinstance(point, EmbeddedDecisionPoint)
    assert isinstance(await point.decide(SHELL), Allow)
    forger = await make_store("lifecycle")  # a key that may not sign evt.policy.>
    grant_all = PolicySetRegistered(set_id="evil", cedar='@id("all")\npermit(principal, action, resource);')
    await forger.append("policy", "evil", [grant_all], POLICY_SET_CODEC, expected=NEW_AGGREGATE)
    await until(lambda: "evil" in point.follower.halted and "evil" in policy.service.follower.halted)
    assert "evil" not in point.follower.states  # never applied
    assert "UnauthorisedSigner" in point.follower.halted["evil"]
    for decision in (await point.decide(SHELL), await policy.service.decide(SHELL)):
        assert isinstance(decision, Deny)
        assert decision.code == "policy_halted"
    assert (await policy.http.get("/readyz")).status_code == 503


async def test_a_forbid_that_cannot_be_evaluated_denies_everywhere(
    policy: RunningPolicy, start_runtime: StartRuntime
) -> None:
    guard = (
        '@id("size-guard")\nforbid(principal, action == Action::"message.send", resource)\n'
        "when { context has size_bytes && context.size_bytes * 4611686018427387904 > 1000 };"
    )
    for set_id, cedar in (("open", '@id("all")\npermit(principal, action, resource);'), ("guard", guard)):
        response = await policy.http.post("/v1/policy-sets", json={"set_id": set_id, "cedar": cedar})
        assert response.status_code == 201, response.text
    point = await (await start_runtime("sandbox-agent")).decision_point()
    request = DecisionRequest(
        principal=EntityRef(type="Agent", id="a1"),
        action="message.send",
        resource=EntityRef(type="Agent", id="a2"),
        context={"size_bytes": 4},  # the guard's arithmetic overflows: it cannot be evaluated
    )
    embedded = await point.decide(request)
    assert isinstance(embedded, Deny)
    assert (embedded.code, embedded.policies) == ("forbid_error", ("size-guard",))
    over_http = (await policy.http.post("/v1/decisions", content=_encode(request))).json()
    assert over_http["effect"] == "deny"
    assert over_http["code"] == "forbid_error"
    small = DecisionRequest(principal=request.principal, action=request.action, resource=request.resource)
    assert isinstance(await point.decide(small), Allow)  # the guard evaluates (no size): the permit applies


def _encode(request: DecisionRequest) -> bytes:
    import msgspec

    return msgspec.json.encode(request)


async def test_a_data_key_read_that_fails_a_moment_halts_nothing(
    policy: RunningPolicy, start_runtime: StartRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read of a set's data key fails (NATS away a moment): the event is applied again, not taken as
    a verdict on it. Before, its set halted for good (every decision of the process denied until a restart)."""
    runtime = await start_runtime("scheduler")
    point = await runtime.decision_point()
    assert isinstance(point, EmbeddedDecisionPoint)
    store = runtime.datakeys._store
    get, failed = store.get, []

    async def fails_once(name: str) -> tuple[bytes, int] | None:
        if name.startswith("policy.blip") and not failed:
            failed.append(name)
            raise nats.errors.TimeoutError
        return await get(name)

    monkeypatch.setattr(store, "get", fails_once)
    monkeypatch.setattr(runtime.datakeys, "_announce", lambda *_: None)  # (read from the store, not the notice)
    await policy.http.post("/v1/policy-sets", json={"set_id": "blip", "cedar": NO_SHELL})
    await until(lambda: "blip" in point.follower.compiled)
    assert failed == ["policy.blip"]
    assert "blip" not in point.follower.halted
    assert isinstance(await point.decide(SHELL), Deny)


async def test_a_body_nested_too_deep_is_a_bad_request(policy: RunningPolicy) -> None:
    """Over HTTP and NATS alike (before: an untyped 500 over HTTP, a RecursionError over NATS)."""
    for depth in (600, 3000):
        nested = "[" * depth + "]" * depth
        body = (
            '{"principal": {"type": "User", "id": "a"}, "action": "x", "resource": {"type": "Agent", "id": "b"},'
            f' "context": {{"k": {nested}}}}}'
        ).encode()
        r = await policy.http.post("/v1/decisions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "bad_request"
        reply = await policy.runtime.nc.request("cmd.policy.decide", body, timeout=5)
        assert b"bad_request" in reply.data
        assert b"64 levels" in reply.data


async def test_readyz_shows_recent_errors_to_an_operator_token_only(policy: RunningPolicy) -> None:
    """The probe is open; what went wrong lately (it names tasks and agents) is not."""
    policy.runtime.note_error("action of task-7: RuntimeError")
    shown = (await policy.http.get("/readyz")).json()
    assert shown["recent_errors"][-1].endswith("action of task-7: RuntimeError")
    transport = httpx.ASGITransport(app=policy.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://policy") as anonymous:
        report = (await anonymous.get("/readyz")).json()
        bad = (await anonymous.get("/readyz", headers={"Authorization": "Bearer forged"})).json()
    assert "checks" in report
    assert "recent_errors" not in report
    assert "recent_errors" not in bad
