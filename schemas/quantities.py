"""Quantities as limits, amounts and prices' tiers take them, and the slugs that name plans and meters."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,62}$"
# A limit or an amount: below 10^12 units, with at most three decimal places (milli-units: GPU-
# seconds to the millisecond, credit to a tenth of a cent). Kafka mode's hot counters keep milli-
# units in Redis, whose Lua numbers are doubles: exact below 2^53 milli-units, about 9 * 10^12 units.
MAX_QUANTITY = Decimal(10) ** 12
MAX_DECIMALS = 3
LEAST_AMOUNT = Decimal(1).scaleb(-MAX_DECIMALS)  # the least a consume may take: a milli-unit


def exact_quantity(value: Any, *, name: str, positive: bool) -> Decimal:
    """A limit or an amount: a JSON number (not a string), finite, at most MAX_DECIMALS places,
    below MAX_QUANTITY; zero or more for a limit, more than zero for an amount."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError(f"{name} must be a number")
    try:
        quantity = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except ArithmeticError as bad:
        raise ValueError(f"{name} must be a number") from bad
    if not quantity.is_finite():
        raise ValueError(f"{name} must be a finite number")
    if quantity < 0 or (positive and quantity == 0):
        raise ValueError(f"{name} must be {'more than zero' if positive else 'zero or more'}")
    if quantity >= MAX_QUANTITY:
        raise ValueError(f"{name} must be below 10^12")
    if quantity != quantity.quantize(Decimal(1).scaleb(-MAX_DECIMALS)):
        raise ValueError(f"{name} may have at most {MAX_DECIMALS} decimal places")
    return quantity.quantize(Decimal(1)) if quantity == quantity.to_integral_value() else quantity.normalize()


# The integers written as JSON numbers: 64-bit signed ones. orjson (the log's and the views'
# encoder) refuses anything past 64 bits outright, and most clients read no more.
JSON_INTEGERS = range(-(2**63), 2**63)


def quantity_json(quantity: Decimal) -> int | float | str:
    """A quantity as JSON: an integer when whole, else its exact decimal text as a number where
    a double holds it exactly enough to read back (clients compare with what they sent); as its
    exact decimal text otherwise (a meter's total may pass 64 bits: a usage value may reach 10^38)."""
    if quantity == quantity.to_integral_value():
        whole = int(quantity)
        return whole if whole in JSON_INTEGERS else str(whole)
    return float(quantity) if Decimal(repr(float(quantity))) == quantity else str(quantity)


QUANTITY_SCHEMA = {"type": "number", "minimum": 0, "exclusiveMaximum": 1e12, "multipleOf": 0.001}
"""A limit or an amount as the JSON schema declares it: a number, never text (exact_quantity refuses
strings). Given whole with WithJsonSchema, since a Decimal field's own schema also allows a string."""


# Deeper than orjson writes (254 levels), a value is left as it came: the depth check refuses it
# (commands.ingest.data_problems). Walking on, two frames a level, hit Python's recursion limit near
# 490 levels: a 500 where 422 is the answer.
_WALKED_LEVELS = 255


def floats_of_decimals(value: Any, _level: int = 0) -> Any:
    """A free-form JSON value read with its fractions as Decimals (api/exact_json.py), the fractions
    as floats, as `json.loads` reads them: for values kept as they came, which the log's encoder
    writes (it refuses Decimals)."""
    if isinstance(value, Decimal):
        number = float(value)
        if not math.isfinite(number):  # 1e400: it was taken and written to the log as null
            raise ValueError(f"{value} is past what a JSON number holds (a double: about 1.8e308)")
        return number
    if _level >= _WALKED_LEVELS:
        return value
    if isinstance(value, dict):
        return {key: floats_of_decimals(item, _level + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [floats_of_decimals(item, _level + 1) for item in value]
    return value


def whole_as_int(value: Any) -> Any:
    """A number with no fraction as the int it is, before a strict int's check, which then still
    refuses `30.5`, `true` and "30". JSON Schema's "integer" is any number with no fraction (`30.0`
    is one, and a client's encoder may write a double so), and a lax int would take `true` or "30"
    for a count. Placed after the int's own constraints in `Annotated` (`Field(ge=..., strict=True),
    BeforeValidator(whole_as_int)`), so they stay the schema's `minimum` and `maximum`. A number past
    64 bits is left as it came, for the strict check to refuse."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    # Bounded before int(): `1e999999999` is a Decimal whose int has a billion digits, minutes of CPU.
    if isinstance(value, Decimal) and value.is_finite() and value.adjusted() < 19 and value == value.to_integral_value():
        return int(value)
    return value
