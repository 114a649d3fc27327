"""Control-plane commands from the API: run off the event loop, in effect here at once, and readable
by their caller before the answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from omni.bootstrap import Platform

T = TypeVar("T")


async def run_command(platform: Platform, action: Callable[..., T], *args: Any) -> T:
    """Run `action` in a worker thread. Then what the command stored (its events, or the audit entry
    of its refusal) takes effect: key changes reach this process's key cache before the answer, and
    the relay publishes now, not after an idle pause. Last, the answer waits (a bounded time) until
    the views hold what the command changed, so the caller's next read sees it."""
    control = platform.control

    def act() -> tuple[T, int | None]:
        control.take_saved_position()  # nothing left over from an earlier command on this thread
        return action(*args), control.take_saved_position()

    try:
        result, position = await run_in_threadpool(act)
    finally:
        await platform.after_command()
    if position is not None:
        await platform.views_reach(position)
    return result
