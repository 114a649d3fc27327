"""Runner parity: one generated stream through the embedded runner (SQLite log and views)
and through the Faust worker (Kafka and PostgreSQL) gives identical views."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from projections.meter_state import BucketState
from projections.meters import RESOLUTIONS
from schemas.meters import Aggregation, MeterDefinition, WindowSize
from schemas.plans import Entitlement, Period
from schemas.topics import Topics
from stores import suspensions as suspension_store
from stores import views
from stores.database import Database, PostgresDatabase, SqliteDatabase
from stores.schema import SCHEMA as VIEW_SCHEMA
from streams.embedded_log import EmbeddedLog
from streams.kafka_log import KafkaLog
from streams.projectors import CatalogProjector, MeterProjector
from streams.runner import Runner
from tests import truth
from tests.integration.billing_truth import invoices_from
from tests.integration.gdpr_truth import gdpr_control, gdpr_views, suspension_control, webhook_control
from tests.integration.gdpr_truth import records as gdpr_records
from tests.integration.test_faust_worker import (
    EVENT_TYPE,
    TENANTS,
    Stream,
    caught_up,
    meter_defined,
    meter_deleted,
    notified,
    quota_set,
    to_records,
    wait_for,
)
from tests.integration.worker import WorkerProcess

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

EVENTS = 10_500  # plus every 37th event re-sent: more than 10,000 records on the log
# Counted over the first half of the stream, then deleted: neither runner keeps anything of it.
DOOMED = MeterDefinition(slug="doomed", event_type=EVENT_TYPE, aggregation=Aggregation.SUM, value_property="$.data.tokens")


def meters() -> tuple[list[MeterDefinition], list[MeterDefinition]]:
    """Defined before the stream, and defined half-way through it (so caught up from history)."""
    model = {"model": "$.data.model"}
    early = [
        MeterDefinition(
            slug="sum", event_type=EVENT_TYPE, aggregation=Aggregation.SUM, value_property="$.data.tokens", group_by=model
        ),
        MeterDefinition(slug="count", event_type=EVENT_TYPE, aggregation=Aggregation.COUNT),
        MeterDefinition(slug="latest", event_type=EVENT_TYPE, aggregation=Aggregation.LATEST, value_property="$.data.tokens"),
    ]
    late = [
        MeterDefinition(
            slug="max", event_type=EVENT_TYPE, aggregation=Aggregation.MAX, value_property="$.data.tokens", group_by=model
        ),
        MeterDefinition(slug="min", event_type=EVENT_TYPE, aggregation=Aggregation.MIN, value_property="$.data.tokens"),
        MeterDefinition(slug="avg", event_type=EVENT_TYPE, aggregation=Aggregation.AVG, value_property="$.data.tokens"),
        MeterDefinition(slug="users", event_type=EVENT_TYPE, aggregation=Aggregation.UNIQUE_COUNT, value_property="$.subject"),
        # A personal path, sealed: grouped by its pseudonym (one group per person and address).
        MeterDefinition(slug="emails", event_type=EVENT_TYPE, aggregation=Aggregation.COUNT, group_by={"email": "$.data.email"}),
    ]
    return early, late


# A quota per tenant, on the sum meter for two tenants (a month) and on the count meter for one (a day):
# limits the stream passes through several thresholds of.
QUOTAS = {
    TENANTS[0]: Entitlement(meter="sum", limit=Decimal(40_000), period=Period.MONTH, thresholds=[10, 50, 90, 100, 200]),
    TENANTS[1]: Entitlement(meter="sum", limit=Decimal(1_000_000), period=Period.MONTH, thresholds=[1, 5, 50]),
    TENANTS[2]: Entitlement(meter="count", limit=Decimal(2_000), period=Period.DAY, thresholds=[25, 75, 100]),
}
SUM = MeterDefinition(
    slug="sum",
    event_type=EVENT_TYPE,
    aggregation=Aggregation.SUM,
    value_property="$.data.tokens",
    group_by={"model": "$.data.model"},
)
COUNT = MeterDefinition(slug="count", event_type=EVENT_TYPE, aggregation=Aggregation.COUNT)


def quota_truth(tenant: str) -> dict[str, tuple[Decimal, str, list[int]]]:
    q = QUOTAS[tenant]
    return {tenant: (q.limit, q.period.value, q.thresholds)}


def all_buckets(db: Database, slugs: list[str]) -> dict[tuple[str, str, str, int, int, str, str], BucketState]:
    """Every stored bucket, at every resolution, per subject and group and in total, as a BucketState."""
    found: dict[tuple[str, str, str, int, int, str, str], BucketState] = {}
    with db.transaction() as tx:
        for tenant in TENANTS:
            for slug in slugs:
                for resolution in RESOLUTIONS:
                    for b in views.buckets(tx, tenant, slug, None, None, [], resolution=resolution):
                        found[("windows", tenant, slug, resolution, b.window_start, b.subject, b.group_key)] = b.state
                    for b in views.total_buckets(tx, tenant, slug, None, None, resolution=resolution):
                        found[("totals", tenant, slug, resolution, b.window_start, "", "")] = b.state
    return found


def query_answers(db: Database, meters: list[MeterDefinition]) -> dict[tuple[str, str, str, int], list[tuple[object, ...]]]:
    """Each meter queried per window size, per subject and group, as the API would answer (values as exact text)."""
    answers = {}
    with db.transaction() as tx:
        for tenant in TENANTS:
            for meter in meters:
                for window_size in (None, *WindowSize):
                    for n, shape in enumerate(
                        ({"group_by": [], "by_subject": False}, {"group_by": list(meter.group_by), "by_subject": True})
                    ):
                        rows = views.query_meter(
                            tx, tenant, meter, start=None, end=None, window_size=window_size, subjects=[], **shape
                        )
                        answers[(tenant, meter.slug, str(window_size), n)] = [
                            (r.window_start, r.window_end, r.subject, r.group_by, str(r.value)) for r in rows
                        ]
    assert any(answers.values())
    return answers


def status_rows(db: Database) -> list[tuple[object, ...]]:
    with db.transaction() as tx:
        return [tuple(r) for r in tx.execute("SELECT * FROM tenant_status_changes ORDER BY tenant_id, version")]


def webhook_rows(db: Database) -> list[tuple[object, ...]]:
    with db.transaction() as tx:
        return [tuple(r) for r in tx.execute("SELECT * FROM webhook_endpoints ORDER BY id")]


async def test_embedded_runner_and_faust_worker_build_identical_views(
    tmp_path: Path,
    kafka_log: KafkaLog,
    topics: Topics,
    views_db: PostgresDatabase,
    database_url: str,
    worker_factory: Callable[[str, str], WorkerProcess],
) -> None:
    early, late = meters()
    stream = Stream(personal_every=2)
    now = datetime.now(UTC)
    gdpr = gdpr_control(TENANTS, EVENT_TYPE, now)
    webhooks, webhooks_left = webhook_control(TENANTS)
    suspensions, suspended_at_end = suspension_control()
    first_half, second_half = stream.generate(EVENTS // 2), stream.generate(EVENTS - EVENTS // 2)
    slugs = [m.slug for m in early + late]

    # The same records, in the same order, onto both logs.
    embedded_log = EmbeddedLog(tmp_path / "log.sqlite", Topics(prefix=topics.prefix, usage_partitions=topics.usage_partitions))
    await embedded_log.start()
    for log in (embedded_log, kafka_log):
        await log.append(topics.control, [meter_defined(m) for m in early + [DOOMED]])
        await log.append(topics.control, [quota_set(tenant, q) for tenant, q in QUOTAS.items()])
        await log.append(topics.usage, to_records(first_half))
        await log.append(topics.control, gdpr_records(gdpr))
        await log.append(topics.control, gdpr_records(webhooks))
        await log.append(topics.control, gdpr_records(suspensions))
        await log.append(topics.control, meter_deleted(DOOMED))  # counted over the first half, then deleted
        await log.append(topics.control, [meter_defined(m) for m in late])
        await log.append(topics.usage, to_records(second_half))
    assert sum((await kafka_log.end_offsets(topics.usage)).values()) > 10_000

    sqlite_views = SqliteDatabase(tmp_path / "views.sqlite")
    sqlite_views.migrate(VIEW_SCHEMA)
    keep = timedelta(days=8)
    runner = Runner(
        embedded_log,
        CatalogProjector(sqlite_views, embedded_log.topics),
        MeterProjector(sqlite_views, embedded_log.topics, keep_seen=keep),
        batch_size=700,
    )
    await runner.drain()

    worker = worker_factory(database_url, views_db.schema)
    worker.start()
    await wait_for(lambda: caught_up(views_db, kafka_log, slugs), worker, 90, "the worker to fold everything")

    for db in (sqlite_views, views_db):  # nothing of the deleted meter in either
        with db.transaction() as tx:
            for table, column in (("meter_definitions", "slug"), ("meter_windows", "meter"), ("meter_offsets", "meter")):
                assert tx.execute(f"SELECT count(*) FROM {table} WHERE {column}=?", (DOOMED.slug,))[0][0] == 0, table
    embedded, kafka = all_buckets(sqlite_views, slugs), all_buckets(views_db, slugs)
    assert len(embedded) > 1000
    assert {key[3] for key in embedded} == set(RESOLUTIONS)
    assert embedded.keys() == kafka.keys()
    different = [key for key in embedded if embedded[key] != kafka[key]]
    assert not different, f"{len(different)} buckets differ, e.g. {different[:3]}"
    # The query path too: PostgreSQL's GROUP BY over the roll-ups and SQLite's roll-up in Python.
    assert query_answers(sqlite_views, early + late) == query_answers(views_db, early + late)
    # And both equal the ground truth computed from the events themselves.
    from tests.integration.test_faust_worker import stored_values

    for meter in (m for m in early + late if m.aggregation in (Aggregation.SUM, Aggregation.COUNT)):
        assert stored_values(views_db, meter) == stream.truth(meter)
    # Every aggregation, every window size, per subject and group: as tests/truth.py computes it from
    # the records in the order they went onto the log, with none of the code under test.
    on_the_log = list(enumerate(first_half + second_half))
    counted = truth.counted(on_the_log)  # once, not once per query
    for tenant in TENANTS:
        for meter in early + late:
            for window_size in (None, *WindowSize):
                for group_by, by_subject in (((), False), (tuple(meter.group_by), True)):
                    query = truth.Query(window_size=window_size, group_by=group_by, by_subject=by_subject)
                    want = truth.answer_counted(counted, tenant, meter, query)
                    assert want, (tenant, meter.slug)
                    for db in (sqlite_views, views_db):
                        with db.transaction() as tx:
                            got = views.query_meter(
                                tx, tenant, meter, start=None, end=None, window_size=window_size,
                                group_by=list(group_by), by_subject=by_subject, subjects=[],
                            )  # fmt: skip
                        assert truth.shown(got) == want, (db.__class__.__name__, tenant, meter.slug, window_size, group_by)
    # Quota thresholds: the same notifications from both runners, each reached threshold once.
    want = set().union(
        *(
            truth.thresholds_reached(on_the_log, SUM if q.meter == "sum" else COUNT, quota_truth(tenant))
            for tenant, q in QUOTAS.items()
        )
    )
    assert len(want) >= 4, want
    assert notified(sqlite_views) == notified(views_db) == want
    # Invoices: each month's usage as a close reads it, equal from both runners and to the truth, and
    # so byte-identical invoices priced from it.
    billed = [SUM, COUNT]
    assert invoices_from(sqlite_views, on_the_log, billed, TENANTS) == invoices_from(views_db, on_the_log, billed, TENANTS)
    # GDPR: data classes, requests and their last status, the unfinished ones, breaches and which are
    # overdue, retention periods: the same rows from both runners, and the state the log gives.
    want_gdpr = truth.gdpr_state(gdpr, now)
    (from_embedded, embedded_rows), (from_kafka, kafka_rows) = (gdpr_views(db, want_gdpr, now) for db in (sqlite_views, views_db))
    assert embedded_rows == kafka_rows
    assert from_embedded == from_kafka == want_gdpr
    assert embedded_rows["count"] == len(want_gdpr.requests) == 6 and len(want_gdpr.unfinished) == 2
    assert want_gdpr.overdue and want_gdpr.data_classes[EVENT_TYPE][0] == 2
    # Webhook endpoints: the same rows from both runners, those not deleted as the commands left them.
    endpoints = [webhook_rows(db) for db in (sqlite_views, views_db)]
    assert endpoints[0] == endpoints[1]
    assert {(row[0], row[1], row[2]) for row in endpoints[0] if row[5] is None} == webhooks_left
    # Tenants' suspensions: the same changes from both runners, each tenant's last one its status.
    changes = [status_rows(db) for db in (sqlite_views, views_db)]
    assert changes[0] == changes[1] and len(changes[0]) == 6
    for db in (sqlite_views, views_db):
        with db.transaction() as tx:
            now_suspended = suspension_store.suspensions(tx, suspended_at_end)
        assert {t: (s.reason if (s := now_suspended.get(t)) else None) for t in suspended_at_end} == suspended_at_end
    # The sealed values' pseudonyms group the meter: several groups per person, none in clear.
    emails = truth.answer_counted(counted, TENANTS[0], late[-1], truth.Query(group_by=("email",)))
    groups = {row[3] for row in emails}
    assert len(groups) == 7 and '{"email":null}' in groups and all('"ps1_' in g for g in groups - {'{"email":null}'})
    assert worker.stop() == 0
    await embedded_log.close()
    sqlite_views.close()
