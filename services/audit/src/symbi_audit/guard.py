"""The log guard: the ``EVENTS`` stream must still hold what the last signed checkpoint covers.

The audit service remembers its checkpoints in its own PostgreSQL schema, outside the stream it
checks. At start and every ``guard_interval_s`` it rebuilds the RFC 6962 tree from the events the
stream holds now (their leaves, as the verifier made them) and verifies an RFC 9162 consistency proof
from the last signed checkpoint (size, root) to that tree. A stream that is missing, ends before the
checkpoint's last event, holds fewer events than the signed tree, or whose tree the signed one is not a
prefix of (deleted and re-created, rolled back, or rewritten anywhere — even in the middle with the same
length and the same last event) — or a witness that already cosigned a larger tree than the log now has
(both the stream and this service's state were lost) — is a CRITICAL problem — on ``/readyz``
(check ``log_intact``), in ``/v1/audit/status`` (``critical``), in the ``symbi_audit_critical``
gauge and as a finding — and never a fresh start: the verifier keeps its tree and position.
"""

from __future__ import annotations

from typing import Any

import nats.errors
import nats.js.errors
import structlog
from prometheus_client import Gauge
from symbi_common.errors import SymbiError
from symbi_common.streams import EVENTS_STREAM, read_subject
from symbi_tlog.merkle import consistency_proof, subtree_hash, verify_consistency
from symbi_tlog.rules import Finding, event_leaf

from symbi_audit.store import AuditStore
from symbi_audit.witnesses import WitnessPool

log = structlog.get_logger(__name__)

CRITICAL = Gauge(
    "symbi_audit_critical", "1 while the event log is missing, shorter or rolled back against the signed tree", ["kind"]
)
KINDS = ("stream_missing", "stream_shorter", "stream_rolled_back", "witness_ahead")


async def stream_leaves(nc: Any, last_sequence: int) -> list[bytes]:
    """The Merkle leaves (as the verifier makes them) of the stored events up to stream ``last_sequence``, in order."""
    leaves: list[bytes] = []
    async for batch in read_subject(nc, EVENTS_STREAM, "evt.>"):
        for message in batch:
            if message.sequence > last_sequence:
                return leaves
            leaves.append(event_leaf(message))
    return leaves


def inconsistency(size: int, root: bytes, leaves: list[bytes]) -> str | None:
    """Why the signed tree (``size``, ``root``) is not a prefix of the tree over ``leaves`` (None if it is):
    an RFC 9162 consistency proof, computed from the rebuilt tree, must lead to both roots."""
    if len(leaves) < size:
        return f"the EVENTS stream holds {len(leaves)} events, fewer than the {size} of the signed tree"
    rebuilt = subtree_hash(leaves, 0, len(leaves))
    if not verify_consistency(size, len(leaves), root, rebuilt, consistency_proof(leaves, size)):
        return (
            f"the tree rebuilt from the {len(leaves)} events of the EVENTS stream is not consistent with the signed "
            f"checkpoint of size {size} (the consistency proof fails): its history was rewritten or rolled back"
        )
    return None


class LogGuard:
    """Checks the stream against the last signed checkpoint; ``critical`` holds the problems found."""

    def __init__(self, *, js: Any, nc: Any, store: AuditStore, witnesses: WitnessPool | None = None) -> None:
        self.witnesses = witnesses
        self.js = js
        self.nc = nc
        self.store = store
        self.critical: dict[str, str] = {}
        self.checked = False
        """Whether the last comparison could be made (a guard that cannot read the stream is not ready either)."""
        for kind in KINDS:
            CRITICAL.labels(kind).set(0)

    @property
    def intact(self) -> bool:
        return not self.critical

    async def check(self) -> dict[str, str]:
        """Run the comparison; returns (and keeps) the critical problems. A NATS error leaves them as they were."""
        try:
            problems = await self._compare()
        except (nats.errors.Error, nats.js.errors.Error, SymbiError) as exc:
            log.warning("log guard could not read the stream", error=str(exc))
            self.checked = False
            return self.critical
        self.checked = True
        if self.witnesses is not None and self.witnesses.ahead:
            problems["witness_ahead"] = "; ".join(self.witnesses.ahead.values())
        for kind in KINDS:
            CRITICAL.labels(kind).set(1 if kind in problems else 0)
        for kind, reason in problems.items():
            if kind not in self.critical:
                log.critical("audit log integrity", kind=kind, reason=reason)
        self.critical = problems
        return problems

    async def _compare(self) -> dict[str, str]:
        latest = await self.store.checkpoint()
        if latest is None or latest.size == 0:
            return {}
        covered = f"the signed checkpoint of size {latest.size} covers up to sequence {latest.last_sequence}"
        try:
            info = await self.js.stream_info(EVENTS_STREAM)
        except nats.js.errors.NotFoundError:
            return await self._found("stream_missing", latest.last_sequence, f"the EVENTS stream is missing; {covered}")
        last = int(info.state.last_seq)
        if last < latest.last_sequence:
            return await self._found(
                "stream_shorter", latest.last_sequence, f"the EVENTS stream ends at sequence {last}; {covered}"
            )
        leaves = await stream_leaves(self.nc, last)
        problem = inconsistency(latest.size, latest.root, leaves)
        if problem is not None:
            kind = "stream_shorter" if len(leaves) < latest.size else "stream_rolled_back"
            # At the checkpoint's last sequence: one finding per kind and signed tree, however often it is seen.
            return await self._found(kind, latest.last_sequence, f"{problem}; {covered}")
        return {}

    async def _found(self, kind: str, sequence: int, reason: str) -> dict[str, str]:
        await self.store.add_findings([Finding(kind=kind, sequence=sequence, subject="", reason=reason)])
        return {kind: reason}
