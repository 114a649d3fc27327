"""The OpenAPI document's examples are requests the API takes: a client that sends one as
documented gets it accepted (the plan's example, whose last tier has no `up_to`, was refused)."""

from __future__ import annotations

from typing import Any

import pytest

from api.app import create_app
from schemas.billing import Billing
from schemas.plans import PlanBody


def _schemas() -> dict[str, Any]:
    return create_app().openapi()["components"]["schemas"]  # type: ignore[no-any-return]


def test_the_plan_example_is_a_plan_the_api_takes() -> None:
    (example,) = _schemas()["PlanBody"]["examples"]
    last_tier = example["prices"][0]["tiers"][-1]
    assert "up_to" not in last_tier  # as the document shows it: absent, as null would be
    assert PlanBody.model_validate(example).prices[0].model_dump()["tiers"][-1]["up_to"] is None


def test_the_bounds_the_document_declares_are_the_ones_checked() -> None:
    schemas = _schemas()
    up_to = schemas["Tier"]["properties"]["up_to"]["anyOf"][0]
    assert up_to["exclusiveMinimum"] == 0 and "minimum" not in up_to
    assert "up_to" not in schemas["Tier"].get("required", [])
    assert schemas["PackagePrice"]["properties"]["package_size"]["exclusiveMinimum"] == 0
    assert schemas["PerUnitPrice"]["properties"]["included"]["default"] == 0  # a number, as sent
    tiers = [{"up_to": 0, "unit_price": "1"}, {"unit_price": "1"}]
    with pytest.raises(ValueError, match="up_to must be more than zero"):  # zero refused, as exclusiveMinimum says
        Billing.model_validate({"currency": "USD", "prices": [{"meter": "m", "model": "graduated", "tiers": tiers}]})
