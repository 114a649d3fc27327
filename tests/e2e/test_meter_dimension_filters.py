"""Filtering a meter's usage by a dimension's value (`filter_group_by[model]=large`, OpenAPI's
deepObject style, as OpenMeter's `filterGroupBy[model]`), in both modes, as an outside client sends
it: any of a dimension's values, every dimension named, with grouping, subjects and windows; typed
values named as text; the filters a query cannot take refused, not ignored; a watch filtered alike.
tests/contract/test_meter_queries_on_each_database.py holds the filtered answers to the truth."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cloud_event
from tests.e2e.conftest import Omni
from tests.e2e.test_bad_input import assert_problem
from tests.e2e.test_meter_watch import MODES, live, settings_for, usage, watching

TOKENS = {
    "slug": "tokens",
    "event_type": "inference",
    "aggregation": "SUM",
    "value_property": "$.data.tokens",
    "group_by": {"model": "$.data.model", "region": "$.data.region", "tier": "$.data.tier"},
}
LONG = "m" * 5000  # past the longest group value kept whole: folded, grouped and shown as its digest
LONG_AS_FOLDED = "sha256:" + hashlib.sha256(LONG.encode()).hexdigest()


def _event(ident: str, tokens: int, subject: str, **data: Any) -> dict[str, Any]:
    return cloud_event(ident, subject=subject, data={"tokens": tokens, **data})


EVENTS = [
    _event("a", 1, "alice", model="large", region="eu", tier=1),
    _event("b", 2, "alice", model="small", region="eu", tier=2),
    _event("c", 4, "bob", model="large", region="us", tier=1.0),
    _event("d", 8, "bob", model="small", tier=True),  # no region
    _event("e", 16, "carol", model=LONG, region="eu", tier="1"),
    _event("f", 32, "carol", model="large,small", region="us", tier=None),
]


async def _query(omni: Omni, key: str, params: list[tuple[str, str]]) -> Any:
    response = await omni.client.get("/v1/meters/tokens/query", params=params, headers=omni.auth(key))
    assert response.status_code == 200, response.text
    return json.loads(response.text, parse_float=Decimal)["data"]


async def _total(omni: Omni, key: str, params: list[tuple[str, str]]) -> int:
    rows = await _query(omni, key, params)
    return sum(int(row["value"]) for row in rows)


async def test_usage_filtered_by_dimension_values(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    _, key = await omni.tenant("acme")
    _, other = await omni.tenant("other")
    assert (await omni.send(key, EVENTS)).status_code == 202
    assert (await omni.send(other, [_event("z", 64, "alice", model="large", region="eu")])).status_code == 202
    await omni.settle()
    totals = {
        # One value, one dimension; the other tenant's "large" counts nowhere here.
        (("model", "large"),): 1 + 4,
        # Several values of one dimension: any of them. A value holding a comma is one value.
        (("model", "large"), ("model", "small")): 1 + 2 + 4 + 8,
        (("model", "large,small"),): 32,
        # Several dimensions: each must hold.
        (("model", "large"), ("region", "eu")): 1,
        # A long value, named in full, finds what was folded under its digest.
        (("model", LONG),): 16,
        # Typed values named as text: `1` is the number 1 and the text "1", not 1.0; `true` the
        # boolean; `null` an event without the dimension or with null in it.
        (("tier", "1"),): 1 + 16,
        (("tier", "1.0"),): 4,
        (("tier", "true"),): 8,
        (("region", "null"),): 8,
        (("tier", "null"),): 32,
        # A value nothing holds: nothing, not an error.
        (("region", "mars"),): 0,
    }
    for filters, total in totals.items():
        params = [(f"filter_group_by[{name}]", value) for name, value in filters]
        assert await _total(omni, key, params) == total, filters
    # With grouping, subjects and windows: the filter narrows the rows, grouping still splits them.
    rows = await _query(omni, key, [("filter_group_by[region]", "eu"), ("group_by", "model"), ("window_size", "DAY")])
    assert {row["group_by"]["model"]: int(row["value"]) for row in rows} == {"large": 1, "small": 2, LONG_AS_FOLDED: 16}
    rows = await _query(omni, key, [("filter_group_by[model]", "large"), ("group_by", "subject")])
    assert {row["subject"]: int(row["value"]) for row in rows} == {"alice": 1, "bob": 4}
    rows = await _query(omni, key, [("filter_group_by[model]", "small"), ("subject", "bob")])
    assert [int(row["value"]) for row in rows] == [8]


async def test_a_filter_the_meter_cannot_take_is_refused_not_ignored(omni: Omni) -> None:
    await omni.meter(**TOKENS)
    _, key = await omni.tenant()
    await omni.settle()
    url = "/v1/meters/tokens/query"
    for params, location in (
        ({"filter_group_by[colour]": "red"}, "query.filter_group_by[colour]"),
        ({"filter_group_by[subject]": "alice"}, "query.filter_group_by[subject]"),  # subjects: `subject`
        ({"filter_group_by[]": "x"}, "query.filter_group_by[]"),
    ):
        body = assert_problem(await omni.client.get(url, params=params, headers=omni.auth(key)), 422)
        assert body["type"].endswith("/unknown-group-by"), body
        assert [error["location"] for error in body["errors"]] == [location]
    # Not the deepObject form: not a parameter of the query at all.
    for name in ("filter_group_by", "filter_group_by[model", "filterGroupBy[model]", "filter_group_by[model][x]"):
        body = assert_problem(await omni.client.get(url, params={name: "large"}, headers=omni.auth(key)), 422)
        assert body["type"].endswith("/unknown-parameter"), (name, body)
        assert [error["location"] for error in body["errors"]] == [f"query.{name}"]


@MODES
async def test_a_watch_filtered_by_a_dimension_changes_only_with_that_usage(mode: str, tmp_path: Path) -> None:
    async with live(settings_for(mode, tmp_path)) as running:
        omni = running.omni
        await omni.meter(**TOKENS)
        _, key = await omni.tenant("acme")
        await omni.settle()
        async with watching(running.url, key, **{"filter_group_by[model]": "large"}) as stream:
            first = await stream.next()
            assert first is not None and first[0] == "usage" and first[2]["data"] == []
            assert (await omni.send(key, [_event("a", 5, "alice", model="large")])).status_code == 202
            await omni.settle()
            event, _, body = await stream.next() or ("", None, None)
            assert event == "usage" and [int(row["value"]) for row in body["data"]] == [5]
            # Usage of another model changes nothing this watch answers: nothing is sent for it.
            await usage(omni, key, ["b"], 7)  # no model at all
            assert (await omni.send(key, [_event("c", 3, "alice", model="small")])).status_code == 202
            assert (await omni.send(key, [_event("d", 2, "bob", model="large")])).status_code == 202
            await omni.settle()
            event, _, body = await stream.next() or ("", None, None)
            assert event == "usage" and [int(row["value"]) for row in body["data"]] == [7]


@pytest.mark.parametrize("route", ["query", "watch"])
def test_the_openapi_document_describes_the_filter_as_a_deep_object(route: str) -> None:
    from api.app import create_app

    document = create_app().openapi()
    parameters = document["paths"][f"/v1/meters/{{slug}}/{route}"]["get"]["parameters"]
    [described] = [p for p in parameters if p["name"] == "filter_group_by"]
    assert described["in"] == "query" and described["style"] == "deepObject" and described["explode"] is True
    assert described["schema"] == {"type": "object", "additionalProperties": {"type": "string"}}
