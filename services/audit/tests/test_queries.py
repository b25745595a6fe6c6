"""Historical queries, payload details behind the policy, the live feed (SSE and NATS), erasure and reports."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
from collections.abc import Callable
from typing import Any

import httpx
from nats.aio.client import Client as NatsClient
from symbi_audit.erasure import CODEC as ERASURES
from symbi_audit.erasure import ErasureRequested, erasure_id_of
from symbi_common.key_names import agent_data_key
from symbi_common.keyring import KeyRegistry
from symbi_common.sealing import NEW_AGGREGATE
from symbi_tlog.offline import TrustAnchor, verify_export

from .conftest import Running, Writer, read_log


async def test_a_tasks_later_events_count_as_its_agents(running: Running, writer: Writer) -> None:
    """Only a task's first event names its agent (as ``task.submitted`` does): its later events, which do not,
    are the same agent's — found by agent, and still after the verifier starts again."""
    await writer.task("t7", 1, agent_id="q3")
    last = (await writer.task("t7", 2))[-1]
    await running.wait_for(last)
    by_agent = await running.json("/v1/audit/events", agent="q3")
    assert [(e["aggregate_id"], e["aggregate_version"]) for e in by_agent["items"]] == [("t7", v) for v in (1, 2, 3)]
    await writer.task("t8", 1)  # no agent named anywhere: none on record
    running.service.runner.agents.forget()  # as after a restart: the stored rows tell
    last = (await writer.task("t7", 1))[-1]
    await running.wait_for(last)
    items = (await running.json("/v1/audit/events", agent="q3"))["items"]
    assert [e["aggregate_version"] for e in items] == [1, 2, 3, 4]
    assert [e["agent_id"] for e in (await running.json("/v1/audit/events", aggregate="task.t8"))["items"]] == [None]


async def test_queries_by_agent_type_producer_correlation_time_and_pages(running: Running, writer: Writer) -> None:
    before = dt.datetime.now(dt.UTC)
    await writer.agent("q1", 5, correlation_id="corr-1")
    await writer.task("t9", 2, agent_id="q1")
    await asyncio.sleep(0.01)
    middle = dt.datetime.now(dt.UTC)
    last = (await writer.agent("q2", 3))[-1]
    await running.wait_for(last)
    by_agent = await running.json("/v1/audit/events", agent="q1")
    # The agent's own events and the task events whose (encrypted) payload names it.
    assert [(e["aggregate_type"], e["aggregate_version"]) for e in by_agent["items"]] == [
        *(("agent", v) for v in range(1, 6)),
        ("task", 1),
        ("task", 2),
    ]
    assert all(e["agent_id"] == "q1" and e["verified"] for e in by_agent["items"])
    assert {e["producer"] for e in by_agent["items"]} == {"lifecycle", "scheduler"}
    assert "details" not in by_agent["items"][0]
    assert [
        e["aggregate_id"] for e in (await running.json("/v1/audit/events", event_type="task.submitted"))["items"]
    ] == ["t9", "t9"]
    assert len((await running.json("/v1/audit/events", producer="scheduler"))["items"]) == 2
    assert len((await running.json("/v1/audit/events", correlation_id="corr-1"))["items"]) == 5
    assert len((await running.json("/v1/audit/events", aggregate="task.t9"))["items"]) == 2
    window = await running.json("/v1/audit/events", since=before.isoformat(), until=middle.isoformat())
    assert len(window["items"]) == 7
    assert len((await running.json("/v1/audit/events", since=middle.isoformat()))["items"]) == 3
    # Pages
    page1 = await running.json("/v1/audit/events", limit=4)
    page2 = await running.json("/v1/audit/events", limit=4, after=page1["next_after"])
    page3 = await running.json("/v1/audit/events", limit=4, after=page2["next_after"])
    seqs = [e["sequence"] for p in (page1, page2, page3) for e in p["items"]]
    assert seqs == list(range(1, 11))
    assert page3["next_after"] is None
    one = await running.json(f"/v1/audit/events/{last}")
    assert one["aggregate_id"] == "q2"
    assert one["aggregate_version"] == 3
    # Bad input: typed errors naming the parameter.
    bad = await running.http.get("/v1/audit/events", params={"since": "yesterday"})
    assert bad.status_code == 422
    assert bad.json()["error"]["details"]["field"] == "since"
    bad = await running.http.get("/v1/audit/events", params={"limit": 0})
    assert bad.status_code == 422
    assert bad.json()["error"]["details"]["field"] == "limit"
    assert (await running.http.get("/v1/audit/events/999")).status_code == 404


