"""Replays as jobs (README, "Replay"): what the admin asks for and what it is told."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ReplayMode(StrEnum):
    DIFF = "diff"
    SWAP = "swap"


class ProjectionName(StrEnum):
    """The projections a replay rebuilds (stores.shadow.PROJECTIONS)."""

    METERS = "meters"
    QUOTAS = "quotas"
    INVOICES = "invoices"
    SLOS = "slos"
    AUDIT = "audit"
    GDPR = "gdpr"
    CATALOG = "catalog"


class ReplayState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class ReplayCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    projections: list[ProjectionName] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        description="The projections to rebuild (absent: every one; an empty list is refused, not taken for all)",
        examples=[["meters"]],
    )
    mode: ReplayMode = ReplayMode.DIFF


class ReplayProgress(BaseModel):
    done: int = Field(description="records folded into the shadow store")
    total: int = Field(description="records the replay has to fold (the log's length when it began)")


class ReplayJob(BaseModel):
    id: str
    projections: list[ProjectionName]
    mode: ReplayMode
    state: ReplayState
    progress: ReplayProgress
    events_per_second: float
    differences: int | None = Field(description="rows that differ from the live views (diff, once done)")
    swapped: bool
    error: str | None
    created_at: str
    finished_at: str | None
