"""The audit chain's pure core: RFC 8785 canonical JSON, linking and checkpoints, and the offline
verification naming the first broken line for each kind of tampering."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from projections import merkle
from projections.audit_chain import (
    AUDIT_TYPE,
    EMPTY,
    GENESIS,
    Head,
    checkpoint,
    entry_hash,
    export_lines,
    fold,
)
from projections.audit_verify import Broken, Intact, verify
from projections.jcs import NotCanonicalizable, canonical
from schemas.envelope import Envelope

KEY = Ed25519PrivateKey.generate()
T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)

# RFC 8785 -------------------------------------------------------------------------------------


def test_rfc8785_property_sorting_example() -> None:
    """Section 3.2.3: names sorted by UTF-16 code units (the emoji, a surrogate pair, before U+FB33)."""
    value = json.loads(
        '{"\\u20ac": "Euro Sign", "\\r": "Carriage Return", "\\ufb33": "Hebrew Letter Dalet With Dagesh", '
        '"1": "One", "\\ud83d\\ude00": "Emoji: Grinning Face", "\\u0080": "Control", '
        '"\\u00f6": "Latin Small Letter O With Diaeresis"}'
    )
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis",'
        '"\u20ac":"Euro Sign","\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    )
    assert canonical(value) == expected.encode()


def test_rfc8785_string_and_literals_example() -> None:
    """Section 3.2.2's sample without its fractional numbers (not covered here): escapes as ES6 writes them."""
    value = json.loads('{"string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/", "literals": [null, true, false]}')
    assert canonical(value) == '{"literals":[null,true,false],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'.encode()


def test_integers_and_what_is_refused() -> None:
    assert canonical([0, -1, 2**53 - 1, {}, [], ""]) == b'[0,-1,9007199254740991,{},[],""]'
    for odd in (1.5, 2**53, -(2**53), "\ud800", {"\udc00": 1}, b"bytes"):
        with pytest.raises(NotCanonicalizable):
            canonical(odd)


