"""Soak (`make soak`, not part of `make test`): the Faust worker SIGKILLed at random points
five times during a 200,000-event stream, half of its events carrying a sealed personal value; the
final meters (one grouped by that value's pseudonym), quota notices, invoices' usage, SLO minutes,
GDPR control state and tenants' suspensions equal the ground truth, a meter deleted midway leaves
nothing behind, and the audit chains appended meanwhile hold each entry once."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from omni.audit_keys import private_pem
from projections.slos import fold_id
from schemas.envelope import Envelope, encode
from schemas.meters import Aggregation, MeterDefinition, WindowSize
from schemas.plans import Entitlement, Period
from schemas.topics import Topics
from stores import suspensions as suspension_store
from stores import views
from stores.database import PostgresDatabase
from streams.kafka_log import KafkaLog
from streams.log import Outgoing
from tests import truth
from tests.integration.billing_truth import invoices_from
from tests.integration.gdpr_truth import gdpr_control, gdpr_views, suspension_control
from tests.integration.gdpr_truth import records as gdpr_records
from tests.integration.test_audit_parity import PER_TENANT, audit_folded, audit_records, chains
from tests.integration.test_audit_parity import TENANTS as AUDITED
from tests.integration.test_faust_worker import (
    CALLS,
    EVENT_TYPE,
    TENANTS,
    TOKENS,
    TOKENS_BY_MODEL,
    Stream,
    assert_views_equal_truth,
    caught_up,
    meter_defined,
    meter_deleted,
    notified,
    quota_set,
    to_records,
    wait_for,
)
from tests.integration.test_parity_slos import EARLY, LATE, slo_buckets, slo_defined, slos_caught_up
from tests.integration.worker import WorkerProcess

pytestmark = [pytest.mark.soak, pytest.mark.kafka, pytest.mark.postgres]


EVENTS = int(os.environ.get("OMNI_SOAK_EVENTS", "200000"))
KILLS = int(os.environ.get("OMNI_SOAK_KILLS", "5"))

# Quotas the stream passes thresholds of (about 65,000 events and 1.7M tokens per tenant at 200,000 events).
QUOTAS = {
    TENANTS[0]: Entitlement(meter="tokens", limit=Decimal(EVENTS * 5), period=Period.MONTH, thresholds=[10, 50, 100, 150]),
    TENANTS[1]: Entitlement(meter="calls", limit=Decimal(EVENTS // 6), period=Period.DAY, thresholds=[20, 60, 100]),
}


# A personal path, sealed at admission: the meter groups by its pseudonym.
EMAILS = MeterDefinition(slug="emails", event_type=EVENT_TYPE, aggregation=Aggregation.COUNT, group_by={"email": "$.data.email"})
# Counted from the start, deleted midway: nothing of it may be left, whatever the kills interrupted.
DOOMED = MeterDefinition(slug="doomed", event_type=EVENT_TYPE, aggregation=Aggregation.SUM, value_property="$.data.tokens")


@pytest.mark.timeout(1800)
async def test_five_random_sigkills_during_a_long_stream(
    kafka_log: KafkaLog,
    topics: Topics,
    views_db: PostgresDatabase,
    database_url: str,
    worker_factory: Callable[[str, str], WorkerProcess],
) -> None:
    rng = random.Random(int(os.environ.get("OMNI_SOAK_SEED", "2026")))
    stream = Stream(personal_every=2)
    now = datetime.now(UTC)
    gdpr = gdpr_control(TENANTS, EVENT_TYPE, now)
    suspensions, statuses = suspension_control()
    await kafka_log.append(topics.control, [meter_defined(TOKENS), meter_defined(CALLS), meter_defined(EMAILS)])
    await kafka_log.append(topics.control, [meter_defined(DOOMED)])
    await kafka_log.append(topics.control, [quota_set(tenant, q) for tenant, q in QUOTAS.items()])
    await kafka_log.append(topics.control, [slo_defined(*slo) for slo in EARLY])
    worker = worker_factory(database_url, views_db.schema)
    worker.env["OMNI_AUDIT_SIGNING_KEY"] = private_pem(Ed25519PrivateKey.generate())
    worker.start()
    audit = audit_records()  # interleaved across chains, some republished as after a relay's crash

    on_the_log: list[Envelope] = []  # every record, re-sent copies too, in the order appended

    async def produce() -> None:
        chunk = 5000
        for sent in range(0, EVENTS, chunk):
            batch = stream.generate(min(chunk, EVENTS - sent))
            await kafka_log.append(topics.usage, to_records(batch))
            on_the_log.extend(batch)
            if sent == EVENTS // 2:
                await kafka_log.append(topics.control, [meter_defined(TOKENS_BY_MODEL)])
                await kafka_log.append(topics.control, [slo_defined(*slo) for slo in LATE])  # caught up from history
                await kafka_log.append(topics.control, gdpr_records(gdpr))
                await kafka_log.append(topics.control, meter_deleted(DOOMED))
                await kafka_log.append(topics.control, [Outgoing(e.id, encode(e)) for e in suspensions])
            share = len(audit) * (sent + chunk) // EVENTS - len(audit) * sent // EVENTS
            appended = len(audit) * sent // EVENTS
            await kafka_log.append(topics.audit, audit[appended : appended + share])
            await asyncio.sleep(0.05)

    producing = asyncio.create_task(produce())
    for _ in range(KILLS):
        await asyncio.sleep(rng.uniform(2.0, 8.0))
        worker.kill()
        worker.start()
    await producing
    slugs = ["tokens", "calls", "tokens-by-model", "emails"]
    await wait_for(lambda: caught_up(views_db, kafka_log, slugs), worker, 1200, "the worker to fold the whole stream")
    await wait_for(lambda: slos_caught_up(views_db, kafka_log), worker, 300, "the SLOs to catch up")
    await wait_for(lambda: audit_folded(views_db, kafka_log), worker, 300, "the worker to fold the audit topic")
    assert_views_equal_truth(views_db, stream, [TOKENS, CALLS, TOKENS_BY_MODEL, EMAILS])
    # The answers the API gives, as tests/truth.py computes them from the log with none of the code under test.
    counted = truth.counted(enumerate(on_the_log))  # once, not once per query
    for tenant in TENANTS:
        for meter in (TOKENS, CALLS, TOKENS_BY_MODEL, EMAILS):
            for query in (
                truth.Query(),
                truth.Query(window_size=WindowSize.HOUR, group_by=tuple(meter.group_by), by_subject=True),
            ):
                with views_db.transaction() as tx:
                    got = views.query_meter(
                        tx, tenant, meter, start=None, end=None, window_size=query.window_size,
                        group_by=list(query.group_by), by_subject=query.by_subject, subjects=[],
                    )  # fmt: skip
                assert truth.shown(got) == truth.answer_counted(counted, tenant, meter, query), (tenant, meter.slug)
    # Quota thresholds: each one the usage reached, once, whatever the kills interrupted.
    want = set().union(
        *(
            truth.thresholds_reached(
                enumerate(on_the_log), TOKENS if q.meter == "tokens" else CALLS, {t: (q.limit, q.period.value, q.thresholds)}
            )
            for t, q in QUOTAS.items()
        )
    )
    assert want and notified(views_db) == want
    # Invoices: each month's usage as a close reads it equals the truth's, whatever the kills interrupted.
    assert invoices_from(views_db, list(enumerate(on_the_log)), [TOKENS, CALLS], TENANTS)
    # SLO minutes (good, total), each SLO's over the whole log, the late ones caught up from history.
    folded = slo_buckets(views_db)
    for owner, name, body in EARLY + LATE:
        key = fold_id(owner, name, 1)
        want_minutes = truth.slo_minutes(enumerate(on_the_log), owner, body)
        assert want_minutes and {(t, m): c for (slo, t, m), c in folded.items() if slo == key} == want_minutes, name
    # The audit chains: every entry linked once, republished ones too, whatever the kills interrupted.
    entries, heads, _ = chains(views_db)
    assert len(entries) == len(AUDITED) * PER_TENANT
    assert [(chain, length) for chain, length, _ in heads] == [(tenant, PER_TENANT) for tenant in sorted(AUDITED)]
    # GDPR control state: data classes, requests and their last status, breaches and which are overdue,
    # retention periods, as the log gives them.
    want_gdpr = truth.gdpr_state(gdpr, now)
    assert gdpr_views(views_db, want_gdpr, now)[0] == want_gdpr and want_gdpr.unfinished and want_gdpr.overdue
    # The meter deleted midway: no definition, bucket or offset of it; tenants' statuses as the log left them.
    with views_db.transaction() as tx:
        for table, column in (("meter_definitions", "slug"), ("meter_windows", "meter"), ("meter_totals", "meter"), ("meter_offsets", "meter")):  # fmt: skip
            assert tx.execute(f"SELECT count(*) FROM {table} WHERE {column}='doomed'")[0][0] == 0, table
        held = {t: suspension_store.suspension(tx, t) for t in statuses}
    assert {t: None if s is None else s.reason for t, s in held.items()} == statuses
    assert worker.runs == KILLS + 1
    assert worker.stop() == 0
