"""The exported log and its offline verification: no data key, no running system.

An export is JSON Lines, one stored event per line, in stream order::

    {"sequence": 17, "subject": "evt.agent.a1", "data": "<base64 of the exact stored bytes>"}

:func:`verify_export` runs the same rules as the live verifier (:mod:`symbi_audit.rules`) over the
lines, rebuilds the RFC 6962 tree and compares it with a signed checkpoint: the checkpoint's
signature (the audit service's key from the root-signed registry), that the log holds at least the
checkpoint's number of events, and that the root over its first ``size`` events is the signed one.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import msgspec
from symbi_common.keyring import KeyRegistry
from symbi_common.streams import RawMessage

from symbi_audit.errors import CheckpointInvalid, ExportMalformed
from symbi_audit.merkle import TreeBuilder
from symbi_audit.notes import Checkpoint, verify_checkpoint
from symbi_audit.rules import CachedRegistry, Finding, LogVerifier, authenticate

AUDIT_SERVICE = "audit"
CHECKPOINT_SIGNATURE = "checkpoint_signature"
LOG_TRUNCATED = "log_truncated"
ROOT_MISMATCH = "root_mismatch"


class ExportLine(msgspec.Struct, frozen=True):
    sequence: int
    subject: str
    data: str


_line_encoder = msgspec.json.Encoder()
_line_decoder = msgspec.json.Decoder(ExportLine)


def export_line(message: RawMessage) -> bytes:
    """One line of an export (with its newline)."""
    return (
        _line_encoder.encode(ExportLine(message.sequence, message.subject, base64.b64encode(message.data).decode()))
        + b"\n"
    )


def read_export(lines: Iterable[bytes]) -> Iterator[RawMessage]:
    """The stored events of an export, in file order; :class:`ExportMalformed` names a bad line."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = _line_decoder.decode(line)
            data = base64.b64decode(item.data, validate=True)
        except (msgspec.DecodeError, msgspec.ValidationError, binascii.Error) as exc:
            raise ExportMalformed(f"line {number} of the export is not an exported event: {exc}") from None
        yield RawMessage(item.subject, item.sequence, data, {})


def audit_key(registry: KeyRegistry) -> tuple[str, bytes]:
    """The audit service's checkpoint key (key id used as the note key name, public key) from the registry."""
    for key in registry.document.keys:
        if key.service == AUDIT_SERVICE and key.status == "active":
            return key.key_id, key.public_key
    raise CheckpointInvalid("the key registry has no active key of the audit service")


@dataclass
class OfflineReport:
    """What the offline verifier found. ``ok`` only if there are no findings at all."""

    events: int = 0
    checkpoint: Checkpoint | None = None
    root: bytes = b""
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def verify_export(messages: Iterable[RawMessage], note: str | None, registry: KeyRegistry) -> OfflineReport:
    """Verify every event of an export and, with a checkpoint ``note``, the tree root it signs."""
    report = OfflineReport()
    checkpoint: Checkpoint | None = None
    if note is not None:
        name, public_key = audit_key(registry)
        try:
            checkpoint = verify_checkpoint(note, key_name=name, public_key=public_key)
        except CheckpointInvalid as err:
            report.findings.append(Finding(kind=CHECKPOINT_SIGNATURE, sequence=0, subject="", reason=err.message))
    report.checkpoint = checkpoint
    cached = CachedRegistry(registry)
    rules = LogVerifier()
    tree = TreeBuilder()
    last = RawMessage("", 0, b"", {})
    for message in messages:
        checked = rules.check(message, authenticate(message, cached))
        report.findings.extend(checked.findings)
        tree.append(checked.leaf)
        report.events += 1
        last = message
        if checkpoint is not None and tree.size == checkpoint.size:
            report.root = tree.root()
            if report.root != checkpoint.root:
                report.findings.append(
                    Finding(
                        kind=ROOT_MISMATCH,
                        sequence=message.sequence,
                        subject=message.subject,
                        reason=f"the first {checkpoint.size} events hash to a different root than the signed "
                        "checkpoint: events were altered, removed, inserted or reordered",
                    )
                )
    if checkpoint is not None and tree.size < checkpoint.size:
        report.findings.append(
            Finding(
                kind=LOG_TRUNCATED,
                sequence=last.sequence,
                subject=last.subject,
                reason=f"the log ends after {tree.size} events but the checkpoint covers {checkpoint.size}",
            )
        )
    if checkpoint is None:
        report.root = tree.root()
    return report
