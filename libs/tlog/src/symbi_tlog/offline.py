"""The exported log and its offline verification against a trust anchor: no data key, no running system.

An export is JSON Lines, one stored event per line, in stream order::

    {"sequence": 17, "subject": "evt.agent.a1", "data": "<base64 of the exact stored bytes>"}

and a checkpoint note next to it. :func:`verify_export` trusts nothing in the files themselves:

- the checkpoint must be signed by an active key of the audit service in the root-signed key
  registry (the pinned log key) and name the expected origin; with witnesses configured, it must
  carry at least ``min_witnesses`` valid cosignatures of trusted witnesses;
- its tree must cover exactly the exported entries: as many entries as its size, and the RFC 6962
  tree rebuilt from them (each leaf commits to the entry's stream sequence, subject and stored
  bytes, at its position) has its root — so every entry is included at its position, and nothing
  was removed, added, reordered, renumbered or moved between aggregates;
- a previously seen checkpoint must be consistent with it: not larger (rollback), not the same size
  with another root (split view), and its root must be the root over the first ``size`` entries (fork);
- every event passes the same rules as the live verifier (:mod:`symbi_tlog.rules`).

Stage 1 (parsing, signatures, leaves) may run on several processes (``workers``,
:mod:`symbi_tlog.export`); the in-order rules and the tree run here, in order.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from symbi_common.keyring import KeyRegistry
from symbi_common.registry_document import RegisteredKey
from symbi_common.streams import RawMessage

from symbi_tlog.cosign import WitnessKey, verify_cosignatures
from symbi_tlog.errors import CheckpointInvalid
from symbi_tlog.export import ExportLine, export_line, read_export, verdicts_of_file
from symbi_tlog.merkle import TreeBuilder
from symbi_tlog.notes import Checkpoint, key_hash, parse_checkpoint, verify_checkpoint
from symbi_tlog.rules import CachedRegistry, Finding, LogVerifier, Verdict, verdict

AUDIT_SERVICE = "audit"
CHECKPOINT_SUBJECT = "audit.checkpoint"
"""Where the audit service publishes its signed (and cosigned) checkpoints, on the ``AUDIT`` stream."""
DEFAULT_ORIGIN = "symbi-audit"

CHECKPOINT_MISSING = "checkpoint_missing"
CHECKPOINT_SIGNATURE = "checkpoint_signature"
CHECKPOINT_KEY_REVOKED = "checkpoint_key_revoked"
CHECKPOINT_ORIGIN = "checkpoint_origin"
LOG_TRUNCATED = "log_truncated"
ENTRIES_UNCOVERED = "entries_uncovered"
ROOT_MISMATCH = "root_mismatch"
STALE_CHECKPOINT = "stale_checkpoint"
SPLIT_VIEW = "split_view"
INCONSISTENT_CHECKPOINT = "inconsistent_checkpoint"
WITNESS_MISSING = "witness_cosignature_missing"
WITNESS_FORGED = "witness_cosignature_invalid"
ROOT_KEY_MISMATCH = "root_key_mismatch"
REGISTRY_ROLLBACK = "registry_rollback"

__all__ = ["ExportLine", "export_line", "read_export", "verdicts_of_file"]  # the export format, re-exported


def log_keys(registry: KeyRegistry) -> list[RegisteredKey]:
    """Every key of the audit service in the registry (the log's note keys), whatever its status."""
    return [k for k in registry.document.keys if k.service == AUDIT_SERVICE]


def audit_key(registry: KeyRegistry) -> tuple[str, bytes]:
    """The audit service's active checkpoint key (key id used as the note key name, public key)."""
    for key in log_keys(registry):
        if key.status == "active":
            return key.key_id, key.public_key
    raise CheckpointInvalid("the key registry has no active key of the audit service")


@dataclass(frozen=True, slots=True)
class TrustAnchor:
    """What a verifier trusts: the root-signed registry (its audit keys sign checkpoints), the log's
    origin, and the witnesses of which at least ``min_witnesses`` must cosign a checkpoint."""

    registry: KeyRegistry
    origin: str = DEFAULT_ORIGIN
    witnesses: tuple[WitnessKey, ...] = ()
    min_witnesses: int = 0
    max_age_s: float | None = None
    """If set: the newest valid witness cosignature must be at most this old (a stale checkpoint fails)."""
    now: float | None = None
    """The time to judge ``max_age_s`` against (default: now)."""
    root_key_id: str = ""
    """The root key the verifier holds (its key id), which must have signed the registry. Empty: the registry's
    own root key is taken as it comes, so whoever handed over the registry could have made both."""
    min_registry_version: int = 0
    """The oldest registry version the verifier accepts (an older one could undo a revocation since)."""


def _cp_finding(kind: str, reason: str, what: str) -> Finding:
    return Finding(kind=kind, sequence=0, subject=what, reason=reason)


def check_checkpoint(
    note: str, anchor: TrustAnchor, *, what: str = "checkpoint", witnessed: bool = True
) -> tuple[Checkpoint | None, list[Finding]]:
    """The checkpoint of ``note`` if signed by the pinned log key (else None), and every finding about it.

    ``witnessed``: also demand the anchor's witness cosignatures.
    """
    try:
        checkpoint, signatures = parse_checkpoint(note)
    except CheckpointInvalid as err:
        return None, [_cp_finding(CHECKPOINT_SIGNATURE, f"{what}: {err.message}", what)]
    findings: list[Finding] = []
    if checkpoint.origin != anchor.origin:
        findings.append(
            _cp_finding(
                CHECKPOINT_ORIGIN, f"{what} is for log {checkpoint.origin!r}, not the expected {anchor.origin!r}", what
            )
        )
    signed_by: RegisteredKey | None = None
    altered = False
    for key in log_keys(anchor.registry):
        if not any(n == key.key_id and h == key_hash(key.key_id, key.public_key) for n, h, _ in signatures):
            continue
        try:
            verify_checkpoint(note, key_name=key.key_id, public_key=key.public_key)
        except CheckpointInvalid:
            altered = True
            continue
        if signed_by is None or key.status == "active":
            signed_by = key
    if signed_by is None:
        names = ", ".join(n for n, _, _ in signatures) or "none"
        reason = (
            f"the signature of the audit service's key on the {what} does not verify: the checkpoint is forged or altered"
            if altered
            else f"{what} carries no signature by the audit service's key in the registry (signed by: {names})"
        )
        return None, [*findings, _cp_finding(CHECKPOINT_SIGNATURE, reason, what)]
    if signed_by.status not in ("active", "retired"):  # a retired key signed checkpoints before a rotation
        reason = f"{what} is signed by audit key {signed_by.key_id}, which the registry marks {signed_by.status}"
        return None, [*findings, _cp_finding(CHECKPOINT_KEY_REVOKED, reason, what)]
    if witnessed and (anchor.witnesses or anchor.min_witnesses or anchor.max_age_s is not None):
        cosigned = verify_cosignatures(note, anchor.witnesses)
        if anchor.max_age_s is not None:
            findings.extend(_freshness(cosigned.valid, anchor, what))
        for name in cosigned.forged:
            findings.append(
                _cp_finding(WITNESS_FORGED, f"the cosignature of witness {name!r} on the {what} does not verify", what)
            )
        if len(cosigned.valid) < anchor.min_witnesses:
            have = ", ".join(sorted(cosigned.valid)) or "none"
            reason = (
                f"{what} has {len(cosigned.valid)} valid witness cosignatures ({have}), "
                f"{anchor.min_witnesses} of {len(anchor.witnesses)} are required"
            )
            findings.append(_cp_finding(WITNESS_MISSING, reason, what))
    return checkpoint, findings


def _freshness(valid: dict[str, int], anchor: TrustAnchor, what: str) -> list[Finding]:
    assert anchor.max_age_s is not None
    if not valid:
        return [_cp_finding(STALE_CHECKPOINT, f"no witness cosignature on the {what} says how recent it is", what)]
    now = anchor.now if anchor.now is not None else time.time()
    age = now - max(valid.values())
    if age > anchor.max_age_s:
        reason = (
            f"the newest witness cosignature on the {what} is {age:.0f} s old (at most {anchor.max_age_s:.0f} s "
            "allowed): a stale checkpoint, the log may have been rolled back since"
        )
        return [_cp_finding(STALE_CHECKPOINT, reason, what)]
    return []


@dataclass
class OfflineReport:
    """What the offline verifier found. ``ok`` only if there are no findings at all."""

    events: int = 0
    checkpoint: Checkpoint | None = None
    previous: Checkpoint | None = None
    root: bytes = b""
    findings: list[Finding] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    """What this run did not check (no checkpoint: completeness, order, tail; no previous: rollback)."""
    root_key_id: str = ""
    registry_version: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings


# --- the verifier ------------------------------------------------------------------------------------


def verify_export(
    messages: Iterable[RawMessage],
    note: str | None,
    anchor: TrustAnchor,
    *,
    previous: str | None = None,
    require_checkpoint: bool = True,
) -> OfflineReport:
    """Verify stored events (in stream order) against the trust anchor, in this process; see :func:`verify`."""
    cached = CachedRegistry(anchor.registry)
    return verify(
        (verdict(m, cached) for m in messages), note, anchor, previous=previous, require_checkpoint=require_checkpoint
    )


def verify_export_file(
    fh: BinaryIO,
    note: str | None,
    anchor: TrustAnchor,
    *,
    previous: str | None = None,
    workers: int = 1,
    require_checkpoint: bool = True,
) -> OfflineReport:
    """Verify an export file (opened binary); ``workers`` > 1: parsing and signatures on that many processes."""
    entries = verdicts_of_file(fh, anchor.registry, workers=workers)
    return verify(entries, note, anchor, previous=previous, require_checkpoint=require_checkpoint)


def verify(
    entries: Iterable[Verdict],
    note: str | None,
    anchor: TrustAnchor,
    *,
    previous: str | None = None,
    require_checkpoint: bool = True,
) -> OfflineReport:
    """Verify the stage-1 verdicts of an export's entries against the trust anchor; ``previous``: a checkpoint
    seen before. ``note`` None: a ``checkpoint_missing`` finding, unless
    ``require_checkpoint`` is False (chains and signatures only; ``not_checked`` says what is missing)."""
    report = OfflineReport()
    _check_anchor(report, anchor, witnessed=note is not None)
    checkpoint: Checkpoint | None = None
    if note is None and require_checkpoint:
        report.findings.append(
            _cp_finding(
                CHECKPOINT_MISSING,
                "no checkpoint: without a signed tree head nothing shows the log is complete, in order and unaltered",
                "checkpoint",
            )
        )
    elif note is not None:
        checkpoint, found = check_checkpoint(note, anchor)
        report.findings.extend(found)
    report.checkpoint = checkpoint
    prev: Checkpoint | None = None
    if previous is not None:
        prev, found = check_checkpoint(previous, anchor, what="previous checkpoint", witnessed=False)
        report.findings.extend(found)
    else:
        report.not_checked.append("rollback and fork against a previously seen checkpoint (no --previous)")
    report.previous = prev
    if prev is not None and checkpoint is not None:
        if prev.size > checkpoint.size:
            reason = (
                f"the checkpoint (size {checkpoint.size}) is older than one seen before (size {prev.size}): "
                "the log was rolled back or a stale checkpoint was exported"
            )
            report.findings.append(_cp_finding(STALE_CHECKPOINT, reason, "checkpoint"))
        elif prev.size == checkpoint.size and prev.root != checkpoint.root:
            reason = f"two checkpoints of size {prev.size} with different roots: the log shows different views"
            report.findings.append(_cp_finding(SPLIT_VIEW, reason, "checkpoint"))
    _check_entries(report, entries, checkpoint, prev)
    return report


def _check_anchor(report: OfflineReport, anchor: TrustAnchor, *, witnessed: bool) -> None:
    """What the trust anchor rests on: a registry signed by the root key the verifier pinned, at least the
    version it asks for, and witnesses besides the operator's own audit key."""
    document = anchor.registry.document
    report.root_key_id, report.registry_version = document.root_key_id, document.version
    if not anchor.root_key_id:
        report.not_checked.append(
            f"that the key registry is the runtime's real one: its root key {document.root_key_id} came with it, "
            "not pinned (give the root key id you hold with --root-key)"
        )
    elif document.root_key_id != anchor.root_key_id:
        reason = (
            f"the key registry is signed by root key {document.root_key_id}, not the pinned {anchor.root_key_id}: "
            "every signature it vouches for is someone else's word"
        )
        report.findings.append(_cp_finding(ROOT_KEY_MISMATCH, reason, "key registry"))
    if document.version < anchor.min_registry_version:
        reason = (
            f"the key registry is version {document.version}, older than the version {anchor.min_registry_version} "
            "required: a key revoked since would pass"
        )
        report.findings.append(_cp_finding(REGISTRY_ROLLBACK, reason, "key registry"))
    if witnessed and anchor.min_witnesses == 0:
        report.not_checked.append(
            "that anyone but the log's operator vouches for the checkpoint: no witness cosignature was required "
            "(--witness-key, --min-witnesses)"
        )


def _check_entries(
    report: OfflineReport, entries: Iterable[Verdict], checkpoint: Checkpoint | None, prev: Checkpoint | None
) -> None:
    rules = LogVerifier()
    tree = TreeBuilder()
    findings = report.findings
    cp_size = checkpoint.size if checkpoint is not None else -1
    prev_size = prev.size if prev is not None and (checkpoint is None or prev.size != checkpoint.size) else -1
    last: Verdict | None = None
    for v in entries:
        found = rules.apply(v)
        if found:
            findings.extend(found)
        tree.push(v.leaf)
        last = v
        if tree.size == prev_size and prev is not None and tree.root() != prev.root:
            reason = (
                f"the previously seen checkpoint (size {prev.size}) is not a prefix of this log: "
                "history was rewritten (fork)"
            )
            findings.append(
                Finding(kind=INCONSISTENT_CHECKPOINT, sequence=v.sequence, subject=v.subject, reason=reason)
            )
        if tree.size == cp_size and checkpoint is not None:
            report.root = tree.root()
            if report.root != checkpoint.root:
                reason = (
                    f"the first {checkpoint.size} entries hash to a different root than the signed checkpoint: "
                    "entries were altered, removed, inserted, reordered, renumbered or moved"
                )
                findings.append(Finding(kind=ROOT_MISMATCH, sequence=v.sequence, subject=v.subject, reason=reason))
    report.events = tree.size
    seq, subj = (last.sequence, last.subject) if last is not None else (0, "")
    if checkpoint is None:
        report.root = tree.root()
        report.not_checked.append(
            "that the log is complete and unaltered: no signed checkpoint, so a deleted tail (of the log or of "
            "one aggregate), renumbered, reordered or moved events can go unnoticed"
        )
        return
    if tree.size < checkpoint.size:
        reason = f"the export ends after {tree.size} entries but the signed checkpoint covers {checkpoint.size}"
        findings.append(Finding(kind=LOG_TRUNCATED, sequence=seq, subject=subj, reason=reason))
    elif tree.size > checkpoint.size:
        reason = (
            f"the export has {tree.size - checkpoint.size} entries after the {checkpoint.size} the signed checkpoint "
            "covers: nothing vouches for them"
        )
        findings.append(Finding(kind=ENTRIES_UNCOVERED, sequence=seq, subject=subj, reason=reason))
    if prev is not None and prev.size > tree.size and prev.size <= checkpoint.size:
        reason = f"the previously seen checkpoint (size {prev.size}) covers more entries than the export holds"
        findings.append(Finding(kind=LOG_TRUNCATED, sequence=seq, subject=subj, reason=reason))
