"""The receipt of ``symbi run`` is checked in the CLI, on the events as stored: signatures, signers, chains,
the checkpoint's signature and origin, and each inclusion proof — never the audit API's ``verified`` flag."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from symbi_cli.run_cmd import ReceiptInvalid, check_events, check_proof, trusted_checkpoint
from symbi_common.crypto import Signer
from symbi_common.events import Event, EventCodec
from symbi_common.keyring import KeyRegistry, load_signer
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.streams import EVENTS_STREAM, RawMessage, read_subject
from symbi_tlog.merkle import TreeBuilder, hashes_for, inclusion_ranges
from symbi_tlog.notes import Checkpoint, sign_checkpoint
from symbi_tlog.rules import event_leaf


class Noted(Event, frozen=True, tag="task.submitted"):
    n: int


CODEC: EventCodec[Noted] = EventCodec([Noted])


async def test_receipt_checks_events_checkpoint_and_proofs_itself(
    make_store: Callable[..., Any], provisioned: NatsClient, keys_dir: Path, registry: KeyRegistry
) -> None:
    scheduler = await make_store("scheduler")
    await scheduler.append("task", "t1", [Noted(n=i) for i in range(4)], CODEC, expected=NEW_AGGREGATE)
    events: list[RawMessage] = []
    async for batch in read_subject(provisioned, EVENTS_STREAM, "evt.task.t1"):
        events.extend(batch)
    check_events(events, registry)
    # Altered, missing its first events, or broken in the middle: refused here, whatever the audit API says.
    altered = RawMessage(events[2].subject, events[2].sequence, events[2].data[:-1] + b"\0", {})
    with pytest.raises(ReceiptInvalid, match="bad_signature"):
        check_events([*events[:2], altered, events[3]], registry)
    with pytest.raises(ReceiptInvalid, match="does not start at version 1"):
        check_events(events[1:], registry)
    with pytest.raises(ReceiptInvalid, match="version_gap"):
        check_events([events[0], events[2]], registry)

    tree, nodes = TreeBuilder(), {}
    for m in events:
        for level, idx, h in tree.append(event_leaf(m)):
            nodes[(level, idx)] = h
    audit = load_signer(keys_dir / "audit" / "signing.key")
    note = sign_checkpoint(Checkpoint("symbi-audit", tree.size, tree.root()), audit, audit.key_id)
    checkpoint = trusted_checkpoint(note, registry)
    for wrong in (
        sign_checkpoint(Checkpoint("another-log", tree.size, tree.root()), audit, audit.key_id),
        sign_checkpoint(Checkpoint("symbi-audit", tree.size, tree.root()), (s := Signer.generate()), s.key_id),
        sign_checkpoint(
            Checkpoint("symbi-audit", tree.size, tree.root()),
            (k := load_signer(keys_dir / "scheduler" / "signing.key")),
            k.key_id,
        ),
    ):
        with pytest.raises(ReceiptInvalid, match="checkpoint"):
            trusted_checkpoint(wrong, registry)
    for i, m in enumerate(events):
        proof = hashes_for(inclusion_ranges(i, tree.size), nodes.__getitem__)
        served = {
            "sequence": m.sequence,
            "tree_size": tree.size,
            "leaf_index": i,
            "leaf_hash": base64.b64encode(event_leaf(m)).decode(),
            "proof": [base64.b64encode(h).decode() for h in proof],
        }
        assert check_proof(served, m, checkpoint)["verified"] is True
        with pytest.raises(ReceiptInvalid):
            check_proof(served | {"leaf_index": (i + 1) % tree.size}, m, checkpoint)
