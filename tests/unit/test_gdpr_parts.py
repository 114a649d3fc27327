"""GDPR's pure parts: the legal deadline at month ends, data class validation, sealing and
pseudonyms, and the meters counting and grouping sealed values by their pseudonyms."""

from __future__ import annotations

import hashlib
import hmac
import os
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.exceptions import InvalidTag
from pydantic import ValidationError

from commands.gdpr import GdprRequest, retention_request_id
from omni.gdpr_jobs import WITHHELD, row_about_person
from omni.personal_data import SEALED_DOCUMENT, DataKey, MasterKey, associated_data, document_associated_data
from projections.gdpr import breach_deadline
from projections.meters import MeterIndex, apply, unique_token
from schemas.envelope import Envelope
from schemas.gdpr import (
    RETENTION,
    RETENTION_SLACK,
    DataClassBody,
    RetentionBody,
    breach_detection_problem,
    due_for_shredding,
    legal_deadline,
    pseudonym_of,
    retention_cutoff,
)
from schemas.meters import MeterDefinition
from stores.data_keys import BLAKE2B, HMAC_SHA256
from stores.database import StoreUnavailable
from stores.gdpr import BreachRow


@pytest.mark.parametrize(
    ("received", "deadline"),
    [
        ("2025-01-31T10:00:00", "2025-02-28T10:00:00"),
        ("2024-01-31T10:00:00", "2024-02-29T10:00:00"),  # a leap year
        ("2024-01-30T23:59:59", "2024-02-29T23:59:59"),
        ("2025-03-31T00:00:00", "2025-04-30T00:00:00"),
        ("2025-08-31T12:30:00", "2025-09-30T12:30:00"),
        ("2025-12-31T08:00:00", "2026-01-31T08:00:00"),  # over the year's end
        ("2025-12-15T08:00:00", "2026-01-15T08:00:00"),
        ("2025-02-28T08:00:00", "2025-03-28T08:00:00"),
        ("2025-05-15T08:00:00", "2025-06-15T08:00:00"),
    ],
)
def test_the_deadline_is_one_month_later_or_that_months_last_day(received: str, deadline: str) -> None:
    at = datetime.fromisoformat(received).replace(tzinfo=UTC)
    assert legal_deadline(at) == datetime.fromisoformat(deadline).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    "body",
    [
        {"personal": ["data.email"]},  # not a path
        {"personal": ["$.data..email"]},
        {"personal": ["$.data"]},  # the whole payload: name its values
        {"personal": ["$.source"]},  # not under data
        {"personal": ["$.subject"]},
        {"personal": []},
        {"personal": ["$.data.a", "$.data.a"]},
        {"personal": ["$.data.user"], "subject_property": "$.data.user"},
        {"personal": ["$.data.a"], "subject_property": "$.type"},
        {"personal": ["$.data.a"], "extra": 1},
    ],
)
def test_data_classes_that_do_not_parse_are_refused(body: dict) -> None:
    with pytest.raises(ValidationError):
        DataClassBody.model_validate(body)


def test_a_data_class_defaults_to_the_subject() -> None:
    body = DataClassBody.model_validate({"personal": ["$.data.email", "$.data.profile.name"]})
    assert body.subject_property == "$.subject"
    assert DataClassBody.model_validate({"personal": ["$.data.a"], "subject_property": "$.data.user_id"}).subject_property


def test_sealed_values_open_only_for_their_tenant_and_person() -> None:
    key = DataKey("k1", os.urandom(32))
    aad = associated_data("t1", "alice")
    values = {"$.data.email": "alice@example.com", "$.data.profile": {"n": [1, 2]}}
    sealed = key.seal(values, aad)
    first, second = sealed["$.data.email"], sealed["$.data.profile"]
    assert set(first) == {"omni_sealed", "kid", "ps", "ct"} and first["kid"] == "k1"
    assert set(second) == {"omni_sealed", "ps"}  # the event's one ciphertext rides on the first
    assert "alice" not in str(sealed)
    assert key.open(first["ct"], aad) == values
    for other in (associated_data("t2", "alice"), associated_data("t1", "bob")):
        with pytest.raises(InvalidTag):
            key.open(first["ct"], other)
    with pytest.raises(InvalidTag):
        DataKey("k1", os.urandom(32)).open(first["ct"], aad)  # another key, even with the same id


