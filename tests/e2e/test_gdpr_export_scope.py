"""Whose events an access export holds when a data class names the person in the event's data: the
person it names, never the CloudEvent subject's export (which held other persons' events, their
ids and activity, with their values null)."""

from __future__ import annotations

from typing import Any

import orjson

from omni.gdpr_jobs import WITHHELD
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, Omni
from tests.e2e.test_gdpr import request


async def exported(omni: Omni, key: str, subject: str) -> dict[str, Any]:
    done = await request(omni, key, subject, "access")
    assert done["status"] == "completed", done
    response = await omni.client.get(done["export"], headers=omni.auth(key))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_an_export_holds_the_events_about_its_person_and_no_one_elses(omni: Omni) -> None:
    admin = omni.auth(ADMIN)
    support = {"personal": ["$.data.note"], "subject_property": "$.data.user_id"}
    assert (await omni.client.put("/v1/data-classes/support", json=support, headers=admin)).status_code == 201
    _, key = await omni.tenant("acme")
    await omni.settle()
    events = [
        cloud_event("s1", type_="support", subject="org-7", data={"user_id": "cust-amy", "note": "amy's note"}),
        cloud_event("s2", type_="support", subject="org-7", data={"user_id": "cust-zed", "note": "zed's note"}),
        cloud_event("c1", type_="chat", subject="org-7", data={"tokens": 3}),  # no data class: about org-7
    ]
    sent = await omni.send(key, events)
    assert sent.status_code == 202 and sent.json()["accepted"] == 3, sent.text
    await omni.settle()

    amy = await exported(omni, key, "cust-amy")
    assert [(e["id"], e["data"]) for e in amy["events"]] == [("s1", {"user_id": "cust-amy", "note": "amy's note"})]
    org = await exported(omni, key, "org-7")
    assert [e["id"] for e in org["events"]] == ["c1"], "the support events are amy's and zed's, not org-7's"


async def test_an_event_whose_data_cannot_name_its_person_is_refused_whatever_its_data(omni: Omni) -> None:
    """The data class names the person under `data`: data that is no object names nobody, as an
    object without the path does (a text was admitted, in clear, and no export could find it)."""
    support = {"personal": ["$.data.note"], "subject_property": "$.data.user_id"}
    assert (await omni.client.put("/v1/data-classes/support", json=support, headers=omni.auth(ADMIN))).status_code == 201
    _, key = await omni.tenant("acme")
    await omni.settle()
    for data in ({"note": "who?"}, "a plain text about someone", ["a", "list"], 42):
        sent = await omni.send(key, [cloud_event("s1", type_="support", subject="org-7", data=data)])
        assert sent.status_code == 422, (data, sent.text)
        assert "names the person at $.data.user_id: the event holds no person's id there" in sent.text
    named = await omni.send(key, [cloud_event("s2", type_="support", subject="org-7", data={"user_id": "cust-amy"})])
    assert named.status_code == 202, named.text


async def test_an_exports_meter_rows_are_those_naming_its_person_and_show_no_one_elses_values(omni: Omni) -> None:
    """The meters' buckets of a person named in the event's data are keyed by another subject: the
    export found them by the subject alone, so it missed the person's own buckets and showed
    another person's pseudonyms in those it found."""
    admin = omni.auth(ADMIN)
    support = {"personal": ["$.data.email"], "subject_property": "$.data.user_id"}
    assert (await omni.client.put("/v1/data-classes/support", json=support, headers=admin)).status_code == 201
    await omni.meter(slug="tickets", event_type="support", aggregation="COUNT", group_by={"email": "$.data.email"})
    await omni.meter(slug="reached", event_type="support", aggregation="UNIQUE_COUNT", value_property="$.data.email")
    await omni.meter(slug="chat-tokens", event_type="chat", aggregation="SUM", value_property="$.data.tokens")
    _, key = await omni.tenant("acme")
    await omni.settle()
    amy, zed = {"user_id": "cust-amy", "email": "amy@example.com"}, {"user_id": "cust-zed", "email": "zed@example.com"}
    events = [
        cloud_event("s1", type_="support", subject="org-7", data=amy),
        cloud_event("s2", type_="support", subject="org-7", data=zed),
        cloud_event("s3", type_="support", subject="cust-amy", data=zed),  # about zed, under amy's id as subject
        cloud_event("c1", type_="chat", subject="cust-amy", data={"tokens": 5}),  # no data class: about its subject
    ]
    sent = await omni.send(key, events)
    assert sent.status_code == 202 and sent.json()["accepted"] == 4, sent.text
    await omni.settle()

    def rows(export: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [
            (r["meter"], r.get("subject"), r["about"], r["group"], r.get("uniques"), r.get("count"), r.get("total"))
            for r in export["views"]["meters"]
        ]

    amys = await exported(omni, key, "cust-amy")
    assert rows(amys) == [
        ("chat-tokens", "cust-amy", "subject", {}, None, 1, "5"),
        ("reached", "cust-amy", "subject", {}, [], 1, "0"),  # zed's address left out
        ("reached", None, "distinct value", {}, ["amy@example.com"], None, None),  # org-7's count is everyone's
        ("tickets", "cust-amy", "subject", {"email": WITHHELD}, None, 1, "0"),
        ("tickets", "org-7", "group", {"email": "amy@example.com"}, None, 1, "0"),
    ]
    text = orjson.dumps(amys).decode()
    assert "zed" not in text and "ps1_" not in text and "ps2_" not in text, text
    zeds = await exported(omni, key, "cust-zed")
    assert rows(zeds) == [
        ("reached", None, "distinct value", {}, ["zed@example.com"], None, None),
        ("reached", None, "distinct value", {}, ["zed@example.com"], None, None),
        ("tickets", "cust-amy", "group", {"email": "zed@example.com"}, None, 1, "0"),
        ("tickets", "org-7", "group", {"email": "zed@example.com"}, None, 1, "0"),
    ]
    assert "amy@example.com" not in orjson.dumps(zeds).decode()
