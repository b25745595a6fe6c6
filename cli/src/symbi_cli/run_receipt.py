"""``symbi run``'s audit receipt: the task's stored events, the signed checkpoint covering them, their proofs.

Nothing here takes the audit service's word: the events are read as stored from the ``EVENTS`` stream and
checked here (signatures, signers, hash chains), their Merkle leaves computed here, the checkpoint checked
against the trust anchor (audit key, origin, witness cosignatures) and each inclusion proof verified against
the signed root (RFC 9162). Any mismatch is a :class:`ReceiptInvalid` with a typed ``reason``.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import httpx
import nats
from symbi_common.envelope import decode_header, decode_sealed
from symbi_common.errors import SymbiError
from symbi_common.keyring import KeyRegistry
from symbi_common.nats_client import server_options
from symbi_common.streams import EVENTS_STREAM, RawMessage, read_subject
from symbi_contracts.sandbox_agent.events import TERMINAL_TAGS
from symbi_tlog.merkle import verify_inclusion
from symbi_tlog.notes import Checkpoint
from symbi_tlog.offline import WITNESS_MISSING, TrustAnchor, audit_key, check_checkpoint
from symbi_tlog.rules import CachedRegistry, LogVerifier, event_leaf, verdict

from symbi_cli.run_services import POLL_S, ServiceUrls, json_body, request


class ReceiptInvalid(SymbiError):
    """The audit receipt does not verify: a checkpoint, leaf or inclusion proof does not match.

    ``reason`` is the typed cause: a checkpoint finding of the offline verifier (``checkpoint_origin``,
    ``checkpoint_signature``, ``witness_cosignature_missing`` …) or ``event_invalid``, ``proof_invalid``,
    ``not_covered``.
    """

    code = "receipt_invalid"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, reason=reason)
        self.reason = reason


async def stored_task_events(nats_url: str, task_id: str) -> list[RawMessage]:
    """The task's and its execution's events exactly as stored, in stream order."""
    nc = await nats.connect(**server_options(nats_url), connect_timeout=5, allow_reconnect=False)
    try:
        found: list[RawMessage] = []
        for subject in (f"evt.task.{task_id}", f"evt.execution.{task_id}"):
            async for batch in read_subject(nc, EVENTS_STREAM, subject):
                found.extend(batch)
    finally:
        await nc.drain()
    return sorted(found, key=lambda m: m.sequence)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check_proof(proof: dict[str, Any], message: RawMessage, checkpoint: Checkpoint) -> dict[str, Any]:
    """One receipt line, after checking the served proof against our own leaf and the signed root."""
    leaf = event_leaf(message)
    if proof.get("sequence") != message.sequence or proof.get("tree_size") != checkpoint.size:
        raise ReceiptInvalid(
            f"the proof served for event {message.sequence} is for another event or tree", reason="proof_invalid"
        )
    if proof.get("leaf_hash") != b64(leaf):
        raise ReceiptInvalid(
            f"event {message.sequence}: the audit log's leaf differs from the stored event's", reason="proof_invalid"
        )
    path = [base64.b64decode(h) for h in proof.get("proof", [])]
    index = int(proof["leaf_index"])
    if not verify_inclusion(leaf, index, checkpoint.size, path, checkpoint.root):
        raise ReceiptInvalid(
            f"event {message.sequence}: the inclusion proof does not lead to the signed root", reason="proof_invalid"
        )
    return {
        "sequence": message.sequence,
        "subject": message.subject,
        "event_type": message.headers.get("Symbi-Event-Type", ""),
        "leaf_index": index,
        "leaf_hash": b64(leaf),
        "proof": proof.get("proof", []),
        "verified": True,
    }


def check_events(events: list[RawMessage], registry: KeyRegistry) -> None:
    """Each stored event, checked here and not taken from the audit service's word: its signature, that its
    key may write its subject, and each aggregate's hash chain from its first version on."""
    rules = LogVerifier(partial=True)  # the task's subjects only: stream sequences have gaps
    cached = CachedRegistry(registry)
    first: set[str] = set()
    for message in events:
        v = verdict(message, cached)
        if message.subject not in first:
            first.add(message.subject)
            if v.version != 1:
                raise ReceiptInvalid(
                    f"{message.subject} does not start at version 1: its first events are missing",
                    reason="event_invalid",
                )
        findings = rules.apply(v)
        if findings:
            f = findings[0]
            raise ReceiptInvalid(
                f"event {message.sequence} ({message.subject}) does not verify: {f.kind}: {f.reason}",
                reason="event_invalid",
            )
    _check_ends(events)


