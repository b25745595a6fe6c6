"""The log guard: the ``EVENTS`` stream must still hold what the last signed checkpoint covers.

The audit service remembers its checkpoints in its own PostgreSQL schema, outside the stream it
checks. At start and every ``guard_interval_s`` it compares: a stream that is missing, ends before
the checkpoint's last event, or holds other events than the tree at the first and last covered
positions (deleted and re-created, rolled back, rewritten) — or a witness that already cosigned a
larger tree than the log now has (both the stream and this service's state were lost) — is a CRITICAL problem — on ``/readyz``
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
from symbi_common.streams import EVENTS_STREAM, RawMessage, read_subject
from symbi_tlog.rules import Finding, event_leaf

from symbi_audit.store import AuditStore
from symbi_audit.witnesses import WitnessPool

log = structlog.get_logger(__name__)

CRITICAL = Gauge(
    "symbi_audit_critical", "1 while the event log is missing, shorter or rolled back against the signed tree", ["kind"]
)
KINDS = ("stream_missing", "stream_shorter", "stream_rolled_back", "witness_ahead")


async def _event_at(nc: Any, sequence: int) -> RawMessage | None:
    async for batch in read_subject(nc, EVENTS_STREAM, "evt.>", after=sequence - 1, batch=1):
        return batch[0] if batch and batch[0].sequence == sequence else None
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
        first_leaf_index, last_leaf_index = 0, latest.size - 1
        stored = await self.store.nodes([(0, first_leaf_index), (0, last_leaf_index)])
        first_seq = await self.store.sequence_of_leaf(first_leaf_index)
        for index, sequence in ((first_leaf_index, first_seq), (last_leaf_index, latest.last_sequence)):
            event = await _event_at(self.nc, sequence) if sequence is not None else None
            if event is None or event_leaf(event) != stored[(0, index)]:
                reason = f"the EVENTS stream holds another event at sequence {sequence} than the signed tree; {covered}"
                return await self._found("stream_rolled_back", sequence or 0, reason)
        return {}

    async def _found(self, kind: str, sequence: int, reason: str) -> dict[str, str]:
        await self.store.add_findings([Finding(kind=kind, sequence=sequence, subject="", reason=reason)])
        return {kind: reason}
