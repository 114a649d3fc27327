"""The Faust worker for Kafka mode: folds the control, usage, api_calls and audit topics into the views.

Exactness does not come from Faust's offsets. Each batch is handed to a
projector that commits the view rows *and* the consumed offsets in one
PostgreSQL transaction and skips whatever is below its stored checkpoint.
So the worker:

- receives each partition's fetched records as one event, a run
  (streams.faust_runs), since Faust's cost per event would otherwise be the
  largest cost of Kafka mode;
- seeks every newly assigned partition to the views' checkpoint, so it
  resumes from what the views hold, not from the consumer group's offsets
  (on the on_partitions_assigned signal, and in Faust's own post-rebalance
  seek "to the committed offsets", which ViewsConsumer redefines: otherwise
  that seek races ours, and a fresh views store would never be rebuilt);
- checks each batch against the checkpoint, and reads any gap from the log
  before applying the batch (should the consumer still be past the views,
  e.g. when the views' database was down during the rebalance);
- retries a failed batch until it commits, in order, while Faust fetches the
  next runs (a buffer bounded in records, from which the fold takes a batch
  once it is full or has lingered fold_linger_seconds), so fetching and folding
  overlap; Faust may ack past the views, which the seek on every assignment
  makes harmless;
- runs the runner's catch-up on a timer, so a meter defined after its events
  arrived still covers the whole history;
- never exits because Kafka or PostgreSQL is away: it waits for both as it starts (each
  attempt logged once, with backoff), and rides out later outages; meanwhile GET /readyz on
  its metrics port (omni.health_server) answers 503 with the reason, and 200 once Kafka and
  the views' database answer and it folds assigned partitions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import faust
import psycopg
from faust.transport.drivers.aiokafka import Transport as KafkaTransport
from faust.types import TP, ConsumerT, StreamT

from omni import failpoints, health_server, metrics, telemetry
from omni.health_server import Prober, Readiness, failure_text, in_daemon_thread
from omni.runtime import set_niceness, tune_collector
from omni.settings import Settings
from schemas.topics import Topics
from stores import schema, views
from stores.database import Database, PostgresDatabase, StoreUnavailable
from streams.faust_consumer import BatchConsumer, delivery_settings, new_event_loop, transport_with
from streams.faust_runs import FetchedRecord, RunBuffer, RunSchema, log_records
from streams.kafka_log import KafkaLog
from streams.log import LogRecord, LogUnavailable
from streams.projectors import API_CALLS, AUDIT, CATALOG
from streams.quota_ledger import Rebuilding
from streams.runner import API_CALLS_EVERY, build_runner

logger = logging.getLogger(__name__)

T = TypeVar("T")

CATCH_UP_EVERY = 0.5
LAG_EVERY = 1.0
RETRY_FIRST, RETRY_MAX = 0.1, 5.0
REBUILD_POLL = 0.2
SEEK_RETRY_SECONDS = 20.0  # within Faust's broker_request_timeout for the recovery's seek
# A killed worker's partitions move to the survivors (or to its restart) once its session
# expires; Faust's default of 60 s would stall the views that long.
SESSION_TIMEOUT, HEARTBEAT_INTERVAL = 10.0, 3.0
# The worker's readiness checks (GET /readyz): Kafka answers, the views' database answers, and
# the group gave it partitions to fold.
LOG, VIEWS, PARTITIONS = "log", "views", "partitions"

Process = Callable[[int, Sequence[LogRecord]], int]


async def retry_forever(what: str, work: Callable[[], Awaitable[T]]) -> T:
    """Await `work()` until it succeeds, backing off. Used where giving up would lose events."""
    return await retry_for(None, what, work)


async def retry_for(seconds: float | None, what: str, work: Callable[[], Awaitable[T]]) -> T:
    """Await `work()` until it succeeds or `seconds` pass (then its last error propagates)."""
    deadline = None if seconds is None else time.monotonic() + seconds
    delay = RETRY_FIRST
    while True:
        try:
            return await work()
        except Rebuilding:  # the quota counters are being rebuilt: seconds, so look again soon
            if deadline is not None and time.monotonic() + REBUILD_POLL > deadline:
                raise
            await asyncio.sleep(REBUILD_POLL)
            continue
        except (LogUnavailable, StoreUnavailable) as outage:  # expected while a dependency is down
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            logger.warning("%s failed (%s); retrying in %.1fs", what, outage, delay)
        except Exception:
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            logger.exception("%s failed; retrying in %.1fs", what, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)


class Feeder:
    """Hands one topic's batches to its projector, contiguously and with retries."""

    def __init__(self, log_: KafkaLog, db: Database, consumer: str, topic: str, process: Process, batch_size: int) -> None:
        self.log = log_
        self.db = db
        self.consumer = consumer
        self.topic = topic
        self.process = process
        self.batch_size = batch_size
        # Next offset known to be committed per partition: lets most batches skip a checkpoint query.
        self._next: dict[int, int] = {}

    def forget(self) -> None:
        """After a rebalance another worker may have moved the checkpoints."""
        self._next.clear()

    def remember(self, committed: Mapping[int, int]) -> None:
        """Checkpoints just read from the views, e.g. on assignment."""
        self._next.update(committed)

    def lag(self, partition: int, log_end: int | None) -> int | None:
        """Records of `partition` below `log_end` the views do not hold; None while either is unknown."""
        position = self._next.get(partition)
        return None if position is None or log_end is None else max(0, log_end - position)

    async def feed(self, runs: Sequence[Sequence[FetchedRecord]]) -> None:
        for partition, records in sorted(log_records(runs).items()):
            await self.feed_partition(partition, records)

    async def feed_partition(self, partition: int, records: list[LogRecord]) -> None:
        expected = self._next.get(partition)
        if expected is None or records[0].offset > expected:
            expected = await retry_forever(f"reading the {self.consumer} checkpoint", lambda: self._checkpoint(partition))
        if records[0].offset > expected:
            await self._fill_gap(partition, expected, records[0].offset)
        await self._apply(partition, records)

    async def _checkpoint(self, partition: int) -> int:
        return (await self.stored_offsets()).get(partition, 0)

    async def _fill_gap(self, partition: int, start: int, end: int) -> None:
        """The consumer is ahead of the views: read [start, end) from the log and apply it first."""
        logger.warning("%s/%d: consumer is at %d but the views at %d; reading the gap", self.topic, partition, end, start)
        while start < end:
            limit = min(self.batch_size, end - start)
            missing = await retry_forever(
                f"reading {self.topic}/{partition} from {start}",
                lambda start=start, limit=limit: self.log.read(self.topic, partition, start, limit),  # type: ignore[misc]
            )
            missing = [r for r in missing if r.offset < end]
            if not missing:
                return  # nothing below `end` to read: a hole in the log itself
            await self._apply(partition, missing)
            start = missing[-1].offset + 1

    async def _apply(self, partition: int, records: list[LogRecord]) -> None:
        with metrics.FOLD_SECONDS.labels(self.consumer).time():
            await retry_forever(
                f"applying {self.topic}/{partition} [{records[0].offset}..{records[-1].offset}]",
                lambda: asyncio.to_thread(self.process, partition, records),
            )
        self._next[partition] = max(self._next.get(partition, 0), records[-1].offset + 1)

    async def stored_offsets(self) -> dict[int, int]:
        def read() -> dict[int, int]:
            with self.db.transaction() as tx:
                return views.checkpoints(tx, self.consumer, self.topic)

        return await asyncio.to_thread(read)


