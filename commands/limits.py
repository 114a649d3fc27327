"""What one owner may hold in the control plane (README, "Security"). omni.bootstrap sets them from
the settings (OMNI_MAX_SLOS_PER_TENANT, OMNI_SLO_REVISIONS_PER_HOUR, OMNI_MAX_KEYS_PER_TENANT,
OMNI_MAX_WEBHOOK_ENDPOINTS);
these defaults are the settings' own."""

from __future__ import annotations

from dataclasses import dataclass

ATTEMPTS = 5  # a command whose owner's count moved under it (another command of that owner won) is redone


@dataclass(frozen=True, slots=True)
class Limits:
    slos_per_owner: int = 50  # an owner's SLOs: a tenant's, or the platform's (the admin's)
    slo_revisions_per_hour: int = 10  # new versions of one SLO in any hour
    keys_per_tenant: int = 100  # a tenant's API keys not revoked
    webhook_endpoints_per_owner: int = 10  # an owner's webhook endpoints not deleted (a tenant's, or the platform's)
