"""Edges of admission the broader tests pass by: which actors lose their IP and user agent, the
exact reasons a refused batch names (they are what the 422 answer says), a batch that mixes
refusals of every kind, sizes exactly at the limit, and wide `data` that hides a deep value."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from commands.errors import Invalid
from commands.ingest import AdmissionPolicy, TooLarge, _reason, admit, admit_encoded
from schemas.envelope import Actor
from tests.unit.test_admission import good, nested

RECEIVED = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


KEY_ONLY = Actor("k1")
DEFAULT = AdmissionPolicy()


def run(items, *, actor=KEY_ONLY, policy=DEFAULT):  # type: ignore[no-untyped-def]
    ids = (f"id-{n}" for n in itertools.count())
    return admit(items, tenant_id="t", actor=actor, received=RECEIVED, policy=policy, new_id=lambda: next(ids))


def errors_of(items, **kwargs) -> list[dict]:  # type: ignore[no-untyped-def]
    with pytest.raises(Invalid) as caught:
        run(items, **kwargs)
    return caught.value.errors


@pytest.mark.parametrize(
    "actor", [Actor("k1", ip="10.0.0.1"), Actor("k1", user_agent="curl/8"), Actor("k1", ip="10.0.0.1", user_agent="curl/8")]
)
def test_the_log_keeps_only_the_key_of_any_actor_with_personal_data(actor: Actor) -> None:
    (envelope,) = run([good()], actor=actor)
    assert envelope.actor == Actor("k1")


def test_an_actor_with_only_a_key_is_kept_as_it_is() -> None:
    (envelope,) = run([good()], actor=KEY_ONLY)
    assert envelope.actor is KEY_ONLY


def test_each_refusal_of_a_mixed_batch_is_named_with_its_exact_reason() -> None:
    items = [
        TooLarge(size=2_000_001, limit=1_000_000),
        "not an object",
        good(id="nul", data={"text": "a\x00b"}),
        good(id="ok"),
        {"specversion": "1.0", "source": "s", "type": "t", "subject": "u"},
    ]
    errors = errors_of(items)
    assert errors == [
        {
            "index": 0,
            "reason": "the event's JSON is 2000001 bytes; an event may be at most 1000000 bytes (OMNI_MAX_EVENT_BYTES)",
        },
        {"index": 1, "reason": "an event must be a JSON object"},
        {"index": 2, "id": "nul", "reasons": ["text may not contain NUL characters (\\u0000): the views cannot store them"]},
        {"index": 4, "id": None, "reasons": ["id: Field required"]},
    ]


def test_a_reason_names_where_in_the_event_and_what() -> None:
    assert _reason({"loc": ("data", 0, "tokens"), "msg": "bad"}) == "data.0.tokens: bad"
    assert _reason({"loc": (), "msg": "bad"}) == "event: bad"
    assert _reason({}) == "event: invalid"


def test_a_reserved_extension_is_refused_along_with_the_events_other_extension_problems() -> None:
    [error] = errors_of([good(tenantid="x", Bad_Name="y")])
    assert len(error["reasons"]) == 2
    assert any("reserved" in reason for reason in error["reasons"])
    assert any("Bad_Name" in reason for reason in error["reasons"])


def test_an_event_too_deep_to_encode_is_refused_for_its_depth_alone_and_spoils_no_other() -> None:
    errors = errors_of([good(id="deep", data=nested(300)), good(id="ok")])
    assert errors == [{"index": 0, "id": "deep", "reasons": ["data nests deeper than 32 levels (OMNI_MAX_JSON_DEPTH)"]}]


def test_an_event_of_exactly_the_size_limit_is_admitted() -> None:
    event = good(data={"blob": "x" * 500})
    size = len(
        admit_encoded(
            [event], tenant_id="t", actor=Actor("k1"), received=RECEIVED, policy=AdmissionPolicy(), new_id=lambda: "id-0"
        ).values[0]
    )
    assert run([event], policy=AdmissionPolicy(max_event_bytes=size))
    [error] = errors_of([event], policy=AdmissionPolicy(max_event_bytes=size - 1))
    assert error["reasons"] == [
        f"the event is {size} bytes stored; an event may be at most {size - 1} bytes (OMNI_MAX_EVENT_BYTES)"
    ]


@pytest.mark.parametrize(
    "data",
    [
        {**{f"k{n}": 1 for n in range(16)}, "deep": nested(40)},  # 17 keys: too wide to look through
        [1] * 16 + [nested(40)],  # 17 items
    ],
)
def test_a_deep_value_inside_wide_data_is_still_refused(data) -> None:  # type: ignore[no-untyped-def]
    [error] = errors_of([good(data=data)])
    assert error["reasons"] == ["data nests deeper than 32 levels (OMNI_MAX_JSON_DEPTH)"]


def test_personal_values_are_sealed_before_encoding_and_only_in_a_batch_admitted_whole() -> None:
    """`protect` (omni.personal_data's sealing) gets every envelope once, before they are encoded:
    the log's form holds what it wrote. A batch refused is not sealed at all."""
    handed: list[list[str]] = []

    def protect(envelopes: list) -> None:  # type: ignore[type-arg]
        handed.append([e.source_id for e in envelopes])
        for envelope in envelopes:
            envelope.data["email"] = "sealed"

    ids = (f"id-{n}" for n in itertools.count())
    options = {"tenant_id": "t", "actor": KEY_ONLY, "received": RECEIVED, "policy": DEFAULT, "new_id": lambda: next(ids)}
    admitted = admit_encoded(
        [good(id="a", data={"email": "a@example.com"}), good(id="b", data={"email": "b@example.com"})], protect=protect, **options
    )
    assert handed == [["a", "b"]]
    assert [e.data for e in admitted.envelopes] == [{"email": "sealed"}, {"email": "sealed"}]
    assert all(b'"data":{"email":"sealed"}' in value for value in admitted.values)
    handed.clear()
    with pytest.raises(Invalid):
        admit_encoded([good(id="c", data={"email": "c@example.com"}), {"id": "bad"}], protect=protect, **options)
    assert handed == []