@pytest.mark.parametrize(("scheme", "prefix"), [(HMAC_SHA256, "ps1_"), (BLAKE2B, "ps2_")])
def test_pseudonyms_are_stable_per_person_and_unlinkable_across_persons(scheme: int, prefix: str) -> None:
    alice, bob = DataKey("a", os.urandom(32), scheme), DataKey("b", os.urandom(32), scheme)
    aad = associated_data("t1", "x")
    value = {"$.data.email": "same@example.com"}
    first, second = alice.seal(value, aad)["$.data.email"], alice.seal(value, aad)["$.data.email"]
    assert first["ct"] != second["ct"]  # a fresh nonce each time
    assert first["ps"] == second["ps"] and first["ps"].startswith(prefix) and len(first["ps"]) == 36
    assert bob.seal(value, aad)["$.data.email"]["ps"] != first["ps"]
    assert alice.seal({"$.data.email": "other@example.com"}, aad)["$.data.email"]["ps"] != first["ps"]


# What a key made before pseudonym schemes (HMAC-SHA256) gave, sealing with this secret and nonce:
# its pseudonyms must never change (meters group and count by them), and its ciphertexts must open.
OLD_SECRET = bytes(range(32))
OLD_SEALED = {
    "$.data.email": {
        "omni_sealed": 1,
        "ps": "ps1_c112e02987256e79204d729c29152541",
        "kid": "k-old",
        "ct": "AAAAAAAAAAAAAAAAB3j3eP1k8cdGZiazna3ZKiI0eLYI+GWwwOjE/ALu9CaTS3iDnS7KNRzpZYrIcBaJX6S6KGhAppZqi77KlDcM/DQL+5J+3OveIA==",
    },
    "$.data.prompt": {"omni_sealed": 1, "ps": "ps1_47239f2ec8d286624eea1159a1f99fd1"},
}


def test_a_key_made_before_pseudonym_schemes_seals_and_opens_as_it_did() -> None:
    old = DataKey("k-old", OLD_SECRET, HMAC_SHA256)
    values = {"$.data.email": "alice@example.com", "$.data.prompt": "hi"}
    aad = associated_data("t1", "alice")
    assert old.seal(values, aad, bytes(12)) == OLD_SEALED  # byte for byte, pseudonyms and ciphertext
    assert old.open(OLD_SEALED["$.data.email"]["ct"], aad) == values
    # The same secret under the current scheme: the same ciphertext, other pseudonyms (ps2_, BLAKE2b).
    new = DataKey("k-old", OLD_SECRET, BLAKE2B).seal(values, aad, bytes(12))
    assert new["$.data.email"]["ct"] == OLD_SEALED["$.data.email"]["ct"]
    assert new["$.data.email"]["ps"] == "ps2_" + _blake2b(OLD_SECRET, b'"alice@example.com"')
    assert DataKey("k-old", OLD_SECRET, BLAKE2B).open(OLD_SEALED["$.data.email"]["ct"], aad) == values


def _blake2b(secret: bytes, text: bytes) -> str:
    """The BLAKE2b scheme written out: a 128-bit BLAKE2b of the value's JSON text, keyed by
    HMAC-SHA256(data key, "omni pseudonym v2")."""
    return hashlib.blake2b(text, key=hmac.digest(secret, b"omni pseudonym v2", "sha256"), digest_size=16).hexdigest()


def test_a_key_of_a_scheme_this_version_does_not_know_is_refused() -> None:
    with pytest.raises(StoreUnavailable, match="scheme 3"):
        DataKey("k", OLD_SECRET, 3)


def test_the_master_key_wraps_data_keys() -> None:
    master = MasterKey(os.urandom(32))
    secret = os.urandom(32)
    wrapped = master.wrap(secret)
    assert wrapped != secret and master.unwrap(wrapped) == secret
    assert MasterKey.from_text("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").id != master.id
    for bad in ("", "not base64!", "c2hvcnQ="):
        with pytest.raises(ValueError):
            MasterKey.from_text(bad)


def _event(n: int, email: object, tenant: str = "t1") -> Envelope:
    at = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    return Envelope(
        id=f"e{n}", type="chat", tenant_id=tenant, source="s", source_id=str(n), event_time=at, recorded_time=at,
        data={"email": email}, subject="s1",
    )  # fmt: skip


