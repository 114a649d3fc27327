"""GET /v1/notifications refuses what it cannot read: a cursor that is not a `next_before` (both of
its parts checked), and a tenant that does not exist (404, as GET /v1/quotas answers); it lists the
platform's own notices (an overdue breach) to the admin."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from tests.e2e.conftest import ADMIN, Omni

NOTICE_ID = "a8ba7524-79e6-4ce1-a44b-426efb72bd98"  # fixed: parametrized ids must be the same in every xdist worker


@pytest.mark.parametrize(
    "before",
    [
        "x",
        "x~y",
        "~",
        f"~{NOTICE_ID}",
        "2026-12-06T10:00:00.000000Z~",
        "2026-12-06T10:00:00.000000Z~y",
        f"x~{NOTICE_ID}",
        f"2026-12-06T10:00:00~{NOTICE_ID}",  # no offset: no instant
        f"0001-01-01T00:00:00+01:00~{NOTICE_ID}",  # an instant before year 1 in UTC
        f"9999-12-31T23:59:59-01:00~{NOTICE_ID}",  # an instant after year 9999 in UTC
    ],
)
async def test_a_cursor_that_is_no_next_before_is_422(omni: Omni, before: str) -> None:
    _, key = await omni.tenant()
    response = await omni.client.get("/v1/notifications", params={"before": before}, headers=omni.auth(key))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/invalid-cursor")


async def test_a_well_formed_cursor_pages_and_an_unknown_tenant_is_404(omni: Omni) -> None:
    tenant_id, key = await omni.tenant()
    await omni.settle()
    for before in (f"2026-12-06T10:00:00.000000Z~{NOTICE_ID}", f"2026-12-06T11:00:00+01:00~{NOTICE_ID.upper()}"):
        response = await omni.client.get("/v1/notifications", params={"before": before}, headers=omni.auth(key))
        assert response.status_code == 200 and response.json() == {"data": [], "next_before": None}, response.text
    unknown = str(uuid.uuid4())
    for path in ("/v1/notifications", "/v1/quotas"):
        response = await omni.client.get(path, params={"tenant": unknown}, headers=omni.auth(ADMIN))
        assert response.status_code == 404, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert (await omni.client.get(path, params={"tenant": tenant_id}, headers=omni.auth(ADMIN))).status_code == 200
        assert (await omni.client.get(path, params={"tenant": unknown}, headers=omni.auth(key))).status_code == 404
    platform = await omni.client.get("/v1/notifications", headers=omni.auth(ADMIN))  # the platform SLOs'
    assert platform.status_code == 200 and platform.json()["data"] == []


async def test_an_overdue_breach_is_listed_once_among_the_platforms_notifications(omni: Omni) -> None:
    """The one `omni.gdpr.breach_overdue` notice of a breach past its 72 hours is the platform's:
    the admin lists it (without `?tenant=`), as the topic carries it, dated when the deadline passed;
    no tenant sees it; settled again, it is neither listed nor published twice."""
    _, key = await omni.tenant()
    admin = omni.auth(ADMIN)
    detected = datetime.now(UTC) - timedelta(hours=80)
    late = await omni.client.post(
        "/v1/gdpr/breaches", json={"detected_at": detected.isoformat(), "scope": "a backup bucket"}, headers=admin
    )
    assert late.status_code == 201, late.text
    breach = late.json()
    for _ in range(2):
        await omni.settle()
    published = []
    topic = omni.platform.topics.notifications
    for partition, end in (await omni.platform.log.end_offsets(topic)).items():
        for record in await omni.platform.log.read(topic, partition, 0, end):
            body = orjson.loads(record.value)
            if body["type"] == "omni.gdpr.breach_overdue":
                published.append(body["data"])
    assert len(published) == 1, published
    expected = {
        "id": published[0]["id"],
        "type": "omni.gdpr.breach_overdue",
        "tenant_id": "_platform",
        "breach_id": breach["id"],
        "detected_at": breach["detected_at"],
        "deadline": breach["deadline"],
        "scope": "a backup bucket",
        "occurred_at": breach["deadline"],
    }
    assert published[0] == {k: v for k, v in expected.items() if k != "type"}
    listed = await omni.client.get("/v1/notifications", headers=admin)
    assert listed.status_code == 200, listed.text
    assert listed.json() == {"data": [expected], "next_before": None}
    page = (await omni.client.get("/v1/notifications", params={"limit": 1}, headers=admin)).json()
    assert page == {"data": [expected], "next_before": f"{breach['deadline']}~{expected['id']}"}
    after = await omni.client.get("/v1/notifications", params={"before": page["next_before"]}, headers=admin)
    assert after.json() == {"data": [], "next_before": None}
    assert (await omni.client.get("/v1/notifications", headers=omni.auth(key))).json()["data"] == []
