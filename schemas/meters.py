"""Meter definitions: what to count, how to aggregate it, how to group it."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from schemas.cloudevents import TYPE_MAX_LENGTH
from schemas.text import Text

# \Z, not $: in Python `$` also matches before a trailing newline.
_PATH = re.compile(r"\$(\.[A-Za-z_][A-Za-z0-9_\-]*)+\Z")
_GROUP_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
RESERVED_GROUP_KEYS = frozenset({"subject"})


class Aggregation(StrEnum):
    SUM = "SUM"
    COUNT = "COUNT"
    MAX = "MAX"
    MIN = "MIN"
    AVG = "AVG"
    UNIQUE_COUNT = "UNIQUE_COUNT"
    LATEST = "LATEST"


class WindowSize(StrEnum):
    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"
    MONTH = "MONTH"


def _check_path(path: str) -> str:
    if not _PATH.match(path):
        raise ValueError("must be a dotted JSON path such as $.data.tokens")
    return path


def _check_group_key(key: str) -> str:
    if not _GROUP_KEY.match(key):
        raise ValueError(f"group_by key {key!r} must be an identifier")
    if key in RESERVED_GROUP_KEYS:
        raise ValueError(f"group_by key {key!r} is reserved")
    return key


# A dimension's name, checked as a key of `group_by`: a refusal names the key (body.group_by.<key>).
GroupKey = Annotated[str, AfterValidator(_check_group_key)]

JsonPath = Annotated[str, AfterValidator(_check_path), Field(json_schema_extra={"pattern": r"^\$(\.[A-Za-z_][A-Za-z0-9_\-]*)+$"})]
_GROUP_KEYS_SCHEMA = {"pattern": r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", "not": {"enum": sorted(RESERVED_GROUP_KEYS)}}

# The rules `_consistent` checks, told in JSON Schema too, so clients and fuzzers know them: COUNT
# takes no value_property, every other aggregation needs one.
_VALUE_RULE = {
    "if": {"properties": {"aggregation": {"const": "COUNT"}}},
    "then": {"properties": {"value_property": {"type": "null"}}},
    "else": {"required": ["value_property"], "properties": {"value_property": {"type": "string"}}},
}


def path_parts(path: str) -> tuple[str, ...]:
    """`$.data.usage.tokens` -> ("data", "usage", "tokens")."""
    return tuple(path.split(".")[1:])


class MeterDefinition(BaseModel):
    """A meter, as defined by the platform admin. Applies to every tenant."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_VALUE_RULE)

    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$", description="Unique name, used in URLs")
    event_type: Text = Field(min_length=1, max_length=TYPE_MAX_LENGTH, description="CloudEvent `type` this meter counts")
    aggregation: Aggregation
    value_property: JsonPath | None = Field(
        default=None, validate_default=True, description="Where the value is, e.g. $.data.tokens"
    )
    group_by: dict[GroupKey, JsonPath] = Field(
        default_factory=dict,
        max_length=16,
        description='Dimensions, e.g. {"model": "$.data.model"}',
        json_schema_extra={"propertyNames": _GROUP_KEYS_SCHEMA},
    )
    description: Text | None = Field(default=None, max_length=1024)

    @field_validator("value_property", mode="after")
    @classmethod
    def _value_for_aggregation(cls, value_property: str | None, info: ValidationInfo) -> str | None:
        """COUNT takes no value_property, every other aggregation needs one: checked at the field, so a
        refusal names it (body.value_property), as the field's own rules do. validate_default runs it
        when the field is left out."""
        aggregation = info.data.get("aggregation")
        if aggregation is Aggregation.COUNT and value_property is not None:
            raise ValueError("COUNT meters take no value_property")
        if aggregation is not None and aggregation is not Aggregation.COUNT and value_property is None:
            # "missing": the field's place is named although the body lacks it (api.problems.request_location).
            raise PydanticCustomError("missing", "{aggregation} meters need a value_property", {"aggregation": str(aggregation)})
        return value_property


class MeterDescription(BaseModel):
    """`PATCH /v1/meters/{slug}`: what may change of a meter once defined (what it counts never does)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    description: Text | None = Field(max_length=1024, description="The meter's new description; null: none")
