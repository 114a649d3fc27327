"""The README's table of metrics ("CLI", after `/metrics`) is what the processes export: every
metric Omni registers is a row, with the labels it has, and every row names a metric that exists.

An operator writes alerts and dashboards from that table; a metric missing from it is one nobody
finds, and a label written wrong there is a query that matches nothing."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import api.app  # noqa: F401 - every module that registers metrics: the API,
import omni.relay_process  # noqa: F401 - the relay
import streams.faust_app  # noqa: F401 - and the worker

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED = re.compile(r"`(omni_[a-z0-9_]+)(?:\{([a-z_, ]*)\})?`")


def documented() -> dict[str, tuple[str, ...]]:
    """Each metric the README's table names, with its labels as written there."""
    text = (ROOT / "README.md").read_text()
    start = text.index("| metric | what |")
    table = text[start : text.index("\n\n", start)]
    found: dict[str, tuple[str, ...]] = {}
    for row in table.splitlines()[2:]:
        first_cell = row.split(" | ")[0]
        for name, labels in DOCUMENTED.findall(first_cell):
            assert name not in found, f"{name} is in the table twice"
            found[name] = tuple(label.strip() for label in labels.split(",") if label.strip())
    return found


def exported() -> dict[str, tuple[str, ...]]:
    """Each omni_* metric registered in this process, as its samples are named (a counter with
    `_total`), with its label names (a histogram's `le` aside)."""
    found: dict[str, tuple[str, ...]] = {}
    for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001 - the label names of metrics without samples yet
        if isinstance(collector, MetricWrapperBase):
            families = [(collector._name, collector._type, collector._labelnames)]  # noqa: SLF001
        else:
            families = [(f.name, f.type, getattr(f, "_labelnames", ())) for f in collector.collect()]
        for name, kind, labels in families:
            if name.startswith("omni_"):
                found[f"{name}_total" if kind == "counter" else name] = tuple(labels)
    return found


def test_the_table_is_read_whole() -> None:
    table = documented()
    assert table["omni_views_lag_records"] == ("projector", "partition")
    assert table["omni_db_pool_requests_total"] == ("pool", "outcome")
    assert "omni_redis_pool_connections" in table


def test_every_exported_metric_is_documented_with_its_labels() -> None:
    table, served = documented(), exported()
    assert {"omni_http_requests_total", "omni_views_lag_seconds", "omni_db_pool_connections"} <= served.keys()
    assert sorted(served.keys() - table.keys()) == [], "exported, not in the README's table of metrics"
    assert sorted(table.keys() - served.keys()) == [], "in the README's table of metrics, not exported"
    for name, labels in served.items():
        assert sorted(table[name]) == sorted(labels), f"{name}: the README says {table[name]}, /metrics has {labels}"


def test_a_process_without_redis_shows_no_redis_connections() -> None:
    """omni_redis_pool_connections comes from the Redis clients a process watches: embedded mode
    and the relay have none, and showed `in_use 0, idle 0` as if a pool sat idle."""
    from omni.metrics import Pools

    class Client:
        _in_use_connections = [object()]
        _available_connections = [object(), object()]

    pools = Pools()
    redis = {f.name: f for f in pools.collect()}["omni_redis_pool_connections"]
    assert redis.samples == []
    client = Client()
    pools.watch_redis(client)
    redis = {f.name: f for f in pools.collect()}["omni_redis_pool_connections"]
    assert {s.labels["state"]: s.value for s in redis.samples} == {"in_use": 1, "idle": 2}
