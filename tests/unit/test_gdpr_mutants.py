"""The GDPR view's fold (`projections.gdpr.changes`) event by event: every control event's change
compared whole with one written by hand, so each member is read from where the log puts it
(what `make mutation` found no fast test held: the fold ran only behind the e2e tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from projections.gdpr import (
    BreachNotified,
    BreachRecorded,
    DataClassDefined,
    RequestStep,
    RetentionSet,
    breach_deadline,
    changes,
)
from schemas.envelope import Envelope

T0 = datetime(2025, 3, 1, 9, 30, 15, 250_000, tzinfo=UTC)


def control(event_type: str, data: Any, *, event_id: str = "0193a0c2-0000-7000-8000-00000000000a") -> Envelope:
    return Envelope(
        id=event_id,
        type=event_type,
        tenant_id="_platform",
        source="omni",
        source_id=event_id,
        event_time=T0,
        recorded_time=T0 + timedelta(seconds=1),
        data=data,
    )


def test_a_data_class_definition_carries_its_type_version_definition_and_the_events_time() -> None:
    definition = {"personal": ["$.data.email"], "subject_property": "$.subject"}
    found = changes(control("omni.data_class.defined", {"event_type": "api.call", "version": 2, "definition": definition}))
    assert found == [DataClassDefined("api.call", 2, definition, "2025-03-01T09:30:15.250000Z")]
    assert type(found[0].version) is int


def test_a_data_class_version_given_as_text_is_read_as_a_number() -> None:
    found = changes(control("omni.data_class.defined", {"event_type": "t", "version": "3", "definition": {}}))
    assert found == [DataClassDefined("t", 3, {}, "2025-03-01T09:30:15.250000Z")]


def test_the_events_time_is_written_in_utc() -> None:
    event = control("omni.data_class.defined", {"event_type": "t", "version": 1, "definition": {}})
    east = msgspec.structs.replace(event, event_time=T0.astimezone(timezone(timedelta(hours=2))))
    assert changes(east) == [DataClassDefined("t", 1, {}, "2025-03-01T09:30:15.250000Z")]


def test_a_received_request_is_its_first_step_with_its_subject_and_kind() -> None:
    data = {
        "id": "req-1",
        "tenant_id": "tenant-a",
        "subject": "user-7",
        "kind": "erasure",
        "status": "received",
        "at": "2025-03-01T09:30:14.000001Z",
    }
    assert changes(control("omni.gdpr.request_received", data, event_id="ev-1")) == [
        RequestStep("req-1", "tenant-a", "ev-1", "received", "received", "2025-03-01T09:30:14.000001Z", "user-7", "erasure")
    ]


def test_a_request_the_retention_sweeper_made_names_its_reason_in_its_first_step() -> None:
    data = {
        "id": "req-2",
        "tenant_id": "tenant-a",
        "subject": "user-8",
        "kind": "erasure",
        "status": "received",
        "at": "2025-03-01T09:30:14.000001Z",
        "reason": "retention",
    }
    assert changes(control("omni.gdpr.request_received", data, event_id="ev-3")) == [
        RequestStep(
            "req-2", "tenant-a", "ev-3", "received", "received: retention", "2025-03-01T09:30:14.000001Z", "user-8", "erasure"
        )
    ]


@pytest.mark.parametrize(("days", "kept"), [(30, 30), ("400", 400), (None, None)])
def test_a_retention_period_carries_its_tenant_days_version_and_time(days: Any, kept: int | None) -> None:
    data = {"tenant_id": "tenant-a", "personal_data_days": days, "version": "2", "at": "2025-03-01T09:30:15.250000Z"}
    found = changes(control("omni.gdpr.retention_set", data))
    assert found == [RetentionSet("tenant-a", kept, 2, "2025-03-01T09:30:15.250000Z")]
    assert type(found[0].version) is int and (kept is None or type(found[0].days) is int)


def test_a_retention_period_without_days_is_none() -> None:
    data = {"tenant_id": "tenant-a", "version": 1, "at": "2025-03-01T09:30:15.250000Z"}
    assert changes(control("omni.gdpr.retention_set", data)) == [RetentionSet("tenant-a", None, 1, "2025-03-01T09:30:15.250000Z")]


def test_an_updated_request_is_a_step_without_subject_or_kind() -> None:
    data = {"id": "req-1", "tenant_id": "tenant-a", "status": "running", "step": "export", "at": "2025-03-01T09:31:00.000000Z"}
    found = changes(control("omni.gdpr.request_updated", data, event_id="ev-2"))
    assert found == [RequestStep("req-1", "tenant-a", "ev-2", "running", "export", "2025-03-01T09:31:00.000000Z")]
    assert (found[0].subject, found[0].kind) == (None, None)


def test_a_recorded_breach_carries_its_deadline_72_hours_after_detection() -> None:
    data = {
        "id": "breach-1",
        "detected_at": "2025-03-01T08:00:00.000000Z",
        "recorded_at": "2025-03-01T09:30:15.250000Z",
        "scope": "api keys of one tenant",
        "subjects": 12,
        "description": "a key leaked in a log",
    }
    assert changes(control("omni.gdpr.breach_recorded", data)) == [
        BreachRecorded(
            "breach-1",
            "2025-03-01T08:00:00.000000Z",
            "2025-03-01T09:30:15.250000Z",
            "2025-03-04T08:00:00.000000Z",
            "api keys of one tenant",
            12,
            "a key leaked in a log",
        )
    ]


def test_a_breach_without_a_count_of_subjects_or_a_description_records_none() -> None:
    data = {"id": "b", "detected_at": "2025-02-27T23:15:00.5Z", "recorded_at": "2025-02-28T00:00:00.000000Z", "scope": "s"}
    assert changes(control("omni.gdpr.breach_recorded", data)) == [
        BreachRecorded(
            "b", "2025-02-27T23:15:00.5Z", "2025-02-28T00:00:00.000000Z", "2025-03-02T23:15:00.500000Z", "s", None, None
        )
    ]


def test_a_breach_recorded_as_detected_in_year_9999_folds_with_the_latest_deadline() -> None:
    """Such an event may be on an old log (the command refuses it now); the fold used to overflow on
    it and stop the catalog projector for good."""
    data = {
        "id": "b",
        "detected_at": "9999-12-30T00:00:00.000000Z",
        "recorded_at": "2026-12-06T00:00:00.000000Z",
        "scope": "typo",
    }
    assert changes(control("omni.gdpr.breach_recorded", data)) == [
        BreachRecorded(
            "b", "9999-12-30T00:00:00.000000Z", "2026-12-06T00:00:00.000000Z", "9999-12-31T23:59:59.999999Z", "typo", None, None
        )
    ]


def test_the_breach_deadline_is_in_utc_whatever_the_detections_offset() -> None:
    assert breach_deadline("2025-03-01T08:00:00+02:00") == "2025-03-04T06:00:00.000000Z"


def test_a_notified_breach_carries_its_notification_time() -> None:
    data = {"id": "breach-1", "notified_at": "2025-03-02T10:00:00.000000Z"}
    assert changes(control("omni.gdpr.breach_notified", data)) == [BreachNotified("breach-1", "2025-03-02T10:00:00.000000Z")]


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        ("omni.gdpr.subject_erased", {"id": "r", "tenant_id": "t", "subject": "u", "key_id": None, "at": "x"}),
        ("omni.meter.defined", {"id": "m"}),
    ],
)
def test_other_control_events_change_no_gdpr_view(event_type: str, data: Any) -> None:
    assert changes(control(event_type, data)) == []


def test_an_event_without_data_changes_no_gdpr_view() -> None:
    assert changes(control("omni.slo.defined", None)) == []
