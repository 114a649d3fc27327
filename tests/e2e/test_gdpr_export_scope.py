"""Whose events an access export holds when a data class names the person in the event's data: the
person it names, never the CloudEvent subject's export (which held other persons' events, their
ids and activity, with their values null)."""

from __future__ import annotations

from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, Omni
from tests.e2e.test_gdpr import request


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

    async def exported(subject: str) -> dict[str, object]:
        done = await request(omni, key, subject, "access")
        assert done["status"] == "completed", done
        response = await omni.client.get(done["export"], headers=omni.auth(key))
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    amy = await exported("cust-amy")
    assert [(e["id"], e["data"]) for e in amy["events"]] == [("s1", {"user_id": "cust-amy", "note": "amy's note"})]
    org = await exported("org-7")
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
