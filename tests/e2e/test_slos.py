"""SLOs over the API, in both modes: definitions as versioned data per owner, bad input, isolation,
and the status and history folded from the log (history before the definition included)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import httpx

from schemas.envelope import format_time
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, Omni

LARGE = {
    "event_type": "inference",
    "match": {"$.data.model": "large"},
    "sli": "availability",
    "status_property": "$.data.status",
    "objective": 99,
    "window": "30d",
}
EVERY_TENANT = {
    "event_type": "inference",
    "sli": "availability",
    "status_property": "$.data.status",
    "objective": 90,
    "window": "7d",
}
NOTHING = {**LARGE, "match": {"$.data.model": "none-such"}}


async def put_slo(omni: Omni, key: str, name: str, body: dict[str, Any], status: int | None = None) -> httpx.Response:
    response = await omni.client.put(f"/v1/slos/{name}", json=body, headers=omni.auth(key))
    await omni.settle()
    if status is not None:
        assert response.status_code == status, response.text
    return response


async def status_of(omni: Omni, key: str, name: str) -> dict[str, Any]:
    response = await omni.client.get(f"/v1/slos/{name}", headers=omni.auth(key))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_slos_are_versioned_per_owner_and_refuse_bad_input(omni: Omni) -> None:
    _, key = await omni.tenant("a")
    _, other = await omni.tenant("b")
    first = await put_slo(omni, key, "large", LARGE, 201)
    assert first.json()["version"] == 1 and first.json()["owner"] != "_platform"
    assert (await put_slo(omni, key, "large", LARGE, 200)).json()["version"] == 1, "an unchanged body is no new version"
    assert (await put_slo(omni, key, "large", {**LARGE, "objective": 99.5}, 200)).json()["version"] == 2
    assert (await put_slo(omni, ADMIN, "large", EVERY_TENANT, 201)).json()["owner"] == "_platform"
    listed = (await omni.client.get("/v1/slos", headers=omni.auth(key))).json()["data"]
    assert [(s["name"], s["version"], s["definition"]["objective"]) for s in listed] == [("large", 2, 99.5)]
    platform = (await omni.client.get("/v1/slos", headers=omni.auth(ADMIN))).json()["data"]
    assert [(s["name"], s["definition"]["window"]) for s in platform] == [("large", "7d")]
    # Another tenant's SLO is not there for the other tenant.
    assert (await omni.client.get("/v1/slos/large", headers=omni.auth(other))).status_code == 404
    assert (await omni.client.get("/v1/slos/large/history", headers=omni.auth(other))).status_code in (404, 422)
    assert (await omni.client.get("/v1/slos", headers=omni.auth(other))).json()["data"] == []
    for bad in (
        {**LARGE, "objective": 100},
        {**LARGE, "objective": 0},
        {**LARGE, "objective": 1e-320},  # below the floats' normal range: the rules and the metrics told it apart
        {**LARGE, "window": "14d"},
        {**LARGE, "sli": "latency", "status_property": None, "latency_property": "$.data.ms"},  # no threshold
        {**LARGE, "match": {"data.model": "large"}},  # not a JSON path
        {**LARGE, "status_property": "$data"},
        {**LARGE, "objective": "99"},  # a number, as the schema says: not a string, nor `true`
        {**LARGE, "sli": "latency", "status_property": None, "latency_property": "$.data.ms", "threshold_ms": True},
        {**LARGE, "sli": "latency", "status_property": None, "latency_property": "$.data.ms", "threshold_ms": "200"},
        {**LARGE, "match": {"$.data.k": 10**30}},  # past what an event holds: it stopped the outbox relay for everyone
    ):
        response = await put_slo(omni, key, "bad", bad, 422)
        assert response.headers["content-type"] == "application/problem+json"
    assert (await omni.client.get("/v1/slos/bad", headers=omni.auth(key))).status_code == 404
    for bounds in (  # instants past the years UTC can name: a 500 before
        {"from": "0001-01-01T00:00:00+05:00", "to": "0001-01-02T00:00:00Z", "window_size": "DAY"},
        {"from": "9999-12-31T00:00:00Z", "to": "9999-12-31T23:59:00-05:00"},
    ):
        history = await omni.client.get("/v1/slos/large/history", params=bounds, headers=omni.auth(key))
        assert history.status_code == 422 and "must fall between 0001-01-01" in history.text, history.text


async def test_status_and_history_from_the_log(omni: Omni) -> None:
    a, key = await omni.tenant("a")
    _, other = await omni.tenant("b")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    two_ago, one_ago = now - timedelta(minutes=2, seconds=-10), now - timedelta(minutes=1, seconds=-10)

    def inference(i: str, at: datetime, **data: Any) -> dict[str, Any]:
        return cloud_event(i, time=at, data=data)

    # Before the SLOs exist: folded by their catch-up.
    before = [inference(f"b{n}", two_ago, model="large", status=s) for n, s in enumerate((200, 200, 200, 503))]
    assert (await omni.send(key, before)).status_code == 202
    await omni.settle()
    await put_slo(omni, key, "large", LARGE, 201)
    await put_slo(omni, key, "nothing", NOTHING, 201)
    await put_slo(omni, ADMIN, "all", EVERY_TENANT, 201)
    await omni.settle()
    # After: folded live, with the meters. A duplicate of an earlier event counts once.
    after = [inference(f"a{n}", one_ago, model="large", status=200) for n in range(4)]
    after += [inference("small", one_ago, model="small", status=500), inference("no-status", one_ago, model="large")]
    after += [inference("b0", two_ago, model="large", status=200)]
    assert (await omni.send(key, after)).status_code == 202
    assert (await omni.send(other, [inference("x", one_ago, model="large", status=500)])).status_code == 202
    await omni.settle()
    omni.platform.clock = lambda: now + timedelta(seconds=30)

    # Tenant a, model large: 8 counted (no-status is not, the duplicate neither), 1 bad. Objective
    # 99%: 0.08 bad events allowed, 1 consumed (12.5 budgets), burn 0.125 / 0.01 = 12.5 everywhere.
    large = await status_of(omni, key, "large")
    assert (large["good"], large["total"], large["sli"]) == (7, 8, 0.875)
    assert large["error_budget"]["total"] == {"events": 0.08, "share": 1.0}
    assert large["error_budget"]["consumed"] == {"events": 1, "share": 12.5}
    assert large["error_budget"]["remaining"]["share"] == -11.5
    assert large["burn_rates"] == dict.fromkeys(("5m", "30m", "1h", "2h", "6h", "1d", "3d"), 12.5)
    # 30d: page at 14.4 (1h, 5m) does not fire, 6 (6h, 30m) does; the ticket's 3 and 1 too.
    assert large["alerts"] == {"page": "firing", "ticket": "firing"}
    assert large["as_of"] == (now + timedelta(minutes=1)).isoformat(timespec="microseconds").replace("+00:00", "Z")

    # Matches nothing: no data, never 100%.
    nothing = await status_of(omni, key, "nothing")
    assert (nothing["total"], nothing["sli"]) == (0, None)
    assert nothing["error_budget"]["consumed"] == {"events": None, "share": None}
    assert set(nothing["burn_rates"].values()) == {None}
    assert nothing["alerts"] == {"page": "ok", "ticket": "ok"}

    # The admin's covers both tenants: 10 with a status, 3 bad (503, small's 500, b's 500). 90% over
    # 7 days: burn 0.3 / 0.1 = 3; page thresholds 3.36 (1h) and 1.4 (6h): the second fires; ticket 0.7.
    every = await status_of(omni, ADMIN, "all")
    assert (every["good"], every["total"], every["sli"]) == (7, 10, 0.7)
    assert every["error_budget"]["consumed"] == {"events": 3, "share": 3.0}
    assert every["burn_rates"]["5m"] == 3.0
    assert every["alerts"] == {"page": "firing", "ticket": "firing"}

    # Alert events, by event time: the minute two ago is evaluated when the first event of the next
    # arrives, so both fire at the start of the minute one ago. Tenant a's (burn 25: 1 bad of 4) and
    # the admin's (burn 2.5 over 10%: the 6h/30m page at 1.4, the ticket at 0.7); none for tenant b.
    fired = format_time(now - timedelta(minutes=1))

    async def alerts(caller: str) -> list[tuple[str, str, str, str, str]]:
        listed = (await omni.client.get("/v1/notifications", headers=omni.auth(caller))).json()["data"]
        return sorted((n["type"], n["tenant_id"], n["slo"], n["alert"], n["occurred_at"]) for n in listed)

    assert await alerts(key) == [("omni.slo.alert_fired", a, "large", alert, fired) for alert in ("page", "ticket")]
    assert await alerts(ADMIN) == [("omni.slo.alert_fired", "_platform", "all", alert, fired) for alert in ("page", "ticket")]
    assert await alerts(other) == []

    params = {"from": _text(now - timedelta(minutes=3)), "to": _text(now + timedelta(minutes=1)), "window_size": "MINUTE"}
    response = await omni.client.get("/v1/slos/large/history", params=params, headers=omni.auth(key))
    assert response.status_code == 200, response.text
    assert [(p["good"], p["total"], p["sli"]) for p in response.json()["data"]] == [
        (0, 0, None),
        (3, 4, 0.75),
        (4, 4, 1.0),
        (0, 0, None),
    ]
    # A revision is a new version, folded afresh from the whole log: the same events, judged anew.
    revised = {**LARGE, "sli": "latency", "status_property": None, "latency_property": "$.data.status", "threshold_ms": 503}
    await put_slo(omni, key, "large", {k: v for k, v in revised.items() if v is not None}, 200)
    again = await status_of(omni, key, "large")
    assert (again["version"], again["good"], again["total"]) == (2, 8, 8), "503 ms is within 503"
    # Version 1's alerts were firing: it is folded no more, so they are resolved as it ends (they
    # stayed open for ever), and so are the admin's when its SLO is deleted.
    await omni.settle()
    assert [n[:4] for n in await alerts(key)] == [
        ("omni.slo.alert_fired", a, "large", "page"),
        ("omni.slo.alert_fired", a, "large", "ticket"),
        ("omni.slo.alert_resolved", a, "large", "page"),
        ("omni.slo.alert_resolved", a, "large", "ticket"),
    ]
    assert (await omni.client.delete("/v1/slos/all", headers=omni.auth(ADMIN))).status_code == 204
    await omni.settle()
    assert [n[0] for n in await alerts(ADMIN)] == ["omni.slo.alert_fired"] * 2 + ["omni.slo.alert_resolved"] * 2
    uneven = {**params, "from": _text(now - timedelta(minutes=3, seconds=1))}
    assert (await omni.client.get("/v1/slos/large/history", params=uneven, headers=omni.auth(key))).status_code == 422
    assert a


def _text(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_the_objective_metric_follows_a_revised_window_and_reads_as_written(omni: Omni) -> None:
    """omni_slo_objective_ratio{owner, slo, window}: a revision that changes the window leaves one
    series, the new window's (the old one stayed at its last value, so the SLO dashboard showed two
    objectives for one SLO, forever); and 99.9 is exported as 0.999, as the rules' slo:objective:ratio
    has it, not 0.9990000000000001."""
    from prometheus_client import REGISTRY

    owner, key = await omni.tenant("objective")

    def objectives() -> dict[str, float]:
        return {
            sample.labels["window"]: sample.value
            for family in REGISTRY.collect()
            if family.name == "omni_slo_objective_ratio"
            for sample in family.samples
            if sample.labels["owner"] == owner and sample.labels["slo"] == "avail"
        }

    async def folded(event_id: str) -> None:
        ok = cloud_event(event_id, data={"status": 200, "model": "large"})
        assert (await omni.send(key, [ok])).status_code == 202
        await omni.settle()

    await put_slo(omni, key, "avail", {**EVERY_TENANT, "objective": 99.9, "window": "7d"}, 201)
    await folded("before-the-revision")
    assert objectives() == {"7d": 0.999}
    await put_slo(omni, key, "avail", {**EVERY_TENANT, "objective": 99.5, "window": "30d"}, 200)
    await folded("after-the-revision")
    assert objectives() == {"30d": 0.995}


async def test_a_deleted_slo_is_gone_for_its_owner_alone_and_comes_back_folded_afresh(omni: Omni) -> None:
    """DELETE /v1/slos/{name}: the owner's SLO is no longer read, listed or folded, its series leave
    /metrics at the next batch (an alert left firing would page for ever), and another owner cannot
    delete it. Defined again, the name is the next version, folded from the whole log: the events sent
    while it was deleted count too. The deletion is audited."""
    from prometheus_client import REGISTRY

    owner, key = await omni.tenant("a")
    _, other = await omni.tenant("b")

    def series() -> set[str]:
        return {
            family.name
            for family in REGISTRY.collect()
            if family.name.startswith("omni_slo_")
            for sample in family.samples
            if sample.labels.get("owner") == owner and sample.labels.get("slo") == "large"
        }

    async def send(*statuses: int) -> None:
        events = [cloud_event(f"e{uuid4().hex}", data={"model": "large", "status": s}) for s in statuses]
        assert (await omni.send(key, events)).status_code == 202
        await omni.settle()

    await put_slo(omni, key, "large", LARGE, 201)
    await send(200, 200, 500)
    assert (await status_of(omni, key, "large"))["total"] == 3
    assert series() >= {"omni_slo_objective_ratio", "omni_slo_alert_firing"}

    assert (await omni.client.delete("/v1/slos/large", headers=omni.auth(other))).status_code == 404
    assert (await omni.client.delete("/v1/slos/large", headers=omni.auth(ADMIN))).status_code == 404, (
        "the admin's are _platform's"
    )
    assert (await omni.client.delete("/v1/slos/large", headers=omni.auth(key))).status_code == 204
    await omni.settle()
    assert (await omni.client.get("/v1/slos/large", headers=omni.auth(key))).status_code == 404
    params = {"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z"}
    assert (await omni.client.get("/v1/slos/large/history", params=params, headers=omni.auth(key))).status_code == 404
    assert (await omni.client.get("/v1/slos", headers=omni.auth(key))).json()["data"] == []
    assert (await omni.client.delete("/v1/slos/large", headers=omni.auth(key))).status_code == 404, "deleted already"
    assert (await omni.client.delete("/v1/slos/BAD%20NAME", headers=omni.auth(key))).status_code == 404
    await send(500)
    assert series() == set(), "a deleted SLO's series are removed at the next batch"

    again = await put_slo(omni, key, "large", LARGE, 201)
    assert again.json()["version"] == 2
    assert (await status_of(omni, key, "large"))["total"] == 4, "folded afresh, the events sent meanwhile included"
    response = await omni.client.get("/v1/audit", params={"action": "slo.delete"}, headers=omni.auth(key))
    entries = [(e["resource"], e["outcome"]) for e in response.json()["data"]]
    assert entries == [("slos/large", "accepted"), ("slos/large", "rejected"), ("slos/*", "rejected")]
