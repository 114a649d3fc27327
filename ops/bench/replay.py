"""Benchmark 5: replay, rebuilding every projection from events already on Kafka.

N usage events (and a meter definition on the control topic) are put on fresh
topics first. Ours: `omni replay meters` (streams.replay: the bulk meters fold,
streams.bulk_meters) rebuilding the meters into a shadow schema; and the live
path, the in-process Runner over KafkaLog folding them into a fresh PostgreSQL
views schema until drained. Baseline: a plain aiokafka consumer reading the
same topic from the beginning to its end, same process.

Two more rows say where a rebuild by the Kafka-mode worker stands: the Faust
worker itself (`python -m streams.faust_app` on another fresh schema), and
Faust's delivery alone (ops.bench.faust_noop: the same consumer and runs, no
fold). Both are timed from their first delivery, so start-up is left out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from ops.bench.common import (
    DATABASE_URL,
    KAFKA,
    METER,
    ROOT,
    Process,
    Report,
    Table,
    delete_topics,
    drop_schema,
    opt,
    ratio,
    service_env,
    spying,
    unique,
)
from streams.kafka_log import KafkaLog

NAME = "replay"


@dataclasses.dataclass
class Options:
    events: int = opt(200_000, "usage events on the topic (the issue's figure: 1000000)")
    partitions: int = opt(4, "usage topic partitions")
    tenants: int = opt(8, "tenants the events are spread over")
    runner_batch: int = opt(5000, "records per runner read and transaction (OMNI_RUNNER_BATCH_SIZE)")
    streaming: int = opt(1, "also rebuild with the streaming fold (the live Runner), as before replays had a bulk path (0: skip)")
    faust: int = opt(1, "also rebuild with the Faust worker and time Faust's bare delivery (0: skip)")
    workers: int = opt(2, "also rebuild with this many Faust workers in one group (one per core; 1: skip)")


def envelopes(count: int, tenants: int, start: int) -> list[bytes]:
    """Usage envelopes over the last hours, as the API would have encoded them."""
    from schemas.envelope import Envelope, encode

    rng = random.Random(start)
    base = datetime.now(UTC) - timedelta(hours=6)
    return [
        encode(
            Envelope(
                id=str(uuid.uuid4()),
                type=METER["event_type"],
                tenant_id=f"tenant-{i % tenants}",
                source="bench-gateway",
                source_id=f"evt-{i}",
                subject=f"customer-{rng.randrange(20)}",
                event_time=base + timedelta(milliseconds=100 * i),
                recorded_time=base + timedelta(milliseconds=100 * i),
                data={"tokens": i % 50 + 1, "model": ("small", "medium", "large")[i % 3]},
            )
        )
        for i in range(start, start + count)
    ]


async def fill(log: KafkaLog, count: int, tenants: int) -> float:
    """Put the meter definition and `count` usage events on the log; return events/s of the fill."""
    from commands.control_plane import Meter
    from schemas.envelope import decode, encode
    from streams.log import outgoing
    from streams.outbox import to_envelope

    defined = to_envelope(Meter(slug=METER["slug"], definition=dict(METER)).collect_events()[0])
    await log.append(log.topics.control, [outgoing(defined.id, defined, encode(defined))])
    started = time.perf_counter()
    for first in range(0, count, 10_000):
        values = envelopes(min(10_000, count - first), tenants, first)
        items = [
            outgoing(envelope.tenant_id, envelope, value) for value in values for envelope in [decode(value)]
        ]  # with its headers
        await log.append(log.topics.usage, items)
    return count / (time.perf_counter() - started)


async def raw_read(topic: str, partitions: int, expected: int) -> float:
    """Events/s of a bare aiokafka consumer reading the whole topic (values touched, nothing decoded)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        seen = size = 0
        started = time.perf_counter()
        while seen < expected:
            for records in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                seen += len(records)
                size += sum(len(r.value or b"") for r in records)
        elapsed = time.perf_counter() - started
        assert seen == sum(ends.values()) == expected, (seen, ends, expected)
    finally:
        await consumer.stop()
    return seen / elapsed


