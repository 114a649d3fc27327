"""Counts in bodies (schemas.quantities.whole_as_int): integers as JSON Schema has them."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pydantic
import pytest

from schemas.gdpr import RetentionBody
from schemas.plans import Entitlement


def thresholds(*values: Any) -> list[int]:
    return Entitlement.model_validate({"meter": "m", "limit": 5, "period": "DAY", "thresholds": list(values)}).thresholds


def test_a_number_with_no_fraction_is_a_whole_number() -> None:
    assert thresholds(80, 50.0, Decimal("100.000"), Decimal("2E+1")) == [20, 50, 80, 100]
    assert RetentionBody.model_validate({"personal_data_days": 30.0}).personal_data_days == 30


@pytest.mark.parametrize("value", [80.5, Decimal("80.5"), True, "80", float("inf"), float("nan"), Decimal("NaN")])
def test_fractions_booleans_and_text_are_refused(value: Any) -> None:
    with pytest.raises(pydantic.ValidationError, match="valid integer"):
        thresholds(value)


@pytest.mark.parametrize("value", [Decimal("1e999999999"), Decimal("-1e999999999"), 1e300, Decimal("1e19")])
def test_a_number_past_64_bits_is_refused_at_once(value: Any) -> None:
    """Not made an int first: `1e999999999` as an int has a billion digits (minutes of CPU)."""
    started = time.process_time()
    with pytest.raises(pydantic.ValidationError, match="valid integer"):
        thresholds(value)
    assert time.process_time() - started < 0.5
