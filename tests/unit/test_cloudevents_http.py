"""The HTTP binding's binary mode and data_base64, brought to the JSON format admission reads."""

from __future__ import annotations

import base64

import jsonschema_rs
import pytest

from api.cloudevents_http import Unreadable, from_binary, is_binary_mode, with_readable_data
from schemas.cloudevents import documented_schema

HEADERS = {"ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "gw", "ce-type": "inference", "ce-subject": "u"}


def test_binary_mode_is_told_by_its_specversion_header() -> None:
    assert is_binary_mode(HEADERS)
    assert is_binary_mode({**HEADERS, "content-type": "application/json"})
    assert not is_binary_mode({"content-type": "application/cloudevents+json", "ce-id": "x"})


@pytest.mark.parametrize(
    "media",
    ["application/cloudevents+json", "application/cloudevents+json; charset=utf-8", "Application/CloudEvents-Batch+JSON"],
)
def test_a_cloudevents_content_type_is_structured_mode_whatever_ce_headers_come_with_it(media: str) -> None:
    """CloudEvents HTTP binding 1.0.2, section 3: the receiver tells the modes by `Content-Type`,
    `application/cloudevents` (and `-batch`) prefixed being structured (batched) mode; section 3.2.3:
    structured mode MAY carry the binary mode's headers too."""
    assert not is_binary_mode({**HEADERS, "content-type": media})


def test_attributes_come_from_the_ce_headers_percent_decoded() -> None:
    headers = {**HEADERS, "ce-subject": "customer%2042%25", "ce-traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    event = from_binary({**headers, "content-type": "application/json", "user-agent": "sdk"}, b'{"tokens": 5}')
    assert event == {
        "specversion": "1.0",
        "id": "e-1",
        "source": "gw",
        "type": "inference",
        "subject": "customer 42%",
        "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        "datacontenttype": "application/json",
        "data": {"tokens": 5},
    }


@pytest.mark.parametrize(
    ("media", "body", "data"),
    [
        (None, b'{"tokens": 5}', {"tokens": 5}),  # the CloudEvents SDK sends JSON data with no Content-Type
        (None, b"plain words", "plain words"),
        ("application/json; charset=utf-8", b"[1, 2]", [1, 2]),
        ("application/vnd.usage+json", b'{"n": 1}', {"n": 1}),
        ("text/plain", b"caf\xc3\xa9", "café"),
    ],
)
def test_data_is_read_by_its_media_type(media: str | None, body: bytes, data: object) -> None:
    headers = {**HEADERS, **({"content-type": media} if media else {})}
    assert from_binary(headers, body)["data"] == data


@pytest.mark.parametrize(
    ("media", "body", "reason"),
    [
        ("application/octet-stream", b"\x00\x01", "cannot be metered"),
        ("application/json", b"{not json", "not valid JSON"),
        ("text/plain", b"\xff\xfe", "not UTF-8"),
    ],
)
def test_data_no_meter_could_read_is_refused_with_the_reason(media: str, body: bytes, reason: str) -> None:
    with pytest.raises(Unreadable, match=reason):
        from_binary({**HEADERS, "content-type": media}, body)


@pytest.mark.parametrize(
    ("header", "value", "reason"),
    [
        ("ce-id", "e-%C3", "not UTF-8"),  # a truncated sequence: it was U+FFFD, as e-%C4 was
        ("ce-id", "e-%C0%A0", "not UTF-8"),  # the binding's own example: an overlong space
        ("ce-id", "e-%ED%A0%80", "not UTF-8"),  # a surrogate
        ("ce-subject", "caf\u00c3\u00a9", "outside ASCII"),  # é sent raw as UTF-8, read as Latin-1: it was "cafÃ©"
        ("ce-data_base64", "eyJ0b2tlbnMiOiA5OX0=", "the data is the body"),  # it was the data metered
        ("ce-data", '{"tokens": 99}', "the data is the body"),
        ("ce-datacontenttype", "application/json", "Content-Type carries it"),
        ("ce-subject", "%ZZ", "begins no percent-encoded byte"),  # it was kept as "%ZZ"
        ("ce-id", "a%", "begins no percent-encoded byte"),  # "a%" and "a%25" were one id
        ("ce-id", "a%2", "begins no percent-encoded byte"),
    ],
    ids=["truncated", "overlong", "surrogate", "raw-utf8", "data_base64", "data", "datacontenttype", "zz", "trailing", "half"],
)
def test_headers_the_binding_does_not_allow_are_refused(header: str, value: str, reason: str) -> None:
    """CloudEvents HTTP binding 1.0.2, 3.1.3.2: header values are printable US-ASCII, decoded by one
    round of percent-decoding, and "encoded byte sequences which are invalid in UTF-8 MUST be
    rejected"; 3.1.1 and 3.1.2: the data is the body, its media type the Content-Type, and a
    `ce-datacontenttype` header "MUST NOT also be present"."""
    with pytest.raises(Unreadable, match=reason):
        from_binary({**HEADERS, header: value}, b'{"tokens": 1}')


def test_percent_decoding_takes_any_case_and_unnecessary_encoding() -> None:
    """The binding, 3.1.3.2: decoding "MUST accept lower-case values", and values "unnecessarily
    percent-encoded MUST be accepted"."""
    event = from_binary({**HEADERS, "ce-subject": "Euro%20%e2%82%ac%20%F0%9F%98%80", "ce-id": "%65-1"}, b"")
    assert (event["subject"], event["id"]) == ("Euro \u20ac \U0001f600", "e-1")


def test_an_empty_body_is_an_event_without_data() -> None:
    assert "data" not in from_binary(HEADERS, b"")


def test_data_base64_is_decoded_into_data() -> None:
    item = {"id": "1", "datacontenttype": "application/json", "data_base64": base64.b64encode(b'{"tokens": 3}').decode()}
    assert with_readable_data(item) == {"id": "1", "datacontenttype": "application/json", "data": {"tokens": 3}}
    assert with_readable_data({"id": "2", "data": 1}) == {"id": "2", "data": 1}  # untouched
    text = {"id": "3", "datacontenttype": "text/plain", "data_base64": base64.b64encode(b"hi").decode()}
    assert with_readable_data(text)["data"] == "hi"


def test_a_null_data_base64_is_absent() -> None:
    """CloudEvents JSON format 1.0.2, 2.2: a member that is JSON null MUST be treated as unset: an
    event with `"data_base64": null` beside its `data` (or alone) was refused."""
    assert with_readable_data({"id": "1", "data": {"tokens": 3}, "data_base64": None}) == {"id": "1", "data": {"tokens": 3}}
    assert with_readable_data({"id": "2", "data_base64": None}) == {"id": "2"}


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"data": 1, "data_base64": "AA=="}, "not both"),
        ({"data_base64": "not base64!"}, "not valid base64"),
        ({"data_base64": 7}, "base64 text"),
        ({"datacontenttype": "image/png", "data_base64": "iVBORw=="}, "cannot be metered"),
    ],
)
def test_bad_data_base64_is_refused_with_the_reason(item: dict, reason: str) -> None:
    with pytest.raises(Unreadable, match=reason):
        with_readable_data(item)


