"""Inclusion proofs of single audit entries (RFC 9162, 2.1.3): with a proof, anyone holding the
public key checks that one entry is in a chain as a signed checkpoint committed to it, without the
rest of the chain (whose other entries may concern other people).

A proof is one JSON object:

    {"chain", "seq", "entry": the entry as linked, "tree_size": n, "leaf_index": seq - 1,
     "audit_path": [hex, ...] (PATH(seq - 1, D[n]), bottom first), "checkpoint": a signed
     checkpoint with length n, whose `root` the path must lead to}

A consistency proof shows that a checkpoint someone kept (of m entries) commits to a prefix of a
later one (of n entries): the chain only grew, nothing before m was changed or cut (RFC 9162,
2.1.4). It is the answer to a tail cut off together with a newer export's final checkpoint,
which no single export can show:

    {"chain", "first_length": m, "second": a signed checkpoint of n entries,
     "consistency_path": [hex, ...] (PROOF(m, D[n]))}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from projections.audit_chain import CHECKPOINT, CHECKPOINT_FIELDS, ENTRY_FIELDS, entry_hash, leaf_of, signature_holds
from projections.merkle import consistency_path, consistent, inclusion_path, root_from_path


def prove(entry: Mapping[str, Any], leaves: Sequence[bytes], checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The proof that `entry` is among `leaves` (the chain's first n leaves), which `checkpoint` signed."""
    index = int(entry["seq"]) - 1
    return {
        "chain": entry["chain"],
        "seq": entry["seq"],
        "entry": dict(entry),
        "tree_size": len(leaves),
        "leaf_index": index,
        "audit_path": [node.hex() for node in inclusion_path(index, leaves)],
        "checkpoint": dict(checkpoint),
    }


@dataclass(frozen=True, slots=True)
class Included:
    chain: str
    seq: int
    tree_size: int
    root: str


@dataclass(frozen=True, slots=True)
class NotProven:
    reason: str


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def verify_inclusion(proof: Mapping[str, Any], public_key: Ed25519PublicKey) -> Included | NotProven:
    """Whether the proof shows its entry in the tree head that its checkpoint signed."""
    entry, checkpoint, path = proof.get("entry"), proof.get("checkpoint"), proof.get("audit_path")
    if not isinstance(entry, dict) or set(entry) != ENTRY_FIELDS:
        return NotProven("the proof holds no entry with exactly the entry's members")
    if not isinstance(checkpoint, dict) or set(checkpoint) != CHECKPOINT_FIELDS or checkpoint.get("kind") != CHECKPOINT:
        return NotProven("the proof holds no checkpoint with exactly the checkpoint's members")
    if not isinstance(path, list) or not all(isinstance(node, str) for node in path):
        return NotProven("the audit path is not a list of hashes")
    size, index, seq = proof.get("tree_size"), proof.get("leaf_index"), entry.get("seq")
    if not (_int(size) and _int(index) and _int(seq)) or index != seq - 1 or proof.get("seq") != seq:
        return NotProven("the leaf index is not the entry's place in the chain")
    if entry.get("hash") != entry_hash(entry):
        return NotProven(f"entry {seq} does not match its hash: a field was edited")
    if entry.get("chain") != checkpoint.get("chain") or proof.get("chain") != entry.get("chain"):
        return NotProven("the entry and the checkpoint belong to different chains")
    if checkpoint.get("length") != size:
        return NotProven(f"the checkpoint commits to {checkpoint.get('length')} entries, the proof to {size}")
    if not signature_holds(checkpoint, public_key):
        return NotProven("the checkpoint's signature does not verify with this public key: forged")
    try:
        nodes = [bytes.fromhex(node) for node in path]
    except ValueError:
        return NotProven("the audit path holds something that is not a hash")
    if any(len(node) != 32 for node in nodes):
        return NotProven("the audit path holds something that is not a SHA-256 hash")
    found = root_from_path(index, size, leaf_of(entry), nodes)
    if found is None or found.hex() != checkpoint.get("root"):
        return NotProven(f"the audit path does not lead from entry {seq} to the checkpoint's tree head")
    return Included(chain=str(entry["chain"]), seq=seq, tree_size=size, root=found.hex())


def prove_consistency(first_length: int, leaves: Sequence[bytes], second: Mapping[str, Any]) -> dict[str, Any]:
    """The proof that the chain's first `first_length` entries are a prefix of `leaves`, which `second` signed."""
    return {
        "chain": second["chain"],
        "first_length": first_length,
        "second": dict(second),
        "consistency_path": [node.hex() for node in consistency_path(first_length, leaves)],
    }


@dataclass(frozen=True, slots=True)
class Grown:
    chain: str
    first_length: int
    second_length: int


def verify_consistency(kept: Mapping[str, Any], proof: Mapping[str, Any], public_key: Ed25519PublicKey) -> Grown | NotProven:
    """Whether the proof shows the checkpoint `kept` (signed before, kept by the verifier) a prefix
    of its later checkpoint `second`."""
    second, path = proof.get("second"), proof.get("consistency_path")
    for name, checkpoint in (("kept", kept), ("second", second)):
        if not isinstance(checkpoint, dict) or set(checkpoint) != CHECKPOINT_FIELDS or checkpoint.get("kind") != CHECKPOINT:
            return NotProven(f"the {name} checkpoint does not have exactly the checkpoint's members")
        if not signature_holds(checkpoint, public_key):
            return NotProven(f"the {name} checkpoint's signature does not verify with this public key: forged")
    assert isinstance(second, dict)
    if not isinstance(path, list) or not all(isinstance(node, str) for node in path):
        return NotProven("the consistency path is not a list of hashes")
    if kept["chain"] != second["chain"] or proof.get("chain") != kept["chain"]:
        return NotProven("the checkpoints belong to different chains")
    first, size = kept["length"], second["length"]
    if not (_int(first) and _int(size)) or proof.get("first_length") != first:
        return NotProven(f"the proof starts from {proof.get('first_length')} entries, the kept checkpoint has {first}")
    if first > size:
        return NotProven(f"the kept checkpoint commits to {first} entries, more than the later one's {size}: the chain was cut")
    try:
        nodes = [bytes.fromhex(node) for node in path]
        roots = bytes.fromhex(str(kept["root"])), bytes.fromhex(str(second["root"]))
    except ValueError:
        return NotProven("the consistency path holds something that is not a hash")
    if not consistent(first, size, roots[0], roots[1], nodes):
        return NotProven(f"the first {first} entries are not a prefix of the later {size}: the chain was changed")
    return Grown(chain=str(kept["chain"]), first_length=first, second_length=size)
