"""The audit trail's hash chains: one per tenant, and `_platform` for platform-wide admin actions.

Pure: the same audit events in the same order give the same entries, hashes and checkpoints (an
Ed25519 signature is deterministic, RFC 8032, and a periodic checkpoint's time is its entry's).

An entry is a JSON object; its `hash` is the SHA-256 (hex) of the RFC 8785 canonical form
(projections.jcs) of every other member:

    {"kind": "entry", "chain": tenant, "seq": 1, "id": omniid, "time": recorded time,
     "action", "resource", "outcome", "reason", "actor": {"key_id", "ip", "user_agent"},
     "trace_id", "prev": the hash of entry seq - 1 (GENESIS for the first), "hash"}

A checkpoint commits to a chain's length and head, and to the RFC 9162 Merkle tree head of its
entries' hashes (projections.merkle: inclusion proofs of single entries check against it), signed
with Ed25519 over the canonical form of every member but `signature` (base64):

    {"kind": "checkpoint", "chain", "length", "head", "root": the Merkle tree head (hex), "at",
     "final", "key": the public key's SHA-256 (hex, of its 32 raw bytes), "signature"}

Periodic checkpoints (`final` false) are made by the fold every `every` entries, at the time of
the entry they close; an export ends with one signed when it is made (`final` true), committing
to everything before it, so that cutting lines off the end is detectable.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from projections.jcs import NotCanonicalizable, canonical
from projections.merkle import Frontier
from schemas.envelope import Envelope, format_time

AUDIT_TYPE = "omni.audit.recorded"  # as commands.control_plane describes an AuditEntry
GENESIS = "0" * 64
ENTRY, CHECKPOINT = "entry", "checkpoint"
ENTRY_FIELDS = frozenset(
    {"kind", "chain", "seq", "id", "time", "action", "resource", "outcome", "reason", "actor", "trace_id", "prev", "hash"}
)
CHECKPOINT_FIELDS = frozenset({"kind", "chain", "length", "head", "root", "at", "final", "key", "signature"})


@dataclass(frozen=True, slots=True)
class Head:
    """A chain's length, the hash of its last entry, and the Merkle tree of its entries' hashes."""

    length: int = 0
    hash: str = GENESIS
    tree: Frontier = Frontier()

    def then(self, entry: Mapping[str, Any]) -> Head:
        """The head once `entry` (the next one) is linked."""
        return Head(entry["seq"], entry["hash"], self.tree.append(leaf_of(entry)))


EMPTY = Head()


def leaf_of(entry: Mapping[str, Any]) -> bytes:
    """An entry's leaf in the chain's Merkle tree: its hash, as 32 bytes."""
    return bytes.fromhex(str(entry["hash"]))


def digest(members: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(members)).hexdigest()


def entry_hash(entry: Mapping[str, Any]) -> str:
    """What an entry's `hash` must be: over every member but `hash` itself."""
    return digest({name: value for name, value in entry.items() if name != "hash"})


def link(head: Head, chain: str, event: Envelope) -> dict[str, Any]:
    """The entry that follows `head` in `chain` for one audit event."""
    data = event.data if isinstance(event.data, Mapping) else {}
    actor = data.get("actor") if isinstance(data.get("actor"), Mapping) else {}
    entry: dict[str, Any] = {
        "kind": ENTRY,
        "chain": chain,
        "seq": head.length + 1,
        "id": event.id,
        "time": format_time(event.recorded_time),
        "action": data.get("action"),
        "resource": data.get("resource"),
        "outcome": data.get("outcome"),
        "reason": data.get("reason"),
        "actor": {"key_id": actor.get("key_id"), "ip": actor.get("ip"), "user_agent": actor.get("user_agent")},
        "trace_id": data.get("trace_id"),
        "prev": head.hash,
    }
    entry["hash"] = entry_hash(entry)
    return entry


def key_id(public_key: Ed25519PublicKey) -> str:
    return hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()


def checkpoint(chain: str, head: Head, at: str, *, final: bool, key: Ed25519PrivateKey) -> dict[str, Any]:
    """A signed commitment to `chain`'s first `head.length` entries, ending in `head.hash`."""
    body: dict[str, Any] = {
        "kind": CHECKPOINT,
        "chain": chain,
        "length": head.length,
        "head": head.hash,
        "root": head.tree.root().hex(),
        "at": at,
        "final": final,
        "key": key_id(key.public_key()),
    }
    body["signature"] = base64.b64encode(key.sign(canonical(body))).decode()
    return body


def signature_holds(checkpoint_: Mapping[str, Any], public_key: Ed25519PublicKey) -> bool:
    signed = {name: value for name, value in checkpoint_.items() if name != "signature"}
    try:
        signature = base64.b64decode(str(checkpoint_.get("signature", "")), validate=True)
        public_key.verify(signature, canonical(signed))
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(slots=True)
class Folded:
    """What a batch of audit events adds: entries and checkpoints in chain order, and the new heads."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    heads: dict[str, Head] = field(default_factory=dict)
    unlinked: list[tuple[Envelope, str]] = field(default_factory=list)  # events no entry can hold, and why


def fold(heads: Mapping[str, Head], events: Sequence[Envelope], seen: set[str], *, every: int, key: Ed25519PrivateKey) -> Folded:
    """Append each audit event to its tenant's chain, once: events whose id is in `seen` (folded
    before: the relay republishes after a crash) are skipped, and `seen` grows with the rest.
    Every `every` entries of a chain, a periodic checkpoint (0: none)."""
    folded = Folded(heads=dict(heads))
    for event in events:
        if event.type != AUDIT_TYPE or event.id in seen:
            continue
        seen.add(event.id)
        chain = event.tenant_id
        try:
            entry = link(folded.heads.get(chain, EMPTY), chain, event)
        except NotCanonicalizable as odd:  # e.g. a lone surrogate: left out of the chain, dead-lettered
            folded.unlinked.append((event, str(odd)))
            continue
        head = folded.heads.get(chain, EMPTY).then(entry)
        folded.heads[chain] = head
        folded.entries.append(entry)
        if every and head.length % every == 0:
            folded.checkpoints.append(checkpoint(chain, head, entry["time"], final=False, key=key))
    return folded


def export_lines(entries: Iterable[tuple[int, str]], checkpoints: Mapping[int, str], final: Mapping[str, Any]) -> Iterator[str]:
    """An export's lines (without newlines): each entry's canonical body in chain order, each periodic
    checkpoint right after the entry it closes, and the final checkpoint last."""
    for seq, body in entries:
        yield body
        if seq in checkpoints:
            yield checkpoints[seq]
    yield canonical(final).decode()
