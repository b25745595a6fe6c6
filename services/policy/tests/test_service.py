"""The policy service on a real nats-server: policy sets as events, decisions over HTTP and NATS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from symbi_common.decisions import Allow, AllowWithConditions, Decision, DecisionRequest, Deny, EntityRef
from symbi_common.errors import NotFound
from symbi_common.eventstore import EventStore
from symbi_common.policy import EmbeddedDecisionPoint, RemoteDecisionPoint
from symbi_common.policy.cedar import PolicyRejected

from .conftest import RunningPolicy, StartRuntime, example

MakeStore = Callable[..., Awaitable[EventStore]]

PHI = EntityRef(type="Data", id="rec-1", attrs={"classification": "phi"})


def agent(agent_id: str = "a1", **attrs: object) -> EntityRef:
    return EntityRef(type="Agent", id=agent_id, attrs=dict(attrs))


REQUESTS = [
    DecisionRequest(principal=agent(), action="data.read", resource=PHI),
    DecisionRequest(principal=agent(clearances=["phi"]), action="data.read", resource=PHI),
    DecisionRequest(
        principal=agent(security_tier="tier1"),
        action="task.allocate",
        resource=EntityRef(type="Host", id="h1"),
        context={"resources": {"memory_mb": 2048, "cpu_cores": 1.5}},
    ),
    DecisionRequest(
        principal=agent(),
        action="task.allocate",
        resource=EntityRef(type="Host", id="h1"),
        context={"resources": {"memory_mb": 65536}},
    ),
    DecisionRequest(principal=agent(), action="agent.register", resource=agent("a2")),
    DecisionRequest(principal=agent(), action="tool.invoke", resource=EntityRef(type="Tool", id="shell")),
    DecisionRequest(
        principal=agent(), action="memory.read", resource=EntityRef(type="Memory", id="m1", parents=('Agent::"a1"',))
    ),
]


async def register(policy: RunningPolicy, set_id: str, cedar: str) -> dict:
    response = await policy.http.post("/v1/policy-sets", json={"set_id": set_id, "cedar": cedar})
    assert response.status_code == 201, response.text
    return response.json()


async def test_the_baseline_is_registered_on_a_fresh_runtime(policy: RunningPolicy) -> None:
    response = await policy.http.get("/v1/policy-sets")
    body = response.json()
    assert [s["set_id"] for s in body["items"]] == ["baseline"]
    baseline = body["items"][0]
    assert baseline["origin"] == "baseline"
    assert baseline["revision"] == 1
    assert "baseline-agents-own-memory" in baseline["policies"]
    assert body["policy_version"] == baseline["sequence"] > 0


async def test_register_update_retire_with_revisions(policy: RunningPolicy) -> None:
    created = await register(policy, "flow", example("data_flow"))
    assert created["revision"] == 1
    assert created["policy_version"] >= created["sequence"]
    denied = await policy.http.post(
        "/v1/decisions",
        json={
            "principal": {"type": "Agent", "id": "a1"},
            "action": "data.read",
            "resource": {"type": "Data", "id": "r", "attrs": {"classification": "phi"}},
        },
    )
    assert denied.json()["effect"] == "deny"
    assert denied.json()["policies"] == ["phi-read-needs-clearance"]
    assert denied.json()["policy_version"] == created["sequence"]

    relaxed = example("data_flow").replace('"phi-read-needs-clearance"', '"phi-read-guard"')
    updated = (await policy.http.put("/v1/policy-sets/flow", json={"cedar": relaxed, "expected_revision": 1})).json()
    assert updated["revision"] == 2
    assert "phi-read-guard" in updated["policies"]
    stale = await policy.http.put("/v1/policy-sets/flow", json={"cedar": example("data_flow"), "expected_revision": 1})
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "revision_mismatch"

    retired = (await policy.http.post("/v1/policy-sets/flow/retire", json={"reason": "test over"})).json()
    assert retired["status"] == "retired"
    assert retired["revision"] == 3
    after = await policy.service.decide(REQUESTS[0])
    assert isinstance(after, Deny)
    assert after.policies == ()  # only the default deny is left
    again = await policy.http.put("/v1/policy-sets/flow", json={"cedar": relaxed})
    assert again.status_code == 409
    listing = (await policy.http.get("/v1/policy-sets?include_retired=true")).json()
    assert {s["set_id"]: s["status"] for s in listing["items"]} == {"baseline": "active", "flow": "retired"}


async def test_a_malformed_policy_is_rejected_and_the_previous_version_stays_active(policy: RunningPolicy) -> None:
    await register(policy, "flow", example("data_flow"))
    version = policy.service.follower.version
    broken = example("data_flow").replace('resource.classification == "phi" }', "resource.classification == }", 1)
    response = await policy.http.put("/v1/policy-sets/flow", json={"cedar": broken})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "policy_rejected"
    assert error["details"]["line"] == 3
    assert "line 3: Cedar parse error: unexpected token" in error["message"]
    # Over NATS, the same typed error.
    with pytest.raises(PolicyRejected) as rejected:
        await policy.client.call("policy", "update", {"set_id": "flow", "cedar": broken}, dict)
    assert rejected.value.details["line"] == 3
    bad_register = await policy.http.post(
        "/v1/policy-sets", json={"set_id": "other", "cedar": 'permit(principal, action == Action::"fly", resource);'}
    )
    assert bad_register.status_code == 422
    assert "unrecognized action" in bad_register.json()["error"]["message"]
    assert policy.service.follower.version == version
    current = (await policy.http.get("/v1/policy-sets/flow")).json()
    assert current["revision"] == 1
    assert current["cedar"] == example("data_flow")
    assert isinstance(await policy.service.decide(REQUESTS[0]), Deny)
    missing = await policy.http.get("/v1/policy-sets/other")
    assert missing.status_code == 404


async def test_embedded_remote_and_http_give_identical_answers(
    policy: RunningPolicy, start_runtime: StartRuntime
) -> None:
    for name in ("data_flow", "resource_usage", "audit"):
        await register(policy, name.replace("_", "-"), example(name))
    embedded_rt = await start_runtime("scheduler", enforcement="embedded")
    remote_rt = await start_runtime("context", enforcement="remote")
    embedded = await embedded_rt.decision_point()
    remote = await remote_rt.decision_point()
    assert isinstance(embedded, EmbeddedDecisionPoint)
    assert isinstance(remote, RemoteDecisionPoint)
    version = policy.service.follower.version
    assert embedded.version == version

    local = [await embedded.decide(r) for r in REQUESTS]
    over_nats = [await remote.decide(r) for r in REQUESTS]
    over_http = []
    for r in REQUESTS:
        response = await policy.http.post("/v1/decisions", content=_encode(r))
        assert response.status_code == 200
        over_http.append(_decode(response.content))
    assert local == over_nats == over_http
    assert remote.version == version
    assert {type(d) for d in local} == {Allow, AllowWithConditions, Deny}
    assert all(d.policy_version == version for d in local)

    batch_local = await embedded.decide_batch(REQUESTS * 5)
    batch_remote = await remote.decide_batch(REQUESTS * 5)
    batch_http = await policy.http.post("/v1/decisions:batch", content=_encode_batch(REQUESTS * 5))
    assert batch_local == batch_remote == local * 5
    assert batch_http.json()["policy_version"] == version
    assert [_decode_obj(d) for d in batch_http.json()["decisions"]] == local * 5


async def test_a_policy_change_reaches_a_running_services_embedded_point_within_a_second(
    policy: RunningPolicy, start_runtime: StartRuntime
) -> None:
    runtime = await start_runtime("scheduler")
    point = await runtime.decision_point()
    request = DecisionRequest(principal=agent(), action="tool.invoke", resource=EntityRef(type="Tool", id="shell"))
    assert isinstance(await point.decide(request), Allow)  # the baseline lets agents call tools
    started = time.perf_counter()
    await policy.client.call(
        "policy",
        "register",
        {
            "set_id": "no-shell",
            "cedar": '@id("no-shell")\n@reason("shell is off")\nforbid(principal, action, resource == Tool::"shell");',
        },
        dict,
    )
    while not isinstance(await point.decide(request), Deny):
        assert time.perf_counter() - started < 1.0, "the embedded decision point did not see the change within 1 s"
        await asyncio.sleep(0.005)
    decision = await point.decide(request)
    assert isinstance(decision, Deny)
    assert decision.reason == "shell is off"
    assert point.version == policy.service.follower.version


async def test_a_restarted_embedded_point_rebuilds_the_same_version(
    policy: RunningPolicy, start_runtime: StartRuntime
) -> None:
    await register(policy, "flow", example("data_flow"))
    await policy.http.post("/v1/policy-sets/flow/retire", json={})
    await register(policy, "usage", example("resource_usage"))
    first = await (await start_runtime("scheduler")).decision_point()
    second = await (await start_runtime("sandbox-agent")).decision_point()
    assert first.version == second.version == policy.service.follower.version
    assert [await first.decide(r) for r in REQUESTS] == [await second.decide(r) for r in REQUESTS]


async def test_nats_commands_and_typed_errors(policy: RunningPolicy) -> None:
    view = await policy.client.call("policy", "get", {"set_id": "baseline"}, dict)
    assert view["status"] == "active"
    with pytest.raises(NotFound):
        await policy.client.call("policy", "get", {"set_id": "nope"}, dict)
    bad = await policy.http.post("/v1/decisions", content=b'{"principal": 1}')
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "bad_request"


def _encode(request: DecisionRequest) -> bytes:
    import msgspec

    return msgspec.json.encode(request)


def _encode_batch(requests: list[DecisionRequest]) -> bytes:
    import msgspec

    return msgspec.json.encode({"requests": requests})


def _decode(data: bytes) -> Decision:
    import msgspec

    return msgspec.json.decode(data, type=Decision)  # type: ignore[arg-type]


def _decode_obj(obj: object) -> Decision:
    import msgspec

    return msgspec.convert(obj, Decision)  # type: ignore[arg-type]


async def test_ready_once_the_policy_sets_are_read(policy: RunningPolicy) -> None:
    report = (await policy.http.get("/readyz")).json()
    assert report["ok"] is True
    assert report["checks"]["policy-sets"] is True


async def test_the_http_api_is_documented(policy: RunningPolicy) -> None:
    response = await policy.http.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/v1/decisions", "/v1/decisions:batch", "/v1/policy-sets", "/v1/policy-sets/{set_id}/what-if"} <= set(paths)
    assert "requestBody" in paths["/v1/decisions"]["post"]
