"""Meter queries as an outside client sends them, in both modes: times with the caller's own offset,
equal values written with different digits, parameters the route does not take."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from tests.conftest import cloud_event
from tests.e2e.conftest import Omni
from tests.e2e.test_bad_input import assert_problem


def _hour(hours_ago: int) -> datetime:
    return (datetime.now(UTC) - timedelta(hours=hours_ago)).replace(minute=0, second=0, microsecond=0)


def _values(text: str) -> list[str]:
    """Each row's value as the API wrote it: its JSON text, digits and all."""
    return re.findall(r'"value":([^,}]+)', text)


async def test_rows_and_the_range_are_told_in_utc_whatever_offset_the_caller_sent(omni: Omni) -> None:
    await omni.meter(slug="tokens", event_type="inference", aggregation="SUM", value_property="$.data.tokens")
    _, key = await omni.tenant()
    hour = _hour(3)
    events = [cloud_event(f"e{i}", time=hour + timedelta(minutes=10 * i), data={"tokens": i + 1}) for i in range(4)]
    assert (await omni.send(key, events)).status_code == 202
    await omni.settle()
    # From minute 5 to minute 35, sent as India's local time (+05:30) and New York's (-05:00).
    start = (hour + timedelta(minutes=5)).astimezone(UTC).replace(tzinfo=None)
    params = {
        "from": (start + timedelta(hours=5, minutes=30)).isoformat() + "+05:30",
        "to": (start + timedelta(minutes=30) - timedelta(hours=5)).isoformat() + "-05:00",
    }
    for window_size in ({}, {"window_size": "HOUR"}):
        answer = await omni.client.get("/v1/meters/tokens/query", params=params | window_size, headers=omni.auth(key))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        utc = (hour + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
        end = (hour + timedelta(minutes=35)).isoformat().replace("+00:00", "Z")
        assert (body["from"], body["to"]) == (utc, end)
        # One row, cut to the range: both of its bounds in UTC, as every other row's are.
        assert [(row["window_start"], row["window_end"], row["value"]) for row in body["data"]] == [(utc, end, 2 + 3 + 4)]
    # An instant UTC cannot name (year 0, year 10000) is refused at its place, not answered in part.
    for name, moment in (("from", "0001-01-01T00:00:00+05:00"), ("to", "9999-12-31T23:59:00-05:00")):
        refused = await omni.client.get("/v1/meters/tokens/query", params={name: moment}, headers=omni.auth(key))
        assert [error["location"] for error in assert_problem(refused, 422)["errors"]] == [f"query.{name}"]


async def test_min_and_max_of_equal_values_tell_the_plainer_text_in_both_modes(omni: Omni) -> None:
    """5.0 and 5 are equal; every answer names 5, whichever bucket the query meets first (the
    embedded views keep the plainer text when they combine buckets, and so must PostgreSQL's)."""
    for aggregation in ("MIN", "MAX"):
        await omni.meter(slug=aggregation.lower(), event_type="inference", aggregation=aggregation, value_property="$.data.v")
    # Yesterday 10:00 to 12:00 UTC: two hours of one day whatever the time now (a range across
    # midnight splits the DAY window in two, and the test ran at 03:00 UTC found it).
    hour = (datetime.now(UTC) - timedelta(days=1)).replace(hour=10, minute=0, second=0, microsecond=0)
    keys = []
    for name, (first, second) in {"plain-later": ("5.0", "5"), "plain-first": ("5", "5.0")}.items():
        _, key = await omni.tenant(name)
        events = [
            cloud_event("a", time=hour + timedelta(minutes=1), data={"v": first}),
            cloud_event("b", time=hour + timedelta(hours=1, minutes=1), data={"v": second}),
        ]
        assert (await omni.send(key, events)).status_code == 202
        keys.append(key)
    await omni.settle()
    # Two hours, neither a whole day: the two hour buckets are combined at query time.
    bounds = {
        "from": hour.isoformat().replace("+00:00", "Z"),
        "to": (hour + timedelta(hours=2)).isoformat().replace("+00:00", "Z"),
    }
    for key in keys:
        for slug in ("min", "max"):
            for params in (bounds, bounds | {"window_size": "DAY"}, bounds | {"group_by": "subject"}):
                answer = await omni.client.get(f"/v1/meters/{slug}/query", params=params, headers=omni.auth(key))
                assert answer.status_code == 200, answer.text
                assert _values(answer.text) == ["5"], (slug, params, answer.text)


async def test_a_parameter_the_query_does_not_take_is_refused_not_ignored(omni: Omni) -> None:
    """A filter the route does not know (OpenMeter's `filterGroupBy[model]`, a dimension's name) would
    otherwise answer every group's usage as if filtered: a wrong number with a 200."""
    await omni.meter(
        slug="tokens",
        event_type="inference",
        aggregation="SUM",
        value_property="$.data.tokens",
        group_by={"model": "$.data.model"},
    )
    _, key = await omni.tenant()
    events = [cloud_event("a", data={"tokens": 1, "model": "large"}), cloud_event("b", data={"tokens": 2, "model": "small"})]
    assert (await omni.send(key, events)).status_code == 202
    await omni.settle()
    url = "/v1/meters/tokens/query"
    for params, names in (
        ({"model": "large"}, ["model"]),
        ({"filterGroupBy[model]": "large", "windowSize": "HOUR"}, ["filterGroupBy[model]", "windowSize"]),
        ({"groupby": "model", "window_size": "HOUR"}, ["groupby"]),
    ):
        body = assert_problem(await omni.client.get(url, params=params, headers=omni.auth(key)), 422)
        assert body["type"].endswith("/unknown-parameter")
        assert [error["location"] for error in body["errors"]] == [f"query.{name}" for name in names]
        taken = {"from", "to", "window_size", "window_time_zone", "group_by", "subject", "filter_group_by[…]", "as_of"}
        for error in body["errors"]:
            assert set(error["reason"].split("which takes ", 1)[1].split(", ")) == taken, error
    # The parameters it takes still answer, and so does a query with none.
    assert [row["value"] for row in await omni.query(key, "tokens", group_by="model", window_size="DAY")] == [1, 2]
    assert [row["value"] for row in await omni.query(key, "tokens")] == [3]
