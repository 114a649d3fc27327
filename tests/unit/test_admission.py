"""Admission of usage events: commands.ingest.admit."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commands.errors import Invalid
from commands.ingest import AdmissionPolicy, TooLarge, admit, admit_encoded, expires_at
from schemas.envelope import RESERVED, Actor, Envelope, decode, encode

PROPS = settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

RECEIVED = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
ACTOR = Actor(key_id="k1", ip="10.0.0.1", user_agent="pytest")
POLICY = AdmissionPolicy()
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
REQUIRED = ("specversion", "id", "source", "type", "subject")


def good(**overrides) -> dict:
    event = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "app://x",
        "type": "inference",
        "subject": "cust-1",
        "data": {"tokens": 5},
    }
    event.update(overrides)
    return event


def iso(moment: datetime) -> str:
    return moment.isoformat()


def run(items, *, policy=POLICY, traceparent=None, received=RECEIVED, tenant_id="tenant-1"):
    ids = (f"id-{n}" for n in itertools.count())
    return admit(
        items,
        tenant_id=tenant_id,
        actor=ACTOR,
        received=received,
        policy=policy,
        new_id=lambda: next(ids),
        traceparent=traceparent,
    )


def rejected(items, **kwargs) -> Invalid:
    with pytest.raises(Invalid) as caught:
        run(items, **kwargs)
    return caught.value


def reasons(error: Invalid, index: int = 0) -> str:
    (entry,) = [e for e in error.errors if e["index"] == index]
    return " | ".join(entry.get("reasons", [entry.get("reason", "")]))


# --- the happy path ---------------------------------------------------------------------


def test_valid_single_event_becomes_an_envelope():
    (envelope,) = run([good(time=iso(RECEIVED - timedelta(minutes=3)))], traceparent=None)
    assert envelope == Envelope(
        id="id-0",
        type="inference",
        tenant_id="tenant-1",
        source="app://x",
        source_id="evt-1",
        subject="cust-1",
        event_time=RECEIVED - timedelta(minutes=3),
        recorded_time=RECEIVED,
        data={"tokens": 5},
        actor=Actor(key_id="k1"),  # the key only: the caller's IP address and user agent stay off the log
        traceparent=None,
        extensions={},
    )
    assert envelope.dedupe_key == ("tenant-1", "app://x", "evt-1")


def test_batch_of_valid_events_keeps_order_and_gets_fresh_ids():
    envelopes = run([good(id=f"e{n}") for n in range(5)])
    assert [e.source_id for e in envelopes] == ["e0", "e1", "e2", "e3", "e4"]
    assert [e.id for e in envelopes] == ["id-0", "id-1", "id-2", "id-3", "id-4"]


def test_tenant_comes_from_the_caller_not_the_body():
    (envelope,) = run([good()], tenant_id="tenant-1")
    assert envelope.tenant_id == "tenant-1"
    # On the log the tenant is the extension attribute `tenantid`, which a client may not send.
    assert "'tenantid' is reserved" in reasons(rejected([good(tenantid="someone-else")], tenant_id="tenant-1"))


@pytest.mark.parametrize("name", sorted(RESERVED - {"data", "data_base64", "datacontenttype", "dataschema", "time"}))
def test_extension_attributes_named_like_omnis_own_are_refused(name):
    """The record on the log is a CloudEvent whose extension attributes are Omni's and the client's
    side by side: a client's `tenantid` or `omniid` would pose as Omni's own."""
    if name in {"specversion", "id", "source", "type", "subject"}:
        return  # CloudEvents' own attributes: validated as such, never extensions
    assert f"{name!r} is reserved" in reasons(rejected([good(**{name: "x"})]))


def test_traceparent_and_other_extensions_are_not_reserved():
    (envelope,) = run([good(traceparent=TRACEPARENT, tracestate="a=b", omni="x", tenant="t")])
    assert envelope.traceparent == TRACEPARENT
    assert envelope.extensions == {"tracestate": "a=b", "omni": "x", "tenant": "t"}


@pytest.mark.parametrize("source", ["omni://quotas", "omni://api", "OMNI://quotas/refusals", "omni:anything"])
def test_omnis_own_sources_are_refused(source):
    """A client's event under omni://quotas with a consume's idempotency key as its id would be the
    consume's duplicate (or make it one): one of the two dropped, after both were answered."""
    error = rejected([good(source=source), good(id="evt-2")])
    assert [e["index"] for e in error.errors] == [0]
    assert "Omni's own" in error.errors[0]["reasons"][0]
    (envelope,) = run([good(source="app://omni")])
    assert envelope.source == "app://omni"