async def test_details_for_named_callers_under_allow_all(running: Running, writer: Writer) -> None:
    await writer.agent("q1", 2)
    last = (await writer.agent("q2", 1))[-1]
    await running.wait_for(last)
    # allow-all enforcement: a named caller gets decrypted details; an anonymous one never does.
    named = await running.http.get(
        "/v1/audit/events", params={"details": "true"}, headers={"X-Symbi-Principal": 'User::"alice"'}
    )
    items = named.json()["items"]
    assert items[0]["details"]["payload"] == {
        "type": "agent.touched",
        "agent_id": "q1",
        "n": 0,
        "note": "personal data of the agent's user",
    }
    anonymous = (await running.json("/v1/audit/events", details="true"))["items"]
    assert all(e["details"] is None and e["details_withheld"] for e in anonymous)


async def test_only_an_admin_acts_for_another_principal(
    running: Running, writer: Writer, issue_operator_token: Callable[..., str]
) -> None:
    """``X-Symbi-Principal`` is a claim: an auditor may name itself, never someone else (no details, no erasure)."""
    last = (await writer.agent("q3", 1))[-1]
    await running.wait_for(last)
    auditor = {"Authorization": f"Bearer {issue_operator_token(role='auditor', name='ann')}"}
    as_other = await running.http.get(
        "/v1/audit/events", params={"details": "true"}, headers={**auditor, "X-Symbi-Principal": 'User::"alice"'}
    )
    assert as_other.status_code == 403, as_other.text
    assert as_other.json()["error"]["code"] == "policy_denied"
    assert "only an admin acts for another principal" in as_other.json()["error"]["message"]
    as_self = await running.http.get(
        "/v1/audit/events", params={"details": "true"}, headers={**auditor, "X-Symbi-Principal": "ann"}
    )
    assert as_self.status_code == 200, as_self.text
    operator = {"Authorization": f"Bearer {issue_operator_token(role='operator', name='olaf')}"}  # may write
    erase = await running.http.post(
        "/v1/audit/erasures", json={"aggregate": "agent.q3"}, headers={**operator, "X-Symbi-Principal": "dpo"}
    )
    assert erase.status_code == 403, erase.text
    assert "only an admin acts for another principal" in erase.json()["error"]["message"]


async def test_live_feed_over_sse_and_nats_filtered_by_agent_and_type(
    served: tuple[str, Running], writer: Writer, nats_connect: Callable
) -> None:
    url, running = served
    nc = await nats_connect()
    on_nats: list[dict] = []

    async def cb(msg) -> None:  # type: ignore[no-untyped-def]
        on_nats.append(json.loads(msg.data))

    await nc.subscribe("audit.live.agent.live1.>", cb=cb)
    await nc.flush()
    received: list[dict] = []

    async def listen() -> None:
        async with (
            httpx.AsyncClient(timeout=10, headers=dict(running.http.headers)) as client,
            client.stream(
                "GET", f"{url}/v1/audit/stream", params={"agent": "live1", "event_type": "agent.touched"}
            ) as resp,
        ):
            assert resp.headers["content-type"].startswith("text/event-stream")
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    received.append(json.loads(line[6:]))
                    if len(received) == 3:
                        return

    listener = asyncio.create_task(listen())
    for _ in range(100):
        if running.app.state.audit_live.subscribers:
            break
        await asyncio.sleep(0.02)
    await writer.agent("other", 2)
    await writer.task("t1", 1)
    await writer.agent("live1", 3)
    await asyncio.wait_for(listener, 10)
    assert [(e["aggregate_id"], e["aggregate_version"]) for e in received] == [("live1", 1), ("live1", 2), ("live1", 3)]
    for _ in range(50):
        if len(on_nats) == 3:
            break
        await asyncio.sleep(0.05)
    assert [e["aggregate_version"] for e in on_nats] == [1, 2, 3]


