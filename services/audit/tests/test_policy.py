"""Details and erasure behind the real embedded policy decision point (``[policy] enforcement = "embedded"``).

The policy set is a real ``policy.set_registered`` event signed with the policy service's key; the audit
service's embedded decision point follows it like every service does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient
from symbi_audit.main import build_app
from symbi_common.commands import CommandClient
from symbi_common.crypto import Signer
from symbi_common.errors import SymbiError
from symbi_common.eventstore import EventStore
from symbi_common.operator_revocations import open_revocations_bucket
from symbi_common.operator_tokens import (
    default_operator_dir,
    encode_revocation,
    issue_token,
    load_issuer_key,
    sign_revocation,
)
from symbi_common.policy.events import AGGREGATE_TYPE, POLICY_SET_CODEC, PolicySetRegistered
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.settings import load_settings

from .conftest import Running, Writer, audit_env

POLICY = """
permit(principal == User::"alice", action == Action::"data.read", resource == Data::"agent.q1");
permit(principal == User::"dpo", action == Action::"data.write", resource is Data)
when { context has purpose && context.purpose == "erasure" };
"""


@pytest.fixture
async def enforced(
    make_store: Callable[..., Awaitable[EventStore]],
    provisioned: NatsClient,
    nats_url: str,
    database_url: str,
    keys_dir: Path,
    register_operator_policies: Callable[[], Awaitable[None]],
    operator_headers: dict[str, str],
) -> AsyncIterator[Running]:
    await register_operator_policies()
    policy = await make_store("policy")
    await policy.append(
        AGGREGATE_TYPE,
        "audit-readers",
        [PolicySetRegistered(set_id="audit-readers", cedar=POLICY)],
        POLICY_SET_CODEC,
        expected=NEW_AGGREGATE,
    )
    env = audit_env(nats_url, database_url, keys_dir, SYMBI_POLICY__ENFORCEMENT="embedded")
    env["SYMBI_POLICY__DECISION_LOG"] = "false"
    app = build_app(load_settings(env=env))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://audit", headers=operator_headers) as http,
    ):
        yield Running(app, http, app.state.audit)


async def test_policy_decides_who_reads_details_and_who_erases(enforced: Running, writer: Writer) -> None:
    assert enforced.service.decisions.version >= 1
    await writer.agent("q1", 2)
    last = (await writer.agent("q2", 1))[-1]
    await enforced.wait_for(last)

    async def details(principal: str) -> dict[str, object]:
        resp = await enforced.http.get(
            "/v1/audit/events", params={"details": "true"}, headers={"X-Symbi-Principal": principal}
        )
        assert resp.status_code == 200, resp.text
        return {f"{e['aggregate_id']}/{e['aggregate_version']}": e["details"] for e in resp.json()["items"]}

    alice = await details('User::"alice"')
    assert alice["q1/1"]["payload"]["agent_id"] == "q1"  # type: ignore[index]
    assert alice["q2/1"] is None
    bob = await details("bob")
    assert set(bob.values()) == {None}
    denied = await enforced.http.post(
        "/v1/audit/erasures", json={"aggregate": "agent.q1"}, headers={"X-Symbi-Principal": "alice"}
    )
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "policy_denied"
    allowed = await enforced.http.post(
        "/v1/audit/erasures", json={"aggregate": "agent.q1", "reason": "art. 17"}, headers={"X-Symbi-Principal": "dpo"}
    )
    assert allowed.status_code == 201, allowed.text
    await enforced.wait_for(allowed.json()["executed_sequence"])
    alice = await details('User::"alice"')
    assert alice["q1/1"] == {"erased": True, "payload": None}


CONDITIONED = """
@id("carol-redacted")
@redact("agent_id")
permit(principal == User::"carol", action == Action::"data.read", resource == Data::"agent.q1");
@id("dave-needs-approval")
@require_approval("true")
permit(principal == User::"dave", action == Action::"data.read", resource == Data::"agent.q1");
"""


async def test_conditions_on_details_are_enforced_or_the_details_withheld(
    enforced: Running, writer: Writer, make_store: Callable[..., Awaitable[EventStore]]
) -> None:
    policy = await make_store("policy")
    [change] = await policy.append(
        AGGREGATE_TYPE,
        "conditioned",
        [PolicySetRegistered(set_id="conditioned", cedar=CONDITIONED)],
        POLICY_SET_CODEC,
        expected=NEW_AGGREGATE,
    )
    point = enforced.service.decisions
    assert await point.follower.wait_for(change.sequence)  # type: ignore[attr-defined]
    last = (await writer.agent("q1", 1))[-1]
    await enforced.wait_for(last)

    async def first_details(principal: str) -> dict[str, object]:
        resp = await enforced.http.get(
            "/v1/audit/events", params={"details": "true", "agent": "q1"}, headers={"X-Symbi-Principal": principal}
        )
        assert resp.status_code == 200, resp.text
        event: dict[str, object] = resp.json()["items"][0]
        return event

    carol = await first_details('User::"carol"')  # allowed with redact, which the audit query enforces
    assert carol["details"]["payload"]["agent_id"] == "[REDACTED]"  # type: ignore[index]
    assert carol["details"]["payload"]["n"] == 0  # type: ignore[index]
    dave = await first_details('User::"dave"')  # allowed only with an approval nobody here can give
    assert dave["details"] is None
    assert dave["details_withheld"] is True


async def test_an_erasure_over_nats_is_ordered_by_the_operator_its_token_names(
    enforced: Running,
    writer: Writer,
    provisioned: NatsClient,
    keys_dir: Path,
    issue_operator_token: Callable[..., str],
) -> None:
    """``cmd.audit.erase`` takes its principal from the operator token it carries — verified (signature, expiry,
    revocation) and allowed ``api.admin`` by the enforcer — never from its body."""
    last = (await writer.agent("q1", 2))[-1]
    await enforced.wait_for(last)
    client = CommandClient(provisioned, timeout=5)
    body = {"aggregate": "agent.q1", "principal": "dpo", "reason": "art. 17"}

    async def erase(token: str | None, payload: dict[str, str] = body) -> Exception | dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else None
        try:
            return await client.call("audit", "erase", payload, dict, headers=headers)
        except SymbiError as err:
            return err

    issuer = load_issuer_key(default_operator_dir(keys_dir))
    expired, _ = issue_token(issuer, name="dpo", role="admin", ttl_s=60, now=int(time.time()) - 3600)
    forged, _ = issue_token(Signer.generate(), name="dpo", role="admin", ttl_s=60)
    revoked, claims = issue_token(issuer, name="dpo", role="admin", ttl_s=60)
    kv = await open_revocations_bucket(provisioned.jetstream())
    await kv.put(claims.tid, encode_revocation(sign_revocation(issuer, claims.tid)))
    guard = enforced.app.state.operator_guard
    for _ in range(100):
        if claims.tid in guard.revocations.revoked:
            break
        await asyncio.sleep(0.02)
    refused = {
        "no token": (await erase(None), "unauthenticated"),
        "expired": (await erase(expired), "unauthenticated"),
        "forged": (await erase(forged), "unauthenticated"),
        "revoked": (await erase(revoked), "unauthenticated"),
        "auditor": (await erase(issue_operator_token(role="auditor", name="dpo")), "policy_denied"),
        # An admin may send the command, but not in the name of the data protection officer.
        "mallory as dpo": (await erase(issue_operator_token(name="mallory")), "policy_denied"),
        "mallory": (await erase(issue_operator_token(name="mallory"), {"aggregate": "agent.q1"}), "policy_denied"),
    }
    for case, (outcome, code) in refused.items():
        assert isinstance(outcome, SymbiError), (case, outcome)
        assert outcome.code == code, (case, outcome)
    erased = await enforced.json("/v1/audit/events", aggregate="agent.q1", details="true")
    assert all(e["details"] is None or e["details"]["erased"] is False for e in erased["items"])  # nothing erased

    done = await erase(issue_operator_token(name="dpo"))
    assert isinstance(done, dict), done
    await enforced.wait_for(done["executed_sequence"])
    recorded = await enforced.json("/v1/audit/events", aggregate=f"audit.{done['erasure_id']}")
    assert [e["event_type"] for e in recorded["items"]] == ["audit.erasure_requested", "audit.erasure_executed"]
    gdpr = await enforced.json("/v1/audit/reports/gdpr", since="2000-01-01T00:00:00Z", until="2100-01-01T00:00:00Z")
    requests = [e for section in gdpr["sections"] for e in section.get("erasures") or []]
    assert [(e["aggregate"], e["requested_by"]) for e in requests] == [("agent.q1", "dpo")], requests
