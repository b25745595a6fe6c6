"""The receipt of ``symbi run`` is checked in the CLI, on the events as stored: signatures, signers, chains,
the checkpoint's signature and origin, and each inclusion proof — never the audit API's ``verified`` flag."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from symbi_cli.run_receipt import ReceiptInvalid, check_events, check_proof, trusted_checkpoint
from symbi_cli.trust import trust_anchor
from symbi_common.crypto import Signer
from symbi_common.events import Event, EventCodec
from symbi_common.key_material import load_signer
from symbi_common.keyring import KeyRegistry
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.settings import load_settings
from symbi_common.streams import EVENTS_STREAM, RawMessage, read_subject
from symbi_tlog.cosign import WitnessKey, cosign
from symbi_tlog.merkle import TreeBuilder, hashes_for, inclusion_ranges
from symbi_tlog.notes import Checkpoint, sign_checkpoint
from symbi_tlog.offline import TrustAnchor
from symbi_tlog.rules import event_leaf


class Noted(Event, frozen=True, tag="task.submitted"):
    n: int


class Ended(Event, frozen=True, tag="task.completed"):
    n: int


CODEC: EventCodec[Noted | Ended] = EventCodec([Noted, Ended])


async def test_receipt_checks_events_checkpoint_and_proofs_itself(
    make_store: Callable[..., Any], provisioned: NatsClient, keys_dir: Path, registry: KeyRegistry
) -> None:
    scheduler = await make_store("scheduler")
    stored = [*(Noted(n=i) for i in range(3)), Ended(n=3)]
    await scheduler.append("task", "t1", stored, CODEC, expected=NEW_AGGREGATE)
    events: list[RawMessage] = []
    async for batch in read_subject(provisioned, EVENTS_STREAM, "evt.task.t1"):
        events.extend(batch)
    check_events(events, registry)
    # The task ended, so its events end with its end: a missing tail is refused, as is a task without its own.
    with pytest.raises(ReceiptInvalid, match=r"ends with task.submitted .* the events after it are missing"):
        check_events(events[:3], registry)
    with pytest.raises(ReceiptInvalid, match="the task's own events are missing"):
        check_events([], registry)
    # Altered, missing its first events, or broken in the middle: refused here, whatever the audit API says.
    # (The last byte flipped: setting it to 0 changed nothing when it was 0 already, one run in 256.)
    altered = RawMessage(
        events[2].subject, events[2].sequence, events[2].data[:-1] + bytes([events[2].data[-1] ^ 1]), {}
    )
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
    checkpoint = trusted_checkpoint(note, TrustAnchor(registry))
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
            trusted_checkpoint(wrong, TrustAnchor(registry))
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


def test_receipt_checkpoint_follows_the_configured_origin_and_witnesses(tmp_path: Path, keys_dir: Path) -> None:
    """The origin comes from ``[audit] origin`` (what the audit service signs under), and with
    ``[[audit.witnesses]]`` configured the checkpoint needs ``min_witnesses`` of their cosignatures: the same
    settings (or the same flags) as ``symbi audit verify``. Every refusal names its reason."""
    registry = KeyRegistry.load(keys_dir)
    audit = load_signer(keys_dir / "audit" / "signing.key")
    w1, w2 = Signer.generate(), Signer.generate()
    k1, k2 = WitnessKey("w.example/1", w1.public_key), WitnessKey("w.example/2", w2.public_key)
    config = tmp_path / "symbi.toml"
    config.write_text(
        '[audit]\norigin = "acme-audit"\nmin_witnesses = 1\n'
        f'[[audit.witnesses]]\nurl = "http://w1:7380"\nkey = "{k1.vkey()}"\n'
        f'[[audit.witnesses]]\nurl = "http://w2:7380"\nkey = "{k2.vkey()}"\n'
    )
    configured = trust_anchor(registry, load_settings(config, env={}).audit)
    assert (configured.origin, configured.min_witnesses, len(configured.witnesses)) == ("acme-audit", 1, 2)

    def note(origin: str, *witnesses: tuple[Signer, str]) -> str:
        signed = sign_checkpoint(Checkpoint(origin, 5, bytes(32)), audit, audit.key_id)
        body = signed.partition("\n\n")[0] + "\n"
        return signed + "".join(cosign(body, w, name, 1_700_000_000) for w, name in witnesses)

    assert trusted_checkpoint(note("acme-audit", (w2, k2.name)), configured).origin == "acme-audit"
    # Witness 1's own line, but over another checkpoint: its key id matches, its signature does not.
    other = sign_checkpoint(Checkpoint("acme-audit", 6, bytes(32)), audit, audit.key_id)
    forged_line = cosign(other.partition("\n\n")[0] + "\n", w1, k1.name, 1_700_000_000)
    cases = [
        (note("symbi-audit", (w1, k1.name)), configured, "checkpoint_origin"),  # the old fixed origin
        (note("acme-audit"), configured, "witness_cosignature_missing"),
        (note("acme-audit") + forged_line, configured, "witness_cosignature_invalid"),
        # Flags win over the configuration, as in `symbi audit verify`: every given key must cosign.
        (
            note("acme-audit", (w2, k2.name)),
            trust_anchor(registry, configured_settings(config), witness_keys=[k1.vkey(), k2.vkey()]),
            "witness_cosignature_missing",
        ),
        (
            note("acme-audit", (w1, k1.name)),
            trust_anchor(registry, configured_settings(config), origin="other"),
            "checkpoint_origin",
        ),
    ]
    for text, anchor, reason in cases:
        with pytest.raises(ReceiptInvalid) as refused:
            trusted_checkpoint(text, anchor)
        assert refused.value.reason == reason, (reason, refused.value.message)
    both = note("acme-audit", (w1, k1.name), (w2, k2.name))
    anchor = trust_anchor(registry, configured_settings(config), witness_keys=[k1.vkey(), k2.vkey()])
    assert trusted_checkpoint(both, anchor).size == 5
    # Without configuration: the default origin and no witnesses demanded.
    plain = trust_anchor(registry, load_settings(env={}).audit)
    assert (plain.origin, plain.min_witnesses, plain.witnesses) == ("symbi-audit", 0, ())


def configured_settings(config: Path) -> Any:
    return load_settings(config, env={}).audit