def test_meters_count_and_group_sealed_values_by_their_pseudonym() -> None:
    alice, bob = DataKey("a", os.urandom(32)), DataKey("b", os.urandom(32))
    aad = associated_data("t1", "s1")
    meters = MeterIndex(
        [
            MeterDefinition(slug="by-email", event_type="chat", aggregation="COUNT", group_by={"email": "$.data.email"}),
            MeterDefinition(slug="people", event_type="chat", aggregation="UNIQUE_COUNT", value_property="$.data.email"),
        ]
    )
    view: dict = {}
    sealed = [k.seal({"$.data.email": v}, aad)["$.data.email"] for k, v in ((alice, "a@x"), (alice, "a@x"), (bob, "b@x"))]
    for n, value in enumerate(sealed):
        apply(view, meters, _event(n, value), n)
    groups = {key.group_key: state.count for key, state in view.items() if key.meter == "by-email"}
    assert sorted(groups.values()) == [1, 2] and all("ps1_" in group for group in groups)
    people = next(state for key, state in view.items() if key.meter == "people")
    assert len(people.uniques) == 2
    assert unique_token(sealed[0]) == pseudonym_of(sealed[0]) and unique_token({"not": "sealed"}) is None


def test_a_breach_is_due_72_hours_after_detection_and_overdue_past_it() -> None:
    assert breach_deadline("2026-02-27T10:00:00.000000Z") == "2026-03-02T10:00:00.000000Z"  # over a month's end
    row = BreachRow("b", "2026-02-27T10:00:00.000000Z", "x", "2026-03-02T10:00:00.000000Z", "s", None, None, None, None)
    assert row.status("2026-03-02T09:59:59.999999Z") == "open"
    assert row.status("2026-03-02T10:00:00.000000Z") == "overdue"
    assert (
        BreachRow(*[*vars_of(row)[:7], "2026-03-03T00:00:00.000000Z", None]).status("2026-04-01T00:00:00.000000Z") == "notified"
    )


def test_a_breach_detected_near_the_end_of_time_is_due_at_its_end_and_never_overdue() -> None:
    """A log may hold such a breach (recorded before the command refused it): the fold must not overflow."""
    end = "9999-12-31T23:59:59.999999Z"
    assert breach_deadline("9999-12-30T00:00:00.000000Z") == end
    assert breach_deadline("9999-12-31T23:30:00-01:00") == end  # past the end in UTC
    assert breach_deadline("9999-12-28T23:59:59.999999Z") == end  # exactly at it
    assert breach_deadline("9999-12-28T23:59:59.999998Z") == "9999-12-31T23:59:59.999998Z"
    assert BreachRow("b", "9999-12-30T00:00:00.000000Z", "x", end, "s", None, None, None, None).status(end[:-2] + "8Z") == "open"


def test_a_breach_is_refused_when_detected_ahead_of_the_clock_by_more_than_the_events_tolerance() -> None:
    now, skew = datetime(2026, 12, 6, 12, 0, tzinfo=UTC), timedelta(minutes=5)
    assert breach_detection_problem(now + skew, now, skew) is None
    assert breach_detection_problem(now - timedelta(days=3000), now, skew) is None
    ahead = breach_detection_problem(now + skew + timedelta(microseconds=1), now, skew)
    assert ahead is not None and "in the future" in ahead
    assert breach_detection_problem(datetime(9999, 12, 30, tzinfo=UTC), now, skew) is not None
    assert breach_detection_problem(datetime(9999, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-1))), now, skew)
    # Before the GDPR applied (a client's default of year 1 or 1970 among them): no Art. 33 deadline.
    for early in (datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))), datetime(1970, 1, 1, tzinfo=UTC)):
        before = breach_detection_problem(early, now, skew)
        assert before is not None and "before 2018-05-25" in before
    assert breach_detection_problem(datetime(2018, 5, 25, 0, 59, tzinfo=timezone(timedelta(hours=1))), now, skew) is not None
    assert breach_detection_problem(datetime(2018, 5, 25, 1, 0, tzinfo=timezone(timedelta(hours=1))), now, skew) is None


def vars_of(row: BreachRow) -> list:
    return [getattr(row, name) for name in BreachRow.__dataclass_fields__]


def test_retention_shreds_persons_whose_last_event_is_older_than_the_period_and_its_slack() -> None:
    now = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)
    cutoff = now - timedelta(days=30) - RETENTION_SLACK
    assert retention_cutoff(now, 30) == cutoff
    seen = {
        "long-gone": cutoff - timedelta(days=400),
        "just-before": cutoff - timedelta(microseconds=1),
        "at-the-cutoff": cutoff,  # not strictly before: kept until the next sweep
        "within-the-slack": now - timedelta(days=30),  # the period passed, but a cached key may be newer
        "recent": now - timedelta(hours=1),
        "in-the-future": now + timedelta(minutes=1),
    }
    assert due_for_shredding(seen, 30, now) == ["long-gone", "just-before"]  # oldest first
    assert due_for_shredding(seen, None, now) == []  # no retention: nobody
    assert due_for_shredding(seen, 1, now + timedelta(days=400)) == sorted(seen, key=seen.__getitem__)
    same_time = {"b": cutoff - timedelta(days=1), "a": cutoff - timedelta(days=1)}
    assert due_for_shredding(same_time, 30, now) == ["a", "b"]  # a stable order, whatever the mapping's


