"""A refused command's audit entry keeps our words, never the caller's (commands.refusals)."""

from __future__ import annotations

import pytest

from commands.refusals import kept_place, kept_resource, refusal_reason


@pytest.mark.parametrize(
    ("location", "caller_named", "kept"),
    [
        ("body.entitlements.0.period", False, "body.entitlements.0.period"),
        ("header.idempotency-key", False, "header.idempotency-key"),
        ("query.Ann Lee", False, "query.*"),
        ("query.ann.lee@x.org", False, "query.*"),  # after `query.`, one name: no parameter of ours has a dot
        ("query.john_smith", True, "query.*"),  # an unknown parameter: the caller's, whatever its shape
        ("body.data.Ann.Lee.extra", False, "body.data.*"),  # dotted elsewhere: from the first foreign step on
        (["body", "ann.lee@x.org", "0"], False, "body.*.0"),  # steps: each judged whole
        (["body", "data", "Ann", "tokens"], False, "body.data.*.tokens"),
        (["body", "johnsmith"], True, "body.*"),  # an unknown field
        (["body", "limit"], False, "body.limit"),
    ],
)
def test_a_place_keeps_the_steps_that_are_our_names(location: str | list[str], caller_named: bool, kept: str) -> None:
    assert kept_place(location, caller_named=caller_named) == kept


@pytest.mark.parametrize(
    ("resource", "kept"),
    [
        ("tenants/0a54e512-56d2-4d0f-8b91-8df3da5f4b50/plan", "tenants/0a54e512-56d2-4d0f-8b91-8df3da5f4b50/plan"),
        (
            "tenants/0a54e512-56d2-4d0f-8b91-8df3da5f4b50/quotas/tokens",
            "tenants/0a54e512-56d2-4d0f-8b91-8df3da5f4b50/quotas/tokens",
        ),
        ("keys/9f2c4a1b7e3d5a60", "keys/9f2c4a1b7e3d5a60"),
        ("billing/periods/2026-01", "billing/periods/2026-01"),
        ("data-classes/com.acme.Chat", "data-classes/com.acme.Chat"),
        ("plans/pro", "plans/pro"),
        ("meters", "meters"),
        ("gdpr/breaches", "gdpr/breaches"),
        # Not an id of its collection: a tenant's is a UUID, a key's 16 hex digits, a month YYYY-MM.
        ("tenants/ann-lee/plan", "tenants/*/plan"),
        ("tenants/4915112345678/keys", "tenants/*/keys"),
        ("tenants/ann@x.org/keys", "tenants/*/keys"),
        ("keys/johnsmith", "keys/*"),
        ("billing/periods/2026-13", "billing/periods/*"),
        ("gdpr/breaches/a\x00b", "gdpr/breaches/*"),
        ("plans/Ann Lee", "plans/*"),
        ("plans/" + "a" * 200, "plans/*"),
        ("data-classes/ann lee@x.org", "data-classes/*"),
        ("annlee/plans", "*/plans"),  # no path of ours
    ],
)
def test_a_resource_keeps_our_words_and_the_ids_shaped_as_their_collections(resource: str, kept: str) -> None:
    assert kept_resource(resource) == kept


def test_a_reason_is_status_title_kind_and_places_with_codes() -> None:
    places = [(["body", "limit"], "greater_than_equal"), (["body", "johnsmith"], "extra_forbidden"), ("query.to", None)]
    assert refusal_reason(422, "Invalid request", kind="invalid-body", places=places) == (
        "422 Invalid request (invalid-body): body.limit greater_than_equal; body.* extra_forbidden; query.to"
    )
    assert refusal_reason(409, "Conflict", kind="conflict") == "409 Conflict"  # a kind that says no more than the title
    assert refusal_reason(404, "Not found") == "404 Not found"
    # A code or kind of another shape is no word of ours: left out.
    assert refusal_reason(422, "Invalid plan", kind="Ann Lee", places=[("body", "Ann Lee")]) == "422 Invalid plan: body"
