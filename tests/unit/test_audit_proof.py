"""Inclusion proofs of audit entries (projections.audit_proof) from a folded chain."""

from __future__ import annotations

import dataclasses
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from projections.audit_chain import checkpoint, fold, leaf_of
from projections.audit_proof import Grown, Included, NotProven, prove, prove_consistency, verify_consistency, verify_inclusion
from tests.unit.test_audit_chain import KEY, audit_event


def chain(count: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    folded = fold({}, [audit_event(n) for n in range(1, count + 1)], set(), every=0, key=KEY)
    signed = checkpoint("tenant-a", folded.heads["tenant-a"], "2026-11-03T00:00:00.000000Z", final=True, key=KEY)
    return folded.entries, signed


def test_each_entry_of_a_chain_is_proven_by_its_own_path() -> None:
    entries, signed = chain(11)
    leaves = [leaf_of(e) for e in entries]
    for entry in entries:
        proof = prove(entry, leaves, signed)
        assert proof["leaf_index"] == entry["seq"] - 1 and proof["tree_size"] == 11
        assert verify_inclusion(proof, KEY.public_key()) == Included("tenant-a", entry["seq"], 11, signed["root"])


def reason(proof: dict[str, Any]) -> str:
    outcome = verify_inclusion(proof, KEY.public_key())
    assert isinstance(outcome, NotProven), proof
    return outcome.reason


def test_every_change_to_a_proof_is_refused_with_its_reason() -> None:
    entries, signed = chain(6)
    leaves = [leaf_of(e) for e in entries]
    proof = prove(entries[2], leaves, signed)
    assert (
        reason({**proof, "entry": {**proof["entry"], "action": "tenant.delete"}})
        == "entry 3 does not match its hash: a field was edited"
    )
    assert reason({**proof, "leaf_index": 1}) == "the leaf index is not the entry's place in the chain"
    assert reason({**proof, "seq": 4}) == "the leaf index is not the entry's place in the chain"
    for not_a_number in ("6", 6.0, True, None):  # a size, an index or a place that is no integer
        for member in ("tree_size", "leaf_index"):
            assert reason({**proof, member: not_a_number}) == "the leaf index is not the entry's place in the chain"
    assert "does not lead" in reason({**proof, "audit_path": proof["audit_path"][::-1]})
    assert "does not lead" in reason({**proof, "audit_path": proof["audit_path"][:-1]})
    assert (
        reason({**proof, "audit_path": ["zz", *proof["audit_path"][1:]]}) == "the audit path holds something that is not a hash"
    )
    assert (
        reason({**proof, "audit_path": ["ab", *proof["audit_path"][1:]]})
        == "the audit path holds something that is not a SHA-256 hash"
    )
    assert "commits to 6" in reason({**proof, "tree_size": 7})
    forged = "the checkpoint's signature does not verify with this public key: forged"
    assert reason({**proof, "checkpoint": {**signed, "root": "00" * 32}}) == forged
    other = checkpoint(
        "tenant-a", fold({}, [audit_event(1)], set(), every=0, key=KEY).heads["tenant-a"], "x", final=True, key=KEY
    )
    assert "commits to 1" in reason({**proof, "checkpoint": other})
    resigned = checkpoint("tenant-a", fold({}, [audit_event(n) for n in range(1, 7)], set(), every=0, key=KEY).heads["tenant-a"],
                          "x", final=True, key=Ed25519PrivateKey.generate())  # fmt: skip
    assert reason({**proof, "checkpoint": resigned}) == forged
    assert reason({**proof, "chain": "tenant-b"}) == "the entry and the checkpoint belong to different chains"
    assert (
        reason({**proof, "checkpoint": {**signed, "chain": "tenant-b"}})
        == "the entry and the checkpoint belong to different chains"
    )
    assert reason({**proof, "entry": {"seq": 3}}) == "the proof holds no entry with exactly the entry's members"
    assert (
        reason({**proof, "checkpoint": {**signed, "extra": 1}})
        == "the proof holds no checkpoint with exactly the checkpoint's members"
    )
    assert reason({**proof, "audit_path": "ab"}) == "the audit path is not a list of hashes"


def test_a_kept_checkpoint_is_proven_a_prefix_of_a_later_one() -> None:
    entries, later = chain(9)
    leaves = [leaf_of(e) for e in entries]
    for m in (1, 4, 5, 9):
        kept = checkpoint("tenant-a", fold({}, [audit_event(n) for n in range(1, m + 1)], set(), every=0, key=KEY).heads[
            "tenant-a"], "2026-11-02T00:00:00.000000Z", final=True, key=KEY)  # fmt: skip
        proof = prove_consistency(m, leaves, later)
        assert verify_consistency(kept, proof, KEY.public_key()) == Grown("tenant-a", m, 9)
    kept5 = checkpoint("tenant-a", fold({}, [audit_event(n) for n in range(1, 6)], set(), every=0, key=KEY).heads["tenant-a"],
                       "2026-11-02T00:00:00.000000Z", final=True, key=KEY)  # fmt: skip
    proof = prove_consistency(5, leaves, later)

    def refused(kept: dict[str, Any], proof: dict[str, Any]) -> str:
        outcome = verify_consistency(kept, proof, KEY.public_key())
        assert isinstance(outcome, NotProven)
        return outcome.reason

    # A chain rewritten before entry 5: its later head is no extension of the kept one.
    other_events = [audit_event(n) for n in range(1, 10)]
    other_events[2] = audit_event(33)
    changed = fold({}, other_events, set(), every=0, key=KEY)
    changed_head = checkpoint("tenant-a", changed.heads["tenant-a"], "x", final=True, key=KEY)
    changed_proof = prove_consistency(5, [leaf_of(e) for e in changed.entries], changed_head)
    assert refused(kept5, changed_proof) == "the first 5 entries are not a prefix of the later 9: the chain was changed"
    assert refused(kept5, {**proof, "consistency_path": proof["consistency_path"][:-1]}).startswith("the first 5 entries are not")
    assert refused(kept5, {**proof, "first_length": 4}) == "the proof starts from 4 entries, the kept checkpoint has 5"
    assert refused({**kept5, "length": "5"}, proof).startswith("the kept checkpoint's signature")  # signed over 5, not "5"
    assert (
        refused({**kept5, "root": "00" * 32}, proof)
        == "the kept checkpoint's signature does not verify with this public key: forged"
    )
    assert refused(kept5, {**proof, "second": {**later, "length": 10}}) == (
        "the second checkpoint's signature does not verify with this public key: forged"
    )
    # A later checkpoint shorter than the kept one: the chain was cut.
    short = checkpoint("tenant-a", fold({}, [audit_event(n) for n in range(1, 4)], set(), every=0, key=KEY).heads["tenant-a"],
                       "x", final=True, key=KEY)  # fmt: skip
    assert (
        refused(kept5, {**proof, "second": short})
        == "the kept checkpoint commits to 5 entries, more than the later one's 3: the chain was cut"
    )
    assert refused({**kept5}, {**proof, "chain": "tenant-b"}) == "the checkpoints belong to different chains"
    assert refused({**kept5, "extra": 1}, proof) == "the kept checkpoint does not have exactly the checkpoint's members"
    assert (
        refused(kept5, {**proof, "second": {**later, "extra": 1}})
        == "the second checkpoint does not have exactly the checkpoint's members"
    )
    # Lengths that are no whole numbers, though the key signed them: refused, not compared.
    nine = fold({}, [audit_event(n) for n in range(1, 10)], set(), every=0, key=KEY).heads["tenant-a"]
    for length in ("9", True):
        odd = checkpoint("tenant-a", dataclasses.replace(nine, length=length), "x", final=True, key=KEY)
        assert refused(kept5, {**proof, "second": odd}) == "the proof starts from 5 entries, the kept checkpoint has 5"
    assert refused(kept5, {**proof, "consistency_path": "ab"}) == "the consistency path is not a list of hashes"
    assert refused(kept5, {**proof, "consistency_path": ["zz"]}) == "the consistency path holds something that is not a hash"
