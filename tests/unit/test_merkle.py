"""RFC 9162 Merkle trees (projections.merkle) against the RFC's definitions, written out here."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections.merkle import Frontier, consistency_path, consistent, frontier_of, inclusion_path, root, root_from_path


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162, 2.1.1, as written: k is the largest power of two smaller than n."""
    n = len(leaves)
    if n == 0:
        return sha(b"")
    if n == 1:
        return sha(b"\x00" + leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return sha(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


LEAVES = [bytes([i]) * 32 for i in range(70)]


def test_known_tree_heads() -> None:
    # The empty tree and a tree of the one empty leaf, as Certificate Transparency logs have them.
    assert root([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root([b""]).hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    # Three leaves: the left subtree holds two, the right one.
    a, b, c = LEAVES[:3]
    left = sha(b"\x01" + sha(b"\x00" + a) + sha(b"\x00" + b))
    assert root([a, b, c]) == sha(b"\x01" + left + sha(b"\x00" + c))


@pytest.mark.parametrize("n", range(0, 70))
def test_the_root_and_the_frontier_are_the_rfcs_tree_head(n: int) -> None:
    want = mth(LEAVES[:n])
    assert root(LEAVES[:n]) == want
    frontier = frontier_of(LEAVES[:n])
    assert frontier.size == n and frontier.root() == want
    assert [h for h, _ in frontier.subtrees] == [bit for bit in reversed(range(n.bit_length())) if n >> bit & 1]
    assert Frontier.parse(frontier.text()) == frontier


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33])
def test_every_leaf_is_proven_in_its_tree_and_nowhere_else(n: int) -> None:
    leaves = LEAVES[:n]
    head = mth(leaves)
    for index in range(n):
        path = inclusion_path(index, leaves)
        assert len(path) <= max(1, (n - 1).bit_length())
        assert root_from_path(index, n, leaves[index], path) == head
        # Another leaf's data or another place does not lead to this head.
        assert root_from_path(index, n, b"x" * 32, path) != head
        if n > 1:
            assert root_from_path((index + 1) % n, n, leaves[index], path) != head
        # (The size is not proven by the path: leaf 0's path in 3 leaves is a valid one in 4. The
        # signed checkpoint binds it: projections.audit_proof checks tree_size against its length.)
        if path:
            assert root_from_path(index, n, leaves[index], path[:-1]) is None  # a path cut short: no root at all
            bent = [path[0][::-1], *path[1:]]
            assert root_from_path(index, n, leaves[index], bent) != head
        assert root_from_path(index, n, leaves[index], [*path, head]) is None  # a path too long


def test_a_leaf_outside_the_tree_has_no_proof() -> None:
    with pytest.raises(IndexError, match="leaf 3 is not in a tree of 3"):
        inclusion_path(3, LEAVES[:3])
    assert root_from_path(3, 3, LEAVES[0], []) is None
    assert root_from_path(1, 1, LEAVES[0], []) is None  # not the head of the tree of that one leaf
    assert root_from_path(-1, 3, LEAVES[0], []) is None


def test_a_stored_frontier_that_cannot_be_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot have"):
        Frontier.parse("3 1:" + "00" * 32)  # a subtree of 2 leaves is not 3


@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=40), st.data())
def test_appending_one_leaf_at_a_time_gives_the_tree_head_and_proofs_hold(leaves: list[bytes], data: st.DataObject) -> None:
    frontier = Frontier()
    for count, leaf in enumerate(leaves, start=1):
        frontier = frontier.append(leaf)
        assert frontier.root() == mth(leaves[:count])
    index = data.draw(st.integers(0, len(leaves) - 1))
    assert root_from_path(index, len(leaves), leaves[index], inclusion_path(index, leaves)) == mth(leaves)


@pytest.mark.parametrize("n", range(1, 20))
def test_every_earlier_tree_is_proven_a_prefix_of_a_later_one(n: int) -> None:
    leaves = LEAVES[:n]
    for m in range(1, n + 1):
        path = consistency_path(m, leaves)
        assert consistent(m, n, mth(leaves[:m]), mth(leaves), path), (m, n)
        if m < n:
            assert path and len(path) <= 2 * n.bit_length()
            # A first tree whose leaves differ, or another size, or a path changed: not proven.
            other = [*leaves[: m - 1], b"x" * 32]
            assert not consistent(m, n, mth(other), mth(leaves), path)
            assert not consistent(m, n, mth(leaves[:m]), mth([*leaves[:-1], b"y" * 32]), path)
            assert not consistent(m, n, mth(leaves[:m]), mth(leaves), [path[0][::-1], *path[1:]])
            assert not consistent(m, n, mth(leaves[:m]), mth(leaves), path[:-1])
            assert not consistent(m, n, mth(leaves[:m]), mth(leaves), [*path, path[0]])  # a path too long
            assert not consistent(n, m, mth(leaves), mth(leaves[:m]), path)
    assert consistent(0, n, root([]), mth(leaves), [])
    assert not consistent(0, n, mth(leaves), mth(leaves), [])  # the empty tree's head is SHA-256 of nothing
    assert not consistent(0, n, root([]), mth(leaves), [mth(leaves)])
    assert not consistent(n, n, mth(leaves), mth(leaves), [mth(leaves)])


def test_a_consistency_proof_needs_a_first_tree_within_the_second() -> None:
    with pytest.raises(IndexError, match="no consistency proof from 0 leaves to 3"):
        consistency_path(0, LEAVES[:3])
    with pytest.raises(IndexError, match="no consistency proof from 4 leaves to 3"):
        consistency_path(4, LEAVES[:3])
