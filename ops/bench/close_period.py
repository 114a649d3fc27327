"""Benchmark 7: closing a billing period, in Kafka mode's stores (PostgreSQL views and event store).

For each tenant count: fresh topics and schema; a plan with a fee and three prices (graduated,
per unit, package); the tenants created on it through the control plane and relayed; `events`
usage events spread over them in one past month, put on the usage topic and folded into the views
by the in-process Runner (not timed). Then the close is timed: waiting for the views to hold the
log (already true), reading the cut, deciding every invoice, saving them in one transaction.

The close reads the meters' day buckets, never the events: its cost follows tenants and their
lines (at most tenants x meters x days of buckets), not events. The last row closes the largest
tenant count again over a tenth of the events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ops.bench.common import DATABASE_URL, KAFKA, Report, Table, Target, delete_topics, drop_schema, opt, sizes, unique
from schemas.plans import EXAMPLE_PLAN

NAME = "close_period"
TARGET_SECONDS_1000 = 30.0
METERS = (
    {"slug": "tokens", "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"},
    {"slug": "images", "event_type": "image", "aggregation": "SUM", "value_property": "$.data.images"},
    {"slug": "calls", "event_type": "request", "aggregation": "COUNT"},
)
PLAN = {key: value for key, value in EXAMPLE_PLAN.items() if key != "entitlements"}


@dataclasses.dataclass
class Options:
    tenants: str = opt("100,1000", "tenant counts, comma-separated (the issue's: 100,1000,10000)")
    events: int = opt(200_000, "usage events over the month (the issue's figure: 1000000)")
    partitions: int = opt(4, "usage topic partitions")


@dataclasses.dataclass
class Closed:
    tenants: int
    events: int
    seconds: float
    invoices: int
    fold_seconds: float


def usage(tenant_ids: list[str], count: int, month_start: datetime, seed: int) -> list[Any]:
    """`count` usage envelopes over the month's first 27 days, spread over the tenants."""
    from schemas.envelope import Envelope

    rng = random.Random(seed)
    spread = timedelta(days=27).total_seconds()
    found = []
    for i in range(count):
        kind = ("inference", "image", "request")[i % 3]
        data = (
            {"tokens": rng.randrange(1, 500)}
            if kind == "inference"
            else {"images": rng.randrange(1, 4)}
            if kind == "image"
            else {}
        )
        at = month_start + timedelta(seconds=spread * i / count)
        found.append(
            Envelope(
                id=str(uuid.uuid4()),
                type=kind,
                tenant_id=tenant_ids[i % len(tenant_ids)],
                source="bench-gateway",
                source_id=f"evt-{seed}-{i}",
                subject=f"customer-{rng.randrange(50)}",
                event_time=at,
                recorded_time=at,
                data=data,
            )
        )
    return found


async def one_size(tenants: int, events: int, partitions: int) -> Closed:
    from commands.control_plane import CommandContext
    from omni.billing_close import close_period
    from omni.bootstrap import build
    from omni.settings import Settings
    from projections.invoices import BillingPeriod
    from schemas.envelope import encode
    from schemas.meters import MeterDefinition
    from schemas.plans import PlanBody
    from streams.log import outgoing

    prefix, schema = unique("-"), unique("_")
    data_dir = Path(f"/tmp/{prefix}")
    settings = Settings(
        mode="kafka",
        topic_prefix=prefix,
        database_schema=schema,
        database_url=DATABASE_URL,
        kafka_bootstrap_servers=KAFKA,
        usage_partitions=partitions,
        data_dir=data_dir,
        billing_auto_close=False,
        read_your_writes_seconds=0,
        billing_catch_up_seconds=600,
    )
    platform = build(settings)
    ctx = CommandContext(key_id="bench")
    try:
        await platform.start(background=False, watch_keys=False)
        for meter in METERS:
            platform.control.define_meter(ctx, MeterDefinition.model_validate(meter))
        platform.control.put_plan(ctx, "pro", PlanBody.model_validate(PLAN))
        tenant_ids = [str(platform.control.create_tenant(ctx, f"t{i}", "pro")[0].id) for i in range(tenants)]
        period = BillingPeriod.of(datetime.now(UTC)).before().before()
        for first in range(0, events, 20_000):
            batch = usage(tenant_ids, min(20_000, events - first), period.start, first)
            await platform.log.append(platform.topics.usage, [outgoing(e.tenant_id, e, encode(e)) for e in batch])
        started = time.perf_counter()
        await platform.settle()  # relay the control events, fold everything
        fold_seconds = time.perf_counter() - started
        platform.clock = lambda: period.end + timedelta(days=2)
        started = time.perf_counter()
        closed = await close_period(platform, period, ctx)
        seconds = time.perf_counter() - started
        return Closed(tenants, events, seconds, len(closed.invoices), fold_seconds)
    finally:
        await platform.stop()
        await delete_topics(prefix)
        await asyncio.to_thread(drop_schema, schema)


async def run(o: Options) -> Report:
    counts = sizes(o.tenants)
    results = [await one_size(n, o.events, o.partitions) for n in counts]
    results.append(await one_size(counts[-1], max(1, o.events // 10), o.partitions))
    rows = [[r.tenants, r.events, r.invoices, r.seconds, r.invoices / r.seconds, r.fold_seconds] for r in results]
    at_1000 = next((r.seconds for r in results if r.tenants == 1000 and r.events == o.events), None)
    figures: dict[str, Any] = {f"seconds_{r.tenants}_tenants_{r.events}_events": r.seconds for r in results}
    targets = [Target("close seconds, 1,000 tenants", at_1000, TARGET_SECONDS_1000, higher_is_better=False)] if at_1000 else []
    return Report(
        NAME,
        o,
        [
            Table(
                f"{NAME}: one month closed in Kafka mode's stores (PostgreSQL), 3 priced meters and a fee per tenant",
                ["tenants", "usage events", "invoices", "close s", "invoices/s", "fold s (not timed in close)"],
                rows,
            )
        ],
        figures,
        targets,
        [
            "The close reads day buckets, at most tenants x meters x days in the month, whatever the events behind them: "
            "the last row has the largest tenant count with a tenth of the events (fewer buckets are filled then).",
        ],
    )


if __name__ == "__main__":
    from ops.bench.run import main

    raise SystemExit(main(only=NAME))
