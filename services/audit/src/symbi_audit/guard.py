"""The log guard: the ``EVENTS`` stream must still hold what the last signed checkpoint covers.

The audit service remembers its checkpoints in its own PostgreSQL schema, outside the stream it
checks. The guard rebuilds the RFC 6962 tree from the events the stream holds (their leaves, as the verifier
made them) up to the latest checkpoint's last event and compares its root at the signed size with the signed
root: equal roots at that size are what an RFC 9162 consistency proof from the signed tree would establish. A
stream that is missing, ends before the checkpoint's last event, holds fewer events than the signed tree,
or whose tree the signed one is not a prefix of (deleted and re-created, rolled back, or rewritten anywhere —
even in the middle with the same length and the same last event) — or a witness that already cosigned a
larger tree than the log now has (both the stream and this service's state were lost) — is a CRITICAL
problem — on ``/readyz`` (check ``log_intact``), in ``/v1/audit/status`` (``critical``), in the
``symbi_audit_critical`` gauge and as a finding — and never a fresh start: the verifier keeps its tree and
position.

The rebuild is incremental: the guard keeps the tree's right frontier (``O(log n)`` hashes) and the stream
sequence it reached, and a check reads only the events signed since. What it rebuilt holds for one
incarnation of the stream, known by its creation time, first sequence and count of deleted messages: any
change of those (a stream deleted and re-created, purged, a message deleted) starts the rebuild from the
first event again, as do a problem found, a restart, and ``full_interval_s`` (a stream restored from an
altered snapshot keeps its creation time: the periodic full rebuild is what finds that).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from prometheus_client import Gauge
from symbi_common.errors import SymbiError
from symbi_common.streams import EVENTS_STREAM, read_subject
from symbi_tlog.merkle import TreeBuilder
from symbi_tlog.rules import Finding, event_leaf

from symbi_audit.store import AuditStore
from symbi_audit.witnesses import WitnessPool

log = structlog.get_logger(__name__)

CRITICAL = Gauge(
    "symbi_audit_critical", "1 while the event log is missing, shorter or rolled back against the signed tree", ["kind"]
)
KINDS = ("stream_missing", "stream_shorter", "stream_rolled_back", "witness_ahead")


@dataclass
class Rebuilt:
    """The tree the guard rebuilt from one incarnation of the stream, up to stream sequence ``sequence``."""

    incarnation: tuple[Any, ...]
    started_at: float
    sequence: int = 0
    tree: TreeBuilder = field(default_factory=TreeBuilder)


def incarnation(info: Any) -> tuple[Any, ...]:
    """What changes when the stream is not the one the rebuilt prefix was read from: re-created, purged, or a
    message deleted (JetStream cannot change a stored message in place)."""
    return info.created, int(info.state.first_seq), int(info.state.num_deleted or 0)


async def extend(nc: Any, rebuilt: Rebuilt, last_sequence: int) -> None:
    """Fold the leaves of the stored events after ``rebuilt.sequence`` up to ``last_sequence`` into the tree."""
    if rebuilt.sequence >= last_sequence:
        return
    async for batch in read_subject(nc, EVENTS_STREAM, "evt.>", after=rebuilt.sequence):
        for message in batch:
            if message.sequence > last_sequence:
                return
            rebuilt.tree.push(event_leaf(message))
            rebuilt.sequence = message.sequence


def inconsistency(size: int, root: bytes, tree: TreeBuilder) -> str | None:
    """Why the signed tree (``size``, ``root``) is not the tree rebuilt up to its last event (None if it is)."""
    if tree.size < size:
        return (
            f"the EVENTS stream holds {tree.size} events up to that sequence, fewer than the {size} of the signed tree"
        )
    if tree.size > size or tree.root() != root:
        return (
            f"the tree rebuilt from the {tree.size} events of the EVENTS stream up to that sequence is not the signed "
            f"tree of size {size} (no consistency proof can lead from it): its history was rewritten or rolled back"
        )
    return None


class LogGuard:
    """Checks the stream against the last signed checkpoint; ``critical`` holds the problems found."""

    def __init__(
        self,
        *,
        js: Any,
        nc: Any,
        store: AuditStore,
        witnesses: WitnessPool | None = None,
        full_interval_s: float = 3600.0,
    ) -> None:
        self.witnesses = witnesses
        self.full_interval_s = full_interval_s
        self.rebuilt: Rebuilt | None = None
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
            self.rebuilt = None
            return await self._found(
                "stream_shorter", latest.last_sequence, f"the EVENTS stream ends at sequence {last}; {covered}"
            )
        rebuilt = self._rebuilt_for(incarnation(info), latest.size)
        await extend(self.nc, rebuilt, latest.last_sequence)
        problem = inconsistency(latest.size, latest.root, rebuilt.tree)
        if problem is not None:
            self.rebuilt = None  # the next check reads the stream from its first event again
            kind = "stream_shorter" if rebuilt.tree.size < latest.size else "stream_rolled_back"
            # At the checkpoint's last sequence: one finding per kind and signed tree, however often it is seen.
            return await self._found(kind, latest.last_sequence, f"{problem}; {covered}")
        return {}

    def _rebuilt_for(self, current: tuple[Any, ...], size: int) -> Rebuilt:
        """The rebuilt prefix to extend, or a new one when it is of another stream, stale, or past ``size``."""
        now = time.monotonic()
        rebuilt = self.rebuilt
        if (
            rebuilt is None
            or rebuilt.incarnation != current
            or rebuilt.tree.size > size
            or now - rebuilt.started_at >= self.full_interval_s
        ):
            rebuilt = self.rebuilt = Rebuilt(current, now)
        return rebuilt

    async def _found(self, kind: str, sequence: int, reason: str) -> dict[str, str]:
        await self.store.add_findings([Finding(kind=kind, sequence=sequence, subject="", reason=reason)])
        return {kind: reason}
