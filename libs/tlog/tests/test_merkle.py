"""RFC 6962 tree, inclusion and consistency proofs against an independent reference computation.

The reference is RFC 6962 §2.1 written out literally (MTH, PATH, SUBPROOF over the list of leaves,
recursively); the code under test works from stored perfect nodes and verifies with RFC 9162's
iterative algorithms. They share only SHA-256.
"""

from __future__ import annotations

import hashlib

import pytest
from symbi_tlog.merkle import (
    TreeBuilder,
    consistency_proof,
    consistency_ranges,
    hashes_for,
    inclusion_ranges,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)

MAX = 300


def ref_mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [ref_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, leaves[:k], whole), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


@pytest.fixture(scope="module")
def tree() -> tuple[list[bytes], dict[tuple[int, int], bytes], list[bytes]]:
    """Leaf data, the stored nodes of the tree over them, and the root after each size (index = size)."""
    data = [f"event-{i}".encode() for i in range(MAX)]
    builder = TreeBuilder()
    nodes: dict[tuple[int, int], bytes] = {}
    roots = [builder.root()]
    for d in data:
        for level, index, h in builder.append(hashlib.sha256(b"\x00" + d).digest()):
            nodes[(level, index)] = h
        roots.append(builder.root())
    return data, nodes, roots


def test_roots_match_the_reference_for_every_size(tree: tuple[list[bytes], dict, list[bytes]]) -> None:
    data, _, roots = tree
    for size in range(MAX + 1):
        assert roots[size] == ref_mth(data[:size]), size


def test_push_builds_the_same_tree_as_append(tree: tuple[list[bytes], dict, list[bytes]]) -> None:
    data, _, roots = tree
    builder = TreeBuilder()
    for size, d in enumerate(data, 1):
        builder.push(hashlib.sha256(b"\x00" + d).digest())
        assert builder.root() == roots[size], size


def test_builder_restarts_from_its_frontier(tree: tuple[list[bytes], dict, list[bytes]]) -> None:
    data, nodes, roots = tree
    from symbi_tlog.merkle import range_nodes

    frontier = [nodes[n] for n in range_nodes(0, 77)]
    builder = TreeBuilder(77, frontier)
    for d in data[77:150]:
        builder.append(hashlib.sha256(b"\x00" + d).digest())
    assert builder.root() == roots[150]
    with pytest.raises(ValueError, match="frontier"):
        TreeBuilder(77, frontier[:-1])


def test_inclusion_proofs_for_every_leaf_of_every_size(tree: tuple[list[bytes], dict, list[bytes]]) -> None:
    data, nodes, roots = tree
    sizes = [*range(1, 70), 127, 128, 129, 255, 256, 257, MAX]
    for size in sizes:
        for index in range(size):
            proof = hashes_for(inclusion_ranges(index, size), nodes.__getitem__)
            assert proof == ref_path(index, data[:size]), (index, size)
            leaf = nodes[(0, index)]
            assert verify_inclusion(leaf, index, size, proof, roots[size])
            # Wrong inputs fail.
            assert not verify_inclusion(leaf, index, size, proof, roots[size - 1] if size > 1 else b"x" * 32)
            other = nodes[(0, (index + 1) % size)]
            if size > 1:
                assert not verify_inclusion(other, index, size, proof, roots[size])
                assert not verify_inclusion(leaf, (index + 1) % size, size, proof, roots[size])
            if proof:
                assert not verify_inclusion(leaf, index, size, proof[:-1], roots[size])
                bad = [*proof[:-1], bytes(32)]
                assert not verify_inclusion(leaf, index, size, bad, roots[size])
            assert not verify_inclusion(leaf, index, size, [*proof, roots[size]], roots[size])


def test_consistency_proofs_between_every_pair_of_sizes(tree: tuple[list[bytes], dict, list[bytes]]) -> None:
    data, nodes, roots = tree
    for new in [*range(1, 80), 128, 129, 200, MAX]:
        for old in range(1, new + 1):
            proof = hashes_for(consistency_ranges(old, new), nodes.__getitem__)
            assert proof == ref_subproof(old, data[:new], True), (old, new)
            assert verify_consistency(old, new, roots[old], roots[new], proof), (old, new)
            if old < new:
                assert not verify_consistency(old, new, roots[old - 1] if old > 1 else bytes(32), roots[new], proof)
                assert not verify_consistency(old, new, roots[old], roots[new - 1], proof)
                if proof:
                    assert not verify_consistency(old, new, roots[old], roots[new], proof[:-1])
                    assert not verify_consistency(old, new, roots[old], roots[new], [bytes(32), *proof[1:]])


def test_proofs_from_the_leaves_alone_match_the_reference(tree: tuple[list[bytes], dict, list[bytes]]) -> None:
    data, _, roots = tree
    leaves = [hashlib.sha256(b"\x00" + d).digest() for d in data]
    for new in range(1, 40):
        assert subtree_hash(leaves, 0, new) == roots[new]
        for old in range(1, new + 1):
            proof = consistency_proof(leaves[:new], old)
            assert proof == ref_subproof(old, data[:new], True), (old, new)
            assert verify_consistency(old, new, roots[old], roots[new], proof)
    # The tree of 20 with one leaf in the middle changed: no proof from it leads to the old root.
    changed = [*leaves[:20]]
    changed[7] = hashlib.sha256(b"\x00other").digest()
    assert not verify_consistency(12, 20, roots[12], subtree_hash(changed, 0, 20), consistency_proof(changed, 12))


def test_bad_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="not in a tree"):
        inclusion_ranges(5, 5)
    with pytest.raises(ValueError, match="no consistency proof"):
        consistency_ranges(6, 5)
    with pytest.raises(ValueError, match="no consistency proof"):
        consistency_ranges(0, 5)


def test_an_event_leaf_is_the_rfc_6962_leaf_hash_of_its_leaf_data() -> None:
    from symbi_common.envelope import event_hash
    from symbi_common.streams import RawMessage
    from symbi_tlog.merkle import leaf_hash
    from symbi_tlog.rules import LEAF_DOMAIN, event_leaf, leaf_data

    for sequence, subject, data in ((1, "evt.agent.a1", b"x"), (2**40 + 7, "evt.task.ü-é", b"\0" * 900)):
        m = RawMessage(subject, sequence, data, {})
        expected = hashlib.sha256(b"\x00" + leaf_data(sequence, subject, event_hash(data))).digest()
        assert (
            event_leaf(m)
            == event_leaf(m, event_hash(data))
            == leaf_hash(leaf_data(sequence, subject, event_hash(data)))
        )
        assert event_leaf(m) == expected
        assert leaf_data(sequence, subject, b"h").startswith(LEAF_DOMAIN)
