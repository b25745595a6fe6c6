"""Every tampering kind, on an exported copy of a real log, is found at the right position.

The log is written by the real event stores (lifecycle and scheduler keys) into a real JetStream and
read back raw. Each test edits the export the way an attacker with write access to the files or the
storage would, then runs the offline verifier with the keys' public halves only.
"""

from __future__ import annotations

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
from symbi_common.keyring import KeyRegistry
from symbi_common.streams import RawMessage
from symbi_tlog.merkle import TreeBuilder
from symbi_tlog.notes import Checkpoint, sign_checkpoint
from symbi_tlog.offline import (
    CHECKPOINT_SIGNATURE,
    LOG_TRUNCATED,
    ROOT_MISMATCH,
    OfflineReport,
    TrustAnchor,
    export_line,
    read_export,
    verify_export,
)
from symbi_tlog.rules import SEQUENCE_GAP, SEQUENCE_ORDER, event_leaf

from .conftest import Writer, read_log


@pytest.fixture
async def log(writer: Writer, provisioned: NatsClient) -> list[RawMessage]:
    await writer.mixed(30)
    return await read_log(provisioned)


@pytest.fixture
def checkpoint(signer_for: Callable[[str], Signer]) -> Callable[[list[RawMessage]], str]:
    signer = signer_for("audit")

    def make(messages: list[RawMessage]) -> str:
        tree = TreeBuilder()
        for m in messages:
            tree.append(event_leaf(m))
        return sign_checkpoint(Checkpoint("symbi-audit", tree.size, tree.root()), signer, signer.key_id)

    return make


def round_trip(messages: list[RawMessage]) -> list[RawMessage]:
    """Through the export file format and back."""
    return list(read_export(b"".join(export_line(m) for m in messages).splitlines(keepends=True)))


def kinds_at(report: OfflineReport) -> list[tuple[int, str]]:
    return [(f.sequence, f.kind) for f in report.findings]


def renumber(messages: list[RawMessage]) -> list[RawMessage]:
    """An attacker who also rewrites the sequence numbers so they have no gaps."""
    return [RawMessage(m.subject, i, m.data, {}) for i, m in enumerate(messages, 1)]


def index_of_version(messages: list[RawMessage], subject: str, version: int) -> int:
    for i, m in enumerate(messages):
        if m.subject == subject and decode_header(decode_sealed(m.data).header).aggregate_version == version:
            return i
    raise AssertionError("not found")


def test_untampered_log_has_no_findings(log: list[RawMessage], checkpoint: Callable, registry: KeyRegistry) -> None:
    report = verify_export(round_trip(log), checkpoint(log), TrustAnchor(registry))
    assert report.findings == []
    assert report.events == len(log) == 45
    assert report.checkpoint is not None
    assert report.root == report.checkpoint.root


def test_edited_payload(log: list[RawMessage], checkpoint: Callable, registry: KeyRegistry) -> None:
    note = checkpoint(log)
    i = index_of_version(log, "evt.agent.a1", 4)
    sealed = decode_sealed(log[i].data)
    ciphertext = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    tampered = list(log)
    tampered[i] = RawMessage(
        log[i].subject, log[i].sequence, encode_sealed(SealedEvent(sealed.header, ciphertext, sealed.signature)), {}
    )
    report = verify_export(round_trip(tampered), note, TrustAnchor(registry))
    assert kinds_at(report) == [(log[i].sequence, "bad_signature"), (log[-1].sequence, ROOT_MISMATCH)]


def test_deleted_event(log: list[RawMessage], checkpoint: Callable, registry: KeyRegistry) -> None:
    note = checkpoint(log)
    i = index_of_version(log, "evt.agent.a2", 3)
    tampered = log[:i] + log[i + 1 :]
    report = verify_export(round_trip(tampered), note, TrustAnchor(registry))
    nxt = index_of_version(log, "evt.agent.a2", 4)
    assert kinds_at(report)[:2] == [(log[i + 1].sequence, SEQUENCE_GAP), (log[nxt].sequence, "version_gap")]
    assert (log[-1].sequence, LOG_TRUNCATED) in kinds_at(report)
    # Renumbered so no sequence is missing: the broken chain still points at the gap.
    report = verify_export(renumber(tampered), note, TrustAnchor(registry))
    assert kinds_at(report)[0] == (nxt, "version_gap")


def test_swapped_events(log: list[RawMessage], checkpoint: Callable, registry: KeyRegistry) -> None:
    note = checkpoint(log)
    i = index_of_version(log, "evt.agent.a0", 5)
    j = index_of_version(log, "evt.agent.a0", 6)
    tampered = list(log)
    tampered[i], tampered[j] = tampered[j], tampered[i]
    report = verify_export(renumber(tampered), note, TrustAnchor(registry))
    assert kinds_at(report) == [(i + 1, "version_gap"), (j + 1, "version_gap"), (len(log), ROOT_MISMATCH)]
    # Keeping the original sequence numbers also shows the reordering itself.
    report = verify_export(tampered, note, TrustAnchor(registry))
    assert kinds_at(report)[:2] == [(log[j].sequence, SEQUENCE_GAP), (log[j].sequence, "version_gap")]
    assert (log[i].sequence, SEQUENCE_ORDER) in kinds_at(report)
    # Two events of different aggregates swapped: no chain notices, the signed root does.
    k = index_of_version(log, "evt.task.t1", 2)
    tampered = list(log)
    tampered[k], tampered[k + 1] = tampered[k + 1], tampered[k]
    report = verify_export(renumber(tampered), note, TrustAnchor(registry))
    assert kinds_at(report) == [(len(log), ROOT_MISMATCH)]


