"""Offline verification of an audit export (JSON Lines), by someone who trusts only the public key.

An export is one chain: its entries in order, the periodic checkpoints each right after the entry
it closes, and last a final checkpoint signed when the export was made. Every line must be the
RFC 8785 canonical form of its object (so no byte of it can change unnoticed). `verify` names the
first line that breaks, and why:

- an edited field: the entry no longer matches its `hash`, or the line is not canonical;
- a deleted, inserted or swapped entry: `seq` is not the next one, or `prev` is not the hash of
  the entry before (an inserted entry with a recomputed hash breaks the line after it);
- a forged checkpoint: its signature does not verify with the public key, or its Merkle tree
  head is not the one of the entries before it;
- a replayed checkpoint (from another chain, another export, or another place): it names another
  chain, does not commit to exactly the entries before it, repeats one already seen, or is a
  final checkpoint that is not the last line;
- a truncated tail: the export does not end with its final checkpoint (the line number is the
  one after the last line).

What no offline check can see: a tail cut off together with the final checkpoint of an *older*
export of the same chain, which is what that older export was. A verifier who kept a later
checkpoint compares lengths. Nor a periodic checkpoint's line taken out: the entries and the final
checkpoint still verify; `Intact.checkpoints` counts those found, for a verifier who knows the
deployment's interval (the export does not carry it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from projections.audit_chain import (
    CHECKPOINT,
    CHECKPOINT_FIELDS,
    ENTRY,
    ENTRY_FIELDS,
    GENESIS,
    entry_hash,
    leaf_of,
    signature_holds,
)
from projections.jcs import NotCanonicalizable, canonical
from projections.merkle import Frontier


@dataclass(frozen=True, slots=True)
class Broken:
    line: int  # 1-based
    reason: str


@dataclass(frozen=True, slots=True)
class Intact:
    chain: str
    entries: int
    checkpoints: int  # periodic ones, besides the final
    head: str
    at: str  # when the final checkpoint was signed


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, value in pairs:
        if name in found:
            raise ValueError(f"member {name!r} appears twice")
        found[name] = value
    return found


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def verify(lines: Iterable[bytes], public_key: Ed25519PublicKey) -> Intact | Broken:
    """Check an export line by line; the first broken line, or what the intact export holds."""
    chain: str | None = None
    head, length, periodic = GENESIS, 0, 0
    tree = Frontier()
    seen_periodic: set[int] = set()
    final: dict[str, Any] | None = None
    final_line = 0
    number = 0
    for number, raw in enumerate(lines, start=1):
        # One line end, LF or CRLF (as read from a file, or converted by a tool): any other byte is
        # the line's, so a CR more (which rstrip took away too) breaks it like any edit.
        line = raw[:-2] if raw.endswith(b"\r\n") else raw.removesuffix(b"\n")
        try:
            item = json.loads(line, object_pairs_hook=_no_duplicates)
        except ValueError as unreadable:
            return Broken(number, f"not a JSON object: {unreadable}")
        if not isinstance(item, dict) or item.get("kind") not in (ENTRY, CHECKPOINT):
            return Broken(number, "neither an entry nor a checkpoint")
        try:
            if canonical(item) != line:
                return Broken(number, "not in RFC 8785 canonical form: the line was edited")
        except NotCanonicalizable as odd:
            return Broken(number, f"not canonicalizable ({odd}): the line was edited")
        if chain is None:
            chain = item.get("chain")
        if item.get("chain") != chain or not isinstance(chain, str):
            return Broken(number, f"belongs to chain {item.get('chain')!r}, not {chain!r}: from another chain")
        if item["kind"] == ENTRY:
            if set(item) != ENTRY_FIELDS or not _is_int(item["seq"]):
                return Broken(number, "an entry without exactly the entry's members")
            if item["hash"] != entry_hash(item):
                return Broken(number, f"entry {item['seq']} does not match its hash: a field was edited")
            if item["seq"] > length + 1:
                return Broken(number, f"entry {item['seq']} where {length + 1} was due: entries before it were deleted or moved")
            if item["seq"] < length + 1:
                return Broken(number, f"entry {item['seq']} where {length + 1} was due: repeated or out of order")
            if item["prev"] != head:
                return Broken(number, f"entry {item['seq']} does not follow the entry before it (prev)")
            if final is not None:  # the chain goes on past a final checkpoint: that one is out of place
                return Broken(final_line, "a final checkpoint in the middle of the chain: replayed from an earlier export")
            head, length, tree = item["hash"], item["seq"], tree.append(leaf_of(item))
            continue
        if final is not None:
            return Broken(number, "a checkpoint after the export's final checkpoint")
        if set(item) != CHECKPOINT_FIELDS or not _is_int(item["length"]) or not isinstance(item["final"], bool):
            return Broken(number, "a checkpoint without exactly the checkpoint's members")
        if not signature_holds(item, public_key):
            return Broken(number, "the checkpoint's signature does not verify with this public key: forged")
        if item["length"] != length or item["head"] != head:
            return Broken(
                number,
                f"the checkpoint commits to {item['length']} entries ending in {str(item['head'])[:12]}..., "
                f"but {length} precede it: replayed from elsewhere, or entries were changed",
            )
        if item["root"] != tree.root().hex():
            return Broken(number, "the checkpoint's Merkle tree head is not the one of the entries before it")
        if item["final"]:
            final, final_line = item, number
        elif length in seen_periodic:
            return Broken(number, f"the checkpoint of entry {length} a second time: replayed")
        else:
            seen_periodic.add(length)
            periodic += 1
    if number == 0:
        return Broken(1, "an empty export")
    if final is None or chain is None:
        return Broken(number + 1, f"the export ends at line {number} without its final checkpoint: truncated")
    return Intact(chain=chain, entries=length, checkpoints=periodic, head=head, at=str(final["at"]))
