"""Meter definitions: schemas.meters.MeterDefinition validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.meters import Aggregation, MeterDefinition, path_parts

VALUED = [a for a in Aggregation if a is not Aggregation.COUNT]


def make(**overrides) -> MeterDefinition:
    fields = {"slug": "tokens", "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"}
    fields.update(overrides)
    return MeterDefinition.model_validate(fields)


def fails(match: str | None = None, **overrides) -> ValidationError:
    with pytest.raises(ValidationError, match=match) as caught:
        make(**overrides)
    return caught.value


def test_a_valid_definition():
    definition = make(group_by={"model": "$.data.model", "region": "$.region"}, description="tokens used")
    assert definition.aggregation is Aggregation.SUM
    assert definition.group_by == {"model": "$.data.model", "region": "$.region"}
    assert MeterDefinition.model_validate(definition.model_dump(mode="json")) == definition


def test_count_takes_no_value_property():
    assert make(aggregation="COUNT", value_property=None).value_property is None
    fails("COUNT meters take no value_property", aggregation="COUNT")


@pytest.mark.parametrize("aggregation", VALUED)
def test_every_other_aggregation_needs_a_value_property(aggregation):
    assert make(aggregation=aggregation).aggregation is aggregation
    fails("need a value_property", aggregation=aggregation.value, value_property=None)


@pytest.mark.parametrize("aggregation", ["sum", "TOTAL", "", None, 1])
def test_unknown_aggregation(aggregation):
    fails(aggregation=aggregation)


@pytest.mark.parametrize("path", ["$.data.tokens", "$.a", "$._x.y_z", "$.data.my-field", "$.Data.A9"])
def test_good_paths(path):
    assert make(value_property=path).value_property == path
    assert make(group_by={"g": path}).group_by == {"g": path}


@pytest.mark.parametrize(
    "path",
    [
        "data.tokens",
        "$",
        "$.",
        "$..data",
        "$.data..x",
        "$.data.",
        "$.data[0]",
        "$.1abc",
        "$.-x",
        "$.da ta",
        " $.data",
        "$.data.tokens ",
        "@.data",
        "$['data']",
        "",
    ],
)
def test_bad_paths(path):
    fails("dotted JSON path", value_property=path)
    fails("dotted JSON path", group_by={"g": path})


def test_path_parts():
    assert path_parts("$.data.usage.tokens") == ("data", "usage", "tokens")
    assert path_parts("$.subject") == ("subject",)


@pytest.mark.parametrize("key", ["subject"])
def test_reserved_group_keys(key):
    fails("reserved", group_by={key: "$.data.x"})


@pytest.mark.parametrize("key", ["1abc", "a-b", "a b", "", "a" * 64, "ü", "a.b"])
def test_group_keys_must_be_identifiers(key):
    fails("must be an identifier", group_by={key: "$.data.x"})


@pytest.mark.parametrize("key", ["a", "_", "Model", "a" * 63, "model_2"])
def test_good_group_keys(key):
    assert key in make(group_by={key: "$.data.x"}).group_by


def test_at_most_sixteen_group_by_dimensions():
    sixteen = {f"g{n}": f"$.data.g{n}" for n in range(16)}
    assert len(make(group_by=sixteen).group_by) == 16
    fails("at most 16", group_by={**sixteen, "g16": "$.data.g16"})


@pytest.mark.parametrize("slug", ["a", "0", "tokens", "a-b_c", "9lives", "a" * 63])
def test_good_slugs(slug):
    assert make(slug=slug).slug == slug


@pytest.mark.parametrize("slug", ["", "-a", "_a", "A", "Tokens", "a b", "a.b", "a/b", "a" * 64, "tokens\n", "ü"])
def test_bad_slugs(slug):
    fails(slug=slug)


@pytest.mark.parametrize("event_type", ["", "x" * 257])
def test_event_type_length(event_type):
    fails(event_type=event_type)


def test_extra_fields_are_forbidden():
    fails(tenant_id="t1")


def test_description_length():
    assert make(description="d" * 1024).description == "d" * 1024
    fails(description="d" * 1025)


def test_definitions_are_frozen():
    definition = make()
    with pytest.raises(ValidationError):
        definition.slug = "other"  # type: ignore[misc]


def test_path_with_a_trailing_newline_is_rejected():
    fails("dotted JSON path", value_property="$.data.tokens\n")


def test_group_key_with_a_trailing_newline_is_rejected():
    fails("must be an identifier", group_by={"model\n": "$.data.model"})
