"""The Prometheus rules `omni slo rules` writes (projections.slo_rules), held to texts worked out by
hand: every recording's and alert's expression whole, the metadata's numbers, and the page and
ticket thresholds (burn rate x error budget) for a 30-day SLO and for 7- and 28-day ones.

The thresholds, by hand (share of the budget x SLO window / long window, x the error budget):
- 30 days, 99.9 % (budget 0.001): page 0.02 x 720 h / 1 h = 14.4 -> 0.0144, 0.05 x 720 / 6 = 6 ->
  0.006; ticket 0.10 x 30 d / 1 d = 3 -> 0.003, 0.10 x 30 / 3 = 1 -> 0.001.
- 7 days, 99 % (budget 0.01): page 0.02 x 168 = 3.36 -> 0.0336, 0.05 x 168 / 6 = 1.4 -> 0.014;
  ticket 0.10 x 7 = 0.7 -> 0.007, 0.10 x 7 / 3 = 0.2333... -> 0.002333... (28 digits, Decimal's).
- 28 days, 95 % (budget 0.05): page 0.02 x 672 = 13.44 -> 0.672, 0.05 x 112 = 5.6 -> 0.28;
  ticket 0.10 x 28 = 2.8 -> 0.14, 0.10 x 28 / 3 = 0.9333... -> 0.04666...
The integration test (tests/integration/test_prometheus_rules.py) has promtool check the same
rules and run their alert unit tests; this one runs without it, for `make mutation`.
"""

from __future__ import annotations

from typing import Any

import pytest

from projections.slo_rules import SloSpec, rules_document, rules_for
from schemas.slos import SloBody

AVAILABILITY = {"event_type": "api_call", "sli": "availability", "status_property": "$.data.status"}
LATENCY = {"event_type": "inference", "sli": "latency", "latency_property": "$.data.ms", "threshold_ms": 250}


def spec(owner: str, name: str, objective: float, window: str, sli: dict[str, Any] = AVAILABILITY) -> SloSpec:
    return SloSpec(owner, name, SloBody.model_validate({**sli, "objective": objective, "window": window}))


