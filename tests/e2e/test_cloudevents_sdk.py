"""The CloudEvents Python SDK, as an integrator would use it, against POST /v1/events in both
modes: structured mode, binary mode, a batch built from its JSON format, and data_base64."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import orjson
from cloudevents.v1.conversion import to_binary, to_json, to_structured
from cloudevents.v1.http import CloudEvent

from tests.e2e.conftest import BATCH, SINGLE, Omni


def usage(event_id: str, tokens: int, **attributes: str) -> dict[str, str]:
    return {"type": "inference", "source": "sdk", "subject": "customer-9", "id": event_id, **attributes}


async def post(omni: Omni, key: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    return await omni.client.post("/v1/events", content=body, headers={**omni.auth(key), **headers})


async def test_the_sdk_sends_structured_binary_batch_and_base64(omni: Omni) -> None:
    _, key = await omni.tenant()
    await omni.meter(slug="tokens", event_type="inference", aggregation="SUM", value_property="$.data.tokens")
    sent: list[httpx.Response] = []

    headers, body = to_structured(CloudEvent(usage("structured", 1), {"tokens": 1}))
    sent.append(await post(omni, key, headers, body))
    headers, body = to_binary(CloudEvent(usage("binary", 2), {"tokens": 2}))  # JSON data, no Content-Type
    assert "content-type" not in {h.lower() for h in headers}
    sent.append(await post(omni, key, headers, body))
    typed = CloudEvent(usage("binary-typed", 4, datacontenttype="application/json"), b'{"tokens": 4}')
    headers, body = to_binary(typed)
    sent.append(await post(omni, key, headers, body))
    # Bytes data in structured mode travel as data_base64.
    headers, body = to_structured(CloudEvent(usage("base64", 8, datacontenttype="application/json"), b'{"tokens": 8}'))
    assert b"data_base64" in body
    sent.append(await post(omni, key, headers, body))
    batch = b"[" + b",".join(to_json(CloudEvent(usage(f"batch-{i}", 16), {"tokens": 16})) for i in range(2)) + b"]"
    sent.append(await post(omni, key, {"Content-Type": BATCH}, batch))

    assert [r.status_code for r in sent] == [202] * 5, [r.text for r in sent]
    assert sum(r.json()["accepted"] for r in sent) == 6
    # Sent again in binary mode, the same (source, id) is a duplicate, as in any other mode.
    headers, body = to_binary(CloudEvent(usage("structured", 1), {"tokens": 1}))
    assert (await post(omni, key, headers, body)).json()["duplicates"] == 1
    await omni.settle()
    assert [row["value"] for row in await omni.query(key, "tokens")] == [1 + 2 + 4 + 8 + 32]


async def test_binary_mode_attributes_are_checked_like_any_others(omni: Omni) -> None:
    _, key = await omni.tenant()
    now = datetime.now(UTC).isoformat()
    missing = await post(omni, key, {"ce-specversion": "1.0", "ce-id": "x", "ce-time": now}, b'{"tokens": 1}')
    assert missing.status_code == 422 and missing.headers["content-type"] == "application/problem+json"
    reasons = " ".join(orjson.loads(missing.content)["errors"][0]["reasons"])
    assert "source" in reasons and "type" in reasons and "subject" in reasons
    opaque = CloudEvent(usage("opaque", 0, datacontenttype="application/octet-stream"), b"\x00\x01")
    headers, body = to_binary(opaque)
    refused = await post(omni, key, headers, body)
    assert refused.status_code == 422 and "cannot be metered" in refused.text
    nul = await post(omni, key, {**to_binary(CloudEvent(usage("n", 0), {}))[0], "ce-subject": "a%00b"}, b"{}")
    assert nul.status_code == 422 and "NUL" in nul.text


async def test_structured_and_batched_mode_with_ce_headers_beside_them_read_the_body(omni: Omni) -> None:
    """CloudEvents HTTP binding 1.0.2, section 3: the receiver tells the content mode by
    `Content-Type`; one prefixed `application/cloudevents` is structured (or batched) mode. Section
    3.2.3: structured mode MAY carry the binary mode's `ce-*` headers too (a forwarder adds them, as
    the SDK's own `to_binary` names them), and every attribute is in the body. Read as binary mode,
    the whole event became the data of an event with the headers' id: none of its usage counted."""
    _, key = await omni.tenant()
    await omni.meter(slug="tokens", event_type="inference", aggregation="SUM", value_property="$.data.tokens")
    headers, _ = to_binary(CloudEvent(usage("from-headers", 0), {"tokens": 0}))
    headers = {name: value for name, value in headers.items() if name.lower() != "content-type"}
    _, single = to_structured(CloudEvent(usage("single", 3), {"tokens": 3}))
    batch = b"[" + to_json(CloudEvent(usage("batched", 4), {"tokens": 4})) + b"]"

    sent = [
        await post(omni, key, {**headers, "Content-Type": SINGLE}, single),
        await post(omni, key, {**headers, "Content-Type": f"{BATCH}; charset=utf-8"}, batch),
    ]

    assert [r.status_code for r in sent] == [202, 202], [r.text for r in sent]
    assert [[result["id"] for result in r.json()["results"]] for r in sent] == [["single"], ["batched"]]
    await omni.settle()
    assert [row["value"] for row in await omni.query(key, "tokens")] == [3 + 4]


