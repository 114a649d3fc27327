"""The Faust worker as a real process over real Kafka and PostgreSQL.

Ground truth is computed here from the generated events; the views must equal it
after the worker is SIGKILLed mid-stream and restarted, after a PostgreSQL outage
in the middle of its batches, and when it starts on fresh views while the
consumer group's offsets say everything was consumed already.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

import orjson
import pytest
from aiokafka import TopicPartition as AIOKafkaTP
from aiokafka.admin import AIOKafkaAdminClient
from faust.types import TP
from msgspec.structs import replace
from prometheus_client import REGISTRY

from commands.control_plane import Meter
from commands.plans import QuotaOverride, entitlement_json
from omni.settings import Settings
from projections.meters import micros_of
from schemas.envelope import Envelope, encode
from schemas.meters import Aggregation, MeterDefinition, path_parts
from schemas.plans import Entitlement
from schemas.topics import Topics, partition_for
from stores import views
from stores.database import Database, PostgresDatabase
from stores.schema import SCHEMA as VIEW_SCHEMA
from streams.faust_app import Feeder, create_worker_app
from streams.kafka_log import KafkaLog
from streams.log import Outgoing
from streams.outbox import to_envelope
from streams.projectors import CATALOG, METERS, CatalogProjector, MeterProjector
from tests.integration.conftest import free_port, new_schema_name
from tests.integration.gdpr_truth import sealed_email
from tests.integration.worker import ROOT, WORKER_BATCH, WorkerProcess
from tests.meter_reference import document, lookup

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

TENANTS = ("tenant-0", "tenant-1", "tenant-2")  # one on each of the 3 usage partitions
EVENT_TYPE = "ai.inference"
TOKENS = MeterDefinition(slug="tokens", event_type=EVENT_TYPE, aggregation=Aggregation.SUM, value_property="$.data.tokens")
CALLS = MeterDefinition(slug="calls", event_type=EVENT_TYPE, aggregation=Aggregation.COUNT)
TOKENS_BY_MODEL = MeterDefinition(
    slug="tokens-by-model",
    event_type=EVENT_TYPE,
    aggregation=Aggregation.SUM,
    value_property="$.data.tokens",
    group_by={"model": "$.data.model"},
)


# The event stream and its ground truth --------------------------------------------------


@dataclass
class Stream:
    """Generated usage events, with re-sent copies that must count once."""

    events: list[Envelope] = field(default_factory=list)
    base: datetime = field(default_factory=lambda: datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1))
    personal_every: int = 0  # every Nth event also carries an e-mail address, sealed as admission seals it (0: none)

    def generate(self, count: int, *, resend_every: int = 37) -> list[Envelope]:
        now = datetime.now(UTC)
        batch: list[Envelope] = []
        for _ in range(count):
            n = len(self.events)
            event = Envelope(
                id=str(uuid.uuid4()),
                type=EVENT_TYPE,
                tenant_id=TENANTS[n % len(TENANTS)],
                source="gateway-a" if n % 5 else "gateway-b",
                source_id=f"evt-{n}",
                subject=f"user-{n % 4}",
                event_time=self.base + timedelta(milliseconds=700 * n),
                recorded_time=now,
                data={"tokens": (n * 7) % 50 + 1, "model": ("small", "large")[n % 2]},
            )
            if self.personal_every and n % self.personal_every == 0:
                assert event.subject is not None and isinstance(event.data, dict)
                email = f"{event.subject}+{n // 24 % 3}@example.com"  # three addresses per person, in turn
                event.data["email"] = sealed_email(event.tenant_id, event.subject, email)
            self.events.append(event)
            batch.append(event)
            if n % resend_every == 0:
                batch.append(replace(event, id=str(uuid.uuid4())))  # a client retry that got onto the log twice
        return batch

    def truth(self, meter: MeterDefinition) -> dict[tuple[str, int, str], Decimal]:
        """(tenant, minute, group value) -> the meter's value, from each event once."""
        values: dict[tuple[str, int, str], Decimal] = defaultdict(Decimal)
        group_path = path_parts(next(iter(meter.group_by.values()))) if meter.group_by else ()
        for event in self.events:
            minute = micros_of(event) // 60_000_000 * 60
            doc = document(event)
            found = lookup(doc, group_path) if group_path else ""
            group = str(found["ps"] if isinstance(found, dict) else found)  # a sealed value: its pseudonym
            if meter.aggregation is Aggregation.COUNT:
                values[(event.tenant_id, minute, group)] += 1
            else:
                values[(event.tenant_id, minute, group)] += Decimal(lookup(doc, path_parts(meter.value_property or "")))
        return dict(values)