def test_time_defaults_to_received():
    (implicit,) = run([good()])
    (explicit_null,) = run([good(time=None)])
    assert implicit.event_time == RECEIVED == explicit_null.event_time


def test_time_with_an_offset_is_kept_as_the_same_instant():
    local = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    (envelope,) = run([good(time="2024-05-01T14:00:00+02:00")])
    assert envelope.event_time == local == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_expires_at_covers_the_whole_admission_window():
    (envelope,) = run([good(time=iso(RECEIVED - timedelta(days=2)))])
    assert expires_at(envelope, POLICY) == RECEIVED - timedelta(days=2) + POLICY.window + POLICY.future


# --- required fields ----------------------------------------------------------------------


@pytest.mark.parametrize("field", REQUIRED)
def test_missing_required_field_is_rejected_naming_index_and_field(field):
    bad = good()
    del bad[field]
    error = rejected([good(id="ok"), bad])
    assert [e["index"] for e in error.errors] == [1]
    assert field in reasons(error, 1)
    assert "1 of 2" in str(error)


@pytest.mark.parametrize("field", ["id", "source", "type", "subject"])
@pytest.mark.parametrize("value", ["", None, 7, ["x"]])
def test_required_string_fields_must_be_non_empty_strings(field, value):
    error = rejected([good(**{field: value})])
    assert field in reasons(error)


@pytest.mark.parametrize("version", ["0.3", "1", "1.0 ", 1.0, None, "2.0"])
def test_wrong_specversion_is_rejected(version):
    error = rejected([good(specversion=version)])
    assert "specversion" in reasons(error)


def test_the_rejection_names_the_event_id():
    error = rejected([good(id="my-id", subject="")])
    assert error.errors[0]["id"] == "my-id"
    error = rejected([good(id=12, subject="")])
    assert error.errors[0]["id"] is None


# --- the acceptance window ------------------------------------------------------------------


def test_time_exactly_at_the_window_bounds_is_accepted():
    oldest, newest = RECEIVED - POLICY.window, RECEIVED + POLICY.future
    envelopes = run([good(id="old", time=iso(oldest)), good(id="new", time=iso(newest))])
    assert [e.event_time for e in envelopes] == [oldest, newest]


def test_time_older_than_the_window_is_rejected():
    error = rejected([good(time=iso(RECEIVED - POLICY.window - timedelta(microseconds=1)))])
    assert "older than the acceptance window" in reasons(error)


def test_time_more_than_five_minutes_ahead_is_rejected():
    assert POLICY.future == timedelta(minutes=5)
    error = rejected([good(time=iso(RECEIVED + timedelta(minutes=5, microseconds=1)))])
    assert "in the future" in reasons(error)


def test_custom_window():
    policy = AdmissionPolicy(window=timedelta(hours=1), future=timedelta(0))
    run([good(time=iso(RECEIVED - timedelta(hours=1)))], policy=policy)
    rejected([good(time=iso(RECEIVED - timedelta(hours=1, seconds=1)))], policy=policy)
    rejected([good(time=iso(RECEIVED + timedelta(microseconds=1)))], policy=policy)


@pytest.mark.parametrize("naive", ["2024-05-01T12:00:00", "2024-05-01 12:00:00", "2024-05-01T12:00:00.5"])
def test_naive_time_is_rejected(naive):
    error = rejected([good(time=naive)])
    assert "time" in reasons(error)


@pytest.mark.parametrize("junk", ["yesterday", "", 10**30, True, {"t": 1}, "2024-13-01T00:00:00Z"])
def test_unparseable_time_is_rejected(junk):
    assert "time" in reasons(rejected([good(time=junk)]))


# --- extensions and trace context ---------------------------------------------------------


def test_extensions_are_kept():
    (envelope,) = run([good(region="eu", n1=5, flag=True, nested={"a": [1]})])
    assert envelope.extensions == {"region": "eu", "n1": 5, "flag": True, "nested": {"a": [1]}}


@pytest.mark.parametrize("name", ["Region", "my_ext", "my-ext", "a" * 21, "", "ü", "x y"])
def test_bad_extension_names_are_rejected(name):
    error = rejected([good(**{name: "v"})])
    assert repr(name) in reasons(error)


def test_extension_name_of_twenty_characters_is_fine():
    (envelope,) = run([good(**{"a" * 20: 1})])
    assert envelope.extensions == {"a" * 20: 1}