async def test_binary_mode_header_values_that_are_not_percent_encoded_utf8_are_refused(omni: Omni) -> None:
    """CloudEvents HTTP binding 1.0.2, 3.1.3.2: percent-encoded byte sequences "which are invalid in
    UTF-8 MUST be rejected", and header values are printable US-ASCII. Decoded leniently, ids
    `u-%C3` and `u-%C4` both became `u-\ufffd`, so the second event was answered `duplicate` and its
    usage lost; an id sent as raw UTF-8 became other text (read as Latin-1), which a retry of the
    event in structured mode did not match, so it counted twice."""
    _, key = await omni.tenant()
    headers, body = to_binary(CloudEvent(usage("u", 1), {"tokens": 1}))
    raw = [(name.encode(), value.encode()) for name, value in {**headers, **omni.auth(key)}.items() if name != "ce-id"]

    answers = [
        await post(omni, key, {**headers, "ce-id": "u-%C3"}, body),
        await post(omni, key, {**headers, "ce-id": "u-%C4"}, body),
        await omni.client.post("/v1/events", content=body, headers=[*raw, (b"ce-id", "u-\u00e9".encode())]),
    ]

    assert [a.status_code for a in answers] == [422, 422, 422], [a.text for a in answers]
    assert all(a.headers["content-type"] == "application/problem+json" for a in answers)
    assert [orjson.loads(a.content)["errors"][0]["reasons"] for a in answers] == [
        ["header ce-id is percent-encoded bytes that are not UTF-8"],
        ["header ce-id is percent-encoded bytes that are not UTF-8"],
        ["header ce-id holds characters outside ASCII: percent-encode its UTF-8 bytes (%C3%A9 for \u00e9)"],
    ]


async def test_dataschema_is_an_absolute_uri_in_every_mode(omni: Omni) -> None:
    """CloudEvents: `dataschema`, if present, is a non-empty URI. One the SDK sends from a URL is
    taken; a relative reference or text is refused at its place, with the event's id, nothing kept."""
    _, key = await omni.tenant()
    await omni.meter(slug="tokens", event_type="inference", aggregation="SUM", value_property="$.data.tokens")
    schema = "https://example.com/schemas/inference.json"
    headers, body = to_structured(CloudEvent(usage("with-schema", 1, dataschema=schema), {"tokens": 1}))
    assert (await post(omni, key, headers, body)).status_code == 202
    for event_id, dataschema in (("relative", "schemas/inference"), ("spaced", "https://example.com/a b"), ("empty", "")):
        for make in (to_structured, to_binary):
            headers, body = make(CloudEvent(usage(event_id, 1, dataschema=dataschema), {"tokens": 1}))
            refused = await post(omni, key, headers, body)
            assert refused.status_code == 422, (event_id, make, refused.text)
            (error,) = orjson.loads(refused.content)["errors"]
            assert error["id"] == event_id and any("dataschema must be an absolute URI" in r for r in error["reasons"]), error
    await omni.settle()
    assert [row["value"] for row in await omni.query(key, "tokens")] == [1], "only the event with a URI was kept"