async def test_erasing_an_agent_shreds_its_tasks_and_a_task_has_no_key_of_its_own(
    running: Running, writer: Writer
) -> None:
    """Tasks are sealed with their agent's key (symbi_common.key_names): erasing the agent shreds them; erasing
    one such task alone is refused (there is nothing of its own to destroy), one with its own key still works."""
    principal = {"X-Symbi-Principal": "dpo"}
    await writer.agent("owner", 1)
    await writer.task("t-owned", 2, agent_id="owner", data_key=agent_data_key("task", "owner"))
    await writer.task("t-owned-2", 1, agent_id="owner", data_key=agent_data_key("task", "owner"))
    await writer.task("t-other", 1, agent_id="other", data_key=agent_data_key("task", "other"))
    last = (await writer.task("t-legacy", 1, agent_id="other"))[-1]  # sealed as before: its own key
    await running.wait_for(last)

    async def payloads(aggregate: str) -> list[object]:
        got = await running.http.get(
            "/v1/audit/events", params={"aggregate": aggregate, "details": "true"}, headers=principal
        )
        assert got.status_code == 200, got.text
        return [e["details"]["payload"] for e in got.json()["items"]]

    assert [p["n"] for p in await payloads("task.t-owned")] == [0, 1]  # type: ignore[index]
    refused = await running.http.post("/v1/audit/erasures", json={"aggregate": "task.t-owned"}, headers=principal)
    assert refused.status_code == 422, refused.text
    assert "erase agent.<agent id>" in refused.json()["error"]["message"]

    done = await running.http.post("/v1/audit/erasures", json={"aggregate": "agent.owner"}, headers=principal)
    assert done.status_code == 201, done.text
    await running.wait_for(done.json()["executed_sequence"])
    for task in ("t-owned", "t-owned-2"):
        assert await payloads(f"task.{task}") in ([None], [None, None])
    assert [p["agent_id"] for p in await payloads("task.t-other")] == ["other"]  # type: ignore[index]
    executed = await running.http.get(
        "/v1/audit/events",
        params={"aggregate": f"audit.{done.json()['erasure_id']}", "details": "true"},
        headers=principal,
    )
    assert executed.json()["items"][-1]["details"]["payload"]["data_keys"] == [
        "agent.owner/*",
        "task.by-agent.owner/*",
        "execution.by-agent.owner/*",
        "policy.agent-owner/*",
    ]

    legacy = await running.http.post("/v1/audit/erasures", json={"aggregate": "task.t-legacy"}, headers=principal)
    assert legacy.status_code == 201, legacy.text
    await running.wait_for(legacy.json()["executed_sequence"])
    assert await payloads("task.t-legacy") == [None]
    assert [p["agent_id"] for p in await payloads("task.t-other")] == ["other"]  # type: ignore[index]


async def test_erasure_crypto_shreds_while_the_log_still_verifies(
    running: Running,
    writer: Writer,
    provisioned: NatsClient,
    registry: KeyRegistry,
    issue_operator_token: Callable[..., str],
) -> None:
    await writer.agent("forget-me", 3)
    last = (await writer.agent("keep-me", 1))[-1]
    await running.wait_for(last)
    principal = {"X-Symbi-Principal": "dpo"}
    before = await running.http.get(
        "/v1/audit/events", params={"agent": "forget-me", "details": "true"}, headers=principal
    )
    assert before.json()["items"][0]["details"]["payload"]["agent_id"] == "forget-me"
    resp = await running.http.post(
        "/v1/audit/erasures",
        json={"aggregate": "agent.forget-me", "reason": "GDPR art. 17 request #12"},
        headers=principal,
    )
    assert resp.status_code == 201, resp.text
    result = resp.json()
    await running.wait_for(result["executed_sequence"])
    after = await running.http.get(
        "/v1/audit/events", params={"agent": "forget-me", "details": "true"}, headers=principal
    )
    assert all(e["details"] == {"erased": True, "payload": None} for e in after.json()["items"])
    kept = await running.http.get("/v1/audit/events", params={"agent": "keep-me", "details": "true"}, headers=principal)
    assert kept.json()["items"][0]["details"]["payload"]["agent_id"] == "keep-me"
    # The erasure is itself an audited event, and the chain and tree still verify.
    recorded = (await running.json("/v1/audit/events", aggregate=f"audit.{result['erasure_id']}"))["items"]
    assert [e["event_type"] for e in recorded] == ["audit.erasure_requested", "audit.erasure_executed"]
    assert recorded[0]["producer"] == "audit"
    assert all(e["verified"] for e in recorded)
    assert (await running.json("/v1/audit/status"))["findings"] == 0
    report = verify_export(await read_log(provisioned), None, TrustAnchor(registry), require_checkpoint=False)
    assert report.findings == []
    # Bad requests are typed.
    posing = await running.http.post(
        "/v1/audit/erasures",
        json={"aggregate": "agent.q9", "requested_by": "someone-else"},
        headers={"X-Symbi-Principal": "dpo"},
    )
    assert posing.status_code == 403, posing.text
    assert "not the acting principal" in posing.json()["error"]["message"]
    # Not <type>.<id>, or a token left empty (no data key can be named so): refused before anything is recorded.
    for aggregate in ("nonsense", "0..0", "agent.", "agent.a..b", ".agent.a"):
        bad = await running.http.post("/v1/audit/erasures", json={"aggregate": aggregate})
        assert bad.status_code == 422, (aggregate, bad.text)
        assert bad.json()["error"]["details"]["field"] == "aggregate"
    bad = await running.http.post("/v1/audit/erasures", json={"aggregate": 5})
    assert bad.status_code == 400
    # A NUL could not be stored by the verifier (PostgreSQL) and would stop it: refused at the door.
    bad = await running.http.post("/v1/audit/erasures", json={"aggregate": "agent.keep-me", "reason": "a\x00"})
    assert bad.status_code == 400
    assert bad.json()["error"]["details"]["field"] == "reason"
    bad = await running.http.get("/v1/audit/events", params={"agent": "keep\x00"})
    assert bad.status_code == 422
    assert bad.json()["error"]["details"]["field"] == "agent"
    from symbi_common.commands import CommandClient

    client = CommandClient(provisioned, timeout=5)
    # Over NATS as well, by the operator its token names (symbi_audit.command_auth).
    token = {"Authorization": f"Bearer {issue_operator_token(name='dpo')}"}
    via_nats = await client.call("audit", "erase", {"aggregate": "agent.keep-me"}, dict, headers=token)
    assert via_nats["aggregate"] == "agent.keep-me"
    assert via_nats["executed_sequence"] > via_nats["requested_sequence"]


