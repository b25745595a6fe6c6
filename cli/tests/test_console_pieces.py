"""The console's pure pieces: the inclusion path it folds itself, the what-if diff, risk, and its
sessions (role from a verified token; a read-only role or a missing CSRF token refused)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from symbi_cli.console.pages_hosts import load_numbers
from symbi_cli.console.sessions import Forbidden, LoginRefused, Sessions, require_change
from symbi_cli.console.views import agent_messages, agent_risk, inclusion_path, what_if_diff
from symbi_common.crypto import Signer
from symbi_common.operator_tokens import issue_token
from symbi_tlog.merkle import inclusion_ranges, leaf_hash, subtree_hash


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _served(leaves: list[bytes], index: int) -> dict[str, object]:
    """An inclusion proof as the audit API serves it, computed from the leaves."""
    proof = [subtree_hash(leaves, lo, hi) for lo, hi in inclusion_ranges(index, len(leaves))]
    return {
        "leaf_index": index,
        "tree_size": len(leaves),
        "leaf_hash": _b64(leaves[index]),
        "proof": [_b64(h) for h in proof],
    }


@pytest.mark.parametrize(("size", "index"), [(1, 0), (2, 1), (7, 3), (29, 7), (37, 36), (64, 0)])
def test_inclusion_path_reaches_the_signed_root(size: int, index: int) -> None:
    leaves = [leaf_hash(f"event {i}".encode()) for i in range(size)]
    root = subtree_hash(leaves, 0, size)
    view = inclusion_path(_served(leaves, index), root, size)
    assert view.verified
    assert view.computed_root == _b64(root)
    # Each step's node is the one below it, and the last step reaches the whole tree.
    node = (index, index + 1)
    for step in view.steps:
        assert step.node == node
        assert step.parent == (min(node[0], step.sibling[0]), max(node[1], step.sibling[1]))
        node = step.parent
    assert node == (0, size)


def test_inclusion_path_refuses_a_forged_proof_or_another_root() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(13)]
    root = subtree_hash(leaves, 0, 13)
    served = _served(leaves, 5)
    forged = dict(served, proof=[_b64(bytes(32)), *served["proof"][1:]])  # type: ignore[misc]
    assert not inclusion_path(forged, root, 13).verified
    assert not inclusion_path(served, hashlib.sha256(b"another tree").digest(), 13).verified
    short = dict(served, proof=served["proof"][:-1])  # type: ignore[index]
    assert not inclusion_path(short, root, 13).verified


def test_an_inner_node_served_as_the_leaf_of_a_smaller_tree_is_refused() -> None:
    """The signed tree has 8 leaves; the served 'leaf' is the hash of its left half, in a 'tree of size 2' whose
    one proof step (the right half) folds to the same signed root."""
    leaves = [leaf_hash(bytes([i])) for i in range(8)]
    root = subtree_hash(leaves, 0, 8)
    left, right = subtree_hash(leaves, 0, 4), subtree_hash(leaves, 4, 8)
    served = {"leaf_index": 0, "tree_size": 2, "leaf_hash": _b64(left), "proof": [_b64(right)]}
    assert inclusion_path(served, root, 2).verified  # as it folds, were the size not the signed one
    assert not inclusion_path(served, root, 8).verified


def test_what_if_diff_splits_new_denials_and_new_allows() -> None:
    def change(before: str, after: str, action: str) -> dict[str, object]:
        return {
            "request": {"principal": {"type": "Agent", "id": "a1"}, "action": action, "resource": {}},
            "recorded": {"effect": before},
            "current": {"effect": before, "policies": ["p-old"]},
            "proposed": {"effect": after, "policies": ["p-new"], "reason": "forbidden"},
        }

    report = {
        "changes": [
            change("allow", "deny", "task.allocate"),
            change("deny", "allow", "memory.write"),
            change("allow_with_conditions", "deny", "sandbox.start"),
            change("allow", "allow_with_conditions", "agent.register"),
        ]
    }
    diff = what_if_diff(report)
    assert [r["action"] for r in diff["now_deny"]] == ["task.allocate", "sandbox.start"]
    assert [r["action"] for r in diff["now_allow"]] == ["memory.write"]
    assert [r["action"] for r in diff["other"]] == ["agent.register"]
    assert diff["now_deny"][0]["principal"] == 'Agent::"a1"'


def test_agent_risk_uses_the_schedulers_rules() -> None:
    quiet = agent_risk({"network_access": [], "filesystem_access": [], "external_apis": [], "security_tier": "tier1"})
    assert quiet is not None
    assert quiet.tier == "tier1"
    assert quiet.factors["network_access"] == 0
    wide = agent_risk({"network_access": ["*"], "filesystem_access": [{"path": "/", "mode": "rw"}]})
    assert wide is not None
    assert wide.factors["network_access"] == 1
    assert wide.score > quiet.score
    assert agent_risk(None) is None


def test_sessions_take_the_role_from_a_verified_token(
    keys_dir: Path, tmp_path: Path, issue_operator_token: Callable[..., str]
) -> None:
    sessions = Sessions(keys_dir, tmp_path / "console")
    sid, auditor = sessions.login(issue_operator_token(role="auditor", name="ada"))
    assert sessions.get(sid) == auditor
    assert auditor.claims.role == "auditor"
    assert not auditor.can_change
    with pytest.raises(Forbidden, match="read-only"):
        require_change(auditor, auditor.csrf)

    _, admin = sessions.login(issue_operator_token(role="admin"))
    assert admin.can_change
    require_change(admin, admin.csrf)
    with pytest.raises(Forbidden, match="CSRF"):
        require_change(admin, "not-the-token")

    sessions.logout(sid)
    assert sessions.get(sid) is None


def test_sessions_refuse_a_token_of_another_issuer_or_garbage(keys_dir: Path, tmp_path: Path) -> None:
    sessions = Sessions(keys_dir, tmp_path / "console")
    foreign, _ = issue_token(Signer.generate(), name="mallory", role="admin", ttl_s=60)
    with pytest.raises(LoginRefused, match="not an operator issuer"):
        sessions.login(foreign)
    with pytest.raises(LoginRefused, match="malformed"):
        sessions.login("not a token")
    with pytest.raises(LoginRefused, match="paste"):
        sessions.login("  ")


def test_load_numbers_from_the_scheduler_status() -> None:
    status = {
        "queues": {"critical": 0, "high": 1, "normal": 3, "low": 0},
        "running": [{"task_id": "t1"}],
        "hosts": [
            {
                "host_id": "h1",
                "cpu_cores": 2.0,
                "cpu_free": 1.5,
                "memory_mb": 1024,
                "memory_free_mb": 768,
                "tasks": ["t1"],
            }
        ],
    }
    numbers = load_numbers(status)
    assert numbers["queues"]["normal"] == 3
    assert numbers["running"] == 1
    assert numbers["hosts"] == [
        {"host_id": "h1", "cpu_used": 0.5, "cpu": 2.0, "memory_used_mb": 256, "memory_mb": 1024.0, "tasks": 1}
    ]


def test_agent_messages_shows_bus_actions_and_counts_what_is_withheld() -> None:
    def row(seq: int, payload: dict[str, object] | None, *, withheld: bool = False) -> dict[str, object]:
        base: dict[str, object] = {"sequence": seq, "occurred_at": "2026-01-01T00:00:00", "aggregate_id": "t1"}
        if withheld:
            return {**base, "details": None, "details_withheld": True}
        return {**base, "details": {"erased": payload is None, "payload": payload}}

    send = {
        "action": "message.send",
        "resource": 'Agent::"summariser"',
        "outcome": "allowed",
        "detail": "m-1",
        "context": {"classification": "internal"},
        "decision": {"effect": "allow", "policies": ["bus-ok"]},
    }
    receive = {"action": "message.receive", "resource": "inbox", "outcome": "allowed", "detail": "m-7<writer"}
    tool = {"action": "tool.invoke", "resource": "search", "outcome": "allowed"}
    view = agent_messages([row(3, send), row(5, tool), row(8, receive), row(9, None, withheld=True), row(11, None)])
    assert [m["sequence"] for m in view.messages] == [8, 3]  # newest first, messages only
    assert view.messages[1]["peer"] == 'Agent::"summariser"'
    assert view.messages[1]["classification"] == "internal"
    assert view.messages[1]["effect"] == "allow"
    assert view.messages[0]["detail"] == "m-7<writer"
    assert view.withheld == 1  # its payload stays withheld: not guessed at, only counted
    assert view.unreadable == 1
