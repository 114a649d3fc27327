"""Benchmark 3: ingest to meter in embedded mode.

`omni serve` in embedded mode (a subprocess: the API, the relay and the
in-process runner) takes batched CloudEvents POSTs over real HTTP; timed until
the meter query shows every event. Baseline: the same encoded envelopes
appended straight into a fresh SQLite log file (the embedded log's own schema,
WAL, synchronous=FULL), one transaction per request batch, in this process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

from ops.bench.common import (
    Report,
    Table,
    Target,
    bodies,
    cloud_events,
    encoded,
    expected_total,
    opt,
    percentile,
    post_all,
    ratio,
    serve,
    sizes,
)

NAME = "ingest_embedded"
TARGET_RATE = 10_000


@dataclasses.dataclass
class Options:
    events: int = opt(50_000, "events per round (one round per batch size)")
    batch_sizes: str = opt("100,1000", "events per request, one round each")
    clients: int = opt(4, "concurrent HTTP connections")
    partitions: int = opt(4, "usage partitions of the embedded log")
    timeout: float = opt(900.0, "seconds a round may take before it fails")


def raw_sqlite_append(values: list[bytes], batch: int, partitions: int) -> float:
    """Events/s appending `values` to a fresh log file, one durable transaction per batch."""
    from streams.embedded_log import SCHEMA

    with tempfile.TemporaryDirectory(prefix="omni-bench-sqlite-") as folder:
        db = sqlite3.connect(Path(folder) / "log.sqlite", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        started = time.perf_counter()
        for first in range(0, len(values), batch):
            chunk = values[first : first + batch]
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO records VALUES ('usage', ?, ?, 'tenant', ?, 0, NULL)",
                [((first + i) % partitions, first + i, value) for i, value in enumerate(chunk)],
            )
            db.execute("COMMIT")
        elapsed = time.perf_counter() - started
        db.close()
    return len(values) / elapsed


async def run(o: Options) -> Report:
    rows: list[list[object]] = []
    rounds: list[dict[str, object]] = []
    targets: list[Target] = []
    async with serve("embedded", partitions=o.partitions) as stack:
        run_id = uuid.uuid4().hex[:8]
        warm = await stack.tenant("warm-up")
        await post_all(stack.api.base_url, warm, bodies(cloud_events(f"{run_id}-w", 2000), 500), 2)
        await stack.api.wait_total(warm, expected_total(0, 2000), timeout=120)
        for size in sizes(o.batch_sizes):
            key = await stack.tenant(f"batch-{size}")
            events = cloud_events(f"{run_id}-{size}", o.events)
            work = bodies(events, size)
            started = time.monotonic()
            latencies = await post_all(stack.api.base_url, key, work, o.clients)
            acked = time.monotonic()
            visible = await stack.api.wait_total(key, expected_total(0, o.events), timeout=o.timeout)
            ours = o.events / (visible - started)
            raw = await asyncio.to_thread(raw_sqlite_append, encoded(events), size, o.partitions)
            rounds.append(
                {
                    "batch_size": size,
                    "events": o.events,
                    "seconds_to_last_202": acked - started,
                    "seconds_to_visible": visible - started,
                    "accepted_per_s": o.events / (acked - started),
                    "ours_per_s": ours,
                    "raw_per_s": raw,
                    "ratio": ratio(ours, raw),
                    "request_p50_ms": percentile(latencies, 50) * 1000,
                    "request_p99_ms": percentile(latencies, 99) * 1000,
                }
            )
            rows.append(
                [
                    size,
                    o.events,
                    o.events / (acked - started),
                    ours,
                    raw,
                    ratio(ours, raw),
                    percentile(latencies, 50) * 1000,
                    percentile(latencies, 99) * 1000,
                ]
            )
            targets.append(Target(f"events/s end to end, {size}/request", ours, TARGET_RATE))
        memory = stack.memory()
    return Report(
        NAME,
        o,
        [
            Table(
                f"{NAME}: embedded mode, HTTP POST -> SQLite log -> in-process runner -> SQLite meter view ({o.clients} clients)",
                ["batch", "events", "accepted/s", "ours e2e/s", "raw SQLite/s", "ours/raw", "req p50 ms", "req p99 ms"],
                rows,
            )
        ],
        {"rounds": rounds, "memory_kib": memory},
        targets,
        notes=[
            "raw = the same encoded envelopes into a fresh file of the embedded log's schema, WAL + synchronous=FULL, one transaction per request batch"
        ],
    )


if __name__ == "__main__":
    from ops.bench.run import main

    raise SystemExit(main(only=NAME))
