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


SELECTOR = re.compile(r"\b(omni_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
BY_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
TARGET_LABELS = {"job", "instance"}  # Prometheus's own, on every scraped series


def labels_of() -> dict[str, set[str]]:
    """Each exported series name with the labels its samples carry (a histogram's `_bucket` with `le`)."""
    from tests.unit.test_metrics_documented import exported

    found: dict[str, set[str]] = {}
    for name, labels in exported().items():
        found[name] = set(labels) | TARGET_LABELS
        for suffix in ("_bucket", "_sum", "_count"):
            found[f"{name}{suffix}"] = found[name] | ({"le"} if suffix == "_bucket" else set())
    return found


def label_problems(expr: str, known: dict[str, set[str]]) -> list[str]:
    """Labels a query names that the series it reads do not have: in a selector, or (where it
    reads Omni's series only) in a by/without/on/ignoring list."""
    problems = []
    for name, matchers in SELECTOR.findall(expr):
        for label in MATCHER.findall(re.sub(r'"(?:[^"\\]|\\.)*"', '""', matchers)):
            if label not in known.get(name, set()):
                problems.append(f"{name} has no label {label!r}")
    read = metrics_in(expr)
    if read and all(name.startswith("omni_") for name in read):
        carried = set().union(*(known.get(name, set()) for name in read))
        for labels in BY_CLAUSE.findall(expr):
            problems += [
                f"no series read has a label {label!r}"
                for label in map(str.strip, labels.split(","))
                if label and label not in carried
            ]
    return problems


def test_the_label_check_sees_a_wrong_label() -> None:
    known = {"omni_x_total": {"route", "status"}}
    assert label_problems('sum by (route) (rate(omni_x_total{status=~"5.."}[5m]))', known) == []
    assert label_problems('sum by (path) (rate(omni_x_total{code="500"}[5m]))', known) == [
        "omni_x_total has no label 'code'",
        "no series read has a label 'path'",
    ]


def test_every_label_a_rule_or_a_dashboard_names_is_one_the_series_has() -> None:
    """The rules and the panels name only labels the metrics they read carry: a label spelt wrong
    (or one a metric lost) is a query that matches nothing, an alert that never fires."""
    known = labels_of()
    exprs = [
        rule["expr"]
        for path in (ROOT / "ops/prometheus").glob("*.rules.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]
    for model in dashboards.DASHBOARDS.values():
        exprs += queries(model)
    assert len(exprs) > 50
    for expr in exprs:
        assert label_problems(expr.replace("$owner", ".*").replace("$slo", ".*"), known) == [], expr
