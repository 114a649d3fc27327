"""`as_of=`: reads answered as the platform knew them at an instant (README, "Replay").

Only what the log had recorded by then counts: the control events (plans, quotas, invoices and their
statuses) through the catalog's point-in-time views, which `omni replay --until` builds, and usage
through the records of the meters' topics recorded by then. Both are read from the log, so such a
read takes time in proportion to the log. Call these from a worker thread (a sync route).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from anyio import from_thread

from api.problems import Problem
from omni.bootstrap import Platform
from stores.database import Database

DESCRIPTION = (
    "Answer as the platform knew it at this instant (RFC 3339 with an offset): only what the log had recorded "
    "by then counts. Read from the log, so it takes longer the longer the log"
)


def check(as_of: datetime | None) -> None:
    """422 for an instant without an offset, or one the platform cannot know yet."""
    if as_of is None:
        return
    if as_of.tzinfo is None:
        raise Problem(
            422, "Invalid as_of", "`as_of` needs a time zone offset (e.g. Z).", kind="invalid-as-of", location="query.as_of"
        )
    if as_of > datetime.now(UTC):
        raise Problem(
            422,
            "Invalid as_of",
            "`as_of` is in the future: the platform cannot know it yet.",
            kind="invalid-as-of",
            location="query.as_of",
        )


@contextmanager
def catalog_as_of(platform: Platform, as_of: datetime) -> Iterator[Database]:
    """The catalog's views (tenants, meters, plans, quotas, invoices) as the log held them at `as_of`."""
    shadow = from_thread.run(platform.replays.replayer.views_as_of, ["catalog"], as_of)
    try:
        yield shadow.db
    finally:
        shadow.drop()