BMP_TEXT = st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)), max_size=8)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | BMP_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(BMP_TEXT, inner, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_agrees_with_sorted_compact_json_within_the_bmp(value: Any) -> None:
    """Within the BMP, code-point order is UTF-16 order, and Python's json writes strings as ES6 does."""
    reference = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical(value) == reference
    assert json.loads(canonical(value)) == value


# The chain -------------------------------------------------------------------------------------


def audit_event(n: int, tenant: str = "tenant-a", **data: Any) -> Envelope:
    payload = {
        "action": "api_key.issue",
        "resource": f"keys/k{n}",
        "outcome": "accepted",
        "reason": None,
        "actor": {"key_id": "admin", "ip": "127.0.0.1", "user_agent": "curl/8"},
        "trace_id": None,
    } | data
    at = T0 + timedelta(seconds=n)
    return Envelope(
        id=f"{tenant}-{n}",
        type=AUDIT_TYPE,
        tenant_id=tenant,
        source="omni://control-plane",
        source_id=f"agg/{n}",
        event_time=at,
        recorded_time=at,
        data=payload,
    )


def test_entries_link_each_to_the_one_before_per_tenant_once() -> None:
    events = [audit_event(1), audit_event(1, "tenant-b"), audit_event(2), audit_event(1)]  # the last: republished
    folded = fold({}, events, set(), every=2, key=KEY)
    a = [e for e in folded.entries if e["chain"] == "tenant-a"]
    assert [e["seq"] for e in a] == [1, 2]
    assert a[0]["prev"] == GENESIS and a[1]["prev"] == a[0]["hash"]
    assert all(e["hash"] == entry_hash(e) for e in folded.entries)
    assert {chain: (h.length, h.hash) for chain, h in folded.heads.items()} == {
        "tenant-a": (2, a[1]["hash"]),
        "tenant-b": (1, folded.entries[1]["hash"]),
    }
    # Each head keeps the Merkle tree of its chain's entry hashes, which the checkpoints sign.
    assert folded.heads["tenant-a"].tree.root() == merkle.root([bytes.fromhex(e["hash"]) for e in a])
    assert folded.checkpoints[0]["root"] == folded.heads["tenant-a"].tree.root().hex()
    assert [(c["chain"], c["length"], c["head"], c["at"]) for c in folded.checkpoints] == [
        ("tenant-a", 2, a[1]["hash"], a[1]["time"])
    ]


def test_a_fold_in_batches_gives_the_same_hashes_and_signatures_as_at_once() -> None:
    events = [audit_event(n, tenant) for n in range(1, 8) for tenant in ("a", "b")]
    whole = fold({}, events, set(), every=3, key=KEY)
    seen: set[str] = set()
    heads: dict[str, Head] = {}
    entries, checkpoints = [], []
    for start in range(0, len(events), 5):
        part = fold(heads, events[start : start + 5], seen, every=3, key=KEY)
        heads = part.heads
        entries += part.entries
        checkpoints += part.checkpoints
    assert entries == whole.entries and checkpoints == whole.checkpoints  # Ed25519 signs deterministically


def test_an_entry_hashes_every_member_but_its_hash() -> None:
    entry = fold({}, [audit_event(1)], set(), every=100, key=KEY).entries[0]
    for name in entry:
        if name != "hash":
            changed = {**entry, name: "x"}
            assert entry_hash(changed) != entry["hash"], name


# Verification ----------------------------------------------------------------------------------


def export(tenant: str = "tenant-a", count: int = 7, every: int = 3, key: Ed25519PrivateKey = KEY) -> list[bytes]:
    """e1 e2 e3 c3 e4 e5 e6 c6 e7 F: ten lines."""
    folded = fold({}, [audit_event(n, tenant) for n in range(1, count + 1)], set(), every=every, key=key)
    entries = [(e["seq"], canonical(e).decode()) for e in folded.entries]
    checkpoints = {c["length"]: canonical(c).decode() for c in folded.checkpoints}
    final = checkpoint(tenant, folded.heads.get(tenant, EMPTY), "2026-11-03T00:00:00.000000Z", final=True, key=key)
    return [line.encode() for line in export_lines(entries, checkpoints, final)]


def check(lines: list[bytes]) -> Intact | Broken:
    return verify(lines, KEY.public_key())


def broken_at(lines: list[bytes]) -> int:
    outcome = check(lines)
    assert isinstance(outcome, Broken), outcome
    return outcome.line


def test_an_untouched_export_verifies() -> None:
    lines = export()
    assert len(lines) == 10
    outcome = check(lines)
    assert outcome == Intact(
        chain="tenant-a", entries=7, checkpoints=2, head=json.loads(lines[8])["hash"], at="2026-11-03T00:00:00.000000Z"
    )
    assert isinstance(check(export(count=0)), Intact)  # an empty chain: its final checkpoint alone


def edited(line: bytes, **members: Any) -> bytes:
    return canonical({**json.loads(line), **members})


def test_an_edited_field_breaks_its_own_line() -> None:
    lines = export()
    assert broken_at([*lines[:4], edited(lines[4], action="tenant.create"), *lines[5:]]) == 5
    assert broken_at([*lines[:4], lines[4].replace(b'"outcome":"accepted"', b'"outcome": "accepted"'), *lines[5:]]) == 5


def test_an_edit_with_its_hash_recomputed_breaks_the_next_line() -> None:
    lines = export()
    forged = {**json.loads(lines[4]), "outcome": "rejected"}
    forged["hash"] = entry_hash(forged)
    assert broken_at([*lines[:4], canonical(forged), *lines[5:]]) == 6


def test_a_deleted_entry_breaks_the_line_that_takes_its_place() -> None:
    lines = export()
    assert broken_at([*lines[:4], *lines[5:]]) == 5
    assert broken_at(lines[1:]) == 1


def test_an_inserted_entry_is_named() -> None:
    lines = export()
    assert broken_at([*lines[:2], lines[1], *lines[2:]]) == 3  # a copy of entry 2 after itself
    # A fabricated entry 3 that links correctly: the real entry 3 after it is where the chain breaks.
    fake = {**json.loads(lines[2]), "action": "tenant.create"}
    fake["hash"] = entry_hash(fake)
    assert broken_at([*lines[:2], canonical(fake), *lines[2:]]) == 4


def test_swapped_entries_break_at_the_first_of_them() -> None:
    lines = export()
    assert broken_at([*lines[:4], lines[5], lines[4], *lines[6:]]) == 5


def test_a_forged_checkpoint_is_named() -> None:
    lines = export()
    assert broken_at([*lines[:3], edited(lines[3], length=2), *lines[4:]]) == 4  # signature no longer holds
    other_key = Ed25519PrivateKey.generate()
    resigned = checkpoint(
        "tenant-a", Head(3, json.loads(lines[2])["hash"]), "2026-11-02T09:30:03.000000Z", final=False, key=other_key
    )
    assert broken_at([*lines[:3], canonical(resigned), *lines[4:]]) == 4
    assert broken_at([*lines[:9], edited(lines[9], head=GENESIS)]) == 10
    # Signed with the right key, but over another tree head than the entries before it make.
    head = Head(3, json.loads(lines[2])["hash"])
    wrong_tree = checkpoint("tenant-a", head, "2026-11-02T09:30:03.000000Z", final=False, key=KEY)
    assert broken_at([*lines[:3], canonical(wrong_tree), *lines[4:]]) == 4


def test_a_replayed_checkpoint_is_named() -> None:
    lines = export()
    other_chain = export("tenant-b")
    assert broken_at([*lines[:3], other_chain[3], *lines[4:]]) == 4  # another tenant's checkpoint of 3
    assert broken_at([*lines[:4], lines[3], *lines[4:]]) == 5  # the checkpoint of 3 twice
    assert broken_at([*lines[:3], lines[4], lines[3], *lines[5:]]) == 5  # moved after entry 4
    earlier = export(count=3)  # an earlier export's final checkpoint, of the first 3 entries
    assert broken_at([*lines[:4], earlier[-1], *lines[4:]]) == 5


def test_a_truncated_tail_is_named() -> None:
    lines = export()
    assert broken_at(lines[:-1]) == 10
    assert broken_at(lines[:-3]) == 8
    assert broken_at([]) == 1


def test_lines_after_the_final_checkpoint_are_named() -> None:
    lines = export()
    assert broken_at([*lines, lines[3]]) == 11
    assert broken_at([*lines, b"{}"]) == 11