@pytest.mark.parametrize(
    "extra",
    [
        {"data_base64": base64.b64encode(b'{"tokens": 3}').decode(), "datacontenttype": "application/json"},
        {"data_base64": None, "data": {"tokens": 3}},
        {"traceparent": None, "region": None},
    ],
    ids=["data_base64", "null-data_base64", "null-attributes"],
)
def test_the_documented_event_schema_takes_what_admission_takes(extra: dict) -> None:
    """The OpenAPI document's CloudEvent (what generated clients and validating proxies check)
    refused `data_base64`, which the README and admission take (CloudEvents JSON format, 3.1), as
    an unknown member, and a null `traceparent` (JSON format, 2.2: null is unset)."""
    event = {"specversion": "1.0", "id": "e-1", "source": "gw", "type": "inference", "subject": "u", **extra}
    assert list(jsonschema_rs.validator_for(documented_schema()).iter_errors(event)) == []


@pytest.mark.parametrize("header", ["ce-id", "ce-specversion", "ce-source", "content-type"])
def test_an_attribute_or_the_media_type_sent_twice_is_refused(header: str) -> None:
    """Either value would name an event the client may not have meant (the first for this reader,
    the last, or both joined, for another): refused, as a repeated query parameter is."""
    sent = [*HEADERS.items(), ("content-type", "application/json"), (header, "other")]
    with pytest.raises(Unreadable, match=f"{header} is sent more than once"):
        from_binary(sent, b'{"tokens": 1}')
    assert from_binary([*sent[:-1], ("user-agent", "a"), ("user-agent", "b")], b"")["id"] == HEADERS["ce-id"]