def test_a_30_day_slos_rules_whole() -> None:
    own = '{owner="tenant-a",slo="chat"}'
    labels = {"owner": "tenant-a", "slo": "chat"}

    def ratio(window: str) -> dict[str, Any]:
        return {
            "record": f"slo:sli_error:ratio_rate{window}",
            "expr": (
                f'sum(rate(omni_slo_events_total{{owner="tenant-a",slo="chat",outcome="bad"}}[{window}]))\n'
                "/\n"
                f'sum(rate(omni_slo_events_total{{owner="tenant-a",slo="chat"}}[{window}]))\n'
            ),
            "labels": {"owner": "tenant-a", "slo": "chat", "window": window},
        }

    assert rules_for(spec("tenant-a", "chat", 99.9, "30d")) == [
        {
            "name": "omni-slo-tenant-a-chat-sli-recordings",
            "rules": [ratio(w) for w in ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"]],
        },
        {
            "name": "omni-slo-tenant-a-chat-meta-recordings",
            "rules": [
                {"record": "slo:objective:ratio", "expr": "vector(0.999)", "labels": labels},
                {"record": "slo:error_budget:ratio", "expr": "vector(0.001)", "labels": labels},
                {"record": "slo:time_period:days", "expr": "vector(30)", "labels": labels},
                {
                    "record": "slo:current_burn_rate:ratio",
                    "expr": (
                        'max without (window) (slo:sli_error:ratio_rate5m{owner="tenant-a",slo="chat"})\n'
                        "/ on(owner, slo)\n"
                        'slo:error_budget:ratio{owner="tenant-a",slo="chat"}'
                    ),
                    "labels": labels,
                },
                {
                    "record": "slo:period_burn_rate:ratio",
                    "expr": (
                        'max without (window) (slo:sli_error:ratio_rate30d{owner="tenant-a",slo="chat"})\n'
                        "/ on(owner, slo)\n"
                        'slo:error_budget:ratio{owner="tenant-a",slo="chat"}'
                    ),
                    "labels": labels,
                },
                {
                    "record": "slo:period_error_budget_remaining:ratio",
                    "expr": '1 - slo:period_burn_rate:ratio{owner="tenant-a",slo="chat"}',
                    "labels": labels,
                },
            ],
        },
        {
            "name": "omni-slo-tenant-a-chat-alerts",
            "rules": [
                {
                    "alert": "OmniSloPage",
                    "expr": (
                        "(\n"
                        f"  max without (window) (slo:sli_error:ratio_rate1h{own} > 0.0144)\n"
                        "  and\n"
                        f"  max without (window) (slo:sli_error:ratio_rate5m{own} > 0.0144)\n"
                        ")\n"
                        "or\n"
                        "(\n"
                        f"  max without (window) (slo:sli_error:ratio_rate6h{own} > 0.006)\n"
                        "  and\n"
                        f"  max without (window) (slo:sli_error:ratio_rate30m{own} > 0.006)\n"
                        ")"
                    ),
                    "labels": {"owner": "tenant-a", "slo": "chat", "severity": "page"},
                    "annotations": {
                        "summary": "SLO chat (tenant-a) is burning its error budget too fast (page)",
                        "description": (
                            "Objective 99.9% over 30d: the error budget burns faster than the "
                            "multi-window multi-burn-rate page thresholds allow."
                        ),
                    },
                },
                {
                    "alert": "OmniSloTicket",
                    "expr": (
                        "(\n"
                        f"  max without (window) (slo:sli_error:ratio_rate1d{own} > 0.003)\n"
                        "  and\n"
                        f"  max without (window) (slo:sli_error:ratio_rate2h{own} > 0.003)\n"
                        ")\n"
                        "or\n"
                        "(\n"
                        f"  max without (window) (slo:sli_error:ratio_rate3d{own} > 0.001)\n"
                        "  and\n"
                        f"  max without (window) (slo:sli_error:ratio_rate6h{own} > 0.001)\n"
                        ")"
                    ),
                    "labels": {"owner": "tenant-a", "slo": "chat", "severity": "ticket"},
                    "annotations": {
                        "summary": "SLO chat (tenant-a) is burning its error budget too fast (ticket)",
                        "description": (
                            "Objective 99.9% over 30d: the error budget burns faster than the "
                            "multi-window multi-burn-rate ticket thresholds allow."
                        ),
                    },
                },
            ],
        },
    ]


def conditions(groups: list[dict[str, Any]]) -> dict[str, list[tuple[str, str, str]]]:
    """Each alert's (long window, short window, threshold) pairs, read back from its expression."""
    found = {}
    for alert in groups[2]["rules"]:
        pairs = []
        for condition in alert["expr"].split("\nor\n"):
            lines = condition.splitlines()
            assert lines[0] == "(" and lines[2] == "  and" and lines[4] == ")", condition
            parts = [line.removeprefix("  max without (window) (slo:sli_error:ratio_rate").split("{")[0] for line in lines[1:4:2]]
            limits = {line.rsplit("> ", 1)[1].removesuffix(")") for line in lines[1:4:2]}
            assert len(limits) == 1, condition
            pairs.append((parts[0], parts[1], limits.pop()))
        found[alert["alert"]] = pairs
    return found


@pytest.mark.parametrize(
    ("objective", "window", "sli", "meta", "thresholds"),
    [
        (
            99.0,
            "7d",
            LATENCY,
            ["vector(0.99)", "vector(0.01)", "vector(7)"],
            {
                "OmniSloPage": [("1h", "5m", "0.0336"), ("6h", "30m", "0.014")],
                "OmniSloTicket": [("1d", "2h", "0.007"), ("3d", "6h", "0.002333333333333333333333333333")],
            },
        ),
        (
            95.0,
            "28d",
            AVAILABILITY,
            ["vector(0.95)", "vector(0.05)", "vector(28)"],
            {
                "OmniSloPage": [("1h", "5m", "0.672"), ("6h", "30m", "0.28")],
                "OmniSloTicket": [("1d", "2h", "0.14"), ("3d", "6h", "0.04666666666666666666666666666")],
            },
        ),
        (
            99.95,
            "30d",
            AVAILABILITY,
            ["vector(0.9995)", "vector(0.0005)", "vector(30)"],
            {
                "OmniSloPage": [("1h", "5m", "0.0072"), ("6h", "30m", "0.003")],
                "OmniSloTicket": [("1d", "2h", "0.0015"), ("3d", "6h", "0.0005")],
            },
        ),
        (
            99.99999,  # a budget of 1e-7: written out, never as 1E-7
            "30d",
            AVAILABILITY,
            ["vector(0.9999999)", "vector(0.0000001)", "vector(30)"],
            {
                "OmniSloPage": [("1h", "5m", "0.00000144"), ("6h", "30m", "0.0000006")],
                "OmniSloTicket": [("1d", "2h", "0.0000003"), ("3d", "6h", "0.0000001")],
            },
        ),
        (
            50.0,
            "30d",
            AVAILABILITY,
            ["vector(0.5)", "vector(0.5)", "vector(30)"],
            {
                "OmniSloPage": [("1h", "5m", "7.2"), ("6h", "30m", "3")],
                "OmniSloTicket": [("1d", "2h", "1.5"), ("3d", "6h", "0.5")],
            },
        ),
    ],
)
def test_the_metadata_and_thresholds_scale_with_the_window_and_objective(
    objective: float, window: str, sli: dict[str, Any], meta: list[str], thresholds: dict[str, list[tuple[str, str, str]]]
) -> None:
    groups = rules_for(spec("_platform", "api", objective, window, sli))
    assert [r["expr"] for r in groups[1]["rules"][:3]] == meta
    assert [r["record"] for r in groups[0]["rules"]][-1] == f"slo:sli_error:ratio_rate{window}"
    assert groups[1]["rules"][4]["expr"].startswith(f"max without (window) (slo:sli_error:ratio_rate{window}{{")
    assert conditions(groups) == thresholds
    page = groups[2]["rules"][0]["annotations"]["description"]
    assert page.startswith(f"Objective {objective}% over {window}: ")


def test_a_document_holds_every_slos_three_groups_by_owner_then_name() -> None:
    specs = [spec("b", "a", 99, "7d"), spec("a", "z", 99, "7d"), spec("a", "b", 99.5, "30d")]
    document = rules_document(specs)
    assert list(document) == ["groups"]
    assert [g["name"] for g in document["groups"]] == [
        f"omni-slo-{owner}-{name}-{part}"
        for owner, name in [("a", "b"), ("a", "z"), ("b", "a")]
        for part in ["sli-recordings", "meta-recordings", "alerts"]
    ]
    assert document["groups"][:3] == rules_for(specs[2])
    assert rules_document([]) == {"groups": []}
