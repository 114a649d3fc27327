"""Control-plane commands from the API: run off the event loop, then relayed at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from omni.bootstrap import Platform

T = TypeVar("T")


async def run_command(platform: Platform, action: Callable[..., T], *args: Any) -> T:
    """Run `action` in a worker thread; then wake the outbox relay, so what the command stored
    (its events, or the audit entry of its refusal) is published now, not after an idle pause."""
    try:
        return await run_in_threadpool(action, *args)
    finally:
        platform.relay.wake()
