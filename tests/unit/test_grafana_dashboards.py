"""The Grafana dashboards in ops/grafana/: every metric a panel (or a variable) queries is one the
API or the worker exports (omni/metrics.py, as /metrics shows it) or a series the rules in
ops/prometheus/ record; and the files are what ops/grafana/dashboards.py writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY, generate_latest

import omni.metrics  # noqa: F401 - registers every metric Omni exports
from ops.grafana import dashboards

ROOT = Path(__file__).resolve().parents[2]

# PromQL's functions, aggregations and keywords: every other identifier in a query is a metric.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "time", "vector",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
    "label_values", "clamp_min", "clamp_max", "abs", "round", "topk", "bottomk",
}  # fmt: skip
LABEL_VALUES = re.compile(r"label_values\(\s*([^,]*?)\s*,\s*\w+\s*\)")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metrics_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: label matchers, ranges, strings, grouping label
    lists and numbers taken out, then every identifier that is not PromQL's own."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = GROUPING.sub(" ", text)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d.*|e\d+", n)}


def exported() -> set[str]:
    """Every series name Omni's /metrics shows (counters' _total, histograms' _bucket/_sum/_count)."""
    names = set()
    for line in generate_latest(REGISTRY).decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def recorded() -> set[str]:
    found = set()
    for path in (ROOT / "ops/prometheus").glob("*.rules.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            found |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return found


def queries(model: dict) -> list[str]:  # type: ignore[type-arg]
    found = [t["expr"] for p in model["panels"] for t in p["targets"]]
    # A variable's label_values(series, label): the series is the query, the label is no metric.
    found += [LABEL_VALUES.sub(r"\1", v["definition"]) for v in model["templating"]["list"] if v.get("type") == "query"]
    return found


def test_the_extractor_reads_metric_names_only() -> None:
    assert metrics_in('histogram_quantile(0.95, sum by (le, route) (rate(omni_http_request_seconds_bucket{a="b"}[5m])))') == {
        "omni_http_request_seconds_bucket"
    }
    assert metrics_in('1 - slo:x:ratio{slo=~"$slo"} * on (owner, slo) slo:y:ratio') == {"slo:x:ratio", "slo:y:ratio"}
    assert metrics_in("time() - max by (p) (omni_views_event_time_seconds)") == {"omni_views_event_time_seconds"}


def test_every_metric_a_dashboard_queries_is_exported_or_recorded() -> None:
    known = exported() | recorded()
    assert {"omni_views_lag_seconds", "omni_log_records_produced_total", "slo:sli_error:ratio_rate5m"} <= known
    for name, model in dashboards.DASHBOARDS.items():
        assert model["panels"], name
        for expr in queries(model):
            read = metrics_in(expr)
            assert read, f"{name}: no metric in {expr!r}"
            assert read <= known, f"{name}: {sorted(read - known)} in {expr!r} is neither exported nor recorded"


def test_the_dashboards_are_what_the_script_writes() -> None:
    titles = set()
    for name, model in dashboards.DASHBOARDS.items():
        on_disk = (ROOT / "ops/grafana" / name).read_text()
        assert on_disk == dashboards.rendered(model), f"regenerate: python -m ops.grafana.dashboards ({name})"
        titles.add(json.loads(on_disk)["title"])
    assert titles == {"Omni: API", "Omni: stream", "Omni: SLOs"}