def test_traceparent_extension_moves_to_the_envelope():
    (envelope,) = run([good(traceparent=TRACEPARENT, region="eu")], traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    assert envelope.traceparent == TRACEPARENT
    assert envelope.extensions == {"region": "eu"}


def test_request_traceparent_is_used_when_the_event_has_none():
    (envelope,) = run([good()], traceparent=TRACEPARENT)
    assert envelope.traceparent == TRACEPARENT
    assert envelope.extensions == {}


@pytest.mark.parametrize("value", ["nope", TRACEPARENT.upper(), TRACEPARENT + "0", 5])
def test_malformed_traceparent_extension_is_rejected(value):
    assert "traceparent" in reasons(rejected([good(traceparent=value)]))


@pytest.mark.parametrize("name", ["traceparent", "region", "omniid", "tenantid"])
def test_an_extension_attribute_that_is_null_is_unset(name):
    """CloudEvents JSON format 1.0.2, 2.2: "When decoding attributes and a null value is encountered,
    it MUST be treated as the equivalent of unset or omitted" (its own example carries
    `"unsetextension": null`). A null traceparent, or a null attribute named like Omni's, was
    refused; any other was kept on the log."""
    (envelope,) = run([good(**{name: None}, tracestate="a=b")], traceparent=TRACEPARENT)
    assert envelope.extensions == {"tracestate": "a=b"}
    assert envelope.traceparent == TRACEPARENT
    assert b"null" not in encode(envelope)


# --- batches --------------------------------------------------------------------------------


def test_one_bad_event_rejects_the_whole_batch_and_every_bad_index_is_listed():
    items = [
        good(id="a"),
        good(id="b", specversion="0.3"),
        good(id="c"),
        good(id="d", time=iso(RECEIVED + timedelta(hours=1))),
        "not an object",
        good(id="f", BadName=1),
        good(id="g"),
    ]
    error = rejected(items)
    assert [e["index"] for e in error.errors] == [1, 3, 4, 5]
    assert [e.get("id") for e in error.errors] == ["b", "d", None, "f"]
    assert "4 of 7" in str(error)
    assert "object" in error.errors[2]["reason"]


def test_several_problems_in_one_event_are_all_reported():
    error = rejected([{"specversion": "1.0", "id": "x"}])
    text = reasons(error)
    assert all(field in text for field in ("source", "type", "subject"))


def test_empty_batch_admits_nothing():
    assert run([]) == []


# --- properties -----------------------------------------------------------------------------


# JSON as orjson.loads can produce it (the API parses bodies with orjson).
def json_values_of(text):
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        text(max_size=12),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )


def storable_text(**size):
    """Text the views can store: anything but NUL."""
    return st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), **size)


json_values = json_values_of(st.text)
storable_json_values = json_values_of(storable_text)

FIELD_NAMES = ["specversion", "id", "source", "type", "subject", "time", "data", "datacontenttype", "dataschema", "traceparent"]
odd_times = st.one_of(
    st.datetimes(timezones=st.timezones() | st.just(timezone(timedelta(hours=-23, minutes=-59)))).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=30),
)


@st.composite
def mutated_events(draw):
    """Valid events with some fields replaced by arbitrary JSON and extra attributes added."""
    event = good(time=iso(RECEIVED))
    for name in draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=3)):
        if draw(st.booleans()):
            event.pop(name, None)
        elif name == "time":
            event[name] = draw(odd_times)
        else:
            event[name] = draw(json_values)
    event.update(draw(st.dictionaries(st.text(max_size=22), json_values, max_size=3)))
    return event


@PROPS
@given(st.lists(json_values | mutated_events(), max_size=5))
def test_arbitrary_json_items_only_ever_raise_invalid(items):
    try:
        envelopes = run(items)
    except Invalid as error:
        indexes = [e["index"] for e in error.errors]
        assert indexes == sorted(set(indexes))
        assert indexes and all(0 <= i < len(items) for i in indexes)
        assert all(isinstance(e.get("reasons", [e.get("reason")]), list) for e in error.errors)
    else:
        assert len(envelopes) == len(items)
        assert all(isinstance(item, dict) for item in items)
        for envelope in envelopes:
            assert RECEIVED - POLICY.window <= envelope.event_time <= RECEIVED + POLICY.future


