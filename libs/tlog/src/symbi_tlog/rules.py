"""The verification rules of the audit log: pure, shared by the live verifier and the offline one.

Every stored event goes through two stages:

1. :func:`authenticate` — per event and independent of every other event, so it runs on several
   threads at once (PyNaCl releases the GIL while it verifies): decode, subject check, signing key
   known and authorised for the subject, Ed25519 signature (``symbi_common.sealing.open_envelope``).
2. :class:`LogVerifier.check` — in stream order: stream sequences without gaps or reordering, then
   per aggregate the ``prev_hash`` link and version continuity (``check_link``).

Each failure is a :class:`Finding` with the exact stream sequence, subject and reason. Every event,
good or bad, also becomes one Merkle leaf (:func:`leaf_data`), so the tree commits to the log exactly
as stored.

After a failure the rules re-synchronise so that one tampering yields findings where it happened and
not on every later event: an event that fails authentication does not move its aggregate's chain tip,
but the next event may follow either the last authentic event (a forged event was inserted) or the
rejected one (an authentic event was altered); a chain break moves the tip forward only, so an
out-of-order or replayed old event is reported once.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import msgspec
from symbi_common.crypto import Verifier
from symbi_common.envelope import ZERO_HASH, decode_header, decode_sealed, event_hash
from symbi_common.errors import BrokenChain, IntegrityError, MalformedEvent, VersionGap
from symbi_common.keyring import KeyRegistry
from symbi_common.sealing import ChainTip, OpenedEvent, open_envelope
from symbi_common.streams import RawMessage

from symbi_tlog.merkle import leaf_hash

LEAF_DOMAIN = b"symbi.audit.leaf.v1\x00"

SEQUENCE_GAP = "sequence_gap"
SEQUENCE_ORDER = "sequence_order"


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """One verification failure. ``kind`` is an error code (``bad_signature``, ``broken_chain``, ``sequence_gap`` …)."""

    kind: str
    sequence: int
    subject: str
    reason: str


def leaf_data(sequence: int, subject: str, stored_hash: bytes) -> bytes:
    """What a Merkle leaf commits to: the stream sequence, the subject and the hash of the exact stored bytes."""
    subj = subject.encode()
    return b"".join((LEAF_DOMAIN, struct.pack(">QH", sequence, len(subj)), subj, stored_hash))


_LEAF_PREFIX = b"\x00" + LEAF_DOMAIN  # RFC 6962's leaf prefix, then the leaf data's domain
_pack_position = struct.Struct(">QH").pack


def event_leaf(message: Stored, stored_hash: bytes | None = None) -> bytes:
    """The Merkle leaf hash of a stored event (``stored_hash``: its :func:`event_hash`, if already known).

    ``leaf_hash(leaf_data(…))`` in one join and one hash: it runs once per event of every verification."""
    digest = stored_hash if stored_hash is not None else event_hash(message.data)
    subj = message.subject.encode()
    return hashlib.sha256(b"".join((_LEAF_PREFIX, _pack_position(message.sequence, len(subj)), subj, digest))).digest()


class Stored(Protocol):
    """A stored event as stage 1 needs it: a :class:`RawMessage` or an export line (no copy into one)."""

    @property
    def sequence(self) -> int: ...
    @property
    def subject(self) -> str: ...
    @property
    def data(self) -> bytes: ...


class CachedRegistry(KeyRegistry):
    """The registry it wraps, remembering which (key, subject) pairs it has authorised.

    It follows the wrapped registry's version: when that one moves on (a live registry after
    :meth:`KeyRegistry.advance`), the cache is dropped and the new version decides from the next event
    on. Only answers that cannot depend on the event's position are kept: a revoked key's answer
    depends on the sequence (before or after its revocation point), so it is decided every time.
    Refusals are never cached (they raise, with the event's own sequence). Saves the subject-pattern
    matching on every event of an aggregate after its first.
    """

    def __init__(self, registry: KeyRegistry, max_entries: int = 100_000) -> None:
        super().__init__(registry.document)
        self._source = registry
        self._authorised: dict[tuple[str, str], Verifier] = {}
        self._max = max_entries

    def authorise(self, key_id: str, subject: str, *, sequence: int | None = None) -> Verifier:
        document = self._source.document
        if document is not self.document:  # the wrapped registry moved to another version
            KeyRegistry.__init__(self, document)
            self._authorised.clear()
        verifier = self._authorised.get((key_id, subject))
        if verifier is None:
            verifier = super().authorise(key_id, subject, sequence=sequence)
            if not self.is_revoked(key_id):
                if len(self._authorised) >= self._max:
                    self._authorised.clear()
                self._authorised[(key_id, subject)] = verifier
        return verifier


def authenticate(message: Stored, registry: KeyRegistry) -> OpenedEvent | IntegrityError:
    """Stage 1 for one event: the opened event, or the integrity error it failed with."""
    try:
        return open_envelope(message.data, subject=message.subject, sequence=message.sequence, registry=registry)
    except IntegrityError as err:
        return err


def _authenticate_chunk(messages: Sequence[RawMessage], registry: KeyRegistry) -> list[OpenedEvent | IntegrityError]:
    return [authenticate(m, registry) for m in messages]


def authenticate_all(
    messages: Sequence[RawMessage], registry: KeyRegistry, executor: Executor | None = None, *, chunk: int = 64
) -> list[OpenedEvent | IntegrityError]:
    """Stage 1 for many events, spread over ``executor``'s threads when there are enough of them."""
    if executor is None or len(messages) <= chunk:
        return _authenticate_chunk(messages, registry)
    parts = [messages[i : i + chunk] for i in range(0, len(messages), chunk)]
    out: list[OpenedEvent | IntegrityError] = []
    for result in executor.map(_authenticate_chunk, parts, [registry] * len(parts)):
        out.extend(result)
    return out


@dataclass(slots=True)
class AggregateTip:
    """Where an aggregate's verified chain ends, and the version of a rejected event right after it, if any."""

    tip: ChainTip
    pending_version: int | None = None


@dataclass(slots=True)
class VerifierState:
    """Everything the rules remember between events: the last stream sequence and each aggregate's tip."""

    last_sequence: int = 0
    tips: dict[str, AggregateTip] = field(default_factory=dict)


@dataclass(slots=True)
class Checked:
    """The outcome for one event: its findings (empty if it verified), its leaf, the opened event if authentic."""

    message: RawMessage
    opened: OpenedEvent | None
    findings: list[Finding]
    leaf: bytes


class Verdict(NamedTuple):
    """Stage 1 for one event in compact, picklable form: all the in-order rules and the tree need.

    ``version`` is the aggregate version (the one a rejected event claims, None if it does not even
    decode); ``error_code``/``error`` are empty when the event authenticated.
    """

    sequence: int
    subject: str
    leaf: bytes
    hash: bytes
    version: int | None
    prev_hash: bytes
    event_id: str
    error_code: str = ""
    error: str = ""


def _claimed_version(message: Stored) -> int | None:
    """The aggregate version a rejected event claims, if its header decodes and names its own subject."""
    try:
        header = decode_header(decode_sealed(message.data).header)
    except MalformedEvent:
        return None
    return header.aggregate_version if header.subject == message.subject else None


def to_verdict(message: Stored, auth: OpenedEvent | IntegrityError) -> Verdict:
    """The compact form of :func:`authenticate`'s outcome for ``message``."""
    if isinstance(auth, IntegrityError):
        digest = event_hash(message.data)
        return Verdict(
            message.sequence, message.subject, leaf_hash(leaf_data(message.sequence, message.subject, digest)), digest,
            _claimed_version(message), ZERO_HASH, "", auth.code, auth.message,
        )  # fmt: skip
    header = auth.header
    return Verdict(
        message.sequence, message.subject, event_leaf(message, auth.hash), auth.hash, header.aggregate_version,
        header.prev_hash, header.event_id,
    )  # fmt: skip


def verdict(message: Stored, registry: KeyRegistry) -> Verdict:
    """Stage 1 for one event, in compact form."""
    return to_verdict(message, authenticate(message, registry))


def _link_error(prev: ChainTip, v: Verdict) -> IntegrityError | None:
    """The event must follow ``prev``: aggregate version + 1 and hash link (as ``sealing.check_link``)."""
    if v.version != prev.version + 1:
        return VersionGap(
            f"aggregate version {v.version} does not follow {prev.version}", sequence=v.sequence, subject=v.subject
        )
    if v.prev_hash != prev.hash:
        return BrokenChain(
            f"prev_hash of event {v.event_id} does not match the previous event "
            f"(expected {prev.hash.hex()[:16]}…, found {v.prev_hash.hex()[:16]}…)",
            sequence=v.sequence,
            subject=v.subject,
        )
    return None


class LogVerifier:
    """Applies the in-order rules; ``changed`` collects the subjects whose tips moved (to persist them).

    The audit log is checked whole: from the first event, every sequence. A reader of part of the
    stream (``symbi events tail --last N --subject …``) passes ``partial=True``: stream sequences
    are then not checked (a subject filter leaves gaps) and an aggregate first seen in the middle
    of its chain is trusted from that event on.
    """

    def __init__(self, state: VerifierState | None = None, *, partial: bool = False) -> None:
        self.state = state or VerifierState()
        self.partial = partial
        self.changed: set[str] = set()

    def check(self, message: RawMessage, auth: OpenedEvent | IntegrityError) -> Checked:
        v = to_verdict(message, auth)
        return Checked(message, None if isinstance(auth, IntegrityError) else auth, self.apply(v), v.leaf)

    def apply(self, v: Verdict) -> list[Finding]:
        """The in-order rules for one event's verdict: its findings (empty if it verified)."""
        state = self.state
        if not v.error_code and not self.partial and v.sequence == state.last_sequence + 1:
            # The common case, inline: the next stream sequence, authentic, following its aggregate's tip.
            current = state.tips.get(v.subject)
            if (
                current is not None
                and current.pending_version is None
                and v.version == current.tip.version + 1
                and v.prev_hash == current.tip.hash
            ):
                state.last_sequence = v.sequence
                state.tips[v.subject] = AggregateTip(ChainTip(v.sequence, v.version, v.hash))
                self.changed.add(v.subject)
                return []
        findings: list[Finding] = []
        if not self.partial:
            gap = self._sequence(v.sequence, v.subject)
            if gap is not None:
                findings.append(gap)
        if v.error_code:
            findings.append(Finding(kind=v.error_code, sequence=v.sequence, subject=v.subject, reason=v.error))
            self._rejected(v)
            return findings
        link = self._link(v)
        if link is not None:
            findings.append(Finding(kind=link.code, sequence=v.sequence, subject=v.subject, reason=link.message))
        return findings

    def _sequence(self, seq: int, subject: str) -> Finding | None:
        """Stream sequences must go up by exactly one (``deny_delete``: nothing is ever removed)."""
        state = self.state
        last = state.last_sequence
        state.last_sequence = max(last, seq)
        if seq == last + 1:
            return None
        if seq > last + 1:
            missing = f"{last + 1}" if seq == last + 2 else f"{last + 1}..{seq - 1}"
            reason = f"stream sequence {missing} missing before {seq}: events were removed"
            return Finding(kind=SEQUENCE_GAP, sequence=seq, subject=subject, reason=reason)
        reason = f"stream sequence {seq} comes after {last}: events were reordered or repeated"
        return Finding(kind=SEQUENCE_ORDER, sequence=seq, subject=subject, reason=reason)

    def _rejected(self, v: Verdict) -> None:
        current = self.state.tips.get(v.subject)
        prev = current.tip if current else ChainTip()
        if v.version == prev.version + 1:
            self.state.tips[v.subject] = AggregateTip(prev, pending_version=v.version)
            self.changed.add(v.subject)

    def _link(self, v: Verdict) -> IntegrityError | None:
        subject = v.subject
        version = v.version if v.version is not None else 0
        tip = ChainTip(v.sequence, version, v.hash)
        current = self.state.tips.get(subject)
        if current is None:
            if self.partial and version != 1:
                self.state.tips[subject] = AggregateTip(tip)
                self.changed.add(subject)
                return None
            current = AggregateTip(ChainTip())
        error = _link_error(current.tip, v)
        # It may follow a rejected (altered) event instead; that one was already reported.
        if error is not None and current.pending_version is not None and version == current.pending_version + 1:
            error = None
        if error is None or version > current.tip.version:
            self.state.tips[subject] = AggregateTip(tip)
            self.changed.add(subject)
        return error

    def check_all(self, messages: Sequence[RawMessage], auths: Iterable[OpenedEvent | IntegrityError]) -> list[Checked]:
        return [self.check(m, a) for m, a in zip(messages, auths, strict=True)]