class LagGauge:
    """omni_views_lag_records for the partitions this worker owns: the log's end as its last fetch
    saw it, less the views' checkpoint as the worker last committed or read it. No I/O, so it
    shows the lag while the views' database is down too."""

    def __init__(self, feeders: Sequence[Feeder]) -> None:
        self.feeders = feeders
        self._shown: set[tuple[str, str]] = set()

    def update(self, consumer: ConsumerT) -> None:
        shown: set[tuple[str, str]] = set()
        assigned = consumer.assignment()
        for feeder in self.feeders:
            for tp in sorted(tp for tp in assigned if tp.topic == feeder.topic):
                lag = feeder.lag(tp.partition, consumer.highwater(tp))
                if lag is not None:
                    labels = (feeder.consumer, str(tp.partition))
                    metrics.VIEWS_LAG.labels(*labels).set(lag)
                    metrics.FRESHNESS.waiting(feeder.consumer, tp.partition, lag)
                    shown.add(labels)
        for gone in self._shown - shown:  # revoked: another worker shows it now
            metrics.VIEWS_LAG.remove(*gone)
            metrics.FRESHNESS.forget(gone[0], int(gone[1]))
        self._shown = shown


class CheckpointSeeker:
    """Where each of our partitions resumes: the checkpoint committed with the views."""

    def __init__(self, feeders: Sequence[Feeder]) -> None:
        self.feeders = {feeder.topic: feeder for feeder in feeders}

    async def offsets(self, assigned: Iterable[TP]) -> dict[TP, int]:
        found: dict[TP, int] = {}
        for topic, feeder in self.feeders.items():
            ours = [tp for tp in assigned if tp.topic == topic]
            if ours:
                feeder.forget()  # another worker may have moved them since we last owned them
                stored = await feeder.stored_offsets()
                found.update({tp: stored.get(tp.partition, 0) for tp in ours})
                feeder.remember({tp.partition: stored.get(tp.partition, 0) for tp in ours})
        return found

    async def seek(self, consumer: ConsumerT, assigned: Iterable[TP]) -> dict[TP, int]:
        offsets = await self.offsets(assigned)
        for tp, offset in sorted(offsets.items()):
            logger.info("seeking %s/%d to the views' checkpoint %d", tp.topic, tp.partition, offset)
            await consumer.seek(tp, offset)
        return offsets


