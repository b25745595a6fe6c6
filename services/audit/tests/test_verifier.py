"""The live verifier on a real JetStream and PostgreSQL: verification, findings, checkpoints, proofs."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable

import msgspec
import pytest
from nats.aio.client import Client as NatsClient
from symbi_common.crypto import Signer
from symbi_common.envelope import (
    SealedEvent,
    decode_header,
    decode_sealed,
    encode_header,
    encode_sealed,
    signed_message,
)
from symbi_common.eventstore import H_EVENT_TYPE
from symbi_common.keyring import KeyRegistry
from symbi_common.sealing import NEW_AGGREGATE, ChainTip
from symbi_common.streams import AUDIT_STREAM, last_on_subject
from symbi_tlog.merkle import verify_consistency, verify_inclusion
from symbi_tlog.notes import verify_checkpoint
from symbi_tlog.offline import TrustAnchor, verify_export

from .conftest import AGENT_CODEC, Running, Touched, Writer, read_log


def b64d(s: str) -> bytes:
    return base64.b64decode(s)


async def test_untampered_log_verifies_and_is_checkpointed(
    running: Running,
    writer: Writer,
    provisioned: NatsClient,
    registry: KeyRegistry,
    signer_for: Callable[[str], Signer],
) -> None:
    last = await writer.mixed(40)  # 60 events
    await running.wait_for(last)
    status = await running.json("/v1/audit/status")
    assert status["sequence"] == last == status["tree_size"] == 60
    assert status["findings"] == 0
    assert (await running.json("/v1/audit/findings"))["items"] == []
    # Checkpoints every 10 events, signed by the audit key, published to the AUDIT stream.
    cps = (await running.json("/v1/audit/checkpoints"))["items"]
    assert [c["size"] for c in cps][:6] == [60, 50, 40, 30, 20, 10]
    audit = signer_for("audit")
    for c in cps:
        cp = verify_checkpoint(c["note"], key_name=audit.key_id, public_key=audit.public_key, origin="symbi-audit")
        assert cp.size == c["size"]
    for _ in range(50):
        published = await last_on_subject(provisioned, AUDIT_STREAM, "audit.checkpoint")
        if published is not None and published.data.decode() == cps[0]["note"]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("latest checkpoint not published on the AUDIT stream")
    latest = await running.http.get("/v1/audit/checkpoints/latest")
    assert latest.text == cps[0]["note"]
    # The service's tree is the offline verifier's tree.
    report = verify_export(await read_log(provisioned), latest.text, TrustAnchor(registry))
    assert report.findings == []
    assert report.events == 60


async def test_inclusion_and_consistency_proofs_over_http(running: Running, writer: Writer) -> None:
    last = await writer.mixed(40)
    await running.wait_for(last)
    for _ in range(300):
        status = await running.json("/v1/audit/status")
        if status["checkpoint"] and status["checkpoint"]["size"] == 60:
            break
        await asyncio.sleep(0.1)
    assert status["checkpoint"], status
    assert status["checkpoint"]["size"] == 60, status
    roots = {}
    for size in (10, 20, 30, 40, 50, 60):
        note = (await running.http.get(f"/v1/audit/checkpoints/{size}")).text
        roots[size] = b64d(note.split("\n")[2])
    for seq in range(1, 61):
        proof = await running.json("/v1/audit/proofs/inclusion", sequence=seq)
        assert proof["tree_size"] == 60
        assert proof["leaf_index"] == seq - 1
        hashes = [b64d(h) for h in proof["proof"]]
        assert verify_inclusion(b64d(proof["leaf_hash"]), seq - 1, 60, hashes, roots[60])
        assert not verify_inclusion(b64d(proof["leaf_hash"]), seq % 60, 60, hashes, roots[60])
    small = await running.json("/v1/audit/proofs/inclusion", sequence=5, size=10)
    assert verify_inclusion(b64d(small["leaf_hash"]), 4, 10, [b64d(h) for h in small["proof"]], roots[10])
    for old in (10, 20, 30, 40, 50):
        for new in (s for s in roots if s >= old):
            c = await running.json("/v1/audit/proofs/consistency", **{"from": old, "to": new})
            assert b64d(c["from_root"]) == roots[old]
            assert b64d(c["to_root"]) == roots[new]
            assert verify_consistency(old, new, roots[old], roots[new], [b64d(h) for h in c["proof"]])
    missing = await running.http.get("/v1/audit/proofs/inclusion", params={"sequence": 61})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "proof_unavailable"
    too_big = await running.http.get("/v1/audit/proofs/consistency", params={"from": 10, "to": 600})
    assert too_big.status_code == 404
    bad = await running.http.get("/v1/audit/proofs/consistency", params={"from": 20, "to": 10})
    assert bad.status_code == 422
    assert bad.json()["error"]["details"]["field"] == "from"


async def test_crafted_messages_written_raw_into_events_are_found(
    running: Running,
    writer: Writer,
    provisioned: NatsClient,
    nats_connect: Callable,
    signer_for: Callable[[str], Signer],
) -> None:
    """The attacker is a raw publisher on EVENTS (only such a one can bypass the event store)."""
    await writer.agent("victim", 3)
    await writer.agent("other", 1)
    alerts: list[dict] = []
    watcher = await nats_connect()

    async def on_alert(msg) -> None:  # type: ignore[no-untyped-def]
        alerts.append(json.loads(msg.data))

    await watcher.subscribe("audit.alert", cb=on_alert)
    await watcher.flush()
    log = await read_log(provisioned)
    victim_v2 = next(
        m
        for m in log
        if m.subject == "evt.agent.victim" and decode_header(decode_sealed(m.data).header).aggregate_version == 2
    )
    js = provisioned.jetstream()
    # 1. re-signed by a registered key that may not write evt.agent.* (the scheduler's)
    scheduler = signer_for("scheduler")
    sealed = decode_sealed(victim_v2.data)
    header = msgspec.structs.replace(decode_header(sealed.header), signing_key_id=scheduler.key_id, aggregate_version=4)
    hb = encode_header(header)
    resigned = encode_sealed(SealedEvent(hb, sealed.ciphertext, scheduler.sign(signed_message(hb, sealed.ciphertext))))
    s1 = (await js.publish("evt.agent.victim", resigned)).seq
    # 2. an authentic event replayed on another subject
    s2 = (await js.publish("evt.agent.other", victim_v2.data)).seq
    # 3. an authentic event replayed on its own subject (an old version again)
    s3 = (await js.publish("evt.agent.victim", victim_v2.data)).seq
    # 4. garbage
    s4 = (await js.publish("evt.agent.victim", b"\x93not an event")).seq
    # The legitimate writer carries on after its own last event (v3); its events are fine.
    tip = writer.tips["agent.victim"]
    writer.tips["agent.victim"] = ChainTip(s4, tip.version, tip.hash)
    good = await writer.agent("victim", 2)
    await running.wait_for(good[-1])
    found = [(f["sequence"], f["kind"]) for f in (await running.json("/v1/audit/findings"))["items"]]
    assert found == [
        (s1, "unauthorised_signer"),
        (s2, "subject_mismatch"),
        (s3, "version_gap"),
        (s4, "malformed_event"),
    ]
    items = (await running.json("/v1/audit/findings"))["items"]
    assert all(f["subject"] and f["reason"] for f in items)
    assert items[0]["subject"] == "evt.agent.victim"
    assert "may not write evt.agent.victim" in items[0]["reason"]
    for _ in range(50):
        if len(alerts) == 4:
            break
        await asyncio.sleep(0.05)
    assert sorted((a["sequence"], a["kind"]) for a in alerts) == found
    metrics = (await running.http.get("/metrics")).text
    for kind in ("unauthorised_signer", "subject_mismatch", "version_gap", "malformed_event"):
        line = next(ln for ln in metrics.splitlines() if ln.startswith(f'symbi_audit_findings_total{{kind="{kind}"}}'))
        assert float(line.split()[-1]) >= 1
    by_kind = (await running.json("/v1/audit/findings", kind="version_gap"))["items"]
    assert [f["sequence"] for f in by_kind] == [s3]
    # Failed events are leaves too: the tree covers the log exactly as stored.
    status = await running.json("/v1/audit/status")
    assert status["tree_size"] == good[-1] == status["sequence"]


async def test_an_authentic_event_with_a_lying_type_header_is_a_finding(running: Running, writer: Writer) -> None:
    """Consumers pass over events by their clear type header (never one they act on); a header that names
    another type than the signed event could hide it from them, so the audit service reports it."""
    honest = await writer.agent("labelled", 1)
    recs = await writer.lifecycle.append(
        "agent",
        "liar",
        [Touched(agent_id="liar", n=0)],
        AGENT_CODEC,
        expected=NEW_AGGREGATE,
        headers={H_EVENT_TYPE: "agent.task_completed"},
    )
    await running.wait_for(recs[-1].sequence)
    items = (await running.json("/v1/audit/findings"))["items"]
    assert [(f["sequence"], f["kind"]) for f in items] == [(recs[-1].sequence, "header_mismatch")]
    assert "'agent.task_completed'" in items[0]["reason"]
    assert "'agent.touched'" in items[0]["reason"]
    assert honest[0] not in [f["sequence"] for f in items]


async def test_nats_commands(running: Running, writer: Writer, provisioned: NatsClient) -> None:
    from symbi_common.commands import CommandClient
    from symbi_common.errors import NotFound

    client = CommandClient(provisioned, timeout=5)
    with pytest.raises(NotFound, match="no checkpoint"):
        await client.call("audit", "checkpoint", {}, dict)
    last = await writer.mixed(8)  # 12 events: one checkpoint at 10
    await running.wait_for(last)
    status = await client.call("audit", "status", {}, dict)
    assert status["sequence"] == last
    assert status["findings"] == 0
    cp = await client.call("audit", "checkpoint", {"size": 10}, dict)
    assert cp["size"] == 10
    assert cp["note"].startswith("symbi-audit\n10\n")
    garbage = (await provisioned.jetstream().publish("evt.agent.x", b"junk")).seq
    await running.wait_for(garbage)
    found = await client.call("audit", "findings", {"kind": "malformed_event"}, dict)
    assert [f["sequence"] for f in found["items"]] == [garbage]
