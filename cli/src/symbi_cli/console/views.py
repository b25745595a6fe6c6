"""Pure shaping of API answers into what the pages show: no I/O here.

The one check done here rather than trusted: an inclusion proof is folded up to the root hash on this
side (RFC 9162), and the root compared with the checkpoint whose signature the caller checked.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from typing import Any

from symbi_contracts.sandbox_agent.risk import assess, factors_for_agent
from symbi_tlog.merkle import inclusion_ranges, node_hash, verify_inclusion

FINISHED = frozenset({"completed", "failed", "cancelled", "killed"})


@dataclass(frozen=True)
class RiskView:
    score: float
    tier: str
    factors: dict[str, float | None]


def agent_risk(config: dict[str, Any] | None, default_tier: str = "tier1") -> RiskView | None:
    """The risk assessment of an agent's config, computed with the scheduler's own (shared, pure) rules."""
    if not config:
        return None
    fs = [(str(p.get("path", "")), str(p.get("mode", "ro"))) for p in config.get("filesystem_access") or []]
    factors = factors_for_agent(
        network_access=list(config.get("network_access") or []),
        filesystem_access=fs,
        external_apis=list(config.get("external_apis") or []),
    )
    forced = str(config.get("security_tier") or "auto")
    try:
        a = assess(factors, forced=forced, default_tier=default_tier)
    except Exception:  # an invalid definition: its agent is Failed and never runs
        a = assess(factors, default_tier=default_tier)
    return RiskView(score=round(a.score, 3), tier=a.tier, factors=dict(a.factors))


def task_usage(task: dict[str, Any], agent: dict[str, Any] | None, host: dict[str, Any] | None) -> dict[str, Any]:
    """The numbers the task page charts: run time against the timeout, the limits against the host's capacity."""
    resources = ((agent or {}).get("config") or {}).get("resources") or {}
    started = task.get("submitted_at") or 0.0
    ended = task.get("finished_at")
    return {
        "elapsed_s": round(float(ended - started), 2) if ended else None,
        "timeout_s": resources.get("execution_timeout_s"),
        "memory_limit_mb": resources.get("memory_mb"),
        "cpu_limit": resources.get("cpu_cores"),
        "host_memory_mb": (host or {}).get("memory_mb"),
        "host_cpu": (host or {}).get("cpu_cores"),
        "output_bytes": task.get("output_bytes") or {},
    }


@dataclass(frozen=True)
class MessageView:
    """The bus traffic of one agent that its audit trail shows this operator."""

    messages: list[dict[str, Any]]
    #: Gateway actions whose payload the policy withholds from this operator (messages among them or not).
    withheld: int
    #: Actions whose payload was crypto-shredded (erased) or could not be opened.
    unreadable: int


def agent_messages(rows: list[dict[str, Any]]) -> MessageView:
    """The ``message.*`` actions among an agent's ``execution.action`` events (audit rows with details), newest
    first: who it sent to or received from, the decision and outcome. Bodies are never in the audit trail."""
    messages, withheld, unreadable = [], 0, 0
    for row in rows:
        if row.get("details_withheld"):
            withheld += 1
            continue
        payload = (row.get("details") or {}).get("payload")
        if not isinstance(payload, dict):
            unreadable += 1
            continue
        action = str(payload.get("action", ""))
        if not action.startswith("message."):
            continue
        decision = payload.get("decision") or {}
        messages.append(
            {
                "sequence": row.get("sequence"),
                "at": row.get("occurred_at"),
                "task_id": row.get("aggregate_id"),
                "action": action,
                "peer": payload.get("resource", ""),
                "outcome": payload.get("outcome", ""),
                "detail": payload.get("detail", ""),
                "classification": (payload.get("context") or {}).get("classification", ""),
                "effect": decision.get("effect", ""),
                "policies": decision.get("policies", []),
            }
        )
    messages.sort(key=lambda m: -(m["sequence"] or 0))
    return MessageView(messages, withheld, unreadable)


@dataclass(frozen=True)
class PathStep:
    """One step up the tree: the node reached so far, the sibling it is hashed with, and the parent."""

    level: int
    node: tuple[int, int]
    sibling: tuple[int, int]
    sibling_hash: str
    side: str  #: where the sibling sits: "left" or "right"
    parent: tuple[int, int]
    parent_hash: str


@dataclass(frozen=True)
class ProofView:
    leaf_index: int
    tree_size: int
    leaf_hash: str
    root: str
    steps: list[PathStep]
    computed_root: str
    verified: bool


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def inclusion_path(proof: dict[str, Any], signed_root: bytes, signed_size: int) -> ProofView:
    """Fold the served proof up from the leaf, step by step, and compare the result with ``signed_root``; the
    proof must be for the signed tree's size (else an inner node could pass for a leaf of a smaller tree)."""
    index, size = int(proof["leaf_index"]), int(proof["tree_size"])
    leaf = base64.b64decode(proof["leaf_hash"])
    hashes = [base64.b64decode(h) for h in proof["proof"]]
    ranges = inclusion_ranges(index, size)
    steps: list[PathStep] = []
    node, acc = (index, index + 1), leaf
    for level, (sibling, h) in enumerate(zip(ranges, hashes, strict=False)):
        if sibling[0] < node[0]:
            acc, side = node_hash(h, acc), "left"
        else:
            acc, side = node_hash(acc, h), "right"
        parent = (min(node[0], sibling[0]), max(node[1], sibling[1]))
        steps.append(PathStep(level, node, sibling, _b64(h), side, parent, _b64(acc)))
        node = parent
    ok = (
        size == signed_size
        and len(ranges) == len(hashes)
        and acc == signed_root
        and verify_inclusion(leaf, index, size, hashes, signed_root)
    )
    return ProofView(index, size, proof["leaf_hash"], _b64(signed_root), steps, _b64(acc), ok)


def entity(ref: Any) -> str:
    """A Cedar entity reference as Cedar writes it: ``Type::"id"``."""
    if isinstance(ref, dict) and "type" in ref and "id" in ref:
        return f'{ref["type"]}::"{ref["id"]}"'
    return str(ref or "")


def what_if_diff(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The what-if's changed decisions split into would-now-deny and would-now-allow rows."""
    out: dict[str, list[dict[str, Any]]] = {"now_deny": [], "now_allow": [], "other": []}
    for change in report.get("changes", []):
        before = str((change.get("current") or {}).get("effect") or change.get("recorded", {}).get("effect", ""))
        after = str((change.get("proposed") or {}).get("effect", ""))
        request = change.get("request") or {}
        row = {
            "principal": entity(request.get("principal")),
            "action": request.get("action"),
            "resource": entity(request.get("resource")),
            "before": before,
            "after": after,
            "policies_before": (change.get("current") or {}).get("policies", []),
            "policies_after": (change.get("proposed") or {}).get("policies", []),
            "reason": (change.get("proposed") or {}).get("reason", ""),
        }
        if before.startswith("allow") and after == "deny":
            out["now_deny"].append(row)
        elif before == "deny" and after.startswith("allow"):
            out["now_allow"].append(row)
        else:
            out["other"].append(row)
    return out


def when(value: Any) -> str:
    """A readable UTC time from a Unix timestamp or an ISO string."""
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value or "")[:19].replace("T", " ")