@PROPS
@given(st.lists(json_values | mutated_events(), max_size=5))
def test_a_batch_is_judged_as_its_events_one_by_one(items):
    """Admission validates a batch in one call and looks at events one by one only when it
    fails: the outcome must be the one of admitting each event on its own."""
    alone: list[dict | None] = []  # per item: its error entry, or None when it is admissible
    for index, item in enumerate(items):
        try:
            run([item])
            alone.append(None)
        except Invalid as error:
            (entry,) = error.errors
            alone.append({**entry, "index": index})
    try:
        run(items)
        together: list[dict | None] = [None] * len(items)
    except Invalid as error:
        together = [None] * len(items)
        for entry in error.errors:
            together[entry["index"]] = entry
    assert together == alone


extension_names = st.from_regex(r"\A[a-z0-9]{1,20}\Z").filter(lambda n: n not in FIELD_NAMES and n not in RESERVED)
offsets = st.integers(-23 * 60 + 1, 23 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))


@st.composite
def valid_events(draw):
    event = {
        "specversion": "1.0",
        "id": draw(storable_text(min_size=1, max_size=40)),
        "source": draw(storable_text(min_size=1, max_size=40)),
        "type": draw(storable_text(min_size=1, max_size=40)),
        "subject": draw(storable_text(min_size=1, max_size=40)),
    }
    if draw(st.booleans()):
        shift = draw(st.integers(-int(POLICY.window / timedelta(microseconds=1)), int(POLICY.future / timedelta(microseconds=1))))
        event["time"] = (RECEIVED + timedelta(microseconds=shift)).astimezone(draw(offsets)).isoformat()
    if draw(st.booleans()):
        event["data"] = draw(storable_json_values)
    if draw(st.booleans()):
        event["traceparent"] = draw(
            st.from_regex(r"\A[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z").filter(
                lambda t: not t.startswith("ff") and t[3:35] != "0" * 32 and t[36:52] != "0" * 16
            )
        )
    event.update(draw(st.dictionaries(extension_names, storable_json_values, max_size=3)))
    return event


@PROPS
@given(st.lists(valid_events(), min_size=1, max_size=4), st.none() | st.just(TRACEPARENT))
def test_valid_events_are_admitted_and_round_trip_through_the_wire_encoding(events, header_trace):
    envelopes = run(events, traceparent=header_trace)
    assert len(envelopes) == len(events)
    for event, envelope in zip(events, envelopes, strict=True):
        assert (envelope.source_id, envelope.source, envelope.type, envelope.subject) == (
            event["id"],
            event["source"],
            event["type"],
            event["subject"],
        )
        assert envelope.data == event.get("data")
        assert envelope.traceparent == (event.get("traceparent") or header_trace)
        # A null extension attribute is an unset one (CloudEvents JSON format, 2.2).
        assert set(envelope.extensions) == {name for name, value in event.items() if value is not None} - {*FIELD_NAMES}
        again = decode(encode(envelope))
        assert again == envelope
        assert again.event_time.utcoffset() == timedelta(0)
        assert encode(again) == encode(envelope)


@pytest.mark.parametrize(
    "where",
    [{"id": "e\x001"}, {"subject": "u\x00"}, {"data": {"model": ["m\x00"]}}, {"data": {"k\x00": 1}}, {"region": "eu\x00"}],
)
def test_text_holding_a_nul_character_is_refused_naming_the_event(where):
    # PostgreSQL text cannot store NUL: admitted, such an event would stop its partition's fold.
    events = [{"specversion": "1.0", "id": "ok", "source": "s", "type": "t", "subject": "u"}]
    events.append({**events[0], "id": "bad", **where})
    with pytest.raises(Invalid) as refused:
        run(events)
    [error] = refused.value.errors
    assert error["index"] == 1 and any("NUL" in reason for reason in error["reasons"])


def test_the_nul_search_is_skipped_only_when_the_caller_knows_there_is_none():
    event = {"specversion": "1.0", "id": "e\x001", "source": "s", "type": "t", "subject": "u"}
    kwargs = {"tenant_id": "t", "actor": Actor(), "received": RECEIVED, "policy": POLICY, "new_id": lambda: "x"}
    with pytest.raises(Invalid):
        admit([event], **kwargs)
    assert admit([event], **kwargs, may_hold_nul=False)[0].source_id == "e\x001"


# --- regex anchoring --------------------------------------------------------------------------


def test_extension_name_with_a_trailing_newline_is_rejected():
    assert repr("region\n") in reasons(rejected([good(**{"region\n": "eu"})]))


def test_traceparent_with_a_trailing_newline_is_rejected():
    assert "traceparent" in reasons(rejected([good(traceparent=TRACEPARENT + "\n")]))


# --- what cannot be stored is refused, naming the limit (issue 11, item 1) ---------------------