def meter_defined(definition: MeterDefinition) -> Outgoing:
    """The control-topic record the outbox relay publishes for a defined meter."""
    envelope = to_envelope(Meter(slug=definition.slug, definition=definition.model_dump(mode="json")).collect_events()[0])
    return Outgoing(envelope.id, encode(envelope))


def meter_deleted(definition: MeterDefinition) -> list[Outgoing]:
    """The control-topic records the outbox relay publishes for a meter defined, then deleted."""
    meter = Meter(slug=definition.slug, definition=definition.model_dump(mode="json"))
    meter.delete(slug=definition.slug)
    envelopes = [to_envelope(event) for event in meter.collect_events()]
    return [Outgoing(envelope.id, encode(envelope)) for envelope in envelopes[1:]]


def quota_set(tenant_id: str, entitlement: Entitlement) -> Outgoing:
    """The control-topic record the outbox relay publishes for a tenant's quota override."""
    override = QuotaOverride(tenant_id=tenant_id, meter=entitlement.meter, entitlement=entitlement_json(entitlement))
    envelope = to_envelope(override.collect_events()[0])
    return Outgoing(envelope.id, encode(envelope))


def notified(db: Database) -> set[tuple[str, str, str, int]]:
    """The threshold notifications the views hold, as (tenant, meter, period, threshold)."""
    with db.transaction() as tx:
        rows = tx.execute("SELECT tenant_id, meter, period, threshold, id FROM notifications")
    return {(r[0], r[1], r[2], int(r[3])) for r in rows}


def to_records(events: list[Envelope]) -> list[Outgoing]:
    return [Outgoing(e.tenant_id, encode(e)) for e in events]


def stored_values(db: PostgresDatabase, meter: MeterDefinition) -> dict[tuple[str, int, str], Decimal]:
    """The views' buckets, summed over subjects, in the shape of Stream.truth."""
    values: dict[tuple[str, int, str], Decimal] = defaultdict(Decimal)
    group_name = next(iter(meter.group_by), None)
    with db.transaction() as tx:
        for tenant in TENANTS:
            for bucket in views.buckets(tx, tenant, meter.slug, None, None, []):
                group = str(orjson.loads(bucket.group_key).get(group_name)) if group_name else ""
                state = bucket.state
                values[(tenant, bucket.window_start, group)] += (
                    state.count if meter.aggregation is Aggregation.COUNT else state.total
                )
    return dict(values)


# Progress of the views ---------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    catalog: dict[int, int]
    meters: dict[int, int]
    per_meter: dict[tuple[str, int], int]

    @property
    def folded(self) -> int:
        return sum(self.meters.values())


def progress(db: PostgresDatabase, topics: Topics) -> Progress:
    with db.transaction() as tx:
        return Progress(
            views.checkpoints(tx, CATALOG, topics.control),
            views.checkpoints(tx, METERS, topics.usage),
            views.meter_checkpoints(tx, topics.usage),
        )


@dataclass(frozen=True)
class Verdict:
    """A condition's outcome, with what it compared (shown when a wait for it times out)."""

    ok: bool
    detail: str

    def __bool__(self) -> bool:
        return self.ok


async def caught_up(db: PostgresDatabase, log: KafkaLog, slugs: list[str]) -> Verdict:
    usage_end = await log.end_offsets(log.topics.usage)
    control_end = await log.end_offsets(log.topics.control)
    seen = await asyncio.to_thread(progress, db, log.topics)
    per_meter = {slug: {p: seen.per_meter.get((slug, p), 0) for p in usage_end} for slug in slugs}
    meters_done = all(per_meter[slug] == usage_end for slug in slugs)
    usage_expected = {p: e for p, e in usage_end.items() if e}
    ok = seen.catalog == control_end and seen.meters == usage_expected and meters_done
    return Verdict(
        ok,
        f"expected the views at the log's ends (control {control_end}, usage {usage_expected}, every meter at {usage_end}); "
        f"saw control {seen.catalog}, usage {seen.meters}, per meter {per_meter}",
    )


