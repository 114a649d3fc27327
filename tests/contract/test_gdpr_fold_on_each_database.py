"""The catalog projector folds the GDPR control events into their views, on SQLite and on PostgreSQL
alike: a data class at its newest version, a request with each of its steps once, a breach with its
deadline and then its notification. (`make mutation` found no fast test folding them.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from projections.gdpr import RetentionSet
from schemas.envelope import Envelope, encode
from schemas.gdpr import DataClassBody
from schemas.topics import Topics
from stores import gdpr as gdpr_store
from stores.database import Database
from stores.gdpr import DataClassRow, RequestRow
from streams.log import LogRecord
from streams.projectors import CatalogProjector

TOPICS = Topics(prefix="g", usage_partitions=1)
START = datetime(2026, 12, 1, 9, tzinfo=UTC)
DEFINITION = {"personal": ["$.data.email"]}


def control(offset: int, type_: str, data: dict[str, Any], tenant: str = "_platform") -> LogRecord:
    moment = START + timedelta(seconds=offset)
    envelope = Envelope(
        id=f"g-{offset}", type=type_, tenant_id=tenant, source="omni://gdpr", source_id=f"g/{offset}",
        event_time=moment, recorded_time=moment, data=data,
    )  # fmt: skip
    return LogRecord(TOPICS.control, 0, offset, tenant, encode(envelope))


def test_gdpr_events_fold_into_the_gdpr_views(database: Database) -> None:
    catalog = CatalogProjector(database, TOPICS)
    received = {"id": "r-1", "tenant_id": "t-1", "subject": "u-7", "kind": "access", "status": "received"}
    batch = [
        control(0, "omni.data_class.defined", {"event_type": "signup", "version": 1, "definition": DEFINITION}),
        control(1, "omni.gdpr.request_received", {**received, "at": "2026-12-01T09:00:01.000000Z"}, "t-1"),
        control(
            2,
            "omni.gdpr.request_updated",
            {"id": "r-1", "tenant_id": "t-1", "status": "running", "step": "export", "at": "2026-12-01T09:00:02.000000Z"},
            "t-1",
        ),
        control(
            3,
            "omni.gdpr.breach_recorded",
            {
                "id": "b-1",
                "detected_at": "2026-12-01T08:00:00.000000Z",
                "recorded_at": "2026-12-01T09:00:03.000000Z",
                "scope": "one tenant's keys",
                "subjects": 3,
                "description": "a leak",
            },
        ),  # fmt: skip
    ]
    assert catalog.process(0, batch) == 4
    with database.transaction() as tx:
        assert gdpr_store.data_class(tx, "signup") == DataClassRow(
            "signup", 1, DataClassBody.model_validate(DEFINITION), "2026-12-01T09:00:00.000000Z"
        )
        assert gdpr_store.request(tx, "t-1", "r-1") == RequestRow(
            "r-1",
            "t-1",
            "u-7",
            "access",
            "2026-12-01T09:00:01.000000Z",
            [("received", "received", "2026-12-01T09:00:01.000000Z"), ("running", "export", "2026-12-01T09:00:02.000000Z")],
        )
        breach = gdpr_store.breach(tx, "b-1")
        assert breach is not None
        assert (breach.detected_at, breach.deadline, breach.scope, breach.subjects, breach.description, breach.notified_at) == (
            "2026-12-01T08:00:00.000000Z",
            "2026-12-04T08:00:00.000000Z",
            "one tenant's keys",
            3,
            "a leak",
            None,
        )

    revised = {"personal": ["$.data.email", "$.data.name"]}
    again = [
        control(4, "omni.data_class.defined", {"event_type": "signup", "version": 2, "definition": revised}),
        control(5, "omni.gdpr.breach_notified", {"id": "b-1", "notified_at": "2026-12-02T10:00:00.000000Z"}),
        control(6, "omni.gdpr.breach_notified", {"id": "b-1", "notified_at": "2026-12-03T10:00:00.000000Z"}),  # kept once
        control(
            7,
            "omni.gdpr.retention_set",
            {"tenant_id": "t-1", "personal_data_days": 30, "version": 1, "at": "2026-12-01T09:00:07.000000Z"},
            "t-1",
        ),
    ]
    assert catalog.process(0, again) == 4
    with database.transaction() as tx:
        assert gdpr_store.data_class(tx, "signup") == DataClassRow(
            "signup", 2, DataClassBody.model_validate(revised), "2026-12-01T09:00:04.000000Z"
        )
        breach = gdpr_store.breach(tx, "b-1")
        assert breach is not None and breach.notified_at == "2026-12-02T10:00:00.000000Z"
        assert gdpr_store.retention(tx, "t-1") == RetentionSet("t-1", 30, 1, "2026-12-01T09:00:07.000000Z")
