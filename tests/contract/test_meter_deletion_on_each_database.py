"""A meter's deletion racing a batch of the meters' fold, on each database: the catalog's fold holds
the meters' checkpoints, so a batch that read the meter's definition before the deletion commits
first, and the deletion then drops what it wrote. Nothing of a deleted meter is left behind."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from schemas.envelope import Envelope, encode
from stores import views
from stores.database import Database
from streams import projectors
from streams.log import LogRecord
from streams.projectors import CatalogProjector
from tests.contract.test_projectors_on_each_database import COUNT, TOKENS, TOPICS, define, projector, record


def deletion(slug: str) -> LogRecord:
    moment = datetime(2026, 12, 7, tzinfo=UTC)
    envelope = Envelope(
        id=f"delete-{slug}",
        type="omni.meter.deleted",
        tenant_id="_platform",
        source="omni://control",
        source_id=f"delete-{slug}",
        event_time=moment,
        recorded_time=moment,
        data={"slug": slug},
    )
    return LogRecord(TOPICS.control, 0, 0, "_platform", encode(envelope))


def rows_of(database: Database, slug: str) -> list[int]:
    with database.transaction() as tx:
        return [
            int(tx.execute(f"SELECT COUNT(*) FROM {table} WHERE meter=?", (slug,))[0][0])
            for table in ("meter_windows", "meter_totals", "meter_offsets")
        ]


def test_a_batch_under_way_commits_before_the_deletion_drops_its_rows(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    define(database, TOKENS, COUNT)
    meters = projector(database)
    meters.process(0, [record(0, "a"), record(1, "b")])
    assert min(rows_of(database, "tokens")) > 0

    # The next batch stops inside its transaction, its rows written, its checkpoint held.
    inside, go_on = threading.Event(), threading.Event()
    write = views.set_meter_checkpoints

    def held_before_commit(*args: object, **kwargs: object) -> None:
        write(*args, **kwargs)  # type: ignore[arg-type]
        inside.set()
        assert go_on.wait(timeout=20)

    monkeypatch.setattr(projectors.views, "set_meter_checkpoints", held_before_commit)
    later = [record(2, "c", model="new"), record(3, "d", model="new")]  # rows of their own, not updates
    batch = threading.Thread(target=meters.process, args=(0, later))
    batch.start()
    assert inside.wait(timeout=20)
    monkeypatch.setattr(projectors.views, "set_meter_checkpoints", write)

    deleted = threading.Thread(target=CatalogProjector(database, TOPICS).process, args=(0, [deletion("tokens")]))
    deleted.start()
    deleted.join(timeout=0.5)
    assert deleted.is_alive(), "the deletion waits for the batch that read the meter"
    go_on.set()
    batch.join(timeout=20)
    deleted.join(timeout=20)
    assert not batch.is_alive() and not deleted.is_alive()

    assert rows_of(database, "tokens") == [0, 0, 0], "nothing of the deleted meter is left"
    with database.transaction() as tx:
        assert views.meter_definition(tx, "tokens") is None
        assert views.meter_definition(tx, "count") is not None
    meters.process(0, [record(4, "e")])
    assert rows_of(database, "tokens") == [0, 0, 0], "later batches do not count it"
    assert rows_of(database, "count")[2] == 1 and min(rows_of(database, "count")) > 0


def test_a_deletion_relayed_again_changes_nothing(database: Database) -> None:
    define(database, TOKENS)
    projector(database).process(0, [record(0, "a")])
    catalog = CatalogProjector(database, TOPICS)
    assert catalog.process(0, [deletion("tokens")]) == 1
    with database.transaction() as tx:
        views.set_checkpoint(tx, projectors.CATALOG, TOPICS.control, 0, 0)  # as if its commit were lost
    assert catalog.process(0, [deletion("tokens")]) == 1
    assert rows_of(database, "tokens") == [0, 0, 0]
