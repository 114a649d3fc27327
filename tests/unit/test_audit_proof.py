"""Inclusion proofs of audit entries (projections.audit_proof) from a folded chain."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from projections.audit_chain import checkpoint, fold, leaf_of
from projections.audit_proof import Included, NotProven, prove, verify_inclusion
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
    assert "edited" in reason({**proof, "entry": {**proof["entry"], "action": "tenant.delete"}})
    assert "leaf index" in reason({**proof, "leaf_index": 1})
    assert "leaf index" in reason({**proof, "seq": 4})
    assert "does not lead" in reason({**proof, "audit_path": proof["audit_path"][::-1]})
    assert "does not lead" in reason({**proof, "audit_path": proof["audit_path"][:-1]})
    assert "not a hash" in reason({**proof, "audit_path": ["zz", *proof["audit_path"][1:]]})
    assert "SHA-256" in reason({**proof, "audit_path": ["ab", *proof["audit_path"][1:]]})
    assert "commits to 6" in reason({**proof, "tree_size": 7})
    assert "forged" in reason({**proof, "checkpoint": {**signed, "root": "00" * 32}})
    other = checkpoint(
        "tenant-a", fold({}, [audit_event(1)], set(), every=0, key=KEY).heads["tenant-a"], "x", final=True, key=KEY
    )
    assert "commits to 1" in reason({**proof, "checkpoint": other})
    resigned = checkpoint("tenant-a", fold({}, [audit_event(n) for n in range(1, 7)], set(), every=0, key=KEY).heads["tenant-a"],
                          "x", final=True, key=Ed25519PrivateKey.generate())  # fmt: skip
    assert "forged" in reason({**proof, "checkpoint": resigned})
    assert "no entry" in reason({**proof, "entry": {"seq": 3}})
    assert "no checkpoint" in reason({**proof, "checkpoint": {**signed, "extra": 1}})
    assert "not a list" in reason({**proof, "audit_path": "ab"})
