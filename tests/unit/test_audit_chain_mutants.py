"""What an audit entry holds of its event, member by member, and a fold that goes on past events it
skips or cannot link. (Written for mutants `make mutation` found alive in projections/audit_chain.py.)"""

from __future__ import annotations

import msgspec

from projections.audit_chain import EMPTY, GENESIS, Head, entry_hash, fold, link
from tests.unit.test_audit_chain import KEY, audit_event


def test_an_entry_holds_every_member_of_its_event_and_its_link() -> None:
    event = audit_event(4, reason="over quota", trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
    entry = link(Head(3, "a" * 64), "tenant-a", event)
    expected = {
        "kind": "entry",
        "chain": "tenant-a",
        "seq": 4,
        "id": "tenant-a-4",
        "time": "2026-11-02T09:30:04.000000Z",
        "action": "api_key.issue",
        "resource": "keys/k4",
        "outcome": "accepted",
        "reason": "over quota",
        "actor": {"key_id": "admin", "ip": "127.0.0.1", "user_agent": "curl/8"},
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "prev": "a" * 64,
    }
    assert entry == {**expected, "hash": entry_hash(expected)}


def test_an_event_without_data_or_actor_links_with_empty_members() -> None:
    for data in (None, ["not", "an", "object"]):
        entry = link(EMPTY, "tenant-a", msgspec.structs.replace(audit_event(1), data=data))
        assert [entry[m] for m in ("action", "resource", "outcome", "reason", "trace_id")] == [None] * 5
        assert entry["actor"] == {"key_id": None, "ip": None, "user_agent": None} and entry["prev"] == GENESIS
    odd_actor = link(EMPTY, "tenant-a", audit_event(1, actor="admin"))
    assert odd_actor["actor"] == {"key_id": None, "ip": None, "user_agent": None} and odd_actor["action"] == "api_key.issue"


def test_a_fold_goes_on_past_what_it_skips_and_what_it_cannot_link() -> None:
    other = msgspec.structs.replace(audit_event(9), type="omni.tenant.created")
    events = [other, audit_event(1), audit_event(1), audit_event(2, trace_id=2**60), audit_event(3)]
    folded = fold({}, events, set(), every=0, key=KEY)
    assert [e["id"] for e in folded.entries] == ["tenant-a-1", "tenant-a-3"]
    assert folded.unlinked == [(events[3], "integer 1152921504606846976 is outside I-JSON's exact range (±2**53 - 1)")]
