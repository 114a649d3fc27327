"""Control-plane commands from the API: run off the event loop, in effect here at once, and readable
by their caller before the answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from omni.bootstrap import Platform

T = TypeVar("T")


async def run_command(platform: Platform, action: Callable[..., T], *args: Any) -> T:
    """Platform.run_command: the command in a worker thread, in effect at once, readable by its caller."""
    return await platform.run_command(action, *args)
