"""RFC 6962 (Certificate Transparency) Merkle tree hashing and proofs: pure functions, no I/O.

The tree is stored as its *perfect* nodes: node ``(level, index)`` is the hash of the aligned
subtree over leaves ``[index * 2**level, (index + 1) * 2**level)``; level 0 holds the leaf hashes.
Every hash a proof needs is the hash of a range ``[start, end)`` whose start is aligned, and such a
range splits into at most ``log2(n)`` perfect nodes (:func:`range_nodes`), so a proof over any tree
size needs only ``O(log² n)`` stored nodes and nothing is recomputed from the leaves.

Proof verification follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency); proofs list
hashes bottom-up, exactly as RFC 6962's ``PATH`` and ``PROOF`` define them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

Node = tuple[int, int]
"""A perfect node: (level, index)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def range_nodes(start: int, end: int) -> list[Node]:
    """The perfect nodes that make up the RFC 6962 subtree over ``[start, end)``, left to right."""
    out: list[Node] = []
    while start < end:
        level = (end - start).bit_length() - 1
        while start % (1 << level):
            level -= 1
        out.append((level, start >> level))
        start += 1 << level
    return out


def fold_range(hashes: Sequence[bytes]) -> bytes:
    """The subtree hash of a range from the hashes of its :func:`range_nodes` (the right edge is folded first)."""
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose subtree hashes form the inclusion proof of leaf ``index`` in a tree of ``size``."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
    out.reverse()
    return out


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose subtree hashes prove a tree of ``old_size`` is a prefix of one of ``new_size``."""
    if not 0 < old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to size {new_size}")
    out: list[tuple[int, int]] = []
    lo, hi, m, whole = 0, new_size, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
            m -= k
            whole = False
    if not whole:
        out.append((lo, hi))
    out.reverse()
    return out


def nodes_for(ranges: Iterable[tuple[int, int]]) -> set[Node]:
    """Every stored node needed to hash ``ranges``."""
    return {n for start, end in ranges for n in range_nodes(start, end)}


def hashes_for(ranges: Sequence[tuple[int, int]], lookup: Callable[[Node], bytes]) -> list[bytes]:
    """The subtree hash of each range, from stored nodes."""
    return [fold_range([lookup(n) for n in range_nodes(s, e)]) for s, e in ranges]


def subtree_hash(leaves: Sequence[bytes], start: int, end: int) -> bytes:
    """RFC 6962 ``MTH`` of ``leaves[start:end]`` (leaf hashes), from the leaves themselves: ``O(end - start)``."""
    if start >= end:
        return EMPTY_ROOT

    def perfect(level: int, index: int) -> bytes:
        if level == 0:
            return leaves[index]
        return node_hash(perfect(level - 1, 2 * index), perfect(level - 1, 2 * index + 1))

    return fold_range([perfect(level, index) for level, index in range_nodes(start, end)])


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    """RFC 6962 ``PROOF(old_size, D[len(leaves)])`` computed from all the leaf hashes of the new tree."""
    return [subtree_hash(leaves, s, e) for s, e in consistency_ranges(old_size, len(leaves))]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` show leaf hash ``leaf`` at ``index`` in the tree of ``size`` with ``root``?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: does ``proof`` show the tree (``old_size``, ``old_root``) is a prefix of the new one?"""
    if not 0 < old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is itself a node of the new tree
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


class TreeBuilder:
    """Appends leaves to a tree, keeping only its right frontier (the compact range ``[0, size)``).

    :meth:`append` returns the perfect nodes that a leaf completes, for the caller to store.
    """

    def __init__(self, size: int = 0, frontier: Sequence[bytes] = ()) -> None:
        if len(frontier) != len(range_nodes(0, size)):
            raise ValueError(
                f"a tree of size {size} has {len(range_nodes(0, size))} frontier nodes, not {len(frontier)}"
            )
        self.size = size
        self.frontier = list(frontier)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        index = self.size
        new = [(0, index, leaf)]
        h, level, i = leaf, 0, index
        while i & 1:
            h = node_hash(self.frontier.pop(), h)
            level += 1
            i >>= 1
            new.append((level, i, h))
        self.frontier.append(h)
        self.size += 1
        return new

    def push(self, leaf: bytes) -> None:
        """:meth:`append` for a caller that stores no nodes (an offline verifier): the same tree, no node list."""
        frontier = self.frontier
        h, i = leaf, self.size
        while i & 1:
            h = hashlib.sha256(b"\x01" + frontier.pop() + h).digest()
            i >>= 1
        frontier.append(h)
        self.size += 1

    def root(self) -> bytes:
        return fold_range(self.frontier) if self.frontier else EMPTY_ROOT
