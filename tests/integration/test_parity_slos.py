"""SLO parity: one stream through the embedded runner (SQLite log and views) and through the Faust
worker (Kafka and PostgreSQL) gives identical SLO minute buckets, equal to the truth computed from
the events (tests/truth.py), for SLOs defined before the stream and half-way through it (caught up
from history), a tenant's and the platform's."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from commands.slos import Slo
from projections.slos import fold_id
from schemas.envelope import encode
from schemas.topics import Topics
from stores import slos as slo_store
from stores.database import Database, PostgresDatabase, SqliteDatabase
from stores.schema import SCHEMA as VIEW_SCHEMA
from streams.embedded_log import EmbeddedLog
from streams.kafka_log import KafkaLog
from streams.log import Outgoing
from streams.outbox import to_envelope
from streams.projectors import CatalogProjector, MeterProjector
from streams.runner import Runner
from tests import truth
from tests.integration.test_faust_worker import EVENT_TYPE, TENANTS, Stream, caught_up, to_records, wait_for
from tests.integration.worker import WorkerProcess

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

EVENTS = 3_000
LATENCY = {"event_type": EVENT_TYPE, "sli": "latency", "latency_property": "$.data.tokens", "objective": 99, "window": "7d"}
EARLY = [
    ("_platform", "large-fast", {**LATENCY, "match": {"$.data.model": "large"}, "threshold_ms": 25}),
    (TENANTS[0], "mine", {**LATENCY, "threshold_ms": 10}),
]
LATE = [
    ("_platform", "every", {**LATENCY, "threshold_ms": 40, "window": "30d"}),
    (TENANTS[1], "small", {**LATENCY, "match": {"$.data.model": "small"}, "threshold_ms": 5, "window": "28d"}),
]


# Defined with the early ones and deleted half-way: both runners end with it gone alike. Its buckets
# depend on when each runner's fold saw the deletion, so they are not compared.
DELETED = (TENANTS[1], "gone", {**LATENCY, "threshold_ms": 20})


def slo_defined(owner: str, name: str, body: dict[str, Any]) -> Outgoing:
    """The control-topic record the outbox relay publishes for a defined SLO."""
    envelope = to_envelope(Slo(owner=owner, name=name, spec=body).collect_events()[0])
    return Outgoing(envelope.id, encode(envelope))


def slo_deleted(owner: str, name: str, body: dict[str, Any]) -> Outgoing:
    """The control-topic record the outbox relay publishes for that SLO deleted (at version 1)."""
    slo = Slo(owner=owner, name=name, spec=body)
    slo.delete(owner=owner, name=name, slo_version=1)
    envelope = to_envelope(slo.collect_events()[1])
    return Outgoing(envelope.id, encode(envelope))


def slo_definitions(db: Database) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """The SLOs read as live, and the deletions, as the catalog's fold left them."""
    with db.transaction() as tx:
        live = sorted((row.owner, row.name, row.version) for row in slo_store.definitions(tx))
        deleted = sorted((str(o), str(n), int(v)) for o, n, v in tx.execute("SELECT owner, name, version FROM slo_deletions"))
    return live, deleted


def slo_buckets(db: Database) -> dict[tuple[str, str, int], tuple[int, int]]:
    with db.transaction() as tx:
        rows = tx.execute("SELECT slo, tenant_id, minute, good, total FROM slo_minutes")
    return {(slo, tenant, int(minute)): (int(good), int(total)) for slo, tenant, minute, good, total in rows}


def alert_transitions(db: Database, owner: str, name: str) -> list[tuple[str, str, str, str]]:
    with db.transaction() as tx:
        rows = tx.execute(
            "SELECT id, type, alert, occurred_at FROM slo_notifications WHERE tenant_id=? AND slo=? ORDER BY id", (owner, name)
        )
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def slos_caught_up(db: PostgresDatabase, log: KafkaLog) -> bool:
    ends = await log.end_offsets(log.topics.usage)
    with db.transaction() as tx:
        rows = tx.execute("SELECT slo, partition, next_offset FROM slo_offsets WHERE topic=?", (log.topics.usage,))
    seen = {(slo, int(p)): int(o) for slo, p, o in rows}
    return all(seen.get((fold_id(o, n, 1), p), 0) == end for o, n, _ in EARLY + LATE for p, end in ends.items())


async def test_embedded_runner_and_faust_worker_fold_identical_slo_buckets(
    tmp_path: Path,
    kafka_log: KafkaLog,
    topics: Topics,
    views_db: PostgresDatabase,
    database_url: str,
    worker_factory: Callable[[str, str], WorkerProcess],
) -> None:
    stream = Stream()
    first_half, second_half = stream.generate(EVENTS // 2), stream.generate(EVENTS - EVENTS // 2)
    embedded_log = EmbeddedLog(tmp_path / "log.sqlite", Topics(prefix=topics.prefix, usage_partitions=topics.usage_partitions))
    await embedded_log.start()
    for log in (embedded_log, kafka_log):
        await log.append(topics.control, [slo_defined(*slo) for slo in [*EARLY, DELETED]])
        await log.append(topics.usage, to_records(first_half))
        await log.append(topics.control, [slo_defined(*slo) for slo in LATE] + [slo_deleted(*DELETED)])
        await log.append(topics.usage, to_records(second_half))

    sqlite_views = SqliteDatabase(tmp_path / "views.sqlite")
    sqlite_views.migrate(VIEW_SCHEMA)
    keep = timedelta(days=8)
    runner = Runner(
        embedded_log,
        CatalogProjector(sqlite_views, embedded_log.topics),
        MeterProjector(sqlite_views, embedded_log.topics, keep_seen=keep),
        batch_size=300,
    )
    await runner.drain()

    worker = worker_factory(database_url, views_db.schema)
    worker.start()
    await wait_for(lambda: caught_up(views_db, kafka_log, []), worker, 90, "the worker to fold everything")
    await wait_for(lambda: slos_caught_up(views_db, kafka_log), worker, 90, "the SLOs to catch up")

    gone = fold_id(DELETED[0], DELETED[1], 1)
    embedded, kafka = (
        {key: counts for key, counts in slo_buckets(db).items() if key[0] != gone} for db in (sqlite_views, views_db)
    )
    assert embedded == kafka
    assert slo_definitions(sqlite_views) == slo_definitions(views_db)
    live, deleted = slo_definitions(sqlite_views)
    assert (DELETED[0], DELETED[1], 1) not in live and deleted == [(DELETED[0], DELETED[1], 1)]
    assert len(live) == len(EARLY + LATE)
    on_the_log = list(enumerate(first_half + second_half))
    for owner, name, body in EARLY + LATE:
        key = fold_id(owner, name, 1)
        want = truth.slo_minutes(on_the_log, owner, body)
        got = {(tenant, minute): counts for (slo, tenant, minute), counts in embedded.items() if slo == key}
        assert want and got == want, name
        assert {g for g, _ in want.values()} != {0}, "some minutes have good events"
    # A tenant's events are on one partition, in one order for both runners: so are its SLO's alerts.
    for owner, name, _ in EARLY + LATE:
        if owner != "_platform":
            assert alert_transitions(sqlite_views, owner, name) == alert_transitions(views_db, owner, name), name
    assert alert_transitions(sqlite_views, TENANTS[0], "mine"), "the tenant's SLO has fired"
    assert worker.stop() == 0
    await embedded_log.close()
    sqlite_views.close()
