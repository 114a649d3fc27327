"""Merkle trees as RFC 9162 (Certificate Transparency 2.0, section 2.1) defines them, over an audit
chain's entries: a tree head commits to a chain's first n entries in a way that lets anyone check
one entry's inclusion with log2(n) hashes, without the rest of the chain.

- The leaf of entry seq is its `hash` (32 bytes; projections.audit_chain.entry_hash).
- MTH({}) = SHA-256(), MTH({d}) = SHA-256(0x00 || d), and for n > 1, with k the largest power of
  two below n: MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n])).
- An inclusion proof of leaf m in D[n] is PATH(m, D[n]) (section 2.1.3.1), checked by the
  algorithm of section 2.1.3.2 (`root_from_path`).
- A consistency proof between the tree heads of D[m] and D[n], m < n, is PROOF(m, D[n]) (section
  2.1.4.1): it shows D[m] is a prefix of D[n], so the chain only grew. Checked by the algorithm
  of section 2.1.4.2 (`consistent`).

The fold keeps a chain's tree as its *frontier*: the roots of the perfect subtrees that the binary
digits of n cut D[n] into, left to right. Appending a leaf merges equal heights, as adding one to
a binary number carries; the root folds the frontier from the right. That is MTH exactly, since
MTH splits off the largest perfect subtree first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

LEAF, NODE = b"\x00", b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of the leaves' data."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = _split(len(leaves))
    return node_hash(root(leaves[:k]), root(leaves[k:]))


def inclusion_path(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]): the sibling hashes from leaf `index` up to the root, bottom first."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} is not in a tree of {len(leaves)}")
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*inclusion_path(index, leaves[:k]), root(leaves[k:])]
    return [*inclusion_path(index - k, leaves[k:]), root(leaves[:k])]


def root_from_path(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes | None:
    """The root that `path` proves leaf data `leaf` at `index` of a tree of `size` leaves belongs to
    (RFC 9162, 2.1.3.2); None when the path cannot be such a proof (wrong length, index past size)."""
    if not 0 <= index < size:
        return None
    fn, sn = index, size - 1
    r = leaf_hash(leaf)
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def consistency_path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) for 0 < m <= n: the hashes that show D[m] is a prefix of D[n]."""
    if not 0 < m <= len(leaves):
        raise IndexError(f"no consistency proof from {m} leaves to {len(leaves)}")
    return _subproof(m, leaves, True)


def _subproof(m: int, leaves: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [root(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], whole), root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), root(leaves[:k])]


def consistent(first: int, second: int, first_root: bytes, second_root: bytes, path: Sequence[bytes]) -> bool:
    """Whether `path` proves the tree of `first` leaves with head `first_root` a prefix of the tree of
    `second` leaves with head `second_root` (RFC 9162, 2.1.4.2; equal sizes need equal heads and
    no path, and the empty tree is a prefix of any)."""
    if not 0 <= first <= second:
        return False
    if first == second:
        return not path and first_root == second_root
    if first == 0:
        return not path and first_root == EMPTY_ROOT
    if not path:
        return False
    nodes = [first_root, *path] if first & (first - 1) == 0 else list(path)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = nodes[0]
    for c in nodes[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


@dataclass(frozen=True, slots=True)
class Frontier:
    """The tree of a chain's first `size` leaves, as (height, root) of its perfect subtrees, left to right."""

    size: int = 0
    subtrees: tuple[tuple[int, bytes], ...] = ()

    def append(self, data: bytes) -> Frontier:
        subtrees = [*self.subtrees, (0, leaf_hash(data))]
        while len(subtrees) > 1 and subtrees[-1][0] == subtrees[-2][0]:
            (height, left), (_, right) = subtrees[-2], subtrees[-1]
            subtrees[-2:] = [(height + 1, node_hash(left, right))]
        return Frontier(self.size + 1, tuple(subtrees))

    def root(self) -> bytes:
        if not self.subtrees:
            return EMPTY_ROOT
        acc = self.subtrees[-1][1]
        for _, left in reversed(self.subtrees[:-1]):
            acc = node_hash(left, acc)
        return acc

    def text(self) -> str:
        """Stored form: `size` then each subtree as height:hex, space-separated."""
        return " ".join([str(self.size), *(f"{height}:{digest.hex()}" for height, digest in self.subtrees)])

    @classmethod
    def parse(cls, text: str) -> Frontier:
        size, *parts = text.split()
        subtrees = tuple((int(height), bytes.fromhex(digest)) for height, _, digest in (p.partition(":") for p in parts))
        if sum(1 << height for height, _ in subtrees) != int(size):
            raise ValueError(f"a frontier of {size} leaves cannot have subtrees {[h for h, _ in subtrees]}")
        return cls(int(size), subtrees)


def frontier_of(leaves: Sequence[bytes]) -> Frontier:
    frontier = Frontier()
    for data in leaves:
        frontier = frontier.append(data)
    return frontier