async def test_an_erasure_requested_again_continues_the_first(
    running: Running, writer: Writer, make_store: Any
) -> None:
    """The service stopped after recording the request (the key not destroyed, no execution recorded): the request
    made again continues that erasure, and once more answers the same result. Before, each request was an erasure
    of its own, and the first stayed pending in the GDPR report for good."""
    last = (await writer.agent("twice", 2))[-1]
    await running.wait_for(last)
    erasure_id = erasure_id_of("agent.twice")
    crashed = ErasureRequested(aggregate="agent.twice", requested_by="dpo", reason="art. 17")
    store = await make_store("audit")
    [requested] = await store.append("audit", erasure_id, [crashed], ERASURES, expected=NEW_AGGREGATE)
    principal = {"X-Symbi-Principal": "dpo"}
    answers = []
    for _ in range(2):
        resp = await running.http.post("/v1/audit/erasures", json={"aggregate": "agent.twice"}, headers=principal)
        assert resp.status_code == 201, resp.text
        answers.append(resp.json())
    assert answers[0] == answers[1]
    assert (answers[0]["erasure_id"], answers[0]["requested_sequence"]) == (erasure_id, requested.sequence)
    await running.wait_for(answers[0]["executed_sequence"])
    recorded = (await running.json("/v1/audit/events", aggregate=f"audit.{erasure_id}"))["items"]
    assert [e["event_type"] for e in recorded] == ["audit.erasure_requested", "audit.erasure_executed"]
    after = await running.http.get("/v1/audit/events", params={"agent": "twice", "details": "true"}, headers=principal)
    assert all(e["details"] == {"erased": True, "payload": None} for e in after.json()["items"])