async def rebuild(log: KafkaLog, schema: str, batch: int) -> tuple[float, int]:
    """Events/s of the Runner folding the whole log into fresh views; and the meter total it got."""
    from omni.runtime import tune_collector
    from omni.settings import Settings
    from stores.database import PostgresDatabase
    from stores.schema import SCHEMA as VIEW_SCHEMA
    from streams.projectors import CatalogProjector, MeterProjector
    from streams.runner import Runner

    db = PostgresDatabase(DATABASE_URL, schema=schema)
    try:
        db.migrate(VIEW_SCHEMA)
        topics = log.topics
        runner = Runner(
            log,
            CatalogProjector(db, topics),
            MeterProjector(db, topics, keep_seen=timedelta(days=7, minutes=5)),
            batch_size=batch,
        )
        # The runner runs inside `omni serve` (embedded mode), which tunes the collector: so here too.
        tune_collector(Settings().gc_gen0_threshold)
        started = time.perf_counter()
        with spying(f"{NAME}-runner"):
            await runner.drain()
        elapsed = time.perf_counter() - started
        with db.transaction() as tx:
            total = tx.execute("SELECT count(*) FROM seen_digests")[0][0]
    finally:
        db.close()
    return elapsed, int(total)


async def replay_meters(log: KafkaLog, schema: str, batch: int) -> tuple[float, int]:
    """Seconds `omni replay meters` (streams.replay) takes to rebuild the meters into a shadow of
    an empty views schema; and how many events its shadow's meter counts."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from omni.runtime import tune_collector
    from omni.settings import Settings
    from stores.database import PostgresDatabase
    from stores.schema import SCHEMA as VIEW_SCHEMA
    from stores.shadow import reopen
    from streams.replay import Mode, Replayer, Request

    live = PostgresDatabase(DATABASE_URL, schema=schema)
    try:
        live.migrate(VIEW_SCHEMA)
        key = Ed25519PrivateKey.generate()
        replayer = Replayer(log, live, None, lambda: key, keep_seen=timedelta(days=7, minutes=5), batch_size=batch)
        tune_collector(Settings().gc_gen0_threshold)
        started = time.perf_counter()
        with spying(f"{NAME}-bulk"):
            outcome = await replayer.run(Request(("meters",), Mode.BUILD))
        elapsed = time.perf_counter() - started
        assert outcome.kept is not None
        shadow = reopen(live, outcome.kept)
        try:
            with shadow.db.transaction() as tx:
                total = tx.execute(
                    "SELECT sum(count) FROM meter_totals WHERE meter = ? AND resolution = (SELECT max(resolution) FROM meter_totals)",
                    (METER["slug"],),
                )[0][0]
        finally:
            shadow.drop()
    finally:
        live.close()
        await asyncio.to_thread(drop_schema, schema)  # the (empty) live views the replay was compared with
    return elapsed, int(total)


def folded(schema: str, topic: str) -> int:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        try:
            row = conn.execute(
                f'SELECT sum(next_offset) FROM "{schema}".checkpoints WHERE consumer=%s AND topic=%s', ("meters", topic)
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0] or 0) if row else 0


async def faust_rebuild(prefix: str, topic: str, schema: str, o: Options, workers: int = 1) -> float:
    """Seconds `workers` Faust workers take from the first folded batch to the last; the schema is dropped after."""
    with tempfile.TemporaryDirectory(prefix="omni-bench-replay-") as folder:
        env = service_env(
            mode="kafka", topic_prefix=prefix, database_schema=schema, usage_partitions=str(o.partitions),
            data_dir=folder, runner_batch_size=str(o.runner_batch),
        )  # fmt: skip
        group = [Process(f"{NAME}-faust-worker-{n}", ["-m", "streams.faust_app"], env, Path(folder)) for n in range(workers)]
        for worker in group:
            worker.start()
        try:
            first = 0.0
            while (done := await asyncio.to_thread(folded, schema, topic)) < o.events:
                first = first or (time.monotonic() if done else 0.0)
                if dead := [w for w in group if not w.alive()]:
                    raise RuntimeError(f"a Faust worker exited:\n{dead[0].tail()}")
                await asyncio.sleep(0.05)
            return time.monotonic() - first
        finally:
            for worker in group:
                worker.stop()
            await asyncio.to_thread(drop_schema, schema)


async def faust_delivery(topic: str, o: Options) -> float:
    """Seconds Faust takes to hand every record to an agent that folds nothing."""
    command = [sys.executable, "-m", "ops.bench.faust_noop", topic, str(o.events), str(o.runner_batch)]
    done = await asyncio.to_thread(subprocess.run, command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    result = next((line.split() for line in done.stdout.splitlines() if line.startswith("RESULT")), None)
    if result is None:
        raise RuntimeError(f"faust_noop failed:\n{done.stdout[-1000:]}\n{done.stderr[-2000:]}")
    return float(result[2])


async def run(o: Options) -> Report:
    from schemas.topics import Topics

    topics = Topics(prefix=unique("-"), usage_partitions=o.partitions)
    schema = unique("_")
    log = KafkaLog(KAFKA, topics, produce_timeout=30)
    try:
        await log.start()
        await log.ping()
        fill_rate = await fill(log, o.events, o.tenants)
        raw = await raw_read(topics.usage, o.partitions, o.events)
        bulk_elapsed, distinct = await replay_meters(log, unique("_"), o.runner_batch)
        assert distinct == o.events, f"the replay folded {distinct} distinct events, expected {o.events}"
        raw_after = await raw_read(topics.usage, o.partitions, o.events)  # the machine may change meanwhile
        elapsed, distinct = await rebuild(log, schema, o.runner_batch) if o.streaming else (0.0, o.events)
        assert distinct == o.events, f"the rebuild folded {distinct} distinct events, expected {o.events}"
        faust_seconds = await faust_rebuild(topics.prefix, topics.usage, unique("_"), o) if o.faust else None
        group_seconds = (
            await faust_rebuild(topics.prefix, topics.usage, unique("_"), o, o.workers) if o.faust and o.workers > 1 else None
        )
        noop_seconds = await faust_delivery(topics.usage, o) if o.faust else None
    finally:
        await log.close()
        await delete_topics(topics.prefix)
        await asyncio.to_thread(drop_schema, schema)
    replayed = o.events / bulk_elapsed
    raw_mean = (raw + raw_after) / 2
    rows = [
        ["raw aiokafka read (baseline; before / after the replay)", raw_mean, 1.0, o.events / raw_mean],
        ["ours: omni replay meters (bulk fold) -> shadow schema", replayed, ratio(replayed, raw_mean), bulk_elapsed],
    ]
    figures = {
        "events": o.events,
        "replay_per_s": replayed,
        "raw_per_s": raw_mean,
        "raw_before_per_s": raw,
        "raw_after_per_s": raw_after,
        "replay_ratio": ratio(replayed, raw_mean),
        "replay_seconds": bulk_elapsed,
        "fill_per_s": fill_rate,
    }
    if o.streaming:
        ours = o.events / elapsed
        rows.append(["streaming fold: Runner + KafkaLog -> PostgreSQL views", ours, ratio(ours, raw_mean), elapsed])
        figures |= {"ours_per_s": ours, "ratio": ratio(ours, raw_mean), "seconds": elapsed}
    if faust_seconds and noop_seconds:
        rows += [
            [
                "Faust worker (streams.faust_app) -> views",
                o.events / faust_seconds,
                ratio(o.events / faust_seconds, raw),
                faust_seconds,
            ],
            [
                "Faust delivery alone, no fold (faust_noop)",
                o.events / noop_seconds,
                ratio(o.events / noop_seconds, raw),
                noop_seconds,
            ],
        ]
        figures |= {"faust_worker_per_s": o.events / faust_seconds, "faust_noop_per_s": o.events / noop_seconds}
    if group_seconds:
        rows.append(
            [
                f"{o.workers} Faust workers in one group -> views",
                o.events / group_seconds,
                ratio(o.events / group_seconds, raw),
                group_seconds,
            ]
        )
        figures |= {"faust_workers": o.workers, "faust_workers_per_s": o.events / group_seconds}
    return Report(
        NAME,
        o,
        [
            Table(
                f"{NAME}: rebuild every projection from {o.events:,} events on Kafka into fresh views",
                ["reader", "events/s", "vs raw", "seconds"],
                rows,
            )
        ],
        figures,
        notes=[f"filling the topic through KafkaLog.append ran at {fill_rate:,.0f} events/s (not part of either figure)"],
    )


if __name__ == "__main__":
    from ops.bench.run import main

    raise SystemExit(main(only=NAME))
