"""Reading POST /v1/events bodies event by event: api.routes.events.parse_items (issue 11, items 1 and 4)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.problems import Problem
from api.routes.events import parse_items
from commands.ingest import TooLarge
from schemas.cloudevents import BATCH, STRUCTURED

PROPS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=15,
)


def refused(status: int, *args, **kwargs) -> Problem:
    with pytest.raises(Problem) as caught:
        parse_items(*args, **kwargs)
    assert caught.value.status == status, caught.value.detail
    return caught.value


@PROPS
@given(st.lists(json_values, min_size=1, max_size=6), st.sampled_from([b"", b" ", b"\n\t "]))
def test_event_by_event_the_items_are_the_same_as_parsed_whole(items, space):
    body = space + orjson.dumps(items, option=orjson.OPT_INDENT_2) + space
    whole = parse_items(BATCH, body, 100)
    split = parse_items(BATCH, body, 100, max_event_bytes=len(body) - 1)
    assert whole == split == items


def test_an_item_over_the_limit_is_not_parsed():
    small, large = {"id": "a"}, {"id": "b", "data": "x" * 100}
    body = orjson.dumps([small, large, small])
    items = parse_items(BATCH, body, 10, max_event_bytes=50)
    assert items[0] == items[2] == small
    assert items[1] == TooLarge(len(orjson.dumps(large)), 50)


def test_a_single_event_over_the_limit_is_not_parsed():
    body = orjson.dumps({"id": "a", "data": "x" * 100})
    assert parse_items(STRUCTURED, body, 10, max_event_bytes=50) == [TooLarge(len(body), 50)]
    assert parse_items("application/json", body, 10, max_event_bytes=50) == [TooLarge(len(body), 50)]
    refused(400, BATCH, body, 10, max_event_bytes=50)  # a batch is an array


def test_a_single_event_within_the_limit_is_parsed_whole():
    event = {"id": "a", "data": "x" * 100}
    body = orjson.dumps(event)
    assert parse_items(STRUCTURED, body, 10, max_event_bytes=len(body)) == [event]
    assert parse_items("application/json", b" " + body, 10, max_event_bytes=len(body) + 1) == [event]


def test_malformed_json_is_told_as_orjson_tells_it():
    for body in (b'[{"a": 1}, {"b": [1,2,}]', b'[{"a": 1}, {"b": "\\ud800"}]', b"[1e400]", b"[1] x", b'["a\x00"]'):
        whole = refused(400, BATCH, body, 10)
        split = refused(400, BATCH, body, 10, max_event_bytes=len(body) - 1)
        assert whole.detail == split.detail


def test_too_many_events_are_refused_before_they_are_parsed():
    refused(413, BATCH, orjson.dumps([{"id": str(i)} for i in range(11)]), 10, max_event_bytes=1)


def test_an_array_for_application_json_is_a_batch():
    body = orjson.dumps([{"id": "a"}, {"id": "b"}])
    assert parse_items("application/json", body, 10, max_event_bytes=1) == [TooLarge(10, 1), TooLarge(10, 1)]
