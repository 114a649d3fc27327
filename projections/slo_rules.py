"""Prometheus rules from SLO definitions, the way Sloth generates them: per SLO, the error ratio
recorded over each burn-rate window and over the SLO's own window, its metadata (objective, error
budget, period burn rate, budget left), and the multi-window multi-burn-rate page and ticket alerts
with the thresholds projections.slos uses (scaled to the SLO's window), so Prometheus, the API and
the fold's alert events apply one rule.

The ratios read `omni_slo_events_total{owner, slo, outcome}`, which the worker counts as it folds
(by processing time, as Prometheus sees the world; the fold's own alerts go by event time). Pure:
definitions in, a rules document (a dict, written as YAML by `omni slo rules`) out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from projections.slos import ALERTS, BURN_WINDOWS, threshold
from schemas.slos import SloBody

EVENTS = "omni_slo_events_total"


@dataclass(frozen=True, slots=True)
class SloSpec:
    owner: str
    name: str
    body: SloBody


def _number(value: Decimal) -> str:
    """A threshold as PromQL reads it: plain decimal, no exponent, no trailing zeros."""
    text = format(value.normalize(), "f")
    return text


def _selector(spec: SloSpec, **extra: str) -> str:
    labels = {"owner": spec.owner, "slo": spec.name, **extra}
    # Each value as a PromQL string: a JSON string is one (Go's escapes), so a quote or a backslash
    # in an owner read from a definitions file cannot end it (promtool refused the rules before).
    return "{" + ",".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in labels.items()) + "}"


def _labels(spec: SloSpec) -> dict[str, str]:
    return {"owner": spec.owner, "slo": spec.name}


def rules_for(spec: SloSpec) -> list[dict[str, Any]]:
    """The three rule groups of one SLO: SLI recordings, metadata recordings, alerts."""
    body = spec.body
    budget = (Decimal(100) - Decimal(repr(body.objective))) / 100
    period = body.window.value
    recordings = []
    for label in [*BURN_WINDOWS, period]:
        bad = f"sum(rate({EVENTS}{_selector(spec, outcome='bad')}[{label}]))"
        total = f"sum(rate({EVENTS}{_selector(spec)}[{label}]))"
        recordings.append(
            {
                "record": f"slo:sli_error:ratio_rate{label}",
                "expr": f"{bad}\n/\n{total}\n",
                "labels": {**_labels(spec), "window": label},
            }
        )
    own = _selector(spec)
    metadata = [
        {"record": "slo:objective:ratio", "expr": f"vector({_number(1 - budget)})", "labels": _labels(spec)},
        {"record": "slo:error_budget:ratio", "expr": f"vector({_number(budget)})", "labels": _labels(spec)},
        {"record": "slo:time_period:days", "expr": f"vector({body.window.seconds // 86400})", "labels": _labels(spec)},
        {
            "record": "slo:current_burn_rate:ratio",
            "expr": f"max without (window) (slo:sli_error:ratio_rate5m{own})\n/ on(owner, slo)\nslo:error_budget:ratio{own}",
            "labels": _labels(spec),
        },
        {
            "record": "slo:period_burn_rate:ratio",
            "expr": f"max without (window) (slo:sli_error:ratio_rate{period}{own})\n/ on(owner, slo)\nslo:error_budget:ratio{own}",
            "labels": _labels(spec),
        },
        {
            "record": "slo:period_error_budget_remaining:ratio",
            "expr": f"1 - slo:period_burn_rate:ratio{own}",
            "labels": _labels(spec),
        },
    ]
    alerts = []
    for alert, rules in ALERTS.items():
        conditions = []
        for rule in rules:
            limit = _number(threshold(rule, body.window) * budget)
            conditions.append(
                f"(\n  max without (window) (slo:sli_error:ratio_rate{rule.long}{own} > {limit})\n  and\n"
                f"  max without (window) (slo:sli_error:ratio_rate{rule.short}{own} > {limit})\n)"
            )
        alerts.append(
            {
                "alert": f"OmniSlo{alert.capitalize()}",
                "expr": "\nor\n".join(conditions),
                "labels": {**_labels(spec), "severity": alert},
                "annotations": {
                    "summary": f"SLO {spec.name} ({spec.owner}) is burning its error budget too fast ({alert})",
                    "description": (
                        f"Objective {body.objective}% over {period}: the error budget burns faster than the "
                        f"multi-window multi-burn-rate {alert} thresholds allow."
                    ),
                },
            }
        )
    group = f"omni-slo-{spec.owner}-{spec.name}"
    return [
        {"name": f"{group}-sli-recordings", "rules": recordings},
        {"name": f"{group}-meta-recordings", "rules": metadata},
        {"name": f"{group}-alerts", "rules": alerts},
    ]


def rules_document(specs: Iterable[SloSpec]) -> dict[str, Any]:
    """A Prometheus rule file for every SLO, in a stable order."""
    groups: list[dict[str, Any]] = []
    for spec in sorted(specs, key=lambda s: (s.owner, s.name)):
        groups += rules_for(spec)
    return {"groups": groups}
