"""`python -m ops.bench.slo_fold [--events N] [--batch B] [--rounds R]`: the meter fold's cost per event,
without SLOs and with SLOs defined, measured in the same run (SQLite views, MeterProjector.process
called directly on records made in memory: no log, no network).

Each configuration folds the same N usage events in batches of B into fresh views holding one SUM
meter; the figure is the median over R rounds of the wall time per event. On a checkout without
SLOs (stores.slos absent) only the first row is measured, so the same script measures the commit
before.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from schemas.envelope import Envelope, encode
from schemas.meters import MeterDefinition
from schemas.topics import Topics
from stores import views
from stores.database import SqliteDatabase
from stores.schema import SCHEMA
from streams.log import LogRecord
from streams.projectors import MeterProjector

HAS_SLOS = importlib.util.find_spec("stores.slos") is not None
METER = MeterDefinition.model_validate(
    {"slug": "tokens", "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"}
)
AVAILABILITY = {
    "event_type": "inference",
    "sli": "availability",
    "status_property": "$.data.status",
    "objective": 99.9,
    "window": "30d",
}


def records(count: int, topic: str) -> list[LogRecord]:
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    out = []
    for n in range(count):
        event = Envelope(
            id=f"e{n}",
            type="inference",
            tenant_id=f"tenant-{n % 8}",
            source="bench",
            source_id=f"s{n}",
            subject=f"user-{n % 100}",
            event_time=base + timedelta(milliseconds=250 * n),
            recorded_time=base,
            data={"tokens": n % 50 + 1, "model": ("small", "large")[n % 2], "status": 503 if n % 97 == 0 else 200},
        )
        out.append(LogRecord(topic, 0, n, event.tenant_id, encode(event)))
    return out


def define_slos(db: SqliteDatabase, count: int) -> None:
    from stores import slos as slo_store

    with db.transaction() as tx:
        for n in range(count):
            body = {**AVAILABILITY, "match": {"$.data.model": "large"}} if n % 2 else AVAILABILITY
            slo_store.put(tx, "_platform" if n % 2 == 0 else f"tenant-{n % 8}", f"slo-{n}", 1, body, "2026-01-01T00:00:00Z")


def run_once(batch: list[LogRecord], size: int, slos: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        db = SqliteDatabase(Path(folder) / "views.sqlite")
        db.migrate(SCHEMA)
        with db.transaction() as tx:
            views.add_meter_definition(tx, "_platform", METER, "m1")
        if slos:
            define_slos(db, slos)
        projector = MeterProjector(db, Topics(), keep_seen=timedelta(days=8))
        started = time.perf_counter()
        for at in range(0, len(batch), size):
            projector.process(0, batch[at : at + size])
        elapsed = time.perf_counter() - started
        db.close()
    return elapsed / len(batch) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    batch = records(args.events, Topics().usage)
    configurations = [0, 1, 4] if HAS_SLOS else [0]
    figures: dict[str, Any] = {}
    for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits every row alike
        for slos in configurations:
            figures.setdefault(f"{slos}_slos", []).append(run_once(batch, args.batch, slos))
    report = {name: round(statistics.median(runs), 2) for name, runs in figures.items()}
    print(json.dumps({"events": args.events, "batch": args.batch, "micros_per_event_median": report}))


if __name__ == "__main__":
    main()
