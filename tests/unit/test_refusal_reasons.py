"""A refused command's audit entry keeps our words, never the caller's (commands.refusals)."""

from __future__ import annotations

import pytest

from commands.refusals import kept_place, kept_resource, refusal_reason


@pytest.mark.parametrize(
    ("location", "kept"),
    [
        ("body.entitlements.0.period", "body.entitlements.0.period"),
        ("header.idempotency-key", "header.idempotency-key"),
        ("query.Ann Lee", "query.*"),
        ("query.ann.lee@x.org", "query.ann.*"),  # dotted: from the first foreign step on, one `*`
        ("body.data.Ann.Lee.extra", "body.data.*"),
        (["body", "ann.lee@x.org", "0"], "body.*.0"),  # steps: each judged whole
        (["body", "data", "Ann", "tokens"], "body.data.*.tokens"),
    ],
)
def test_a_place_keeps_the_steps_shaped_as_our_names(location: str | list[str], kept: str) -> None:
    assert kept_place(location) == kept


@pytest.mark.parametrize(
    ("resource", "kept"),
    [
        ("tenants/0a54e512-56d2-4d0f-8b91-8df3da5f4b50/plan", "tenants/0a54e512-56d2-4d0f-8b91-8df3da5f4b50/plan"),
        ("keys/9f2c4a1b7e3d5a60", "keys/9f2c4a1b7e3d5a60"),
        ("billing/periods/2026-01", "billing/periods/2026-01"),
        ("data-classes/com.acme.chat", "data-classes/com.acme.chat"),
        ("tenants/Ann Lee/plan", "tenants/*/plan"),
        ("tenants/ann@x.org/keys", "tenants/*/keys"),
        ("gdpr/breaches/a\x00b", "gdpr/breaches/*"),
        ("plans/" + "a" * 200, "plans/*"),
    ],
)
def test_a_resource_keeps_the_segments_shaped_as_our_ids(resource: str, kept: str) -> None:
    assert kept_resource(resource) == kept


def test_a_reason_is_status_title_kind_and_places_with_codes() -> None:
    places = [(["body", "limit"], "greater_than_equal"), ("body.Ann Lee", "extra_forbidden"), ("query.to", None)]
    assert refusal_reason(422, "Invalid request", kind="invalid-body", places=places) == (
        "422 Invalid request (invalid-body): body.limit greater_than_equal; body.* extra_forbidden; query.to"
    )
    assert refusal_reason(409, "Conflict", kind="conflict") == "409 Conflict"  # a kind that says no more than the title
    assert refusal_reason(404, "Not found") == "404 Not found"
    # A code or kind of another shape is no word of ours: left out.
    assert refusal_reason(422, "Invalid plan", kind="Ann Lee", places=[("body", "Ann Lee")]) == "422 Invalid plan: body"
