"""A deleted SLO, on each database, as the catalog's fold writes it from control events that the outbox
may relay more than once: a deletion hides its version and every earlier one, never a later one;
a definition relayed again after its deletion stays hidden; the name defined again shows."""

from __future__ import annotations

from typing import Any

from stores import slos as slo_store
from stores.database import Database

SPEC: dict[str, Any] = {
    "event_type": "inference",
    "sli": "availability",
    "status_property": "$.data.status",
    "objective": 99,
    "window": "7d",
}
AT = "2026-12-07T08:00:00Z"


def visible(database: Database, owner: str = "acme") -> list[tuple[str, int]]:
    with database.transaction() as tx:
        listed = [(row.name, row.version) for row in slo_store.of_owner(tx, owner)]
        assert listed == sorted((row.name, row.version) for row in slo_store.definitions(tx) if row.owner == owner)
        assert [name for name, _ in listed] == slo_store.names_of(tx, owner)
        for name, version in listed:
            found = slo_store.one(tx, owner, name)
            assert found is not None and found.version == version
        return listed


def test_deletions_hide_their_version_and_earlier_ones_whatever_is_relayed_again(database: Database) -> None:
    with database.transaction() as tx:
        slo_store.put(tx, "acme", "checkout", 1, SPEC, AT)
        slo_store.put(tx, "acme", "search", 1, SPEC, AT)
        slo_store.put(tx, "acme", "checkout", 2, {**SPEC, "objective": 98}, AT)
        slo_store.put(tx, "other", "checkout", 1, SPEC, AT)
    assert visible(database) == [("checkout", 2), ("search", 1)]

    with database.transaction() as tx:
        slo_store.delete(tx, "acme", "checkout", 2, AT)
    assert visible(database) == [("search", 1)]
    assert visible(database, "other") == [("checkout", 1)], "another owner's SLO of that name stays"
    with database.transaction() as tx:
        assert slo_store.one(tx, "acme", "checkout") is None
        slo_store.put(tx, "acme", "checkout", 2, {**SPEC, "objective": 98}, AT)  # relayed again
        slo_store.put(tx, "acme", "checkout", 1, SPEC, AT)
    assert visible(database) == [("search", 1)]

    with database.transaction() as tx:  # defined again: the next version
        slo_store.put(tx, "acme", "checkout", 3, SPEC, AT)
        slo_store.delete(tx, "acme", "checkout", 2, AT)  # the deletion relayed again
        slo_store.delete(tx, "acme", "checkout", 1, AT)
    assert visible(database) == [("checkout", 3), ("search", 1)]

    with database.transaction() as tx:  # deleted again, then the first deletion relayed once more
        slo_store.delete(tx, "acme", "checkout", 3, AT)
        slo_store.delete(tx, "acme", "checkout", 2, AT)
        slo_store.put(tx, "acme", "checkout", 3, SPEC, AT)
    assert visible(database) == [("search", 1)]