def nested(depth: int, leaf=1):
    """A value `depth` levels of arrays and objects deep (`{"a": 1}` is one level)."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def test_data_nesting_up_to_the_limit_is_admitted_and_deeper_is_refused_naming_it():
    limit = POLICY.max_depth
    assert limit == 32
    (envelope,) = run([good(data=nested(limit))])
    assert envelope.data == nested(limit)
    error = rejected([good(id="ok"), good(id="deep", data=nested(limit + 1))])
    assert [e["index"] for e in error.errors] == [1]
    assert f"data nests deeper than {limit} levels" in reasons(error, 1)


@pytest.mark.parametrize("depth", [200, 253, 254, 300, 1000])
def test_data_too_deep_to_encode_is_refused_not_admitted(depth):
    # orjson encodes at most 254 levels: such an event used to be admitted and then failed inside
    # the shared group commit, failing every other request in it.
    error = rejected([good(data=nested(depth))])
    assert "data nests deeper than 32 levels" in reasons(error)


def test_an_extension_attribute_may_nest_as_deep_as_data():
    limit = POLICY.max_depth
    (envelope,) = run([good(region=nested(limit), data=nested(limit))])  # one level deeper than data in the envelope
    assert envelope.extensions == {"region": nested(limit)}
    assert "extension attribute 'region' nests deeper than 32 levels" in reasons(rejected([good(region=nested(limit + 1))]))


def test_a_custom_depth_limit():
    policy = AdmissionPolicy(max_depth=3)
    run([good(data=nested(3))], policy=policy)
    assert "data nests deeper than 3 levels" in reasons(rejected([good(data=nested(4))], policy=policy))


def test_an_event_larger_than_the_limit_stored_is_refused_naming_it():
    policy = AdmissionPolicy(max_event_bytes=2_000)
    (envelope,) = run([good(data={"blob": "x" * 1_000})], policy=policy)
    error = rejected([good(data={"blob": "x" * 2_000})], policy=policy)
    assert "at most 2000 bytes" in reasons(error) and "OMNI_MAX_EVENT_BYTES" in reasons(error)
    assert POLICY.max_event_bytes == 1_000_000  # below Kafka's default message.max.bytes (1,048,588)
    assert "at most 1000000 bytes" in reasons(rejected([good(data={"blob": "é" * 500_001})]))


def test_admission_hands_out_each_envelopes_wire_form():
    admitted = admit_encoded(
        [good(id="a"), good(id="b", data={"x": [1, 2]})],
        tenant_id="t",
        actor=ACTOR,
        received=RECEIVED,
        policy=POLICY,
        new_id=lambda: "x",
    )
    assert admitted.values == [encode(e) for e in admitted.envelopes]


def test_an_item_too_large_to_parse_is_refused_by_its_index():
    error = rejected([good(id="a"), TooLarge(2_000_000, 1_000_000)])
    assert [e["index"] for e in error.errors] == [1]
    assert "at most 1000000 bytes" in error.errors[0]["reason"] and "OMNI_MAX_EVENT_BYTES" in error.errors[0]["reason"]


# --- loose values (issue 11, item 7) -------------------------------------------------------------


@pytest.mark.parametrize("number", [1714564800, 1714564800000, 1714564800.5, 0])
def test_time_as_a_json_number_is_refused_not_guessed(number):
    assert "RFC 3339" in reasons(rejected([good(time=number)]))


@pytest.mark.parametrize(
    "text",
    [
        "1714564800",
        "2024-05-01T12:00Z",
        "2024-05-01T12:00:00,5Z",
        "2024-05-01T12:00:00+0200",
        "2024-05-01",
        "2024-05-01T12:00:00Z\n",
    ],
)
def test_time_must_be_rfc_3339_text(text):
    assert "RFC 3339" in reasons(rejected([good(time=text)]))


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01T12:00:00Z",
        "2024-05-01t12:00:00z",
        "2024-05-01 12:00:00Z",
        "2024-05-01T12:00:00.5+00:00",
        "2024-05-01T14:00:00.123456789+02:00",
    ],
)
def test_rfc_3339_times_are_admitted(text):
    (envelope,) = run([good(time=text)], received=datetime(2024, 5, 1, 12, 1, tzinfo=UTC))
    assert envelope.event_time.replace(microsecond=0) == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # the all-zero trace id is invalid
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",  # and so is the all-zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
    ],
)
def test_invalid_w3c_traceparents_are_refused(value):
    assert "traceparent" in reasons(rejected([good(traceparent=value)]))
