"""The event store's aggregate ids: derived from names, so a name has one aggregate."""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

OMNI_NAMESPACE = uuid5(NAMESPACE_URL, "https://omni.dev/ids")


def key_aggregate_id(key_id: str) -> UUID:
    return uuid5(OMNI_NAMESPACE, f"api-key:{key_id}")


def key_ring_aggregate_id(tenant_id: str) -> UUID:
    return uuid5(OMNI_NAMESPACE, f"key-ring:{tenant_id}")


def meter_aggregate_id(slug: str) -> UUID:
    return uuid5(OMNI_NAMESPACE, f"meter:{slug}")


def plan_aggregate_id(slug: str) -> UUID:
    return uuid5(OMNI_NAMESPACE, f"plan:{slug}")


def override_aggregate_id(tenant_id: str, meter: str) -> UUID:
    return uuid5(OMNI_NAMESPACE, f"quota-override:{tenant_id}:{meter}")


def billing_account_aggregate_id(tenant_id: str) -> UUID:
    return uuid5(OMNI_NAMESPACE, f"billing-account:{tenant_id}")


def billing_period_aggregate_id(period: str) -> UUID:
    return uuid5(OMNI_NAMESPACE, f"billing-period:{period}")