def test_inserted_events(
    log: list[RawMessage], checkpoint: Callable, registry: KeyRegistry, signer_for: Callable[[str], Signer]
) -> None:
    note = checkpoint(log)
    # A copy of an authentic, earlier event of the same aggregate.
    i = index_of_version(log, "evt.agent.a1", 2)
    at = index_of_version(log, "evt.agent.a1", 6)
    tampered = [*log[: at + 1], log[i], *log[at + 1 :]]
    report = verify_export(renumber(tampered), note, TrustAnchor(registry))
    assert kinds_at(report)[0] == (at + 2, "version_gap")
    assert [k for _, k in kinds_at(report)] == ["version_gap", ROOT_MISMATCH, "entries_uncovered"]
    # A forged event, signed by a key the registry does not know.
    forger = Signer.generate()
    sealed = decode_sealed(log[at].data)
    header = msgspec.structs.replace(decode_header(sealed.header), signing_key_id=forger.key_id, aggregate_version=7)
    hb = encode_header(header)
    forged = encode_sealed(SealedEvent(hb, sealed.ciphertext, forger.sign(signed_message(hb, sealed.ciphertext))))
    tampered = [*log[: at + 1], RawMessage(log[at].subject, 0, forged, {}), *log[at + 1 :]]
    report = verify_export(renumber(tampered), note, TrustAnchor(registry))
    assert kinds_at(report)[0] == (at + 2, "unknown_signing_key")
    assert [k for _, k in kinds_at(report)] == ["unknown_signing_key", ROOT_MISMATCH, "entries_uncovered"]


def test_event_resigned_by_an_unauthorised_key(
    log: list[RawMessage], checkpoint: Callable, registry: KeyRegistry, signer_for: Callable[[str], Signer]
) -> None:
    note = checkpoint(log)
    scheduler = signer_for("scheduler")  # a real key of the registry, but not for evt.agent.*
    i = index_of_version(log, "evt.agent.a2", 5)
    sealed = decode_sealed(log[i].data)
    hb = encode_header(msgspec.structs.replace(decode_header(sealed.header), signing_key_id=scheduler.key_id))
    data = encode_sealed(SealedEvent(hb, sealed.ciphertext, scheduler.sign(signed_message(hb, sealed.ciphertext))))
    tampered = list(log)
    tampered[i] = RawMessage(log[i].subject, log[i].sequence, data, {})
    report = verify_export(round_trip(tampered), note, TrustAnchor(registry))
    assert kinds_at(report) == [(log[i].sequence, "unauthorised_signer"), (log[-1].sequence, ROOT_MISMATCH)]


def test_event_replayed_on_another_subject(log: list[RawMessage], checkpoint: Callable, registry: KeyRegistry) -> None:
    note = checkpoint(log)
    i = index_of_version(log, "evt.agent.a0", 3)
    tampered = list(log)
    tampered[i] = RawMessage("evt.agent.a1", log[i].sequence, log[i].data, {})
    report = verify_export(round_trip(tampered), note, TrustAnchor(registry))
    assert kinds_at(report)[0] == (log[i].sequence, "subject_mismatch")
    nxt = index_of_version(log, "evt.agent.a0", 4)
    assert (log[nxt].sequence, "version_gap") in kinds_at(report)


def test_forged_checkpoint(log: list[RawMessage], checkpoint: Callable, registry: KeyRegistry) -> None:
    note = checkpoint(log)
    body, sig = note.split("\n\n")
    lines = body.split("\n")
    forged_size = f"{lines[0]}\n{int(lines[1]) - 1}\n{lines[2]}\n\n{sig}"
    report = verify_export(log, forged_size, TrustAnchor(registry))
    assert kinds_at(report) == [(0, CHECKPOINT_SIGNATURE)]
    assert "does not verify" in report.findings[0].reason
    other = Signer.generate()
    by_other = sign_checkpoint(Checkpoint("symbi-audit", len(log), report.root), other, other.key_id)
    report = verify_export(log, by_other, TrustAnchor(registry))
    assert kinds_at(report) == [(0, CHECKPOINT_SIGNATURE)]


def test_truncated_export(log: list[RawMessage], checkpoint: Callable, registry: KeyRegistry) -> None:
    note = checkpoint(log)
    report = verify_export(round_trip(log[:-3]), note, TrustAnchor(registry))
    assert kinds_at(report) == [(log[-4].sequence, LOG_TRUNCATED)]
    # A longer log than the checkpoint: nothing vouches for the entries after its size.
    report = verify_export(log, checkpoint(log[:20]), TrustAnchor(registry))
    assert kinds_at(report) == [(log[-1].sequence, "entries_uncovered")]


def test_partial_reading_trusts_mid_chain_starts_and_ignores_sequence_gaps(
    log: list[RawMessage], registry: KeyRegistry
) -> None:
    """How ``symbi events tail --last N --subject …`` reads: a filtered tail of the stream."""
    from symbi_tlog.rules import LogVerifier, authenticate

    tail = [m for m in log[10:] if m.subject.startswith("evt.agent.")]
    partial = LogVerifier(partial=True)
    assert [c.findings for c in (partial.check(m, authenticate(m, registry)) for m in tail)] == [[]] * len(tail)
    whole = LogVerifier()
    kinds = {f.kind for m in tail for f in whole.check(m, authenticate(m, registry)).findings}
    assert kinds == {SEQUENCE_GAP, "version_gap"}
    # A partial reader still finds a broken chain after the first event it saw.
    a1 = [m for m in tail if m.subject == "evt.agent.a1"]
    partial = LogVerifier(partial=True)
    found = [f.kind for m in (a1[0], a1[2]) for f in partial.check(m, authenticate(m, registry)).findings]
    assert found == ["version_gap"]
