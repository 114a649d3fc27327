"""Every benchmark under ops/bench runs to the end at a tiny size and writes its report.

The figures at these sizes mean nothing; this keeps `make bench` from rotting between the
runs that produce the README's figures. `make bench-smoke` runs it, outside `make test`. Reports go to a temporary folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from ops.bench.run import BENCHMARKS
from tests.integration.worker import ROOT

pytestmark = pytest.mark.bench_smoke  # `make bench-smoke`; benchmarks stay out of `make test`

TINY = {
    "ingest_kafka": ["--ingest-kafka-events", "2000", "--ingest-kafka-raw-runs", "1"],
    "freshness": ["--freshness-rate", "300", "--freshness-duration", "3", "--freshness-warmup", "1"]
    + ["--freshness-attempts", "1", "--freshness-probes", "3"],
    "ingest_embedded": ["--ingest-embedded-events", "2000"],
    "query_latency": ["--query-latency-events", "20000", "--query-latency-days", "3", "--query-latency-repeat", "5"],
    "replay": ["--replay-events", "4000", "--replay-workers", "1"],
    "quota_consume": ["--quota-consume-duration", "2", "--quota-consume-warmup", "0.5", "--quota-consume-baseline-duration", "1"]
    + ["--quota-consume-clients", "10", "--quota-consume-refusal-duration", "1", "--quota-consume-refusal-limit", "50"]
    + ["--quota-consume-paced-duration", "2", "--quota-consume-paced-rate", "200"],
    "close_period": ["--close-period-tenants", "5", "--close-period-events", "300"],
    "gdpr_ingest": ["--gdpr-ingest-events", "1000", "--gdpr-ingest-rounds", "1", "--gdpr-ingest-subjects", "50"],
    "meter_watch": ["--meter-watch-duration", "2", "--meter-watch-rate", "300", "--meter-watch-watches", "6"]
    + ["--meter-watch-probes", "2"],
}


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory, kafka_servers: str, database_url: str, redis_url: str) -> Path:
    folder = tmp_path_factory.mktemp("bench-results")
    env = {
        **os.environ,
        "BENCH_RESULTS_DIR": str(folder),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_servers,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
    }
    command = [sys.executable, "-m", "ops.bench.run", *BENCHMARKS, *(arg for name in BENCHMARKS for arg in TINY[name])]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return folder


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_writes_a_report_with_figures_and_targets(reports: Path, name: str) -> None:
    report = orjson.loads((reports / f"{name}.json").read_bytes())
    assert report["benchmark"] == name
    assert report["figures"] and report["tables"]
    assert report["machine"]["nproc"] >= 1 and report["machine"]["seconds"] > 0
    for target in report["targets"]:
        assert target["measured"] is not None and isinstance(target["met"], bool)
    assert name in report["text"]


def test_the_reports_are_not_the_committed_ones(reports: Path) -> None:
    committed = ROOT / "ops" / "bench" / "results"
    assert reports.resolve() != committed.resolve()
    assert not (reports / "profiles").exists()  # nothing was profiled


def test_compare_runs_both_sides_in_turn_and_leaves_no_worktree(kafka_servers: str, database_url: str, redis_url: str) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_servers, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    command = [sys.executable, "-m", "ops.bench.compare", "HEAD", "--benchmark", "ingest_embedded", "--rounds", "1"]
    done = subprocess.run([*command, "--", "--events", "2000"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "round 1/1 base: done" in done.stdout and "round 1/1 ours: done" in done.stdout
    assert "rounds[100].ours_per_s" in done.stdout and "rounds[1000].ours_per_s" in done.stdout
    worktrees = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "omni-compare-" not in worktrees.stdout
