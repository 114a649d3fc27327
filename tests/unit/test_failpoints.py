"""Crash points: inert until armed, then firing exactly once, at the hit named."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from omni import failpoints


@pytest.fixture(autouse=True)
def disarmed() -> Iterator[None]:
    failpoints.disarm_all()
    yield
    failpoints.disarm_all()


def test_an_unarmed_point_does_nothing() -> None:
    for name in failpoints.POINTS:
        failpoints.hit(name)


def test_an_armed_point_raises_on_its_nth_hit_only() -> None:
    failpoints.arm(failpoints.METERS_BEFORE_COMMIT, "raise", on_hit=3)
    failpoints.hit(failpoints.METERS_BEFORE_COMMIT)
    failpoints.hit(failpoints.METERS_BEFORE_COMMIT)
    failpoints.hit(failpoints.RELAY_AFTER_PUBLISH)  # another point: not counted
    with pytest.raises(failpoints.FailpointHit, match="meters.before_commit"):
        failpoints.hit(failpoints.METERS_BEFORE_COMMIT)
    failpoints.hit(failpoints.METERS_BEFORE_COMMIT)  # fired once: never again
    assert failpoints.hits(failpoints.METERS_BEFORE_COMMIT) == 4


def test_the_environment_arms_points() -> None:
    failpoints.arm_from({failpoints.ENVIRONMENT: "relay.after_publish=kill@2, ingest.after_append"})
    assert failpoints._ARMED["relay.after_publish"].action == "kill"
    assert failpoints._ARMED["relay.after_publish"].on_hit == 2
    assert failpoints._ARMED["ingest.after_append"].action == "raise"
    failpoints.disarm_all()
    failpoints.arm_from({})
    assert failpoints._ARMED == {}


@pytest.mark.parametrize("spec", ["no.such.point=raise", "meters.before_commit=explode", "meters.before_commit=kill@0"])
def test_a_misspelt_point_is_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        failpoints.arm_from({failpoints.ENVIRONMENT: spec})