@pytest.mark.parametrize("body", [{"personal_data_days": 0}, {"personal_data_days": 36_501}, {}, {"days": 3}])
def test_retention_periods_out_of_range_are_refused(body: dict) -> None:
    with pytest.raises(ValidationError):
        RetentionBody.model_validate(body)
    assert RetentionBody.model_validate({"personal_data_days": None}).personal_data_days is None


def test_a_retention_erasure_has_the_id_of_the_key_it_shreds() -> None:
    first = GdprRequest(tenant_id="t", subject="p", kind="erasure", reason=RETENTION, key_id="k1")
    again = GdprRequest(tenant_id="t", subject="p", kind="erasure", reason=RETENTION, key_id="k1")
    assert first.id == again.id == retention_request_id("t", "p", "k1")
    assert GdprRequest(tenant_id="t", subject="p", kind="erasure", reason=RETENTION, key_id="k2").id != first.id
    assert GdprRequest(tenant_id="u", subject="p", kind="erasure", reason=RETENTION, key_id="k1").id != first.id
    asked = [GdprRequest(tenant_id="t", subject="p", kind="erasure") for _ in range(2)]
    assert asked[0].id != asked[1].id  # a data subject's requests are each new


def test_a_key_is_kept_in_memory_for_less_than_the_retention_slack() -> None:
    """The last event time stored is at most a cached key's age behind the true one (README, "GDPR")."""
    from omni.personal_data import DataKeyCache

    assert DataKeyCache().max_age < RETENTION_SLACK.total_seconds()


def test_an_export_sealed_under_a_persons_key_opens_with_that_key_only_and_for_its_request() -> None:
    key, other = DataKey("k1", os.urandom(32)), DataKey("k2", os.urandom(32))
    aad = document_associated_data("t1", "alice", "req-1")
    sealed = key.seal_document(b'{"email": "alice@example.com"}', aad)
    assert sealed.startswith(SEALED_DOCUMENT + "k1:") and b"alice@example.com" not in sealed.encode()
    assert key.open_document(sealed, aad) == b'{"email": "alice@example.com"}'
    with pytest.raises(ValueError):
        other.open_document(sealed, aad)  # another key's
    with pytest.raises(InvalidTag):
        key.open_document(sealed, document_associated_data("t1", "alice", "req-2"))  # another request's
    with pytest.raises(InvalidTag):
        DataKey("k1", os.urandom(32)).open_document(sealed, aad)  # the key's id, another secret


def test_a_bucket_is_shown_to_a_person_by_what_in_it_is_theirs() -> None:
    own, other = "ps2_" + "a" * 32, "ps1_" + "b" * 32
    mine = {own: 42}  # a personal value need not be text
    bucket = {"meter": "m", "day_start": 0, "count": 3, "total": "3"}
    by_subject = bucket | {"subject": "amy", "group": {"e": other, "plan": "pro"}, "uniques": ['"x"', other, own]}
    assert row_about_person(by_subject, "amy", mine) == bucket | {
        "subject": "amy",
        "about": "subject",
        "group": {"e": WITHHELD, "plan": "pro"},
        "uniques": ['"x"', 42],
    }
    by_group = bucket | {"subject": "org", "group": {"e": own}}
    assert row_about_person(by_group, "amy", mine) == by_group | {"about": "group", "group": {"e": 42}}
    by_distinct_value = bucket | {"subject": "org", "group": {"e": other}, "uniques": [other, own]}
    assert row_about_person(by_distinct_value, "amy", mine) == {
        "meter": "m",
        "day_start": 0,
        "about": "distinct value",
        "group": {"e": WITHHELD},
        "uniques": [42],
    }
    assert row_about_person(bucket | {"subject": "org", "group": {"e": other}, "uniques": [other]}, "amy", mine) is None
    # Erased: no event opens, so the person's pseudonyms are no one's to show.
    assert row_about_person(by_subject, "amy", {})["group"] == {"e": WITHHELD, "plan": "pro"}  # type: ignore[index]
    assert row_about_person(by_group, "amy", {}) is None
