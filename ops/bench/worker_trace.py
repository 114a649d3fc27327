"""`python -m ops.bench.worker_trace`: the Faust worker of `python -m streams.faust_app`, logging every batch.

A diagnostic (`--trace-worker` / BENCH_TRACE_WORKER=1 on the Kafka-mode benchmarks): one JSON line per
batch the agent hands to Feeder.feed, with its size (runs and records), the time spent folding it and the time the agent
waited for it, written to the file named by BENCH_TRACE. Summarized by `summarize`.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streams import faust_app
from streams.faust_runs import FetchedRecord


def install(path: Path) -> None:
    original = faust_app.Feeder.feed
    out = path.open("a", buffering=1)
    last: dict[str, float] = {}

    async def feed(self: faust_app.Feeder, runs: Sequence[Sequence[FetchedRecord]]) -> None:
        started = time.monotonic()
        await original(self, runs)
        ended = time.monotonic()
        line = {
            "topic": self.topic,
            "runs": len(runs),
            "events": sum(len(run) for run in runs),
            "wait_s": started - last.get(self.topic, started),
            "feed_s": ended - started,
        }
        out.write(json.dumps(line) + "\n")
        last[self.topic] = ended

    faust_app.Feeder.feed = feed  # type: ignore[method-assign]


def summarize(lines: Sequence[str]) -> dict[str, Any]:
    """Usage-topic batches: how many, how big, how long folding took, how long the agent waited between them."""
    batches = [b for b in map(json.loads, lines) if b["topic"].endswith(".usage")]
    if not batches:
        return {}
    feed, wait = sum(b["feed_s"] for b in batches), sum(b["wait_s"] for b in batches)
    return {
        "batches": len(batches),
        "events_per_batch_mean": statistics.fmean(b["events"] for b in batches),
        "events_per_batch_max": max(b["events"] for b in batches),
        "runs_per_batch_mean": statistics.fmean(b.get("runs", 0) for b in batches),
        "feed_ms_mean": 1000 * feed / len(batches),
        "fold_events_per_s": sum(b["events"] for b in batches) / feed if feed else 0.0,
        "share_folding": feed / (feed + wait) if feed + wait else 0.0,
    }


if __name__ == "__main__":
    from omni import logs
    from omni.settings import Settings

    install(Path(os.environ["BENCH_TRACE"]))
    settings = Settings()
    logs.configure(settings.log_level)
    faust_app.run_worker(settings)
