"""Meter windows in a customer's time zone (`window_time_zone`, an IANA name, as OpenMeter's
`windowTimeZone`), in both modes, as an outside client asks: a day is the zone's local day, a
month its local month; instants in the answer stay UTC; an unknown name is refused, not taken for
UTC; a watch takes the zone too. tests/contract/test_meter_queries_on_each_database.py holds zoned
answers to the truth on both databases, across changes of clocks and at half-hour offsets."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import cloud_event
from tests.e2e.conftest import Omni, embedded_settings, served
from tests.e2e.test_bad_input import assert_problem
from tests.e2e.test_meter_watch import MODES, live, settings_for, watching

TOKENS = {"slug": "tokens", "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"}
NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")


def local_midnight_two_days_ago(zone: ZoneInfo) -> datetime:
    """A local midnight in the acceptance window (a week back), with an hour either side in the past."""
    today = datetime.now(zone).date()
    return datetime.combine(today - timedelta(days=2), datetime.min.time(), tzinfo=zone)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def query(omni: Omni, key: str, **params: Any) -> Any:
    response = await omni.client.get("/v1/meters/tokens/query", params=params, headers=omni.auth(key))
    assert response.status_code == 200, response.text
    return json.loads(response.text, parse_float=Decimal)


@pytest.mark.parametrize("zone", [NEW_YORK, KOLKATA], ids=["new-york", "kolkata"])
async def test_days_and_months_follow_the_zones_midnights(omni: Omni, zone: ZoneInfo) -> None:
    await omni.meter(**TOKENS)
    _, key = await omni.tenant("acme")
    midnight = local_midnight_two_days_ago(zone)
    before, after = midnight - timedelta(minutes=30), midnight + timedelta(minutes=30)
    events = [
        cloud_event("late-evening", time=before, data={"tokens": 1}),
        cloud_event("just-after-midnight", time=after, data={"tokens": 10}),
    ]
    assert (await omni.send(key, events)).status_code == 202
    await omni.settle()
    name = str(zone)

    local = await query(omni, key, window_size="DAY", window_time_zone=name)
    assert local["window_time_zone"] == name
    assert [(row["window_start"], row["window_end"], int(row["value"])) for row in local["data"]] == [
        (iso(midnight - timedelta(days=1)), iso(midnight), 1),
        (iso(midnight), iso(midnight + timedelta(days=1)), 10),
    ]
    # The same usage by UTC days: both events fall in one (neither zone has a midnight near UTC's).
    utc = await query(omni, key, window_size="DAY")
    assert utc["window_time_zone"] == "UTC"
    assert [int(row["value"]) for row in utc["data"]] == [11]

    months = await query(omni, key, window_size="MONTH", window_time_zone=name)
    for row in months["data"]:
        start = datetime.fromisoformat(row["window_start"]).astimezone(zone)
        assert (start.day, start.hour, start.minute) == (1, 0, 0), row  # a local month starts at local midnight
    assert sum(int(row["value"]) for row in months["data"]) == 11

    # Bounds given in the zone's offset are the same instants, told back in UTC, and cut the edge windows.
    bounded = await query(
        omni,
        key,
        window_size="DAY",
        window_time_zone=name,
        **{"from": after.isoformat(), "to": iso(midnight + timedelta(hours=2))},
    )
    assert [(row["window_start"], int(row["value"])) for row in bounded["data"]] == [(iso(after), 10)]


async def test_hours_of_a_half_hour_zone_start_at_half_past_utc(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    _, key = await omni.tenant("acme")
    moment = datetime.now(UTC).replace(minute=10, second=0, microsecond=0) - timedelta(hours=3)
    assert (await omni.send(key, [cloud_event("e", time=moment, data={"tokens": 3})])).status_code == 202
    await omni.settle()
    [row] = (await query(omni, key, window_size="HOUR", window_time_zone="Asia/Kolkata"))["data"]
    assert row["window_start"] == iso(moment.replace(minute=30) - timedelta(hours=1))
    assert row["window_end"] == iso(moment.replace(minute=30))


async def test_an_unknown_time_zone_is_refused_not_taken_for_utc(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    _, key = await omni.tenant("acme")
    await omni.settle()
    for name in ["Mars/Olympus_Mons", "EST5EDT/../../etc/passwd", "utc", "localtime", "A" * 5000]:
        answer = await omni.client.get(
            "/v1/meters/tokens/query", params={"window_size": "DAY", "window_time_zone": name}, headers=omni.auth(key)
        )
        problem = assert_problem(answer, 422)
        assert problem["type"].endswith("/unknown-time-zone"), (name[:20], problem)
        assert problem["errors"] == [{"location": "query.window_time_zone", "reason": problem["errors"][0]["reason"]}]


@MODES
async def test_a_watch_answers_in_the_zone_it_was_asked_for(mode: str, tmp_path: Path) -> None:
    async with live(settings_for(mode, tmp_path)) as running:
        omni = running.omni
        await omni.meter(**TOKENS)
        _, key = await omni.tenant("acme")
        midnight = local_midnight_two_days_ago(NEW_YORK)
        assert (await omni.send(key, [cloud_event("e", time=midnight, data={"tokens": 4})])).status_code == 202
        await omni.settle()
        async with watching(running.url, key, window_size="DAY", window_time_zone="America/New_York") as stream:
            first = await stream.next()
            assert first is not None and first[0] == "usage"
            assert first[2]["window_time_zone"] == "America/New_York"
            assert [row["window_start"] for row in first[2]["data"]] == [iso(midnight)]


async def test_the_parameter_is_in_the_openapi_document(tmp_path: Path) -> None:
    async with served(embedded_settings(tmp_path / "data")) as omni:  # one document for both modes
        document = (await omni.client.get("/openapi.json")).json()
    for route in ("query", "watch"):
        parameters = document["paths"][f"/v1/meters/{{slug}}/{route}"]["get"]["parameters"]
        [zone] = [p for p in parameters if p["name"] == "window_time_zone"]
        assert zone["in"] == "query" and zone["schema"]["default"] == "UTC"
