"""What the offline verifier reports for each kind of tampering: the first broken line and the reason
it gives (an auditor reads it), not only the line. Each case was written for a mutant `make mutation`
found alive in projections/audit_verify.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from projections.audit_chain import GENESIS, Head, checkpoint, entry_hash, leaf_of
from projections.audit_verify import Broken, Intact, verify
from projections.jcs import canonical
from projections.merkle import frontier_of
from tests.unit.test_audit_chain import KEY, check, edited, export

LINES = export()  # e1 e2 e3 c3 e4 e5 e6 c6 e7 F
E = [json.loads(line) for line in LINES]


def rehashed(line: bytes, **members: Any) -> bytes:
    """An entry edited, its hash recomputed: only its links and members can give it away."""
    entry = {**json.loads(line), **members}
    entry["hash"] = entry_hash(entry)
    return canonical(entry)


def signed(chain: str, length: int, head: str, *, final: bool = False, leaves: slice | None = None) -> bytes:
    """A checkpoint the real key signed, of whatever it was given (its tree: chain tenant-a's first
    `length` entries, or those `leaves` picks)."""
    tree = frontier_of([leaf_of(e) for e in E if e["kind"] == "entry"][leaves or slice(length)])
    return canonical(checkpoint(chain, Head(length, head, tree), "2026-11-02T09:30:03.000000Z", final=final, key=KEY))


def ahead(head: str) -> str:
    return head[:12]


CASES: list[tuple[str, list[bytes], Broken]] = [
    ("an empty export", [], Broken(1, "an empty export")),
    ("a line that is no JSON object", [*LINES[:2], b"[1, 2]", *LINES[2:]], Broken(3, "neither an entry nor a checkpoint")),
    (
        "an object of another kind",
        [*LINES[:2], canonical({"kind": "note"}), *LINES[2:]],
        Broken(3, "neither an entry nor a checkpoint"),
    ),
    (
        "a member twice",
        [LINES[0], LINES[1][:-1] + b',"seq":2}', *LINES[2:]],
        Broken(2, "not a JSON object: member 'seq' appears twice"),
    ),
    (
        "a space added",
        [*LINES[:4], LINES[4].replace(b'":"', b'": "', 1), *LINES[5:]],
        Broken(5, "not in RFC 8785 canonical form: the line was edited"),
    ),
    (
        "a space after the line",
        [*LINES[:4], LINES[4] + b" ", *LINES[5:]],
        Broken(5, "not in RFC 8785 canonical form: the line was edited"),
    ),
    (
        "a lone surrogate",
        [*LINES[:4], LINES[4].replace(b'"outcome":"accepted"', b'"outcome":"\\udc00"'), *LINES[5:]],
        Broken(5, "not canonicalizable (a lone surrogate (U+DC00) is not valid Unicode text): the line was edited"),
    ),
    (
        "an entry of another chain",
        [*LINES[:4], rehashed(LINES[4], chain="tenant-b"), *LINES[5:]],
        Broken(5, "belongs to chain 'tenant-b', not 'tenant-a': from another chain"),
    ),
    (
        "a chain that is no text",
        [rehashed(LINES[0], chain=7), *LINES[1:]],
        Broken(1, "belongs to chain 7, not 7: from another chain"),
    ),
    (
        "an entry with a member more",
        [*LINES[:4], rehashed(LINES[4], note="x"), *LINES[5:]],
        Broken(5, "an entry without exactly the entry's members"),
    ),
    (
        "a seq that is true",
        [rehashed(LINES[0], seq=True), *LINES[1:]],
        Broken(1, "an entry without exactly the entry's members"),
    ),
    (
        "a seq that is text",
        [*LINES[:4], rehashed(LINES[4], seq="4"), *LINES[5:]],
        Broken(5, "an entry without exactly the entry's members"),
    ),
    (
        "an edited field",
        [*LINES[:4], edited(LINES[4], action="tenant.create"), *LINES[5:]],
        Broken(5, "entry 4 does not match its hash: a field was edited"),
    ),
    (
        "an entry deleted",
        [*LINES[:4], *LINES[5:]],
        Broken(5, "entry 5 where 4 was due: entries before it were deleted or moved"),
    ),
    (
        "an entry repeated",
        [*LINES[:5], LINES[4], *LINES[5:]],
        Broken(6, "entry 4 where 5 was due: repeated or out of order"),
    ),
    (
        "an entry two back",
        [*LINES[:5], LINES[2], *LINES[5:]],
        Broken(6, "entry 3 where 5 was due: repeated or out of order"),
    ),
    (
        "an entry relinked",
        [*LINES[:4], rehashed(LINES[4], prev=GENESIS), *LINES[5:]],
        Broken(5, "entry 4 does not follow the entry before it (prev)"),
    ),
    (
        "a checkpoint with a member more",
        [*LINES[:3], edited(LINES[3], note="x"), *LINES[4:]],
        Broken(4, "a checkpoint without exactly the checkpoint's members"),
    ),
    (
        "a length that is text",
        [*LINES[:3], edited(LINES[3], length="3"), *LINES[4:]],
        Broken(4, "a checkpoint without exactly the checkpoint's members"),
    ),
    (
        "a final that is not a boolean",
        [*LINES[:3], edited(LINES[3], final=0), *LINES[4:]],
        Broken(4, "a checkpoint without exactly the checkpoint's members"),
    ),
    (
        "a forged signature",
        [*LINES[:3], edited(LINES[3], length=2), *LINES[4:]],
        Broken(4, "the checkpoint's signature does not verify with this public key: forged"),
    ),
    (
        "a signature with a character more",
        [*LINES[:3], edited(LINES[3], signature=E[3]["signature"][:8] + "!" + E[3]["signature"][8:]), *LINES[4:]],
        Broken(4, "the checkpoint's signature does not verify with this public key: forged"),
    ),
    (
        "a checkpoint of another head",
        [*LINES[:3], signed("tenant-a", 3, "f" * 64), *LINES[4:]],
        Broken(
            4,
            f"the checkpoint commits to 3 entries ending in {'f' * 12}..., but 3 precede it: replayed from elsewhere, or entries were changed",
        ),
    ),
    (
        "a checkpoint of other entries",
        [*LINES[:3], signed("tenant-a", 2, E[1]["hash"]), *LINES[4:]],
        Broken(
            4,
            f"the checkpoint commits to 2 entries ending in {ahead(E[1]['hash'])}..., but 3 precede it: replayed from elsewhere, or entries were changed",
        ),
    ),
    (
        "a checkpoint of the right head over another tree",
        [*LINES[:3], signed("tenant-a", 3, E[2]["hash"], leaves=slice(1, 4)), *LINES[4:]],
        Broken(4, "the checkpoint's Merkle tree head is not the one of the entries before it"),
    ),
    (
        "a checkpoint twice",
        [*LINES[:4], LINES[3], *LINES[4:]],
        Broken(5, "the checkpoint of entry 3 a second time: replayed"),
    ),
    (
        "a final checkpoint in the middle",
        [*LINES[:4], signed("tenant-a", 3, E[2]["hash"], final=True), *LINES[4:]],
        Broken(5, "a final checkpoint in the middle of the chain: replayed from an earlier export"),
    ),
    (
        "a checkpoint after the final one",
        [*LINES, LINES[3]],
        Broken(11, "a checkpoint after the export's final checkpoint"),
    ),
    (
        "the final checkpoint cut off",
        LINES[:-1],
        Broken(10, "the export ends at line 9 without its final checkpoint: truncated"),
    ),
]


@pytest.mark.parametrize(("lines", "broken"), [(lines, broken) for _, lines, broken in CASES], ids=[c[0] for c in CASES])
def test_each_kind_of_tampering_is_named_at_its_line_with_its_reason(lines: list[bytes], broken: Broken) -> None:
    assert check(lines) == broken


def test_an_unreadable_line_is_named_with_what_the_parser_says() -> None:
    for tail in (b"X", b"\n}"):
        outcome = check([*LINES[:4], LINES[4] + tail, *LINES[5:]])
        assert isinstance(outcome, Broken) and outcome.line == 5
        assert outcome.reason.startswith("not a JSON object: Extra data: line "), outcome.reason


@pytest.mark.parametrize("end", [b"\n", b"\r\n"])
def test_lines_read_with_their_line_ends_verify(end: bytes) -> None:
    outcome = verify([line + end for line in LINES], KEY.public_key())
    assert isinstance(outcome, Intact) and (outcome.entries, outcome.checkpoints) == (7, 2)


@pytest.mark.parametrize("end", [b"\r", b"\r\r\n", b"\r\r", b"\n\n", b"\r\n\n"])
def test_any_byte_more_than_a_line_end_breaks_the_line(end: bytes) -> None:
    """A CR (or a line end) more on a line was taken away with the line end: the export still
    verified, though a byte of it had changed."""
    outcome = verify([*LINES[:4], LINES[4] + end, *(line + b"\n" for line in LINES[5:])], KEY.public_key())
    assert isinstance(outcome, Broken) and outcome.line == 5, outcome
