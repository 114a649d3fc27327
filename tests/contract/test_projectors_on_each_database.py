"""The projectors' guarantees hold on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import prometheus_client
import pytest

from omni import failpoints
from schemas.envelope import Envelope, encode
from schemas.meters import MeterDefinition
from schemas.topics import STORE_POSITION, Topics
from stores import suspensions, views
from stores.database import Database
from streams.embedded_log import EmbeddedLog
from streams.log import LogRecord, Outgoing
from streams.projectors import CATALOG_APPLIED, CatalogProjector, MeterProjector
from streams.runner import Runner

TOPICS = Topics(prefix="t", usage_partitions=1)
START = datetime(2026, 11, 1, tzinfo=UTC)
TOKENS = MeterDefinition(
    slug="tokens", event_type="inference", aggregation="SUM", value_property="$.data.tokens", group_by={"model": "$.data.model"}
)
COUNT = MeterDefinition(slug="count", event_type="inference", aggregation="COUNT")


def record(offset: int, source_id: str, tenant: str = "t1", tokens: int = 1, model: str = "m") -> LogRecord:
    moment = START + timedelta(seconds=offset * 7)
    envelope = Envelope(
        id=f"id-{offset}",
        type="inference",
        tenant_id=tenant,
        source="gw",
        source_id=source_id,
        event_time=moment,
        recorded_time=moment,
        subject="u",
        data={"tokens": tokens, "model": model},
    )
    return LogRecord(TOPICS.usage, 0, offset, tenant, encode(envelope))


def layout_1_record(offset: int, source_id: str, tenant: str = "t1", tokens: int = 1, model: str = "m") -> LogRecord:
    """The record `record` makes, as the code before layout 2 wrote it (schemas/envelope.py at
    dd0d6be): Omni's own JSON, the caller's IP and user agent, no headers."""
    moment = (START + timedelta(seconds=offset * 7)).isoformat(timespec="microseconds").replace("+00:00", "Z")
    value = orjson.dumps(
        {
            "id": f"id-{offset}", "type": "inference", "schema_version": 1, "tenant_id": tenant, "source": "gw",
            "source_id": source_id, "subject": "u", "data_subject_id": None, "event_time": moment, "recorded_time": moment,
            "actor": {"key_id": "k1", "ip": "10.0.0.1", "user_agent": "curl/8"}, "traceparent": None, "extensions": {},
            "data": {"tokens": tokens, "model": model},
        }
    )  # fmt: skip
    return LogRecord(TOPICS.usage, 0, offset, tenant, value)


def define(db: Database, *meters: MeterDefinition) -> None:
    with db.transaction() as tx:
        for meter in meters:
            views.add_meter_definition(tx, "_platform", meter, f"def-{meter.slug}")


def totals(db: Database, meter: str, tenant: str = "t1") -> Decimal:
    with db.transaction() as tx:
        rows = views.buckets(tx, tenant, meter, None, None, [])
    return sum((b.state.total if meter == "tokens" else Decimal(b.state.count) for b in rows), Decimal(0))


def projector(db: Database) -> MeterProjector:
    return MeterProjector(db, TOPICS, keep_seen=timedelta(days=8))


def test_redelivered_batches_change_nothing(database: Database) -> None:
    define(database, TOKENS, COUNT)
    records = [record(i, f"e{i}", tokens=i % 5 + 1) for i in range(300)]
    meters = projector(database)
    meters.process(0, records[:200])
    meters.process(0, records[100:300])  # overlaps what was already applied
    meters.process(0, records)  # and everything again
    assert totals(database, "tokens") == sum(i % 5 + 1 for i in range(300))
    assert totals(database, "count") == 300


def test_a_failed_transaction_leaves_no_trace(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    define(database, TOKENS)
    records = [record(i, f"e{i}") for i in range(50)]
    meters = projector(database)
    meters.process(0, records[:20])

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("power cut after the buckets were written")

    monkeypatch.setattr(views, "set_meter_checkpoints", crash)
    with pytest.raises(RuntimeError):
        meters.process(0, records[20:])
    monkeypatch.undo()
    with database.transaction() as tx:
        assert views.checkpoints(tx, "meters", TOPICS.usage) == {0: 20}
    meters.process(0, records[20:])
    assert totals(database, "tokens") == 50


def forget_every_event_seen(db: Database) -> None:
    """What time does to the de-duplication memory: past the acceptance window it is purged."""
    with db.transaction() as tx:
        views.purge_seen(tx, 2**40)


@pytest.mark.parametrize("step", ["claim_events", "add_dropped", "merge_buckets", "set_checkpoint", "set_meter_checkpoints"])
def test_a_failure_at_any_step_of_a_batch_leaves_no_trace(database: Database, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    # Checkpoints committed apart from the fold, before or after it, would show here: the batch
    # lost (checkpoint ahead of the views) or counted twice once the digests are gone.
    define(database, TOKENS, COUNT)
    # Offsets 45..49 repeat e20..e24 of the same batch: duplicates on the log, dropped in it.
    records = [record(i, f"e{i if i < 45 else i - 25}", tokens=i % 4 + 1) for i in range(50)]
    meters = projector(database)
    meters.process(0, records[:20])

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"power cut at {step}")

    monkeypatch.setattr(views, step, crash)
    with pytest.raises(RuntimeError, match=step):
        meters.process(0, records[20:])
    monkeypatch.undo()
    with database.transaction() as tx:
        assert views.checkpoints(tx, "meters", TOPICS.usage) == {0: 20}
        assert views.meter_checkpoints(tx, TOPICS.usage, 0) == {("tokens", 0): 20, ("count", 0): 20}
    assert (totals(database, "tokens"), totals(database, "count")) == (sum(i % 4 + 1 for i in range(20)), 20)
    forget_every_event_seen(database)
    meters.process(0, records)  # redelivered from the start, as after a restart
    assert totals(database, "tokens") == sum(i % 4 + 1 for i in range(45))
    assert totals(database, "count") == 45


def test_records_below_the_checkpoint_are_skipped_even_once_their_digests_are_purged(database: Database) -> None:
    define(database, TOKENS, COUNT)
    records = [record(i, f"e{i}", tokens=3) for i in range(40)]
    meters = projector(database)
    meters.process(0, records)
    forget_every_event_seen(database)  # the events are past the acceptance window
    meters.process(0, records[10:])  # a redelivery: only the offsets say these were applied
    meters.process(0, records)
    assert (totals(database, "tokens"), totals(database, "count")) == (120, 40)


def test_duplicates_on_the_log_are_dropped_live_and_during_catch_up(database: Database) -> None:
    define(database, COUNT)
    records = [record(i, f"e{i % 40}") for i in range(60)]  # offsets 40..59 repeat e0..e19
    meters = projector(database)
    meters.process(0, records)
    assert totals(database, "count") == 40
    define(database, TOKENS)  # defined later: caught up from offset zero
    for lag in meters.lagging():
        meters.catch_up(lag, records[lag.start : lag.end])
    assert meters.lagging() == []
    assert totals(database, "tokens") == 40


def test_a_late_meter_catches_up_while_live_batches_continue(database: Database) -> None:
    define(database, COUNT)
    records = [record(i, f"e{i}", tokens=2) for i in range(1000)]
    meters = projector(database)
    meters.process(0, records[:600])
    define(database, TOKENS)
    rng = random.Random(7)
    applied, live = 0, 600
    # Interleave live batches and catch-up steps in a random order.
    while meters.lagging() or live < 1000:
        if live < 1000 and rng.random() < 0.5:
            meters.process(0, records[live : live + 50])
            live += 50
            continue
        for lag in meters.lagging():
            meters.catch_up(lag, records[lag.start : min(lag.end, lag.start + 70)])
        applied += 1
    assert totals(database, "count") == 1000
    assert totals(database, "tokens") == 2000


def test_tenants_never_share_buckets(database: Database) -> None:
    define(database, TOKENS)
    records = [record(i, f"e{i}", tenant="a" if i % 3 else "b", tokens=10) for i in range(90)]
    projector(database).process(0, records)
    assert totals(database, "tokens", "a") == 600
    assert totals(database, "tokens", "b") == 300


def test_an_unreadable_record_is_dead_lettered_and_the_partition_goes_on(database: Database) -> None:
    define(database, COUNT)
    records = [record(i, f"e{i}") for i in range(10)]
    records[4] = LogRecord(TOPICS.usage, 0, 4, "t1", b"\x00 not an envelope")
    meters = projector(database)
    meters.process(0, records)
    assert totals(database, "count") == 9
    define(database, TOKENS)  # a late meter's catch-up skips the dead letter too
    for lag in meters.lagging():
        meters.catch_up(lag, records[lag.start : lag.end])
    assert totals(database, "tokens") == 9
    with database.transaction() as tx:
        [(partition, offset, consumer, reason)] = views.dead_letters(tx, TOPICS.usage)
    assert (partition, offset, consumer) == (0, 4, "meters") and reason


@pytest.mark.parametrize("where", ["source_id", "subject", "group value"])
def test_a_record_holding_a_nul_character_is_dead_lettered_not_retried_forever(database: Database, where: str) -> None:
    # PostgreSQL text cannot hold NUL: such a record would fail its batch on every retry and
    # stop the partition, every tenant on it, for good. The log keeps it; the views skip it.
    define(database, TOKENS, COUNT)
    records = [record(i, f"e{i}") for i in range(6)]
    poison = {"source_id": record(3, "e\x003"), "subject": record(3, "e3"), "group value": record(3, "e3", model="m\x00")}[where]
    if where == "subject":
        poison = LogRecord(TOPICS.usage, 0, 3, "t1", poison.value.replace(b'"subject":"u"', b'"subject":"u\\u0000"'))
    records[3] = poison
    meters = projector(database)
    assert meters.process(0, records) == 6
    assert totals(database, "count") == 5
    with database.transaction() as tx:
        [(_, offset, consumer, reason)] = views.dead_letters(tx, TOPICS.usage)
    assert (offset, consumer) == (3, "meters") and "NUL" in reason


def test_a_record_from_newer_code_stops_the_partition_rather_than_skip(database: Database) -> None:
    from schemas.envelope import NewerSchema

    define(database, COUNT)
    newer = LogRecord(TOPICS.usage, 0, 1, "t1", record(1, "e1").value.replace(b'"schemaversion":2', b'"schemaversion":99'))
    with pytest.raises(NewerSchema):
        projector(database).process(0, [record(0, "e0"), newer])
    assert totals(database, "count") == 0  # nothing of the batch was committed


def test_a_log_holding_both_layouts_folds_as_one(database: Database) -> None:
    """An upgraded log: records of layout 1 (before the upgrade) then layout 2, each event once,
    and the same events again in the other layout (a client's retry across the upgrade), which
    de-duplication drops since both layouts give the same (tenant, source, id). A meter defined
    afterwards catches up over both."""
    define(database, TOKENS)
    old = [layout_1_record(i, f"e{i}", tokens=i % 5 + 1) for i in range(100)]
    new = [record(100 + i, f"e{100 + i}", tokens=i % 5 + 1) for i in range(100)]
    retried = [record(200 + i, f"e{i}", tokens=99) for i in range(10)] + [layout_1_record(210, "e150", tokens=99)]
    log = old + new + retried
    assert [o.offset for o in log] == list(range(len(log)))
    meters = projector(database)
    meters.process(0, log[:150])
    meters.process(0, log[150:])
    assert totals(database, "tokens") == 2 * sum(i % 5 + 1 for i in range(100))
    define(database, COUNT)
    for lag in meters.lagging():
        meters.catch_up(lag, log[lag.start : lag.end])
    assert totals(database, "count") == 200
    with database.transaction() as tx:
        assert views.dead_letters(tx, TOPICS.usage) == []


def test_a_catch_up_with_stale_records_changes_nothing(database: Database) -> None:
    define(database, COUNT)
    records = [record(i, f"e{i}") for i in range(100)]
    meters = projector(database)
    meters.process(0, records)
    define(database, TOKENS)
    [lag] = meters.lagging()
    meters.catch_up(lag, records[0:30])  # another worker got there first...
    assert meters.catch_up(lag, records[0:30]) == 0  # ...so this stale read is refused, not skipped ahead
    for lag in meters.lagging():
        meters.catch_up(lag, records[lag.start : lag.end])
    assert totals(database, "tokens") == 100


async def test_the_runner_reports_how_far_the_views_are_behind_the_log(database: Database, tmp_path: Path) -> None:
    topics = Topics(prefix="lag", usage_partitions=2)
    log = EmbeddedLog(tmp_path / "log.sqlite", topics)
    await log.start()
    try:
        runner = Runner(
            log, CatalogProjector(database, topics), MeterProjector(database, topics, keep_seen=timedelta(days=8)), batch_size=5
        )
        await log.append(
            topics.usage, [Outgoing(tenant, record(i, f"e{i}", tenant=tenant).value) for i, tenant in enumerate("aad")]
        )
        ends = await log.end_offsets(topics.usage)
        assert ends == {0: 1, 1: 2}  # tenant d on partition 0, tenant a on 1

        assert await runner.lag() == {("catalog", 0): 0, **{("meters", p): end for p, end in ends.items()}}
        await runner.drain()
        assert set((await runner.lag()).values()) == {0}

        await runner.report_lag()
        exposed = prometheus_client.generate_latest().decode()
        assert 'omni_views_lag_records{partition="0",projector="meters"} 0.0' in exposed
    finally:
        await log.close()


async def test_the_runner_folds_api_calls_at_most_once_a_second_but_drains_everything(database: Database, tmp_path: Path) -> None:
    """api_call events (self-metering) have a topic of their own; each fold of it is a transaction,
    so the loop folds it at most every API_CALLS_EVERY while usage folds at once. A meter on
    api_call folds both topics; `drain` (tests, rebuilds) takes everything."""
    from streams import runner as runner_module
    from streams.projectors import API_CALLS

    clock = [1000.0]
    topics = Topics(prefix="calls", usage_partitions=1)
    log = EmbeddedLog(tmp_path / "log.sqlite", topics)
    await log.start()
    calls = MeterDefinition(slug="calls", event_type="api_call", aggregation="COUNT")
    define(database, calls)

    def call(n: int) -> Outgoing:
        moment = START + timedelta(seconds=n)
        envelope = Envelope(
            id=f"c{n}", type="api_call", tenant_id="t1", source="omni://api", source_id=f"c{n}", event_time=moment,
            recorded_time=moment, data={"route": "/v1/events"},
        )  # fmt: skip
        return Outgoing("t1", encode(envelope))

    try:
        keep = timedelta(days=8)
        runner = Runner(
            log,
            CatalogProjector(database, topics),
            MeterProjector(database, topics, keep_seen=keep),
            batch_size=50,
            api_calls=MeterProjector(database, topics, keep_seen=keep, topic=topics.api_calls, consumer=API_CALLS),
            clock=lambda: clock[0],
        )
        await log.append(topics.api_calls, [call(0)])
        assert await runner.step() == 1
        await log.append(topics.api_calls, [call(1), call(2)])
        await log.append(topics.usage, [Outgoing("t1", record(0, "e0").value)])
        assert await runner.step() == 1  # the usage record only
        assert totals(database, "calls") == 1
        clock[0] += runner_module.API_CALLS_EVERY
        assert await runner.step() == 2
        assert totals(database, "calls") == 3
        await log.append(topics.api_calls, [call(3)])
        await runner.drain()
        assert totals(database, "calls") == 4
        assert set((await runner.lag()).values()) == {0}
        assert {projector for projector, _ in await runner.lag()} == {"catalog", "meters", API_CALLS}
    finally:
        await log.close()


def tenant_created(offset: int, name: str, position: int | None) -> LogRecord:
    """A tenant's creation on the control topic, relayed with its event-store `position` (or, as by
    older code, without one)."""
    moment = START + timedelta(seconds=offset)
    envelope = Envelope(
        id=f"c-{offset}", type="omni.tenant.created", tenant_id=f"tenant-{name}", source="omni://control-plane",
        source_id=f"{name}/1", event_time=moment, recorded_time=moment,
        data={"tenant_id": f"tenant-{name}", "name": name, "plan": "pro"},
        extensions={} if position is None else {STORE_POSITION: position},
    )  # fmt: skip
    return LogRecord(TOPICS.control, 0, offset, envelope.tenant_id, encode(envelope))


def applied_position(db: Database) -> int:
    with db.transaction() as tx:
        return views.relay_position(tx, CATALOG_APPLIED)


def tenant_names(db: Database) -> list[str]:
    with db.transaction() as tx:
        return [name for _, name, _, _ in suspensions.tenants(tx, 100, None, None)]


def test_a_batch_says_how_many_records_it_applied_and_a_redelivered_one_none(database: Database) -> None:
    define(database, COUNT)
    meters = projector(database)
    records = [record(i, f"e{i}") for i in range(10)]
    assert meters.process(0, records[:6]) == 6
    assert meters.process(0, records[:6]) == 0
    assert meters.process(0, records) == 4
    catalog = CatalogProjector(database, TOPICS)
    created = [tenant_created(0, "a", 1), tenant_created(1, "b", 2)]
    assert catalog.process(0, created) == 2
    assert catalog.process(0, created) == 0
    assert totals(database, "count") == 10 and tenant_names(database) == ["a", "b"]


def test_the_catalog_keeps_the_highest_store_position_it_applied(database: Database) -> None:
    catalog = CatalogProjector(database, TOPICS)
    catalog.process(0, [tenant_created(0, "a", None)])  # relayed by older code: no position
    assert applied_position(database) == 0
    catalog.process(0, [tenant_created(1, "b", 5), tenant_created(2, "c", 7), tenant_created(3, "d", None)])
    assert applied_position(database) == 7
    catalog.process(0, [tenant_created(4, "b", 5)])  # republished after a relay's crash: an older position
    assert applied_position(database) == 7
    assert tenant_names(database) == ["a", "b", "c", "d"]


def test_the_projectors_crash_points_are_before_and_after_their_commits(database: Database) -> None:
    define(database, COUNT)
    meters, catalog = projector(database), CatalogProjector(database, TOPICS)
    records = [record(i, f"e{i}") for i in range(10)]
    try:
        failpoints.arm(failpoints.METERS_BEFORE_COMMIT)
        with pytest.raises(failpoints.FailpointHit, match=failpoints.METERS_BEFORE_COMMIT):
            meters.process(0, records[:5])
        with database.transaction() as tx:
            assert views.checkpoints(tx, "meters", TOPICS.usage) == {}  # nothing of the batch stays
        failpoints.arm(failpoints.METERS_AFTER_COMMIT)
        with pytest.raises(failpoints.FailpointHit, match=failpoints.METERS_AFTER_COMMIT):
            meters.process(0, records[:5])
        assert totals(database, "count") == 5  # committed: its redelivery changes nothing
        assert meters.process(0, records) == 5
        failpoints.arm(failpoints.CATALOG_BEFORE_COMMIT)
        with pytest.raises(failpoints.FailpointHit, match=failpoints.CATALOG_BEFORE_COMMIT):
            catalog.process(0, [tenant_created(0, "a", 1)])
        assert tenant_names(database) == [] and applied_position(database) == 0
    finally:
        failpoints.disarm_all()
    assert catalog.process(0, [tenant_created(0, "a", 1)]) == 1
    assert totals(database, "count") == 10 and tenant_names(database) == ["a"]


def test_a_meter_defined_when_its_partition_holds_one_record_catches_it_up(database: Database) -> None:
    define(database, COUNT)
    meters = projector(database)
    meters.process(0, [record(0, "e0", tokens=4)])
    define(database, TOKENS)
    [lag] = meters.lagging()
    assert (lag.meter, lag.partition, lag.start, lag.end) == ("tokens", 0, 0, 1)
    assert meters.catch_up(lag, [record(0, "e0", tokens=4)]) == 1
    assert meters.lagging() == [] and totals(database, "tokens") == 4


def test_a_catch_up_folds_nothing_from_the_head_on_and_steps_over_a_gap_before_it(database: Database) -> None:
    define(database, COUNT)
    meters = projector(database)
    records = [record(i, f"e{i}", tokens=2) for i in range(10)]
    meters.process(0, records[:6])
    define(database, TOKENS)
    [lag] = meters.lagging()
    assert meters.catch_up(lag, records[:3]) == 3
    [lag] = meters.lagging()
    assert (lag.start, lag.end) == (3, 6)
    assert meters.catch_up(lag, records[3:]) == 3  # 6..9 are at and past the head: the live fold's
    assert totals(database, "tokens") == 12 and meters.lagging() == []

    meters.process(0, records[6:])
    define(database, MeterDefinition(slug="late", event_type="inference", aggregation="COUNT"))
    [lag] = meters.lagging()
    assert meters.catch_up(lag, records[:4]) == 4
    [lag] = meters.lagging()
    assert meters.catch_up(lag, []) == 6  # nothing left below the head: a gap at its end, stepped over
    assert meters.lagging() == [] and totals(database, "late") == 4