async def wait_for(
    condition: Callable[[], Awaitable[object]], worker: WorkerProcess | list[WorkerProcess], timeout: float, what: str
) -> None:
    """Until `condition()` is true; else fail with its last outcome (a Verdict's detail) and each worker's log."""
    workers = worker if isinstance(worker, list) else [worker]
    deadline = time.monotonic() + timeout
    while not (last := await condition()):
        for each in workers:
            if each.exited is not None:
                pytest.fail(f"{each.name} exited ({each.exited}) while waiting for {what}:\n{each.report()}")
        if time.monotonic() > deadline:
            seen = f"; {last.detail}" if isinstance(last, Verdict) else ""
            logs = "\n".join(each.report() for each in workers)
            pytest.fail(f"timed out after {timeout}s waiting for {what}{seen}\n{logs}")
        await asyncio.sleep(0.05)


def assert_views_equal_truth(db: PostgresDatabase, stream: Stream, meters: list[MeterDefinition]) -> None:
    for meter in meters:
        expected, actual = stream.truth(meter), stored_values(db, meter)
        missing = {k: v for k, v in expected.items() if actual.get(k) != v}
        extra = {k: v for k, v in actual.items() if k not in expected}
        assert not missing and not extra, (
            f"{meter.slug}: wrong buckets {list(missing.items())[:5]}, extra {list(extra.items())[:5]}"
        )


# The tests -------------------------------------------------------------------------------


async def test_sigkill_mid_stream_loses_nothing_and_counts_nothing_twice(
    kafka_log: KafkaLog,
    topics: Topics,
    views_db: PostgresDatabase,
    database_url: str,
    worker_factory: Callable[[str, str], WorkerProcess],
) -> None:
    assert sorted(partition_for(t, topics.usage_partitions) for t in TENANTS) == [0, 1, 2]
    stream = Stream()
    await kafka_log.append(topics.control, [meter_defined(TOKENS), meter_defined(CALLS)])
    await kafka_log.append(topics.usage, to_records(stream.generate(1500)))

    worker = worker_factory(database_url, views_db.schema)
    worker.start()
    # Kill it a few hundred events in, while more keeps arriving.
    more = asyncio.create_task(_append_slowly(kafka_log, stream, 1500, chunk=100, pause=0.1))
    await wait_for(lambda: _folded_at_least(views_db, topics, 500), worker, 30, "the first folded batches")
    worker.kill()
    folded_at_kill = (await asyncio.to_thread(progress, views_db, topics)).folded
    await more
    total = sum((await kafka_log.end_offsets(topics.usage)).values())
    assert 0 < folded_at_kill < total, "the kill should land mid-stream"

    worker.start()
    await wait_for(lambda: caught_up(views_db, kafka_log, ["tokens", "calls"]), worker, 40, "catch-up after SIGKILL")
    assert_views_equal_truth(views_db, stream, [TOKENS, CALLS])
    # The restarted worker's metrics count what it applied: everything past the views at the kill, once.
    samples = worker.metrics()
    assert samples['omni_projected_records_total{projector="meters"}'] == total - folded_at_kill
    assert samples['omni_fold_batch_seconds_count{projector="meters"}'] >= (total - folded_at_kill) / WORKER_BATCH

    # A meter defined after its events arrived covers the whole history, then stays live.
    await kafka_log.append(topics.control, [meter_defined(TOKENS_BY_MODEL)])
    await kafka_log.append(topics.usage, to_records(stream.generate(150)))
    await wait_for(lambda: caught_up(views_db, kafka_log, ["tokens", "calls", "tokens-by-model"]), worker, 30, "the late meter")
    assert_views_equal_truth(views_db, stream, [TOKENS, CALLS, TOKENS_BY_MODEL])
    assert worker.stop() == 0


