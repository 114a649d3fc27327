"""`python -m ops.grafana.dashboards`: writes the Grafana dashboards in ops/grafana/ (JSON, the
model Grafana imports: Dashboards > New > Import, or file provisioning) from the panel lists below.

Three dashboards over the metrics the API and the worker export (omni/metrics.py) and the series
the rules in ops/prometheus/ record: the API, the stream (throughput, lag, freshness) and the
SLOs. tests/integration/test_grafana_dashboards.py checks every metric a panel queries is
exported (or recorded by those rules), and that the files are what this script writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SLOS = 'owner=~"$owner",slo=~"$slo"'


def panel(
    title: str, targets: list[tuple[str, str]], unit: str = "short", kind: str = "timeseries", description: str = ""
) -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard(uid: str, title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    laid = []
    for n, p in enumerate(panels):
        laid.append({"id": n + 1, "gridPos": {"h": 8, "w": 12, "x": 12 * (n % 2), "y": 8 * (n // 2)}, **p})
    datasource = {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}
    return {
        "uid": uid,
        "title": title,
        "tags": ["omni"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [datasource, *variables]},
        "panels": laid,
    }


def query_variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "multi": True,
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
    }


API = dashboard(
    "omni-api",
    "Omni: API",
    [
        panel("Requests by status", [("sum by (status) (rate(omni_http_requests_total[5m]))", "{{status}}")], "reqps"),
        panel(
            "Error ratio (5xx)",
            [('sum(rate(omni_http_requests_total{status=~"5.."}[5m])) / sum(rate(omni_http_requests_total[5m]))', "5xx share")],
            "percentunit",
            description="OmniApiErrorRatioHigh fires above 1% for 5 minutes",
        ),
        panel(
            "Latency by route (p50, p95, p99)",
            [
                (
                    f"histogram_quantile({q}, sum by (le, route) (rate(omni_http_request_seconds_bucket[5m])))",
                    f"p{int(q * 100)} {{{{route}}}}",
                )
                for q in (0.5, 0.95, 0.99)
            ],
            "s",
            description="OmniApiLatencyHigh fires when the p95 over every route is above 2 s for 5 minutes",
        ),
        panel(
            "Events offered to POST /v1/events",
            [
                ("sum by (outcome) (rate(omni_events_total[5m]))", "{{outcome}}"),
                ("sum(rate(omni_log_unavailable_total[5m]))", "503: log unavailable"),
            ],
            "ops",
        ),
        panel(
            "View query latency (p95)",
            [("histogram_quantile(0.95, sum by (le, view) (rate(omni_view_query_seconds_bucket[5m])))", "{{view}}")],
            "s",
        ),
        panel("Quota decisions", [("sum by (outcome) (rate(omni_quota_decisions_total[5m]))", "{{outcome}}")], "ops"),
        panel(
            "PostgreSQL pools",
            [
                ("sum by (pool, state) (omni_db_pool_connections)", "{{pool}} {{state}}"),
                ("max by (pool) (omni_db_pool_max_connections)", "{{pool}} max"),
                ("max by (pool) (omni_db_pool_requests_waiting)", "{{pool}} waiting"),
            ],
            description="OmniDbPoolExhausted fires when every connection is in use and transactions wait",
        ),
        panel("Redis client connections", [("sum by (state) (omni_redis_pool_connections)", "{{state}}")]),
        panel(
            "API keys",
            [
                ('sum(rate(omni_key_cache_total{outcome="hit"}[5m])) / sum(rate(omni_key_cache_total[5m]))', "cache hit share"),
                ("min(omni_key_cache_trusted)", "cache trusted"),
            ],
            "percentunit",
        ),
        panel(
            "Refused before any route, client disconnects",
            [
                ("sum by (reason) (rate(omni_http_refused_before_auth_total[5m]))", "{{reason}}"),
                ("sum(rate(omni_http_client_disconnects_total[5m]))", "client went away"),
            ],
            "reqps",
        ),
        panel("Commands answered before their views", [("sum(rate(omni_read_your_writes_missed_total[5m]))", "missed")], "ops"),
        panel("Ready processes", [("omni_ready", "{{process}} {{instance}}")]),
    ],
)

STREAM = dashboard(
    "omni-stream",
    "Omni: stream",
    [
        panel("Records produced per topic", [("sum by (topic) (rate(omni_log_records_produced_total[5m]))", "{{topic}}")], "ops"),
        panel(
            "Records folded per projector",
            [("sum by (projector) (rate(omni_projected_records_total[5m]))", "{{projector}}")],
            "ops",
        ),
        panel(
            "Lag per partition (records)",
            [("max by (projector, partition) (omni_views_lag_records)", "{{projector}} {{partition}}")],
            description="Records on the log the views do not hold yet",
        ),
        panel(
            "Freshness per partition (seconds behind)",
            [("max by (projector, partition) (omni_views_lag_seconds)", "{{projector}} {{partition}}")],
            "s",
            description="Now less the recorded time of the newest record folded, while records wait; OmniProjectionLagHigh fires above 60 s",
        ),
        panel(
            "Age of the newest event time folded",
            [("time() - max by (projector, partition) (omni_views_event_time_seconds)", "{{projector}} {{partition}}")],
            "s",
        ),
        panel(
            "Batch fold time (p50, p95)",
            [
                (
                    f"histogram_quantile({q}, sum by (le, projector) (rate(omni_fold_batch_seconds_bucket[5m])))",
                    f"p{int(q * 100)} {{{{projector}}}}",
                )
                for q in (0.5, 0.95)
            ],
            "s",
        ),
        panel(
            "Dead letters, holes, held deliveries",
            [
                ("sum by (consumer) (rate(omni_dead_letters_total[5m]))", "dead letters {{consumer}}"),
                ("sum(rate(omni_log_holes_total[5m]))", "holes"),
                ("sum(rate(omni_worker_deliveries_held_total[5m]))", "fetch held (fold behind)"),
            ],
            "ops",
        ),
        panel("Quota ledger rebuilds", [("sum(increase(omni_quota_ledger_rebuilds_total[1h]))", "rebuilds")]),
    ],
)

SLOS_DASHBOARD = dashboard(
    "omni-slos",
    "Omni: SLOs",
    [
        panel(
            "SLI over the SLO window",
            [
                (
                    f"1 - slo:period_burn_rate:ratio{{{SLOS}}} * on (owner, slo) slo:error_budget:ratio{{{SLOS}}}",
                    "{{slo}} ({{owner}})",
                )
            ],
            "percentunit",
        ),
        panel(
            "Error budget remaining",
            [(f"slo:period_error_budget_remaining:ratio{{{SLOS}}}", "{{slo}} ({{owner}})")],
            "percentunit",
        ),
        panel(
            "Burn rate by window",
            [
                (
                    f"max without (window) (slo:sli_error:ratio_rate{w}{{{SLOS}}}) / on (owner, slo) slo:error_budget:ratio{{{SLOS}}}",
                    f"{w} {{{{slo}}}}",
                )
                for w in ("5m", "30m", "1h", "6h", "1d", "3d")
            ],
            description="Page: above 14.4 over 1h and 5m, or 6 over 6h and 30m (30-day SLO; scaled for other windows)",
        ),
        panel("Current burn rate (5m)", [(f"slo:current_burn_rate:ratio{{{SLOS}}}", "{{slo}} ({{owner}})")]),
        panel(
            "Events counted",
            [(f"sum by (slo, outcome) (rate(omni_slo_events_total{{{SLOS}}}[5m]))", "{{slo}} {{outcome}}")],
            "ops",
        ),
        panel(
            "Alerts by event time (the fold's omni.slo.alert_* events)",
            [(f"max by (owner, slo, alert) (omni_slo_alert_firing{{{SLOS}}})", "{{slo}} {{alert}}")],
        ),
        panel(
            "Objectives",
            [(f"max by (owner, slo, window) (omni_slo_objective_ratio{{{SLOS}}})", "{{slo}} over {{window}}")],
            "percentunit",
            "stat",
        ),
    ],
    [
        query_variable("owner", "label_values(omni_slo_objective_ratio, owner)"),
        query_variable("slo", 'label_values(omni_slo_objective_ratio{owner=~"$owner"}, slo)'),
    ],
)

DASHBOARDS = {"omni-api.json": API, "omni-stream.json": STREAM, "omni-slos.json": SLOS_DASHBOARD}


def rendered(model: dict[str, Any]) -> str:
    return json.dumps(model, indent=2, sort_keys=False) + "\n"


def main() -> None:
    for name, model in DASHBOARDS.items():
        (HERE / name).write_text(rendered(model))
        print(f"{HERE / name}: {len(model['panels'])} panels")


if __name__ == "__main__":
    main()
