"""Benchmark 4: meter query latency over the views, next to the naive design in the same run.

N events spread over a month are folded into a fresh PostgreSQL views schema by
the MeterProjector, in runner-sized transactions (the worker's own code path),
and the same events are copied into a naive table, one row per event. Each
query runs the query route's code path (views.query_meter) and the naive
`SUM ... GROUP BY` on the same data, interleaved, and both answers are checked
to agree before anything is timed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from ops.bench.common import (
    DATABASE_URL,
    METER,
    MODELS,
    Report,
    Table,
    Target,
    drop_schema,
    opt,
    percentile,
    ratio,
    spying,
    unique,
)

NAME = "query_latency"
TARGET_SPEEDUP = 10.0
MONTH = datetime(2025, 1, 1, tzinfo=UTC)

NAIVE_SCHEMA = """
CREATE TABLE naive_events (
    tenant_id TEXT NOT NULL, subject TEXT NOT NULL, model TEXT NOT NULL,
    event_time TIMESTAMPTZ NOT NULL, tokens NUMERIC NOT NULL)
"""


@dataclasses.dataclass
class Options:
    events: int = opt(1_000_000, "events over the month (the issue's figure: 10000000)")
    tenants: int = opt(2, "tenants; queries ask for the first one")
    subjects: int = opt(5, "subjects per tenant")
    days: int = opt(30, "days of January 2025 the events cover")
    chunk: int = opt(5000, "events per projector transaction (OMNI_RUNNER_BATCH_SIZE)")
    partitions: int = opt(4, "usage partitions")
    repeat: int = opt(15, "timed runs of each query on each side")
    budget: float = opt(60.0, "seconds per query after which fewer runs suffice (at least 5)")


@dataclasses.dataclass(frozen=True)
class Query:
    name: str
    start: datetime
    end: datetime
    window: str
    group_by: tuple[str, ...]
    naive: str


def queries() -> list[Query]:
    day = MONTH + timedelta(days=14)
    month_end = datetime(2025, 2, 1, tzinfo=UTC)
    where = "FROM naive_events WHERE tenant_id=%s AND event_time>=%s AND event_time<%s"
    return [
        Query("minute windows over a day", day, day + timedelta(days=1), "MINUTE", (),
              f"SELECT date_trunc('minute', event_time), sum(tokens) {where} GROUP BY 1 ORDER BY 1"),
        Query("month total", MONTH, month_end, "MONTH", (),
              f"SELECT date_trunc('month', event_time), sum(tokens) {where} GROUP BY 1 ORDER BY 1"),
        Query("day windows grouped by model, a month", MONTH, month_end, "DAY", ("model",),
              f"SELECT date_trunc('day', event_time), model, sum(tokens) {where} GROUP BY 1, 2 ORDER BY 1, 2"),
    ]  # fmt: skip


def generate(o: Options, schema: str) -> dict[str, float]:
    """Fold the events into the views through MeterProjector and copy them into the naive table."""
    from schemas.envelope import Envelope, encode
    from schemas.meters import MeterDefinition
    from schemas.topics import Topics, partition_for
    from stores import views
    from stores.database import PostgresDatabase
    from stores.schema import SCHEMA as VIEW_SCHEMA
    from streams.log import LogRecord
    from streams.projectors import MeterProjector

    rng = random.Random(7)
    topics = Topics(prefix="bench", usage_partitions=o.partitions)
    db = PostgresDatabase(DATABASE_URL, schema=schema)
    db.migrate(VIEW_SCHEMA)
    with db.transaction() as tx:
        views.add_meter_definition(tx, "_platform", MeterDefinition.model_validate(METER), "bench")
    projector = MeterProjector(db, topics, keep_seen=timedelta(days=7, minutes=5))
    offsets: dict[int, int] = defaultdict(int)
    span = timedelta(days=o.days) / o.events
    fold_seconds = 0.0
    naive = psycopg.connect(DATABASE_URL, autocommit=True, options=f"-c search_path={schema}")
    naive.execute(NAIVE_SCHEMA)
    try:
        for first in range(0, o.events, o.chunk):
            by_partition: dict[int, list[LogRecord]] = defaultdict(list)
            rows = []
            for i in range(first, min(first + o.chunk, o.events)):
                tenant, subject, model = (
                    f"tenant-{rng.randrange(o.tenants)}",
                    f"customer-{rng.randrange(o.subjects)}",
                    rng.choice(MODELS),
                )
                moment, tokens = MONTH + span * i, rng.randrange(1, 1000)
                envelope = Envelope(
                    id=str(uuid.uuid4()), type=METER["event_type"], tenant_id=tenant, source="bench", source_id=f"evt-{i}",
                    subject=subject, event_time=moment, recorded_time=moment, data={"tokens": tokens, "model": model},
                )  # fmt: skip
                partition = partition_for(tenant, o.partitions)
                by_partition[partition].append(LogRecord(topics.usage, partition, offsets[partition], tenant, encode(envelope)))
                offsets[partition] += 1
                rows.append((tenant, subject, model, moment, tokens))
            started = time.perf_counter()
            for partition, records in by_partition.items():
                projector.process(partition, records)
            fold_seconds += time.perf_counter() - started
            with naive.cursor() as cursor, cursor.copy("COPY naive_events FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        naive.execute("CREATE INDEX ON naive_events (tenant_id, event_time)")
        naive.execute("VACUUM ANALYZE naive_events")
        naive.execute("VACUUM ANALYZE meter_windows")
        naive.execute("VACUUM ANALYZE meter_totals")
        buckets = naive.execute("SELECT count(*) FROM meter_windows WHERE resolution=60").fetchone()[0]  # type: ignore[index]
    finally:
        naive.close()
        db.close()
    return {"fold_per_s": o.events / fold_seconds, "buckets": buckets}


def views_side(db: Any, tenant: str, query: Query) -> dict[tuple[Any, ...], Decimal]:
    """What GET /v1/meters/{slug}/query does, minus HTTP: read the meter, query its buckets."""
    from schemas.meters import WindowSize
    from stores import views

    with db.transaction() as tx:
        definition = views.meter_definition(tx, METER["slug"])
        assert definition is not None
        rows = views.query_meter(
            tx, tenant, definition, start=query.start, end=query.end, window_size=WindowSize(query.window),
            group_by=list(query.group_by), by_subject=False, subjects=[],
        )  # fmt: skip
    return {(row.window_start, *row.group_by.values()): Decimal(row.value or 0) for row in rows}


def naive_side(conn: psycopg.Connection[Any], tenant: str, query: Query) -> dict[tuple[Any, ...], Decimal]:
    rows = conn.execute(query.naive, (tenant, query.start, query.end)).fetchall()  # type: ignore[arg-type]
    return {tuple(row[:-1]): Decimal(row[-1]) for row in rows}


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return (time.perf_counter() - started) * 1000


def measure(o: Options, schema: str) -> list[dict[str, Any]]:
    from stores.database import PostgresDatabase

    db = PostgresDatabase(DATABASE_URL, schema=schema)
    conn = psycopg.connect(DATABASE_URL, autocommit=True, options=f"-c search_path={schema} -c TimeZone=UTC")
    results = []
    try:
        for query in queries():
            ours, naive = views_side(db, "tenant-0", query), naive_side(conn, "tenant-0", query)
            if ours != naive:
                raise AssertionError(f"{query.name}: the views and the naive table disagree ({len(ours)} vs {len(naive)} rows)")
            samples: dict[str, list[float]] = {"views": [], "naive": []}
            with spying(f"{NAME}-{query.window.lower()}"):
                deadline = time.monotonic() + o.budget
                for n in range(o.repeat):  # interleaved, so both sides see the same noise
                    if n >= 5 and time.monotonic() > deadline:
                        break
                    samples["views"].append(timed(lambda: views_side(db, "tenant-0", query)))  # noqa: B023
                    samples["naive"].append(timed(lambda: naive_side(conn, "tenant-0", query)))  # noqa: B023
            results.append(
                {
                    "query": query.name,
                    "rows": len(ours),
                    "runs": len(samples["views"]),
                    **{f"{side}_ms": values for side, values in samples.items()},
                }
            )
    finally:
        conn.close()
        db.close()
    return results


async def run(o: Options) -> Report:
    schema = unique("_")
    try:
        started = time.perf_counter()
        built = await asyncio.to_thread(generate, o, schema)
        build_seconds = time.perf_counter() - started
        results = await asyncio.to_thread(measure, o, schema)
    finally:
        await asyncio.to_thread(drop_schema, schema)
    rows, targets = [], []
    for r in results:
        v50, v99, n50, n99 = (percentile(r[f"{s}_ms"], q) for s in ("views", "naive") for q in (50, 99))
        rows.append([r["query"], r["rows"], r["runs"], v50, v99, n50, n99, ratio(n50, v50), ratio(n99, v99)])
        targets.append(Target(f"p99 speed-up, {r['query']}", ratio(n99, v99), TARGET_SPEEDUP))
    density = o.events / built["buckets"]
    return Report(
        NAME,
        o,
        [
            Table(
                f"{NAME}: {o.events:,} events over {o.days} days, {o.tenants} tenants x {o.subjects} subjects x {len(MODELS)} models; "
                f"{built['buckets']:,} minute buckets ({density:.2f} events/bucket)",
                [
                    "query (tenant-0)",
                    "rows",
                    "runs",
                    "views p50 ms",
                    "views p99 ms",
                    "naive p50 ms",
                    "naive p99 ms",
                    "speed-up p50",
                    "speed-up p99",
                ],
                rows,
            )
        ],
        {
            "results": results,
            "buckets": built["buckets"],
            "events_per_bucket": density,
            "fold_per_s": built["fold_per_s"],
            "build_seconds": build_seconds,
        },
        targets,
        notes=[
            "views = the query route's code path without HTTP (views.query_meter: one GROUP BY over the coarsest roll-up that fits); "
            "naive = one row per event, index (tenant_id, event_time), SUM ... GROUP BY date_trunc(...) in PostgreSQL",
            f"building the views through MeterProjector.process ran at {built['fold_per_s']:,.0f} events/s",
        ],
    )


if __name__ == "__main__":
    from ops.bench.run import main

    raise SystemExit(main(only=NAME))
