"""A tenant's suspension: the request body, and the notices that tell the tenant."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.text import Text

# The control events of a change (the catalog folds them); the notices that tell the tenant have types of their own.
SUSPENSION_SET, SUSPENSION_LIFTED = "omni.tenant.suspension_set", "omni.tenant.suspension_lifted"
TENANT_SUSPENDED = "omni.tenant.suspended"  # the tenant's notice: its consumes are refused from now on
TENANT_RESUMED = "omni.tenant.resumed"  # the tenant's notice: its consumes are decided again

TenantStatus = Literal["active", "suspended"]


class SuspendBody(BaseModel):
    """Why the tenant is suspended (kept in its audit trail, shown to it in the notice)."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[Text, Field(min_length=1, max_length=500, pattern=r"\S")]  # not blank: it says why


class TenantStatusNotification(BaseModel):
    """The tenant was suspended (its consumes refused with 403 from then on) or resumed."""

    id: str
    type: Literal["omni.tenant.suspended", "omni.tenant.resumed"]
    tenant_id: str
    reason: str | None = Field(description="Why it was suspended; null for a resumption")
    occurred_at: str
