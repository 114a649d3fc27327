"""Replays as jobs (admin): rebuild projections from the log, then diff or swap (README, "Replay")."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import AdminDep, PlatformDep, command_context
from api.problems import Problem
from api.relaying import run_command
from api.roles import RoleFirstRoute
from commands.errors import NotFound
from schemas.replays import ReplayCreate, ReplayJob, ReplayProgress
from stores import replays as store
from stores.shadow import UnknownProjection
from streams.replay import Mode

router = APIRouter(prefix="/v1/admin/replays", tags=["replays"], route_class=RoleFirstRoute)
ACTION = "replay.start"


def _public(row: store.JobRow) -> ReplayJob:
    return ReplayJob(
        id=row.id,
        projections=row.projections,  # type: ignore[arg-type]
        mode=row.mode,  # type: ignore[arg-type]
        state=row.state,  # type: ignore[arg-type]
        progress=ReplayProgress(done=row.done, total=row.total),
        events_per_second=row.per_second,
        differences=row.differences,
        swapped=row.swapped,
        error=row.error,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


@router.post("", status_code=202, response_model=ReplayJob, responses={409: {}, 422: {}})
async def start_replay(
    request: Request, response: Response, platform: PlatformDep, admin: AdminDep, body: ReplayCreate | None = None
) -> ReplayJob:
    """Start a replay of projections into a shadow store, then a diff with the live views or a swap;
    409 while another replay of one of them runs. Audited, accepted or refused (`replay.start`).
    Without a body: a diff of every projection."""
    body = body or ReplayCreate()
    mode = Mode(body.mode.value)
    ctx = command_context(request, admin)
    try:
        job_id = await run_in_threadpool(platform.replays.start, [p.value for p in body.projections or ()], mode)
    except UnknownProjection as unknown:  # audited as refused by the problem's handler (api.audit)
        raise Problem(
            422, "Unknown projection", str(unknown), kind="unknown-projection", location="body.projections"
        ) from unknown
    except store.Busy as busy:
        raise Problem(409, "Replay running", f"{busy}; one replay at a time per projection.", kind="replay-running") from busy
    await run_command(platform, platform.control.record_action, ctx, ACTION, f"replays/{job_id}")
    row = await run_in_threadpool(platform.replays.get, job_id)
    assert row is not None
    platform.replays.run(job_id, row.projections, mode)
    response.headers["Location"] = f"/v1/admin/replays/{job_id}"
    return _public(row)


@router.get("/{replay_id}", response_model=ReplayJob, responses={404: {}})
def get_replay(replay_id: str, platform: PlatformDep, admin: AdminDep) -> ReplayJob:
    """A replay's state (queued, running, done, failed), progress, events/s and differences."""
    row = platform.replays.get(replay_id) if len(replay_id) <= 64 else None
    if row is None:
        raise NotFound(f"replay {replay_id!r} not found")
    return _public(row)
