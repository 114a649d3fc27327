"""The in-process runner as embedded mode wires it (build_runner), over the embedded log and SQLite,
without a platform around it: the control topic folded into the catalog (tenants, meter definitions,
the highest store position applied, which a republished batch never lowers), usage folded into the
meters with exact counts of what each step moved, a meter defined late caught up from the log, and
the loop (`run`) woken by an append and stopped when told."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from commands.control_plane import CommandContext, ControlPlane
from omni import failpoints, metrics
from omni.bootstrap import event_store_env
from omni.settings import Settings
from projections.quotas import CONSUME_SOURCE, QUOTA_CONSUME, REFUSALS_SOURCE, REFUSED, period_of
from schemas.envelope import Envelope, encode
from schemas.meters import MeterDefinition
from schemas.plans import Entitlement, Period, PlanBody
from schemas.topics import Topics
from stores import quotas as quota_views
from stores import suspensions, views
from stores.database import SqliteDatabase
from stores.schema import SCHEMA as VIEW_SCHEMA
from streams.embedded_log import EmbeddedLog
from streams.embedded_quotas import EmbeddedQuotaLedger
from streams.log import Outgoing
from streams.outbox import RELAY, OutboxRelay
from streams.projectors import API_CALLS, CATALOG, CATALOG_APPLIED, METERS
from streams.quota_ledger import ConsumeRequest
from streams.runner import Runner, build_runner
from tests.loop_waits import Waits

CTX = CommandContext(key_id="admin")
START = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
COUNT = MeterDefinition(slug="calls", event_type="call", aggregation="COUNT")
TOKENS = MeterDefinition(slug="tokens", event_type="call", aggregation="SUM", value_property="$.data.tokens")


@dataclass
class Embedded:
    settings: Settings
    control: ControlPlane
    log: EmbeddedLog
    db: SqliteDatabase
    relay: OutboxRelay
    runner: Runner

    def read(self, work):  # type: ignore[no-untyped-def]
        with self.db.transaction() as tx:
            return work(tx)

    def total(self, meter: str, tenant: str) -> Decimal:
        rows = self.read(lambda tx: views.buckets(tx, tenant, meter, None, None, []))
        return sum((b.state.total if meter == "tokens" else Decimal(b.state.count) for b in rows), Decimal(0))


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[Embedded]:
    settings = Settings(mode="embedded", data_dir=tmp_path, topic_prefix="run", usage_partitions=2, runner_batch_size=7)
    topics = Topics(prefix=settings.topic_prefix, usage_partitions=settings.usage_partitions)
    control = ControlPlane(env=event_store_env(settings))
    log = EmbeddedLog(tmp_path / "log.sqlite", topics)
    await log.start()
    db = SqliteDatabase(tmp_path / "views.sqlite")
    db.migrate(VIEW_SCHEMA)
    yield Embedded(settings, control, log, db, OutboxRelay(control, log, db, topics), build_runner(settings, db, log))
    await log.close()
    db.close()
    control.close()


async def use(embedded: Embedded, tenant: str, n: int, first: int = 0) -> None:
    items = []
    for i in range(first, first + n):
        moment = START + timedelta(seconds=i)
        envelope = Envelope(
            id=f"id-{i}", type="call", tenant_id=tenant, source="gw", source_id=f"e{i}", event_time=moment,
            recorded_time=moment, data={"tokens": 2},
        )  # fmt: skip
        items.append(Outgoing(tenant, encode(envelope)))
    await embedded.log.append(embedded.log.topics.usage, items)


def test_build_runner_wires_both_topics_with_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        mode="embedded", data_dir=tmp_path, acceptance_window_seconds=3600, future_tolerance_seconds=60, runner_batch_size=9
    )
    topics = Topics(prefix="w", usage_partitions=3)
    log = EmbeddedLog(tmp_path / "log.sqlite", topics)
    runner = build_runner(settings, SqliteDatabase(tmp_path / "v.sqlite"), log)
    assert runner.log is log and runner.batch_size == 9
    assert runner.catalog.topic == topics.control
    assert (runner.meters.topic, runner.meters.consumer) == (topics.usage, METERS)
    assert runner.api_calls is not None
    assert (runner.api_calls.topic, runner.api_calls.consumer) == (topics.api_calls, API_CALLS)
    assert runner.meters.keep_seen == runner.api_calls.keep_seen == timedelta(seconds=3660)
    assert runner.meter_projectors == (runner.meters, runner.api_calls)
    assert runner.audit is not None and runner.audit.topic == topics.audit


async def test_a_step_folds_the_catalog_and_usage_and_says_how_many_records_it_moved(embedded: Embedded) -> None:
    tenant, _ = embedded.control.create_tenant(CTX, "acme", "pro")
    embedded.control.define_meter(CTX, COUNT)
    assert await embedded.relay.relay_once() == 6  # 4 control events, 2 audit entries
    await use(embedded, str(tenant.id), 20)
    ends = await embedded.log.end_offsets(embedded.log.topics.usage)

    # Batches of 7: the 4 control records, at most 7 usage records per partition and step, and the 2 audit entries.
    assert await embedded.runner.step() == 4 + sum(min(7, end) for end in ends.values()) + 2
    await embedded.runner.drain()
    assert await embedded.runner.step() == 0

    assert [(t[0], t[1]) for t in embedded.read(lambda tx: suspensions.tenants(tx, 100, None, None))] == [
        (str(tenant.id), "acme")
    ]
    assert [m.slug for m in embedded.read(views.meter_definitions)] == ["calls"]
    assert embedded.read(lambda tx: views.checkpoints(tx, CATALOG, embedded.log.topics.control)) == {0: 4}
    position = embedded.read(lambda tx: views.relay_position(tx, RELAY))
    assert position > 0 and embedded.read(lambda tx: views.relay_position(tx, CATALOG_APPLIED)) == position - 1
    assert embedded.total("calls", str(tenant.id)) == 20
    assert embedded.read(lambda tx: views.checkpoints(tx, METERS, embedded.log.topics.usage)) == {
        p: e for p, e in ends.items() if e
    }
    # Each audit entry linked into its chain: the tenant's creation, and the platform's meter.
    chains = embedded.read(lambda tx: tx.execute("SELECT chain, length FROM audit_heads"))
    assert {tuple(row) for row in chains} == {("_platform", 1), (str(tenant.id), 1)}
    assert set((await embedded.runner.lag()).values()) == {0}
    assert ("audit", 0) in await embedded.runner.lag()


async def test_a_republished_catalog_changes_nothing_and_never_lowers_the_position_applied(embedded: Embedded) -> None:
    embedded.control.create_tenant(CTX, "acme", "pro")
    embedded.control.define_meter(CTX, COUNT)
    await embedded.relay.relay_once()
    await embedded.runner.drain()
    applied = embedded.read(lambda tx: views.relay_position(tx, CATALOG_APPLIED))
    with embedded.db.transaction() as tx:
        views.set_relay_position(tx, RELAY, 0)  # published, the position never saved: all again
    await embedded.relay.relay_once()
    # the control records, and the audit entries (folded at most every second, or when told everything): each linked once
    assert await embedded.runner.step(everything=True) == 4 + 2
    assert sorted(row[0] for row in embedded.read(lambda tx: tx.execute("SELECT length FROM audit_heads"))) == [1, 1]
    assert embedded.read(lambda tx: views.relay_position(tx, CATALOG_APPLIED)) == applied
    assert len(embedded.read(lambda tx: suspensions.tenants(tx, 100, None, None))) == 1
    assert [m.slug for m in embedded.read(views.meter_definitions)] == ["calls"]


async def test_a_meter_defined_late_is_caught_up_from_the_log(embedded: Embedded) -> None:
    tenant, _ = embedded.control.create_tenant(CTX, "acme", "pro")
    embedded.control.define_meter(CTX, COUNT)
    await embedded.relay.relay_once()
    await use(embedded, str(tenant.id), 30)
    await embedded.runner.drain()
    embedded.control.define_meter(CTX, TOKENS)
    await embedded.relay.relay_once()
    assert await embedded.runner.catch_up() == 0  # not in the catalog yet: nothing to catch up
    await embedded.runner.step()  # the catalog learns of it, then catch-up starts
    await embedded.runner.drain()
    assert embedded.total("tokens", str(tenant.id)) == 60
    assert embedded.total("calls", str(tenant.id)) == 30
    assert embedded.runner.meters.lagging() == []


async def test_the_loop_folds_what_is_appended_when_woken_and_stops_when_told(embedded: Embedded) -> None:
    tenant, _ = embedded.control.create_tenant(CTX, "acme", "pro")
    embedded.control.define_meter(CTX, COUNT)
    await embedded.relay.relay_once()
    stop = asyncio.Event()
    loop = asyncio.create_task(embedded.runner.run(stop, embedded.log.appended, idle=30.0))  # only a wake is quick
    try:
        await asyncio.sleep(0.2)
        assert [m.slug for m in embedded.read(views.meter_definitions)] == ["calls"]
        await use(embedded, str(tenant.id), 10)  # sets `appended`
        for _ in range(200):
            if embedded.total("calls", str(tenant.id)) == 10:
                break
            await asyncio.sleep(0.01)
        assert embedded.total("calls", str(tenant.id)) == 10
    finally:
        stop.set()
        await asyncio.wait_for(loop, 2.0)


async def test_the_catalog_holds_each_tenant_key_and_revocation_as_commanded(embedded: Embedded) -> None:
    tenant, first = embedded.control.create_tenant(CTX, "acme", "pro")
    second = embedded.control.issue_key(CTX, str(tenant.id), label="ci")
    embedded.control.revoke_key(CTX, first.key_id)
    await embedded.relay.relay_once()
    await embedded.runner.drain()
    [(tenant_id, name, plan, created_at)] = embedded.read(lambda tx: suspensions.tenants(tx, 100, None, None))
    assert (tenant_id, name, plan) == (str(tenant.id), "acme", "pro") and created_at
    keys = {
        key_id: (label, issued, revoked)
        for key_id, label, issued, revoked in embedded.read(lambda tx: views.keys_of(tx, str(tenant.id)))
    }
    assert set(keys) == {first.key_id, second.key_id}
    assert keys[second.key_id][0] == "ci" and keys[second.key_id][2] is None
    assert keys[first.key_id][2] is not None  # revoked, and when


def waiting_runner(embedded: Embedded, waits: Waits) -> Runner:
    """The fixture's projectors in a runner whose clock, sleep and pause are the test's."""
    runner = embedded.runner
    return Runner(
        embedded.log,
        runner.catalog,
        runner.meters,
        batch_size=runner.batch_size,
        api_calls=runner.api_calls,
        clock=waits.clock,
        sleep=waits.sleep,
        pause_=waits.pause,
    )


async def test_the_loop_pauses_idle_clears_its_wake_and_reports_the_lag_once_a_second(embedded: Embedded) -> None:
    stop, wake = asyncio.Event(), asyncio.Event()
    reports: list[float] = []

    async def at(now: float) -> None:
        waits.now = now

    waits = Waits(stop, [lambda: at(0.5), lambda: at(1.0), lambda: at(1.0)])
    runner = waiting_runner(embedded, waits)
    report_lag = runner.report_lag

    async def reported() -> None:
        reports.append(waits.now)
        await report_lag()

    runner.report_lag = reported  # type: ignore[method-assign]
    wake.set()  # woken before it starts: the first pause finds the wake set, the next ones cleared
    await asyncio.wait_for(runner.run(stop, wake), 5.0)
    assert waits.waited == [("pause", 0.05)] * 3  # nothing to fold: the default idle pause, every round
    assert waits.woken_at_pause == [True, False, False]
    assert reports == [0.0, 1.0]  # at once, then when a second has gone by, not in between


async def test_after_an_outage_or_a_failed_step_the_loop_waits_a_second_then_pauses(embedded: Embedded) -> None:
    tenant, _ = embedded.control.create_tenant(CTX, "acme", "pro")
    embedded.control.define_meter(CTX, COUNT)
    await embedded.relay.relay_once()
    await embedded.runner.drain()
    stop = asyncio.Event()

    async def back_with_a_failing_fold() -> None:
        await embedded.log.start()
        await use(embedded, str(tenant.id), 1)
        failpoints.arm(failpoints.METERS_BEFORE_COMMIT)  # the next fold fails once, then folds

    folded_at_pause: list[Decimal] = []

    async def folded() -> None:
        folded_at_pause.append(embedded.total("calls", str(tenant.id)))

    waits = Waits(stop, [back_with_a_failing_fold, folded, folded])
    await embedded.log.close()  # the first round meets an outage
    try:
        await asyncio.wait_for(waiting_runner(embedded, waits).run(stop, idle=0.25), 5.0)
    finally:
        failpoints.disarm_all()
    # outage: a second, then the idle pause; failed fold: the same, before folding again; then the
    # record folds, and the loop goes straight on to the next step, which finds nothing and pauses
    assert waits.waited == [("sleep", 1.0), ("pause", 0.25), ("sleep", 1.0), ("pause", 0.25), ("pause", 0.25)]
    assert folded_at_pause == [0, 1]


ON_0, ON_1 = "d", "a"  # tenants whose usage lands on partition 0 and on partition 1 of two


async def test_a_step_counts_what_its_catch_up_folded_on_every_partition(embedded: Embedded) -> None:
    embedded.control.define_meter(CTX, COUNT)
    await embedded.relay.relay_once()
    await use(embedded, ON_0, 20)
    await use(embedded, ON_1, 20, first=20)
    assert await embedded.log.end_offsets(embedded.log.topics.usage) == {0: 20, 1: 20}
    await embedded.runner.drain()
    embedded.control.define_meter(CTX, TOKENS)
    await embedded.relay.relay_once()
    # the definition (1 control record, 1 audit entry), then catch-up: a batch of 7 on each partition
    assert await embedded.runner.step(everything=True) == 1 + 1 + 7 + 7
    assert await embedded.runner.catch_up() == 7 + 7
    await embedded.runner.drain()
    assert (embedded.total("tokens", ON_0), embedded.total("tokens", ON_1)) == (40, 40)


async def test_the_lag_is_reported_for_each_projector_and_partition(embedded: Embedded) -> None:
    await use(embedded, ON_0, 3)
    await use(embedded, ON_1, 5, first=3)
    gauges = {(p, str(partition)): -1.0 for p in (CATALOG, METERS, API_CALLS) for partition in (0, 1)}
    for labels, sentinel in gauges.items():  # whatever other tests left there
        metrics.VIEWS_LAG.labels(*labels).set(sentinel)
    await embedded.runner.report_lag()
    exposed = {
        (p, partition): REGISTRY.get_sample_value("omni_views_lag_records", {"projector": p, "partition": partition})
        for p, partition in gauges
    }
    assert exposed == {
        (CATALOG, "0"): 0.0,  # the control topic has one partition: partition 1 is not reported
        (CATALOG, "1"): -1.0,
        (METERS, "0"): 3.0,
        (METERS, "1"): 5.0,
        (API_CALLS, "0"): 0.0,
        (API_CALLS, "1"): 0.0,
    }


async def test_meter_definitions_are_the_platforms_in_the_catalog(embedded: Embedded) -> None:
    embedded.control.define_meter(CTX, COUNT)
    await embedded.relay.relay_once()
    await embedded.runner.drain()
    owners = embedded.read(lambda tx: tx.execute("SELECT slug, tenant_id FROM meter_definitions"))
    assert [tuple(row) for row in owners] == [("calls", "_platform")]


async def test_a_quota_changes_threshold_sweep_commits_with_the_catalog_and_notifies_once(embedded: Embedded) -> None:
    """The sweep of a plan assignment (thresholds the usage already folded has reached) is written in
    the catalog's own transaction: a crash before its commit leaves no notification, and the
    batch folded again (or republished) notifies once."""
    tenant, _ = embedded.control.create_tenant(CTX, "acme", "free")
    embedded.control.define_meter(CTX, COUNT)
    plan = PlanBody(entitlements=[Entitlement(meter="calls", limit=Decimal(10), period=Period.MONTH, thresholds=[50, 100])])
    embedded.control.put_plan(CTX, "metered", plan)
    await embedded.relay.relay_once()
    await used_now(embedded, str(tenant.id), 6)  # this month's usage (the sweep is as of the change)
    await embedded.runner.drain()
    embedded.control.assign_plan(CTX, str(tenant.id), "metered")
    await embedded.relay.relay_once()

    failpoints.arm(failpoints.CATALOG_BEFORE_COMMIT)
    try:
        with pytest.raises(failpoints.FailpointHit):
            await embedded.runner.step()
        assert thresholds(embedded, str(tenant.id)) == []
    finally:
        failpoints.disarm_all()
    await embedded.runner.drain()
    assert thresholds(embedded, str(tenant.id)) == [50]  # 6 of 10 used when the plan came
    with embedded.db.transaction() as tx:
        views.set_relay_position(tx, RELAY, 0)  # the relay's position lost: everything republished
    await embedded.relay.relay_once()
    await embedded.runner.drain()
    assert thresholds(embedded, str(tenant.id)) == [50]


METERED = PlanBody(entitlements=[Entitlement(meter="calls", limit=Decimal(10), period=Period.MONTH, thresholds=[50, 100])])


async def used_now(embedded: Embedded, tenant: str, n: int, *, first: int = 0, type_: str = "call") -> None:
    """`n` events of this month (five seconds ago), ids from `first` on."""
    now = datetime.now(UTC) - timedelta(seconds=5)
    await embedded.log.append(
        embedded.log.topics.usage,
        [Outgoing(tenant, encode(Envelope(
            id=f"id-{i}", type=type_, tenant_id=tenant, source="gw", source_id=f"e{i}", event_time=now,
            recorded_time=now, data={},
        ))) for i in range(first, first + n)],
    )  # fmt: skip


def thresholds(embedded: Embedded, tenant: str) -> list[int]:
    rows = embedded.read(lambda tx: quota_views.notifications(tx, tenant, 100, None))
    return sorted(int(row[5]) for row in rows)


async def test_the_fold_notifies_each_threshold_usage_crosses_under_a_quota_once(embedded: Embedded) -> None:
    tenant, _ = embedded.control.create_tenant(CTX, "acme", "free")
    embedded.control.define_meter(CTX, COUNT)
    embedded.control.put_plan(CTX, "metered", METERED)
    embedded.control.assign_plan(CTX, str(tenant.id), "metered")
    await embedded.relay.relay_once()
    await embedded.runner.drain()
    await used_now(embedded, str(tenant.id), 4)
    await embedded.runner.drain()
    assert thresholds(embedded, str(tenant.id)) == []
    await used_now(embedded, str(tenant.id), 1, first=4)
    await embedded.runner.drain()
    assert thresholds(embedded, str(tenant.id)) == [50]  # 5 of 10
    await used_now(embedded, str(tenant.id), 7, first=5)
    await embedded.runner.drain()
    assert thresholds(embedded, str(tenant.id)) == [50, 100]  # 12 of 10: facts pass a limit, notified once


async def test_a_meter_defined_after_its_usage_notifies_what_its_catch_up_crosses(embedded: Embedded) -> None:
    tenant, _ = embedded.control.create_tenant(CTX, "acme", "free")
    await embedded.relay.relay_once()
    await used_now(embedded, str(tenant.id), 6)
    await embedded.runner.drain()  # no meter yet: nothing folded
    embedded.control.define_meter(CTX, COUNT)
    embedded.control.put_plan(CTX, "metered", METERED)
    embedded.control.assign_plan(CTX, str(tenant.id), "metered")
    await embedded.relay.relay_once()
    await embedded.runner.drain()  # the sweep finds the meter empty; its catch-up crosses 50 %
    assert embedded.total("calls", str(tenant.id)) == 6
    assert thresholds(embedded, str(tenant.id)) == [50]


async def test_the_fold_counts_facts_in_the_quota_counters_once_even_when_folded_again(embedded: Embedded) -> None:
    ledger = EmbeddedQuotaLedger(embedded.log, keep=timedelta(days=1))
    await ledger.start()
    runner = build_runner(embedded.settings, embedded.db, embedded.log, ledger=ledger)
    tenant, _ = embedded.control.create_tenant(CTX, "acme", "free")
    embedded.control.define_meter(CTX, COUNT)
    await embedded.relay.relay_once()
    await runner.drain()
    month = period_of(datetime.now(UTC) - timedelta(seconds=5), Period.MONTH)
    await used_now(embedded, str(tenant.id), 5)
    failpoints.arm(failpoints.METERS_BEFORE_COMMIT)  # counted, then the views' commit fails
    try:
        with pytest.raises(failpoints.FailpointHit):
            await runner.step()
    finally:
        failpoints.disarm_all()
    await runner.drain()  # the batch folded again: counted already
    assert await ledger.used(str(tenant.id), "calls", month) == 5
    await used_now(embedded, str(tenant.id), 3, first=5, type_="other")  # a batch no meter counts
    await runner.drain()  # moves the marks all the same
    assert await ledger.used(str(tenant.id), "calls", month) == 5
    outcome = await ledger.consume(consume_of_one_call(str(tenant.id), "req-1"))
    assert outcome.decision.accepted and outcome.decision.used == 6  # counted as it is decided...
    await runner.drain()
    assert await ledger.used(str(tenant.id), "calls", month) == 6  # ...not again when folded
    assert embedded.total("calls", str(tenant.id)) == 6
    marks = embedded.log.run_locked(lambda db: db.execute("SELECT topic, partition, next_offset FROM quota_marks").fetchall())
    ends = await embedded.log.end_offsets(embedded.log.topics.usage)
    assert sorted(marks) == sorted((embedded.log.topics.usage, p, end) for p, end in ends.items() if end)


def consume_of_one_call(tenant: str, idempotency_key: str) -> ConsumeRequest:
    """What POST /v1/quotas/calls/consume asks the ledger, without a quota (never refused)."""
    now = datetime.now(UTC) - timedelta(seconds=5)
    period = period_of(now, Period.DAY)
    usage = Envelope(
        id=f"u-{idempotency_key}", type="call", tenant_id=tenant, source=CONSUME_SOURCE, source_id=idempotency_key,
        event_time=now, recorded_time=now, data={}, extensions={QUOTA_CONSUME: period.text},
    )  # fmt: skip
    refusal = Envelope(
        id=f"r-{idempotency_key}", type=REFUSED, tenant_id=tenant, source=REFUSALS_SOURCE, source_id=idempotency_key,
        event_time=now, recorded_time=now, data={},
    )  # fmt: skip
    return ConsumeRequest(
        tenant_id=tenant, meter="calls", amount=Decimal(1), idempotency_key=idempotency_key, subject=None,
        entitlement=None, period=period, usage=(usage, encode(usage)), refusal=refusal,
    )  # fmt: skip


def freshness() -> dict[tuple[str, str, str], float]:
    return {
        (m.name, s.labels["projector"], s.labels["partition"]): s.value for m in metrics.FRESHNESS.collect() for s in m.samples
    }


async def test_the_views_freshness_and_the_records_produced_per_topic(embedded: Embedded) -> None:
    """Each fold notes the newest event it folded, per projector and partition; the lag report
    says how many records wait there, so the lag in seconds is known while some do."""
    for partition in (0, 1):
        metrics.FRESHNESS.forget(METERS, partition)
    usage = embedded.log.topics.usage
    produced = REGISTRY.get_sample_value("omni_log_records_produced_total", {"topic": usage}) or 0.0
    await use(embedded, ON_0, 10)  # batches of 7: 3 left after a step
    assert REGISTRY.get_sample_value("omni_log_records_produced_total", {"topic": usage}) == produced + 10
    await embedded.runner.step()
    await embedded.runner.report_lag()
    found = freshness()
    assert found[("omni_views_event_time_seconds", METERS, "0")] == (START + timedelta(seconds=6)).timestamp()
    assert 3000 < found[("omni_views_lag_seconds", METERS, "0")] < 86400  # recorded an hour ago; 3 records wait
    assert ("omni_views_event_time_seconds", METERS, "1") not in found  # nothing folded there
    assert found[("omni_views_lag_seconds", METERS, "1")] == 0.0  # nothing waits there
    await embedded.runner.step()
    await embedded.runner.report_lag()
    found = freshness()
    assert found[("omni_views_event_time_seconds", METERS, "0")] == (START + timedelta(seconds=9)).timestamp()
    assert found[("omni_views_lag_seconds", METERS, "0")] == 0.0


async def test_each_batch_is_a_process_span_of_the_log_system_with_its_write_ended(embedded: Embedded) -> None:
    """The spans of a fold name the log (embedded here; Kafka's is the projector's default, which
    replays use), and the `write views` span is ended with the commit."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from api import tracing
    from streams.projectors import MeterProjector

    assert MeterProjector(embedded.db, embedded.log.topics, keep_seen=timedelta(days=1)).log_system == "kafka"
    tracing.ensure_provider()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        await use(embedded, ON_0, 2)
        call = Envelope(
            id="c-1", type="api_call", tenant_id=ON_0, source="gw", source_id="c-1", event_time=START, recorded_time=START
        )
        await embedded.log.append(embedded.log.topics.api_calls, [Outgoing(ON_0, encode(call))])
        await embedded.runner.step()
        spans = list(exporter.get_finished_spans())
    finally:
        exporter.shutdown()
    for topic, count in ((embedded.log.topics.usage, 2), (embedded.log.topics.api_calls, 1)):
        process = [s for s in spans if s.name == f"process {topic}"]
        assert len(process) == 1 and process[0].attributes is not None
        assert process[0].attributes["messaging.system"] == "embedded"
        assert process[0].attributes["messaging.batch.message_count"] == count
        assert process[0].attributes["messaging.destination.name"] == topic
        assert process[0].attributes["messaging.destination.partition.id"] == "0"
        writes = [s for s in spans if s.name == "write views" and s.parent and s.parent.span_id == process[0].context.span_id]
        assert len(writes) == 1 and writes[0].end_time is not None