def views_transport(seeker: CheckpointSeeker) -> type[KafkaTransport]:
    """Faust's aiokafka transport, whose consumer's "committed offsets" are the views' checkpoints.

    After every rebalance Faust's recovery seeks all assigned partitions "to their
    committed offsets", concurrently with the on_partitions_assigned signal. If that
    meant the group's offsets, whichever seek ran last would win; here both agree.
    """

    class ViewsConsumer(BatchConsumer):
        async def seek_to_committed(self) -> Mapping[TP, int]:
            committed = dict(await super().seek_to_committed())
            try:
                stored = await retry_for(
                    SEEK_RETRY_SECONDS, "reading the views' checkpoints", lambda: seeker.seek(self, self.assignment())
                )
            except Exception:
                # The group's offsets may be past the views' (the pipeline acks ahead), but
                # Feeder reads any gap from the log before a batch, so going on is safe.
                logger.error("could not read the views' checkpoints; resuming from the group's offsets", exc_info=True)
                return committed
            committed.update(stored)
            return committed

    return transport_with(ViewsConsumer)


def broker_url(bootstrap_servers: str) -> str:
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap_servers.split(",") if server.strip())


def create_worker_app(settings: Settings, db: Database, log: KafkaLog, readiness: Readiness | None = None) -> faust.App:
    topics: Topics = log.topics
    from streams.redis_quotas import RedisFactLedger

    runner = build_runner(settings, db, log, RedisFactLedger(settings.redis_url, topics))
    feeders = (
        Feeder(log, db, CATALOG, topics.control, runner.catalog.process, settings.runner_batch_size),
        *(Feeder(log, db, m.consumer, m.topic, m.process, settings.runner_batch_size) for m in runner.meter_projectors),
    )
    if runner.audit is not None:  # the audit topic's hash chains
        feeders += (Feeder(log, db, AUDIT, topics.audit, runner.audit.process, settings.runner_batch_size),)

    datadir = Path(settings.data_dir) / "faust"
    datadir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    app = faust.App(
        f"{settings.topic_prefix}-views",
        broker=broker_url(settings.kafka_bootstrap_servers),
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,  # KafkaLog creates the topics, with retention disabled
        topic_disable_leader=True,  # no leader topic: nothing here needs a leader
        store="memory://",
        datadir=str(datadir),
        autodiscover=False,
        broker_session_timeout=SESSION_TIMEOUT,
        broker_heartbeat_interval=HEARTBEAT_INTERVAL,
        **delivery_settings(settings.runner_batch_size),
    )
    seeker = CheckpointSeeker(feeders)
    # Through the public setter, before anything builds the consumer from the default transport.
    app.transport = views_transport(seeker)(app.conf.broker_consumer, app)

    def source(name: str) -> faust.TopicT:
        return app.topic(name, schema=RunSchema())

    def agent_for(feeder: Feeder) -> Callable[[StreamT[Any]], Awaitable[None]]:
        async def fold(stream: StreamT[Any]) -> None:
            # Faust fetches the next runs while the previous batch folds. Faust may then ack (and
            # commit the group's offsets) past what the views hold; that is safe because every
            # assignment seeks to the views' checkpoints, not to the group's offsets.
            linger = settings.fold_linger_seconds
            if feeder.consumer == API_CALLS:  # a trickle of api_call events: see API_CALLS_EVERY
                linger = max(linger, API_CALLS_EVERY)
            buffered = RunBuffer(max_records=2 * feeder.batch_size, linger=linger)

            async def drain() -> None:
                while True:
                    await feeder.feed(await buffered.take(feeder.batch_size))

            folding = asyncio.create_task(drain(), name=f"fold-{feeder.consumer}")
            try:
                async for event in stream.events():  # one per partition's fetched run
                    if folding.done():
                        folding.result()  # surface the reason the fold stopped
                    await buffered.put(event.value)
            finally:
                folding.cancel()

        fold.__qualname__ = fold.__name__ = f"fold_{feeder.consumer}"  # names the agent in Faust's logs
        return fold

    for feeder in feeders:  # catalog, meters (usage), api-calls (the meters' fold of self-metering), audit
        app.agent(source(feeder.topic), name=f"{settings.topic_prefix}-{feeder.consumer}")(agent_for(feeder))

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # Faust sends `assigned` positionally
    async def seek_to_checkpoints(sender: faust.App, assigned: set[TP], **_: Any) -> None:
        try:
            await seeker.seek(sender.consumer, assigned)
        except Exception:
            # Never crash a rebalance over this: the recovery's seek (ViewsConsumer) comes next.
            logger.warning("could not seek to the views' checkpoints on assignment", exc_info=True)
        if readiness is not None:
            show_assignment(readiness, assigned)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def rebalancing(sender: faust.App, revoked: set[TP], **_: Any) -> None:
        if readiness is not None:
            readiness.failed(PARTITIONS, "rebalancing: waiting for the group's next assignment")

    lag = LagGauge(feeders)

    @app.timer(LAG_EVERY)
    async def measure_lag() -> None:
        try:
            lag.update(app.consumer)
        except Exception:  # e.g. no assignment yet
            logger.debug("could not measure the views' lag", exc_info=True)

    @app.timer(CATCH_UP_EVERY)
    async def catch_up_new_meters() -> None:
        try:
            # Until caught up, not one batch per tick: a meter defined after a million events
            # would otherwise take an hour to cover them at runner_batch_size per half second.
            while await runner.catch_up() and not app.should_stop:
                pass
        except Exception:
            logger.warning("meter catch-up failed; retrying on the next tick", exc_info=True)

    return app


