"""The SLO fold drops the Prometheus series of a version that ended: every series of a deleted SLO
(its alert would read firing until the process restarts), and the alerts alone of a version
replaced by the next (a revision, or the name put again after a deletion), whose catch-up shows its
own; the events counter goes on across versions."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY

from omni import metrics
from schemas.slos import SloBody
from stores.slos import SloRow
from streams.slos import SloFold

BODY: dict[str, Any] = {
    "event_type": "inference",
    "sli": "availability",
    "status_property": "$.data.status",
    "objective": 99,
    "window": "7d",
}


def row(name: str, version: int) -> SloRow:
    return SloRow("series-owner", name, version, SloBody.model_validate(BODY), "2026-12-07T00:00:00Z")


def series(name: str) -> set[str]:
    return {
        sample.name
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.labels.get("owner") == "series-owner" and sample.labels.get("slo") == name
    }


def shown(fold: SloFold, name: str, version: int) -> None:
    metrics.SLO_EVENTS.labels("series-owner", name, "good").inc()
    metrics.SLO_OBJECTIVE.labels("series-owner", name, "7d").set(0.99)
    metrics.SLO_ALERT_FIRING.labels("series-owner", name, "page").set(1)
    fold._shown[("series-owner", name)] = version


def test_a_deleted_slos_series_go_and_a_replaced_versions_alerts_go() -> None:
    fold = SloFold(db=None, topic="usage", consumer="meters")  # type: ignore[arg-type]
    shown(fold, "kept", 1)
    shown(fold, "revised", 1)
    shown(fold, "deleted", 1)
    everything = {"omni_slo_events_total", "omni_slo_objective_ratio", "omni_slo_alert_firing"}
    assert series("deleted") >= everything

    fold._forget_ended([row("kept", 1), row("revised", 2)])
    assert series("kept") >= everything, "a version still live keeps its series"
    assert "omni_slo_alert_firing" not in series("revised"), "the replaced version's alert is not the new one's"
    assert series("revised") >= {"omni_slo_events_total", "omni_slo_objective_ratio"}
    assert not series("deleted") & everything
    assert fold._shown == {("series-owner", "kept"): 1}