async def test_compliance_reports_state_their_checkpoint(running: Running, writer: Writer) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    await writer.agent("r1", 4)
    await writer.task("t1", 3)
    last = (await writer.agent("r2", 3))[-1]
    await running.wait_for(last)
    resp = await running.http.post(
        "/v1/audit/erasures", json={"aggregate": "agent.r2", "reason": "request"}, headers={"X-Symbi-Principal": "dpo"}
    )
    executed = resp.json()["executed_sequence"]
    await running.wait_for(executed)
    await running.checkpoint_covering(executed)
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).isoformat()
    gdpr = await running.json("/v1/audit/reports/gdpr", since=start.isoformat(), until=until)
    assert gdpr["integrity"]["status"] == "verified"
    assert gdpr["checkpoint"]["signature_valid"]
    assert gdpr["checkpoint"]["covers_range"]
    assert gdpr["checkpoint"]["size"] >= executed
    processing, erasure = gdpr["sections"]
    assert processing["count"] == 3  # task.submitted events
    assert [e["status"] for e in erasure["erasures"]] == ["executed"]
    assert erasure["erasures"][0]["aggregate"] == "agent.r2"
    assert erasure["erasures"][0]["reason"] == "request"
    assert erasure["count"] == 2
    sox = await running.json("/v1/audit/reports/sox", since=start.isoformat(), until=until)
    assert sox["sections"][0]["count"] == 2
    assert sox["integrity"]["findings"] == []
    hipaa = await running.json("/v1/audit/reports/hipaa", since=start.isoformat(), until=until)
    assert hipaa["sections"][0]["count"] == 3
    rows = hipaa["sections"][0]["rows"]
    assert {"sequence", "occurred_at", "producer", "signing_key_id", "aggregate", "event_type"} <= set(rows[0])
    csv_resp = await running.http.get(
        "/v1/audit/reports/gdpr", params={"since": start.isoformat(), "until": until, "format": "csv"}
    )
    assert csv_resp.headers["content-type"].startswith("text/csv")
    lines = csv_resp.text.splitlines()
    assert lines[0].startswith("# framework: gdpr")
    assert lines[3].startswith(f"# checkpoint: size {gdpr['checkpoint']['size']}")
    table = list(csv.reader(io.StringIO("\n".join(lines[4:]))))
    assert table[0][0] == "section"
    assert sum(1 for r in table[1:] if r[0] == "processing of personal data") == 3
    assert any(r[0] == "erasure: erasure" and r[6] == "executed" for r in table[1:])
    custom = """
name = "acme"
title = "ACME evidence"
[[sections]]
name = "agent activity"
event_types = ["agent.*"]
producers = ["lifecycle"]
"""
    resp = await running.http.post(
        "/v1/audit/reports/custom", content=custom, params={"since": start.isoformat(), "until": until}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["framework"] == "acme"
    assert resp.json()["sections"][0]["count"] == 7
    bad = await running.http.post(
        "/v1/audit/reports/custom", content="name = 'x'\n[[sections]]\nname = 'y'\nbogus = 1\n"
    )
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "framework_invalid"
    assert (await running.http.get("/v1/audit/reports/pci")).status_code == 404
    bad = await running.http.get("/v1/audit/reports/sox", params={"format": "xml"})
    assert bad.status_code == 422


async def test_a_report_states_verified_only_on_a_checkpoint_that_checks_out(running: Running, writer: Writer) -> None:
    """The report's checkpoint comes from the database: a row whose root or last sequence differs from what the
    signed note says (a changed row) makes the report say so, not 'verified'; a range without events says
    'empty'."""
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    last = (await writer.agent("rv1", 3))[-1]
    await running.wait_for(last)
    await running.checkpoint_covering(last)
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).isoformat()
    window = {"since": start.isoformat(), "until": until}
    assert (await running.json("/v1/audit/reports/sox", **window))["integrity"]["status"] == "verified"
    pool = running.service.pool
    for change in ("root = sha256(root)", "last_sequence = last_sequence + 1000"):
        row = await pool.fetchrow("SELECT size, root, last_sequence FROM audit.checkpoints ORDER BY size DESC LIMIT 1")
        await pool.execute(f"UPDATE audit.checkpoints SET {change} WHERE size = $1", row["size"])
        report = await running.json("/v1/audit/reports/sox", **window)
        assert report["integrity"]["status"] == "checkpoint invalid", change
        assert report["checkpoint"]["signature_valid"] is False
        await pool.execute("UPDATE audit.checkpoints SET root = $2, last_sequence = $3 WHERE size = $1", *row.values())
    past = {"since": "2001-01-01T00:00:00+00:00", "until": "2001-01-02T00:00:00+00:00"}
    assert (await running.json("/v1/audit/reports/sox", **past))["integrity"]["status"] == "empty"


async def test_report_shows_findings(running: Running, writer: Writer, provisioned: NatsClient) -> None:
    await writer.agent("f1", 2)
    seq = (await provisioned.jetstream().publish("evt.agent.f1", b"garbage")).seq
    await running.wait_for(seq)
    sox = await running.json("/v1/audit/reports/sox")
    assert sox["integrity"]["status"] == "findings"
    assert [(f["sequence"], f["kind"]) for f in sox["integrity"]["findings"]] == [(seq, "malformed_event")]