async def test_two_workers_one_sigkilled_mid_stream_the_survivor_takes_its_partitions_and_views_end_exact(
    kafka_log: KafkaLog,
    topics: Topics,
    views_db: PostgresDatabase,
    database_url: str,
    worker_factory: Callable[[str, str], WorkerProcess],
) -> None:
    stream = Stream()
    await kafka_log.append(topics.control, [meter_defined(TOKENS), meter_defined(CALLS)])
    await kafka_log.append(topics.usage, to_records(stream.generate(600)))
    workers = [worker_factory(database_url, views_db.schema) for _ in range(2)]
    for worker in workers:
        worker.start()
    everything = {
        topics.control: [0],
        topics.usage: list(range(topics.usage_partitions)),
        topics.api_calls: list(range(topics.usage_partitions)),
        topics.audit: list(range(topics.partitions(topics.audit))),  # the audit chains' fold
    }
    await wait_for(lambda: _assigned(workers, everything), workers, 60, "both workers ready, sharing the partitions")

    # Events keep arriving (about 18 s) through the kill and the survivor's takeover.
    more = asyncio.create_task(_append_slowly(kafka_log, stream, 2000, chunk=50, pause=0.4))
    await wait_for(lambda: _folded_at_least(views_db, topics, 900), workers, 30, "both workers folding")
    owned = {worker.name: _partitions(worker) for worker in workers}
    victim = max(workers, key=lambda worker: len(_partitions(worker).get(topics.usage, [])))
    survivor = next(worker for worker in workers if worker is not victim)
    victim.kill()
    assert not more.done(), "the kill should land while events are arriving"
    folded_at_kill = (await asyncio.to_thread(progress, views_db, topics)).folded

    # Once the killed worker's session expires, the survivor folds every partition.
    await wait_for(lambda: _assigned([survivor], everything), survivor, 45, f"the survivor to take over from {owned}")
    await more
    total = sum((await kafka_log.end_offsets(topics.usage)).values())
    assert folded_at_kill < total, "the kill should land mid-stream"
    await wait_for(lambda: caught_up(views_db, kafka_log, ["tokens", "calls"]), survivor, 40, "the survivor's catch-up")
    assert_views_equal_truth(views_db, stream, [TOKENS, CALLS])
    assert survivor.stop() == 0


