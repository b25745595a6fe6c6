"""The audit service's use cases: proofs, checkpoints, reports and erasure, over the store and the runner."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import asyncpg
from symbi_common.crypto import Signer
from symbi_common.decisions import DecisionPoint, DecisionRequest, EntityRef
from symbi_common.errors import PolicyDenied
from symbi_common.eventstore import EventStore
from symbi_common.keyring import KeyRegistry
from symbi_common.policy.enforcement import AUDIT_ERASE
from symbi_common.policy.hooks import Enforcer
from symbi_tlog.merkle import consistency_ranges, fold_range, inclusion_ranges, nodes_for, range_nodes
from symbi_tlog.notes import verify_checkpoint

from symbi_audit.erasure import EraseRequest, ErasureResult, check_aggregate, erase
from symbi_audit.errors import BadQuery, CheckpointInvalid, ProofUnavailable, ReportTooLarge
from symbi_audit.guard import LogGuard
from symbi_audit.queries import DetailReader
from symbi_audit.reports import (
    MAX_REPORT_ROWS,
    MAX_USAGE_LOOKUPS,
    USAGE_EVENT,
    CheckpointRef,
    Framework,
    ReportInput,
    build_report,
)
from symbi_audit.runner import VerifierRunner
from symbi_audit.store import AuditStore, StoredCheckpoint

#: Crypto-shredding destroys data: it is gated as a write of the aggregate's data, with purpose "erasure".
ERASE_ACTION = "data.write"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class AuditService:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        store: AuditStore,
        runner: VerifierRunner,
        events: EventStore,
        reader: DetailReader,
        decisions: DecisionPoint,
        signer: Signer,
        guard: LogGuard | None = None,
        registry: KeyRegistry | None = None,
    ) -> None:
        self.guard = guard
        self.registry = registry
        self.pool = pool
        self.store = store
        self.runner = runner
        self.events = events
        self.reader = reader
        self.decisions = decisions
        self.signer = signer
        #: Limits of a report (see :mod:`symbi_audit.reports`); over them it is refused with ``report_too_large``.
        self.max_report_rows = MAX_REPORT_ROWS
        self.max_usage_lookups = MAX_USAGE_LOOKUPS

    # --- proofs ---------------------------------------------------------------------------------

    async def _tree_size(self, size: int | None) -> int:
        committed = int((await self.store.status())["tree_size"])
        if size is None:
            latest = await self.store.checkpoint()
            if latest is None:
                raise ProofUnavailable("no checkpoint yet; give a tree size or wait for the first checkpoint")
            return latest.size
        if not 1 <= size <= committed:
            raise ProofUnavailable(f"tree size {size} is not available; the tree has {committed} leaves")
        return size

    async def inclusion_proof(self, sequence: int, size: int | None = None) -> dict[str, Any]:
        """Inclusion proof of the event at stream ``sequence`` in the tree of ``size`` (default: latest checkpoint)."""
        index = await self.store.leaf_index(sequence)
        if index is None:
            raise ProofUnavailable(f"stream sequence {sequence} is not in the audit log (yet)")
        tree_size = await self._tree_size(size)
        if index >= tree_size:
            raise ProofUnavailable(f"event {sequence} (leaf {index}) is not in the tree of size {tree_size}")
        ranges = inclusion_ranges(index, tree_size)
        nodes = await self.store.nodes(sorted(nodes_for([*ranges, (0, tree_size)]) | {(0, index)}))
        proof = [fold_range([nodes[n] for n in range_nodes(s, e)]) for s, e in ranges]
        root = fold_range([nodes[n] for n in range_nodes(0, tree_size)])
        checkpoint = await self.store.checkpoint(tree_size)
        return {
            "sequence": sequence,
            "leaf_index": index,
            "tree_size": tree_size,
            "leaf_hash": b64(nodes[(0, index)]),
            "root": b64(root),
            "proof": [b64(h) for h in proof],
            "checkpoint": checkpoint.note if checkpoint else None,
        }

    async def consistency_proof(self, old: int, new: int) -> dict[str, Any]:
        """Consistency proof from the tree of size ``old`` to the tree of size ``new``."""
        if not 1 <= old <= new:
            raise BadQuery(f"need 1 <= from <= to, got from={old} to={new}", field="from")
        await self._tree_size(new)
        ranges = consistency_ranges(old, new)
        nodes = await self.store.nodes(sorted(nodes_for([*ranges, (0, old), (0, new)])))
        proof = [fold_range([nodes[n] for n in range_nodes(s, e)]) for s, e in ranges]
        old_cp, new_cp = await self.store.checkpoint(old), await self.store.checkpoint(new)
        return {
            "from": old,
            "to": new,
            "from_root": b64(fold_range([nodes[n] for n in range_nodes(0, old)])),
            "to_root": b64(fold_range([nodes[n] for n in range_nodes(0, new)])),
            "proof": [b64(h) for h in proof],
            "from_checkpoint": old_cp.note if old_cp else None,
            "to_checkpoint": new_cp.note if new_cp else None,
        }

    # --- checkpoints ----------------------------------------------------------------------------

    def use_signer(self, signer: Signer) -> None:
        """Sign from now on with ``signer`` (the registry rotated the audit service's key)."""
        self.signer = signer
        self.runner.use_signer(signer)

    def log_keys(self) -> list[tuple[str, bytes]]:
        """The keys a checkpoint of this log may be signed with: the one in use, and earlier audit keys
        the registry has not revoked (a checkpoint signed before a rotation stays valid)."""
        keys = [(self.signer.key_id, self.signer.public_key)]
        if self.registry is not None:
            keys += [
                (k.key_id, k.public_key)
                for k in self.registry.document.keys
                if k.service == "audit" and k.key_id != self.signer.key_id and not self.registry.is_revoked(k.key_id)
            ]
        return keys

    async def checkpoint_ref(self, cp: StoredCheckpoint) -> CheckpointRef:
        """The stored checkpoint as a report states it: valid only if its note is signed by a log key for this
        log's origin and says the size and root the database row has, and the row's last sequence is the
        stream sequence of the tree's last leaf (the note does not carry it)."""
        valid = False
        for key_name, public_key in self.log_keys():
            try:
                signed = verify_checkpoint(
                    cp.note, key_name=key_name, public_key=public_key, origin=self.runner.settings.origin
                )
            except CheckpointInvalid:
                continue
            valid = (signed.size, signed.root) == (cp.size, cp.root)
            break
        if valid and cp.size:
            valid = await self.store.sequence_of_leaf(cp.size - 1) == cp.last_sequence
        return CheckpointRef(cp.size, b64(cp.root), cp.last_sequence, cp.note, valid)

    # --- reports --------------------------------------------------------------------------------

    async def report(self, framework: Framework, since: dt.datetime, until: dt.datetime) -> dict[str, Any]:
        if until <= since:
            raise BadQuery("must be after since", field="until")
        rows = await self.pool.fetch(
            "SELECT * FROM audit.events WHERE coalesce(occurred_at, stored_at) >= $1"
            " AND coalesce(occurred_at, stored_at) < $2 ORDER BY sequence LIMIT $3",
            since,
            until,
            self.max_report_rows + 1,
        )
        if len(rows) > self.max_report_rows:  # read one past the limit: never the whole range into memory
            raise ReportTooLarge("events", limit=self.max_report_rows)
        events = [{k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in dict(r).items()} for r in rows]
        first = int(events[0]["sequence"]) if events else 0
        last = int(events[-1]["sequence"]) if events else 0
        findings = [
            {**dict(r), "found_at": r["found_at"].isoformat()}
            for r in await self.pool.fetch(
                "SELECT sequence, subject, kind, reason, found_at FROM audit.findings"
                " WHERE sequence BETWEEN $1 AND $2 ORDER BY sequence",
                first,
                last,
            )
        ] if events else []  # fmt: skip
        erasures = [
            {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in dict(r).items()}
            for r in await self.pool.fetch(
                "SELECT * FROM audit.erasures WHERE (requested_at >= $1 AND requested_at < $2)"
                " OR (executed_at >= $1 AND executed_at < $2) ORDER BY requested_sequence NULLS LAST",
                since,
                until,
            )
        ]
        usage: list[dict[str, Any]] = []
        if any(s.usage for s in framework.sections):
            reconciled = [int(e["sequence"]) for e in events if e.get("event_type") == USAGE_EVENT]
            if len(reconciled) > self.max_usage_lookups:
                raise ReportTooLarge(f"{USAGE_EVENT} events to read for usage", limit=self.max_usage_lookups)
            for sequence in reconciled:
                payload = (await self.reader.details(sequence))["payload"]
                if isinstance(payload, dict):
                    usage.append(payload)
        cp = (await self.store.checkpoint_covering(last)) if last else None
        cp = cp or await self.store.checkpoint()
        data = ReportInput(
            since=since.isoformat(),
            until=until.isoformat(),
            events=events,
            findings=findings,
            erasures=erasures,
            checkpoint=await self.checkpoint_ref(cp) if cp else None,
            generated_at=dt.datetime.now(dt.UTC).isoformat(),
            last_sequence=last,
            usage=usage,
        )
        return build_report(framework, data, max_rows=self.max_report_rows)

    # --- erasure --------------------------------------------------------------------------------

    async def erase(self, request: EraseRequest, principal: EntityRef | None) -> ErasureResult:
        aggregate = check_aggregate(request.aggregate)
        who = principal or EntityRef(type="User", id="anonymous")
        if request.requested_by and request.requested_by not in (who.id, who.uid):
            raise PolicyDenied(
                f"requested_by {request.requested_by!r} is not the acting principal {who.uid}: an erasure is "
                "recorded under the operator who asked for it (an admin may act for another with X-Symbi-Principal)",
                action="act_as",
            )
        decision_request = DecisionRequest(
            principal=who,
            action=ERASE_ACTION,
            resource=EntityRef(type="Data", id=aggregate),
            context={"purpose": "erasure"},
        )
        verdict = await Enforcer.around(self.decisions).decide(decision_request, AUDIT_ERASE)
        if not verdict.allowed:
            raise verdict.denial()
        return await erase(self.events, self.events.datakeys, request, principal=who.uid)
