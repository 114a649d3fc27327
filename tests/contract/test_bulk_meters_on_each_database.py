"""The rebuild's bulk meters fold (streams.bulk_meters) leaves exactly the views the streaming fold
leaves, on SQLite and on PostgreSQL, for any events (duplicates, unreadable records, both envelope
layouts, every aggregation, decimals of any scale) cut into any batches and chunks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.envelope import Envelope, encode
from schemas.meters import MeterDefinition
from schemas.topics import Topics
from stores import slos as slo_store
from stores import views
from stores.database import Database, PostgresDatabase, SqliteDatabase
from stores.schema import SCHEMA
from streams.bulk_meters import BulkMeterProjector, Deferred
from streams.log import LogRecord
from streams.projectors import MeterProjector
from tests.contract.conftest import DATABASE_URL, postgres_or_skip

TOPICS = Topics(prefix="t", usage_partitions=1)
START = datetime(2026, 11, 1, tzinfo=UTC)
KEEP = timedelta(days=7)
METERS = [
    MeterDefinition(
        slug="tokens",
        event_type="inference",
        aggregation="SUM",
        value_property="$.data.tokens",
        group_by={"model": "$.data.model"},
    ),
    MeterDefinition(slug="calls", event_type="inference", aggregation="COUNT"),
    MeterDefinition(slug="peak", event_type="inference", aggregation="MAX", value_property="$.data.tokens"),
    MeterDefinition(slug="low", event_type="inference", aggregation="MIN", value_property="$.data.tokens"),
    MeterDefinition(slug="last", event_type="inference", aggregation="LATEST", value_property="$.data.tokens"),
    MeterDefinition(slug="users", event_type="inference", aggregation="UNIQUE_COUNT", value_property="$.data.user"),
]
# An SLO on the same events: the bulk fold hands it the kept events of its type, as Envelopes.
SLO = {
    "event_type": "inference",
    "sli": "latency",
    "latency_property": "$.data.tokens",
    "threshold_ms": 100,
    "objective": 90,
    "window": "7d",
}
TABLES = (
    "meter_windows", "meter_totals", "seen_digests", "dropped_records", "dead_letters", "checkpoints", "meter_offsets",
    "slo_minutes", "slo_offsets", "slo_alerts", "slo_notifications",
)  # fmt: skip

events = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["t1", "t2"]),
            st.integers(0, 12),  # source id: repeats are duplicates
            st.integers(0, 180),  # minute of event time: spans hours
            st.sampled_from(["u1", "u2", "", "u\t3", "back\\slash"]),  # texts COPY's text format escapes
            st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False)
            | st.sampled_from(
                [Decimal("1"), Decimal("1.0"), Decimal("1.00"), Decimal(0), Decimal("1E+2"), Decimal("-0.000000000000000001")]
            ),
            st.sampled_from(["small", "large", None, "new\nline", 'q"uote']),
            st.sampled_from(["a", "b", "c", "nul\x00"]),  # a NUL: dead-lettered (the views cannot store it)
            st.booleans(),  # written by the code before layout 2 (schemas.envelope's upcaster reads it)
            st.booleans(),  # with an extension attribute (decoded as an Envelope by the bulk fold too)
        ),
        st.just(None),  # a record that is not an envelope
    ),
    max_size=40,
)


def records(drawn: list[Any]) -> list[LogRecord]:
    made = []
    for offset, item in enumerate(drawn):
        if item is None:
            made.append(LogRecord(TOPICS.usage, 0, offset, "x", b"not an envelope"))
            continue
        tenant, source_id, minute, subject, tokens, model, user, layout_1, extended = item
        moment = START + timedelta(minutes=minute, seconds=offset % 60)
        data = {"tokens": str(tokens) if offset % 2 else int(tokens) if tokens == tokens.to_integral() else str(tokens)}
        data |= {"model": model, "user": user}
        envelope = Envelope(
            id=f"id-{offset}", type="inference", tenant_id=tenant, source="gw", source_id=str(source_id),
            event_time=moment, recorded_time=moment, subject=subject or None, data=data,
            extensions={"region": "eu"} if extended else {},
        )  # fmt: skip
        made.append(LogRecord(TOPICS.usage, 0, offset, tenant, layout_1_value(envelope) if layout_1 else encode(envelope)))
    return made


def layout_1_value(envelope: Envelope) -> bytes:
    """An envelope as layout 1 wrote it (tests/contract/test_projectors_on_each_database.py)."""
    moment = envelope.event_time.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return orjson.dumps(
        {
            "id": envelope.id, "type": envelope.type, "schema_version": 1, "tenant_id": envelope.tenant_id,
            "source": envelope.source, "source_id": envelope.source_id, "subject": envelope.subject, "data_subject_id": None,
            "event_time": moment, "recorded_time": moment, "actor": {"key_id": "k1", "ip": "10.0.0.1", "user_agent": "x"},
            "traceparent": None, "extensions": {}, "data": envelope.data,
        }
    )  # fmt: skip


def rows(db: Database) -> dict[str, list[str]]:
    """Every row, arrays as sorted (PostgreSQL's merge keeps a unique count's tokens in no order)."""
    with db.transaction() as tx:
        return {
            t: sorted(repr(tuple(sorted(v) if isinstance(v, list) else v for v in r)) for r in tx.execute(f"SELECT * FROM {t}"))
            for t in TABLES
        }


def clear(db: Database) -> None:
    with db.transaction() as tx:
        for table in TABLES:
            tx.execute(f"DELETE FROM {table}")


@pytest.fixture(params=["sqlite", "postgres"])
def two(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Database, Database]]:
    """Two stores with the meters defined: one for each fold."""
    made: list[Database] = []
    schemas: list[str] = []
    for name in ("streaming", "bulk"):
        if request.param == "sqlite":
            made.append(SqliteDatabase(tmp_path / f"{name}.sqlite"))
        else:
            postgres_or_skip()
            schemas.append(f"t_{uuid.uuid4().hex[:12]}")
            made.append(PostgresDatabase(DATABASE_URL, schema=schemas[-1]))
        made[-1].migrate(SCHEMA)
        with made[-1].transaction() as tx:
            for definition in METERS:
                views.add_meter_definition(tx, "_platform", definition, f"def-{definition.slug}")
            slo_store.put(tx, "_platform", "latency", 1, SLO, "2026-11-01T00:00:00Z")
    yield made[0], made[1]
    for db in made:
        db.close()
    with psycopg.connect(DATABASE_URL, autocommit=True) if schemas else _nothing() as conn:
        for schema in schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=events, batch=st.integers(1, 6), chunk=st.integers(1, 50), deferred=st.booleans())
def test_the_bulk_fold_leaves_the_views_the_streaming_fold_leaves(
    two: tuple[Database, Database], drawn: list[Any], batch: int, chunk: int, deferred: bool
) -> None:
    streaming_db, bulk_db = two
    clear(streaming_db)
    clear(bulk_db)
    log = records(drawn)
    streaming = MeterProjector(streaming_db, TOPICS, keep_seen=KEEP)
    for start in range(0, len(log), batch):
        streaming.process(0, log[start : start + batch])
    later = Deferred() if deferred else None
    bulk = BulkMeterProjector(bulk_db, TOPICS, keep_seen=KEEP, seen={}, deferred=later)
    for start in range(0, len(log), chunk):
        bulk.process(0, log[start : start + chunk])
    if later is not None:
        later.flush(bulk_db)
    theirs, ours = rows(streaming_db), rows(bulk_db)
    differing = {
        t: (sorted(set(ours[t]) - set(theirs[t])), sorted(set(theirs[t]) - set(ours[t]))) for t in TABLES if ours[t] != theirs[t]
    }
    assert not differing, differing
