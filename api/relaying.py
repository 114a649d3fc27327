"""Control-plane commands from the API: run off the event loop, then in effect here and relayed at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from omni.bootstrap import Platform

T = TypeVar("T")


async def run_command(platform: Platform, action: Callable[..., T], *args: Any) -> T:
    """Run `action` in a worker thread. Then what the command stored (its events, or the audit entry
    of its refusal) takes effect: key changes reach this process's key cache before the answer, and
    the relay publishes now, not after an idle pause."""
    try:
        return await run_in_threadpool(action, *args)
    finally:
        await platform.after_command()