def show_assignment(readiness: Readiness, assigned: Iterable[TP]) -> None:
    """The partitions this worker folds, on /readyz. A worker the group gave none (more workers than
    partitions) is a ready standby: it takes partitions over when another worker goes, and a rolling
    deploy that waits for readiness must not wait for it forever."""
    by_topic: dict[str, list[int]] = {}
    for tp in sorted(assigned):
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    readiness.detail("partitions", by_topic)
    readiness.detail("role", "folding" if by_topic else "standby (no partitions assigned: more workers than partitions)")
    readiness.ok(PARTITIONS)


def open_views(settings: Settings, readiness: Readiness) -> PostgresDatabase:
    """The views' database, migrated; waits (with backoff, one warning per attempt) while PostgreSQL is away."""
    delay = RETRY_FIRST
    while True:
        try:
            db = _migrated_views(settings)
        except Exception as failure:
            readiness.failed(VIEWS, failure_text(failure))
            logger.warning("migrating the views' tables failed (%s); retrying in %.1fs", failure, delay)
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            continue
        readiness.ok(VIEWS)
        return db


def _migrated_views(settings: Settings) -> PostgresDatabase:
    # A plain connection first, as it fails at once; the pool waits 10 s for its first one.
    psycopg.connect(settings.database_url, connect_timeout=5).close()
    # A pool that failed to open is closed for good: each attempt gets a new one.
    db = PostgresDatabase(
        settings.database_url,
        schema=settings.database_schema,
        wait_seconds=settings.database_wait_seconds,
        statement_seconds=settings.database_statement_seconds,
    )
    metrics.POOLS.watch_postgres(settings.database_schema, db.pool)
    try:
        db.migrate(schema.SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


def views_answer(db: Database) -> Callable[[], Awaitable[None]]:
    def select_one() -> None:
        with db.transaction() as tx:
            tx.execute("SELECT 1")

    async def probe() -> None:
        await in_daemon_thread(select_one)  # never holds up the worker's threads or its exit

    return probe


def serve_metrics(
    port: int, readiness: Readiness | None = None, host: str = "127.0.0.1", metrics_token: str | None = None
) -> None:
    """/metrics and /readyz (omni.health_server) on host:port from a thread of their own; 0 serves none."""
    readiness = readiness or Readiness("worker", ())
    health_server.serve(host, port, readiness, "OMNI_WORKER_METRICS_PORT", metrics_token=metrics_token)


def run_worker(settings: Settings) -> None:
    """`omni worker`: build the views database and the log, then run the Faust worker until stopped.

    Kafka or PostgreSQL being away at start (or later) never stops it: it waits, and reports
    why on GET /readyz meanwhile."""
    set_niceness(settings.cpu_nice)  # before any thread starts: threads take their creator's niceness
    failpoints.arm_from(os.environ)  # tests' crash points; nothing is armed unless OMNI_FAILPOINTS says so
    telemetry.configure("omni-worker")  # the fold's spans, exported with OTLP when configured
    readiness = Readiness("worker", (LOG, VIEWS, PARTITIONS))
    serve_metrics(settings.worker_metrics_port, readiness, settings.metrics_host, settings.metrics_token)
    readiness.failed(PARTITIONS, "not in the consumer group yet")
    db = open_views(settings, readiness)
    topics = Topics(prefix=settings.topic_prefix, usage_partitions=settings.usage_partitions)
    kafka = KafkaLog(settings.kafka_bootstrap_servers, topics, produce_timeout=settings.produce_timeout_seconds)
    # One loop for the log's clients and the worker: aiokafka clients are bound to the loop they start on.
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    prober = Prober(readiness, {LOG: kafka.ping, VIEWS: views_answer(db)})
    probing = loop.create_task(prober.run(), name="readiness")  # runs as long as the loop does
    # The topics must exist before the consumer subscribes (the broker does not auto-create them).
    loop.run_until_complete(retry_forever("creating the topics on Kafka", kafka.ping))
    app = create_worker_app(settings, db, kafka, readiness)
    worker = faust.Worker(app, loglevel=settings.log_level, loop=loop, override_logging=False, quiet=True)
    # Nothing but the JSON log records (omni/logs.py) on the output: no banner (quiet) and no terminal
    # spinner, whose escapes and `OK ^` a log shipper cannot parse (Faust drops it only when it sets
    # up logging itself, which override_logging=False keeps it from doing).
    worker.spinner = None
    tune_collector(settings.gc_gen0_threshold)
    try:
        worker.execute_from_commandline()
    finally:
        probing.cancel()
        db.close()


if __name__ == "__main__":
    from omni import logs

    worker_settings = Settings()
    logs.configure(worker_settings.log_level)
    run_worker(worker_settings)