async def test_the_broker_may_not_hold_the_workers_empty_fetches_for_long(
    kafka_log: KafkaLog, topics: Topics, views_db: PostgresDatabase, kafka_servers: str
) -> None:
    # With one broker, aiokafka sends no fetch while another is in flight; Faust's 1.5 s hold on a
    # fetch for a drained partition stalled partitions with data waiting (2,000 events/s end to end).
    # Measured on the wire: each fetch the worker's consumer sends for a drained partition comes back
    # within a fraction of a second.
    settings = Settings(kafka_bootstrap_servers=kafka_servers, topic_prefix=topics.prefix, database_schema=views_db.schema)
    app = create_worker_app(settings, views_db, kafka_log)
    thread = app.consumer._new_consumer_thread()  # type: ignore[attr-defined]
    consumer = thread._create_worker_consumer(app.transport)
    fetches: list[float] = []  # seconds each fetch took, from its request to its answer
    client, send = consumer._client, consumer._client.send

    async def timed_send(node_id: int, request: object, **kwargs: object) -> object:
        started = time.monotonic()
        answer = await send(node_id, request, **kwargs)
        if type(request).__name__.startswith("FetchRequest"):
            fetches.append(time.monotonic() - started)
        return answer

    client.send = timed_send
    consumer.assign([AIOKafkaTP(topics.control, 0)])  # the control topic: empty, so every fetch finds nothing
    await consumer.start()
    try:
        deadline = time.monotonic() + 10
        while len(fetches) < 20 and time.monotonic() < deadline:
            assert await consumer.getmany(timeout_ms=100) == {}
    finally:
        await consumer.stop()
    assert len(fetches) >= 20, f"only {len(fetches)} fetches in 10 s, taking {[round(f, 3) for f in fetches]} s"
    held = sorted(fetches)[len(fetches) // 2]
    assert held < 0.25, f"the broker held the median empty fetch {held:.3f} s: {[round(f, 3) for f in fetches]}"


async def test_a_full_agent_queue_does_not_pause_the_partition(
    kafka_log: KafkaLog, topics: Topics, views_db: PostgresDatabase, kafka_servers: str
) -> None:
    # Faust pauses a partition whose agent queue fills up; once all are paused its fetch loop sleeps
    # a whole second. The worker's deliveries wait for room in the queue instead.
    settings = Settings(kafka_bootstrap_servers=kafka_servers, topic_prefix=topics.prefix, database_schema=views_db.schema)
    app = create_worker_app(settings, views_db, kafka_log)
    consumer = app.consumer
    full, other = TP(topics.usage, 0), TP(topics.usage, 1)
    consumer._set_active_tps({full, other})  # type: ignore[attr-defined]  # as an assignment does
    fetched_for: list[set[TP]] = []

    async def fetch(active_partitions: set[TP], timeout: float) -> dict[TP, list[object]]:
        fetched_for.append(set(active_partitions))
        return {}

    consumer._getmany = fetch  # type: ignore[attr-defined]  # the thread's fetch, which Faust's fetch loop asks
    consumer.on_buffer_full(full)  # type: ignore[attr-defined]
    await consumer._wait_next_records(0.01)  # type: ignore[attr-defined]
    assert fetched_for == [{full, other}], "the full partition was left out of the next fetch: paused"

    # Instead the fetch loop's next delivery waits until the queue is drained below its low mark.
    held_before = REGISTRY.get_sample_value("omni_worker_deliveries_held_total") or 0.0
    delivered = asyncio.Event()

    async def deliver() -> None:
        delivered.set()

    suspended = asyncio.Event()
    delivery = asyncio.create_task(consumer.wait_first(deliver(), suspended.wait()))  # the fetch loop's call
    for _ in range(50):  # the delivery gets every chance to run; no time passes
        await asyncio.sleep(0)
    assert not delivered.is_set(), "a delivery went on while the agent's queue was full"
    consumer.on_buffer_drop(full)  # type: ignore[attr-defined]
    await asyncio.wait_for(delivered.wait(), timeout=0.5)  # well before the 1 s it would wait for a drop
    await asyncio.wait_for(delivery, timeout=5)
    assert REGISTRY.get_sample_value("omni_worker_deliveries_held_total") == held_before + 1


async def test_a_batch_past_the_checkpoint_is_preceded_by_the_gap_read_from_the_log(
    kafka_log: KafkaLog, topics: Topics, views_db: PostgresDatabase
) -> None:
    """Should the consumer ever be positioned past the views, nothing in between is skipped."""
    stream = Stream()
    tenant = TENANTS[0]
    partition = partition_for(tenant, topics.usage_partitions)
    await kafka_log.append(topics.control, [meter_defined(CALLS)])
    await kafka_log.append(topics.usage, to_records([e for e in stream.generate(300) if e.tenant_id == tenant]))
    stream.events = [e for e in stream.events if e.tenant_id == tenant]
    catalog = CatalogProjector(views_db, topics)
    catalog.process(0, await kafka_log.read(topics.control, 0, 0, 10))
    meters = MeterProjector(views_db, topics, keep_seen=timedelta(days=8))
    feeder = Feeder(kafka_log, views_db, METERS, topics.usage, meters.process, batch_size=40)

    end = (await kafka_log.end_offsets(topics.usage))[partition]
    tail = await kafka_log.read(topics.usage, partition, end - 10, 100)  # what a consumer past the views would deliver
    await feeder.feed_partition(partition, tail)

    assert (await asyncio.to_thread(progress, views_db, topics)).meters == {partition: end}
    assert_views_equal_truth(views_db, stream, [CALLS])


async def test_fresh_views_are_rebuilt_from_their_own_checkpoints_not_the_groups(
    kafka_log: KafkaLog,
    kafka_servers: str,
    topics: Topics,
    views_db: PostgresDatabase,
    database_url: str,
    pg_schemas: list[str],
    worker_factory: Callable[[str, str], WorkerProcess],
) -> None:
    stream = Stream()
    await kafka_log.append(topics.control, [meter_defined(CALLS)])
    await kafka_log.append(topics.usage, to_records(stream.generate(600)))
    first = worker_factory(database_url, views_db.schema)
    first.start()
    await wait_for(lambda: caught_up(views_db, kafka_log, ["calls"]), first, 30, "the first worker")
    assert first.stop() == 0  # a clean stop commits the group's offsets at the end of every partition
    # Faust saw each fetched run as one record at its last offset and the rest as a gap: its
    # commits still cover every record, so Kafka's own lag tools show the group caught up.
    committed = await group_offsets(kafka_servers, f"{topics.prefix}-views", topics.usage)
    assert committed == await kafka_log.end_offsets(topics.usage)

    # Same topics, same consumer group, new empty views (a rebuild into a new schema).
    schema = new_schema_name()
    pg_schemas.append(schema)
    fresh = PostgresDatabase(database_url, schema=schema)
    fresh.migrate(VIEW_SCHEMA)
    try:
        second = worker_factory(database_url, schema)
        second.start()
        await wait_for(lambda: caught_up(fresh, kafka_log, ["calls"]), second, 30, "the rebuild")
        assert_views_equal_truth(fresh, stream, [CALLS])
        assert second.stop() == 0
    finally:
        fresh.close()


async def test_the_groups_offsets_keep_up_with_many_small_runs(
    kafka_log: KafkaLog,
    kafka_servers: str,
    topics: Topics,
    views_db: PostgresDatabase,
    database_url: str,
    worker_factory: Callable[[str, str], WorkerProcess],
) -> None:
    """Events arriving a few at a time make many runs, each a gap plus an ack for Faust. Its
    commits must still reach the log's end while the worker runs, not one run per commit."""
    stream = Stream()
    await kafka_log.append(topics.control, [meter_defined(CALLS)])
    worker = worker_factory(database_url, views_db.schema)
    worker.start()
    for _ in range(40):
        await kafka_log.append(topics.usage, to_records(stream.generate(15)))
        await asyncio.sleep(0.05)
    await wait_for(lambda: caught_up(views_db, kafka_log, ["calls"]), worker, 30, "the views")
    end = await kafka_log.end_offsets(topics.usage)

    async def committed_to_the_end() -> Verdict:
        committed = await group_offsets(kafka_servers, f"{topics.prefix}-views", topics.usage)
        return Verdict(committed == end, f"committed {committed}, log end {end}")

    # Faust commits every few seconds (broker_commit_interval); one such commit must do.
    await wait_for(committed_to_the_end, worker, 15, "the group's offsets to reach the log end")
    assert_views_equal_truth(views_db, stream, [CALLS])
    assert worker.stop() == 0


async def test_a_database_outage_mid_batch_is_retried_until_committed(
    kafka_log: KafkaLog,
    topics: Topics,
    views_db: PostgresDatabase,
    database_url: str,
    worker_factory: Callable[[str, str], WorkerProcess],
) -> None:
    """The worker reaches PostgreSQL through a relay this test cuts and restores."""
    stream = Stream()
    await kafka_log.append(topics.control, [meter_defined(TOKENS)])
    await kafka_log.append(topics.usage, to_records(stream.generate(300)))
    relay = TcpRelay(*_host_port(database_url))
    await relay.start()
    try:
        worker = worker_factory(_via(database_url, relay.port), views_db.schema)
        worker.start()
        await wait_for(lambda: caught_up(views_db, kafka_log, ["tokens"]), worker, 30, "the first events")

        await relay.cut()  # every connection dropped, nothing listening
        await kafka_log.append(topics.usage, to_records(stream.generate(600)))
        await asyncio.sleep(2.0)  # batches arrive and fail against the missing database
        await relay.start()
        await wait_for(lambda: caught_up(views_db, kafka_log, ["tokens"]), worker, 40, "recovery after the outage")
        assert_views_equal_truth(views_db, stream, [TOKENS])
        # Seen either by the batch (failed, retried) or by the pool (its connection attempts failed
        # while the batch waited for a connection); which depends on the outage against the pool's timeout.
        seen = worker.log_text()
        assert "retrying" in seen or "error connecting" in seen, "the outage should have been seen"
        assert worker.stop() == 0
    finally:
        await relay.cut()


async def test_postgresql_restarted_mid_stream_the_worker_retries_and_ends_exact(
    kafka_log: KafkaLog, topics: Topics, worker_factory: Callable[[str, str], WorkerProcess], tmp_path: Path
) -> None:
    """A PostgreSQL of this test's own, stopped (pg_ctl stop -m fast) while the worker folds, then started."""
    postgres = OwnPostgres(tmp_path / "run")
    postgres.run("start")
    db = PostgresDatabase(postgres.url, schema=new_schema_name())
    try:
        db.migrate(VIEW_SCHEMA)
        stream = Stream()
        await kafka_log.append(topics.control, [meter_defined(TOKENS), meter_defined(CALLS)])
        await kafka_log.append(topics.usage, to_records(stream.generate(300)))
        worker = worker_factory(postgres.url, db.schema)
        worker.start()
        await wait_for(lambda: caught_up(db, kafka_log, ["tokens", "calls"]), worker, 30, "the first events")

        more = asyncio.create_task(_append_slowly(kafka_log, stream, 2000, chunk=100, pause=0.1))
        await wait_for(lambda: _folded_at_least(db, topics, 600), worker, 30, "batches folding")
        folded_at_restart = (await asyncio.to_thread(progress, db, topics)).folded
        await asyncio.to_thread(postgres.run, "stop")
        # The worker cannot fold while its views' database is down, and its lag gauge says so.
        await wait_for(lambda: _lag(worker, above=0), worker, 30, "the lag to show while PostgreSQL is down")
        await asyncio.to_thread(postgres.run, "start")
        await more
        total = sum((await kafka_log.end_offsets(topics.usage)).values())
        assert folded_at_restart < total, "the restart should land mid-stream"
        # The pool tests each connection as it is taken, so the worker waits out a short outage
        # (or retries the batch, when it takes longer than the pool's timeout).
        await wait_for(lambda: caught_up(db, kafka_log, ["tokens", "calls"]), worker, 60, "recovery after the restart")
        await wait_for(lambda: _lag(worker, at_most=0), worker, 10, "the lag back to zero")
        assert_views_equal_truth(db, stream, [TOKENS, CALLS])
        assert worker.stop() == 0
    finally:
        db.close()
        postgres.run("stop")


# Helpers -------------------------------------------------------------------------------------


class OwnPostgres:
    """A PostgreSQL cluster of the test's own (ops/services/postgres.sh), so restarting it disturbs no other test."""

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        self.url = f"postgresql://omni:omni@127.0.0.1:{self.port}/omni"
        self.env = {**os.environ, "OMNI_RUN_DIR": str(run_dir), "PG_PORT": str(self.port)}

    def run(self, action: str) -> None:
        subprocess.run(["bash", "ops/services/postgres.sh", action], cwd=ROOT, env=self.env, check=True, timeout=120)


async def group_offsets(kafka_servers: str, group: str, topic: str) -> dict[int, int]:
    """The consumer group's committed offsets on `topic`, as Kafka's own tools read them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_servers)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == topic}


async def _append_slowly(log: KafkaLog, stream: Stream, count: int, *, chunk: int, pause: float) -> None:
    for _ in range(count // chunk):
        await log.append(log.topics.usage, to_records(stream.generate(chunk)))
        await asyncio.sleep(pause)


async def _lag(worker: WorkerProcess, *, above: int = -1, at_most: int | None = None) -> bool:
    """The worker's omni_views_lag_records over the usage partitions, compared with the bounds."""
    samples = await asyncio.to_thread(worker.metrics)
    lags = [v for name, v in samples.items() if name.startswith("omni_views_lag_records{") and 'projector="meters"' in name]
    return bool(lags) and sum(lags) > above and (at_most is None or sum(lags) <= at_most)


def _partitions(worker: WorkerProcess) -> dict[str, list[int]]:
    """The partitions a worker folds, as its /readyz lists them (none while it is not ready)."""
    status, body = worker.readiness()
    return body.get("partitions", {}) if status == 200 else {}


async def _assigned(workers: list[WorkerProcess], everything: dict[str, list[int]]) -> Verdict:
    """Every worker ready, and between them folding each partition once."""
    seen = [await asyncio.to_thread(worker.readiness) for worker in workers]
    held: dict[str, list[int]] = defaultdict(list)
    for status, body in seen:
        for topic, partitions in (body.get("partitions", {}) if status == 200 else {}).items():
            held[topic] += partitions
    ok = all(status == 200 for status, _ in seen) and {t: sorted(p) for t, p in held.items()} == everything
    return Verdict(ok, f"expected {everything} between {[w.name for w in workers]}; their /readyz: {seen}")


async def _folded_at_least(db: PostgresDatabase, topics: Topics, count: int) -> bool:
    return (await asyncio.to_thread(progress, db, topics)).folded >= count


def _host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 5432


def _via(url: str, port: int) -> str:
    parsed = urlparse(url)
    return parsed._replace(netloc=f"{parsed.username}:{parsed.password}@127.0.0.1:{port}").geturl()


class TcpRelay:
    """A byte relay to PostgreSQL that can be cut (all connections reset) and restored on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