#: The event types that end a task's aggregates: a receipt is made for a task that ended, so each of its
#: aggregates must end with one (else the events after the last one read are missing).
_ENDS: dict[str, set[str]] = {
    "task": {"task.completed", "task.cancelled"},
    "execution": set(TERMINAL_TAGS),
}


def _check_ends(events: list[RawMessage]) -> None:
    """The task's aggregates end with their end (by each last event's signed type); the task's is there."""
    last = {m.subject: m for m in events}
    if not any(subject.startswith("evt.task.") for subject in last):
        raise ReceiptInvalid("the task's own events are missing", reason="event_invalid")
    for subject, message in last.items():
        kind = decode_header(decode_sealed(message.data).header).event_type
        if kind not in _ENDS.get(subject.split(".")[1], {kind}):
            raise ReceiptInvalid(
                f"{subject} ends with {kind} (event {message.sequence}), not with its end: the events after it "
                "are missing",
                reason="event_invalid",
            )


def trusted_checkpoint(note: str, anchor: TrustAnchor) -> Checkpoint:
    """The checkpoint of ``note`` if the pinned audit key signed it for the anchor's origin and, with witnesses
    in the anchor, at least ``min_witnesses`` of them cosigned it; else :class:`ReceiptInvalid` with the first
    finding's kind as its reason."""
    checkpoint, findings = check_checkpoint(note, anchor)
    if checkpoint is None or findings:
        reason = findings[0].kind if findings else "checkpoint_signature"
        raise ReceiptInvalid("checkpoint: " + "; ".join(f.reason for f in findings), reason=reason)
    return checkpoint


async def _receipt_from(
    http: httpx.AsyncClient, urls: ServiceUrls, events: list[RawMessage], note: str, anchor: TrustAnchor
) -> dict[str, Any] | None:
    """The receipt against the checkpoint ``note``; None while its tree does not hold every event yet."""
    checkpoint = trusted_checkpoint(note, anchor)
    proofs = []
    for message in reversed(events):  # the newest first: if it is not covered yet, none of them need asking
        params = {"sequence": message.sequence, "size": checkpoint.size}
        answer = await request(http, "GET", f"{urls.audit}/v1/audit/proofs/inclusion", params=params)
        if answer.status_code == 404:
            return None  # not in this checkpoint's tree yet
        proofs.append(check_proof(json_body(answer, "inclusion proof"), message, checkpoint))
    proofs.reverse()
    return {
        "verified": True,
        "checkpoint": {
            "origin": checkpoint.origin,
            "size": checkpoint.size,
            "root": b64(checkpoint.root),
            "key": audit_key(anchor.registry)[0],
            "witnesses": sorted(w.name for w in anchor.witnesses),
            "min_witnesses": anchor.min_witnesses,
            "note": note,
        },
        "events": proofs,
    }


async def audit_receipt(
    http: httpx.AsyncClient, urls: ServiceUrls, events: list[RawMessage], anchor: TrustAnchor, timeout: float
) -> dict[str, Any]:
    """Wait for a signed checkpoint covering ``events``, then verify each one's inclusion in it.

    The audit service checkpoints on its own (every ``checkpoint_interval_s``); there is no way to ask for
    one, so the receipt waits for the first checkpoint whose tree holds every event. A checkpoint without
    the cosignatures the anchor demands may still be gathering them: it is asked again until ``timeout``,
    then refused (``witness_cosignature_missing``); any other checkpoint finding is refused at once.
    """
    if not events:
        raise ReceiptInvalid("the task has no stored events", reason="event_invalid")
    check_events(events, anchor.registry)
    deadline = time.monotonic() + timeout
    uncosigned: ReceiptInvalid | None = None
    while True:
        response = await request(http, "GET", f"{urls.audit}/v1/audit/checkpoints/latest")
        if response.status_code == 200:
            try:
                receipt = await _receipt_from(http, urls, events, response.text, anchor)
            except ReceiptInvalid as err:
                if err.reason != WITNESS_MISSING:
                    raise
                uncosigned, receipt = err, None
            else:
                uncosigned = None
            if receipt is not None:
                return receipt
        elif response.status_code != 404:
            json_body(response, "latest checkpoint")
        if time.monotonic() > deadline:
            if uncosigned is not None:
                raise uncosigned
            raise ReceiptInvalid(
                f"no audit checkpoint covered the task's {len(events)} events within {timeout:.0f} s",
                reason="not_covered",
            )
        await asyncio.sleep(POLL_S * 2)
