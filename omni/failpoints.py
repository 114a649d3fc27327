"""Named crash points (failpoints), for tests that must know where a crash lands.

The code that keeps counts exact calls `hit(NAME)` at the places where a crash would matter most:
between writing the views and acknowledging the log, between reading the outbox and publishing,
between appending to the log and answering, between a consume's decision and its append. Nothing is armed in production: `hit` is one test
of an empty dict. A test arms a point in-process (`arm`), or in a process it starts through the
environment (`OMNI_FAILPOINTS`, read by the composition roots):

    OMNI_FAILPOINTS="meters.before_commit=kill@3,relay.after_publish=raise"

`raise` raises FailpointHit there; `kill` ends the process at once with SIGKILL, as a power cut
would (no finally blocks, no flushing); `@N` fires on the Nth hit only (default: the first), and
never after, so a restarted process is not killed again by a leftover setting of its parent.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass

# The points, where they are and what a crash there must not do.
METERS_BEFORE_COMMIT = "meters.before_commit"  # buckets and checkpoints written, not committed: nothing stays
METERS_AFTER_COMMIT = "meters.after_commit"  # committed, not yet acked to the log: redelivery changes nothing
CATALOG_BEFORE_COMMIT = "catalog.before_commit"
RELAY_BEFORE_PUBLISH = "relay.before_publish"  # read from the event store, not published: published after restart
RELAY_AFTER_PUBLISH = "relay.after_publish"  # published, position not saved: republished, folded once
INGEST_AFTER_APPEND = "ingest.after_append"  # durable on the log, not answered: the client's retry is a duplicate
DEDUPE_AFTER_APPEND = (
    "dedupe.after_append"  # Kafka mode: appended, Redis claim not marked done: a retry waits, then is a duplicate
)
STRIPE_BEFORE_RECORD = "stripe.before_record"  # Stripe answered, our record not saved: the retry sends the same keys
# A consume decided, its usage (or refusal) not yet on the log. Embedded: inside the one transaction,
# so nothing stays and the retry decides afresh. Kafka: the amount stays counted in Redis with its
# answer pending (the retry is told 409, in progress): the counter may refuse early, never overshoot.
QUOTA_BEFORE_APPEND = "quota.before_append"
# A consume on the log, not answered. Embedded: committed with its answer, which the retry gets.
# Kafka: the answer still pending (409 to a retry until it lapses); the meters count the key once.
QUOTA_AFTER_APPEND = "quota.after_append"
# Notices stored in the event store, their rows in the views not marked recorded: recorded again
# (the event store refuses each as a duplicate), published once.
NOTICES_AFTER_RECORD = "notices.after_record"
# Audit entries linked into their chains and the audit checkpoint written, not committed: nothing
# stays, and the batch is linked again after the restart, to the same hashes.
AUDIT_BEFORE_COMMIT = "audit.before_commit"
# A GDPR request's `running` recorded, its work not done: after the restart, the resumer runs it to its end.
GDPR_AFTER_RUNNING = "gdpr.after_running"

POINTS = (
    METERS_BEFORE_COMMIT,
    METERS_AFTER_COMMIT,
    CATALOG_BEFORE_COMMIT,
    RELAY_BEFORE_PUBLISH,
    RELAY_AFTER_PUBLISH,
    INGEST_AFTER_APPEND,
    DEDUPE_AFTER_APPEND,
    STRIPE_BEFORE_RECORD,
    QUOTA_BEFORE_APPEND,
    QUOTA_AFTER_APPEND,
    NOTICES_AFTER_RECORD,
    AUDIT_BEFORE_COMMIT,
    GDPR_AFTER_RUNNING,
)
ENVIRONMENT = "OMNI_FAILPOINTS"


class FailpointHit(Exception):
    """Raised by an armed `raise` failpoint."""


@dataclass
class _Armed:
    action: str  # "raise" or "kill"
    on_hit: int  # fire on this hit (1-based)
    hits: int = 0


_ARMED: dict[str, _Armed] = {}


def hit(name: str) -> None:
    """A crash point. Costs one dict test while nothing is armed."""
    if _ARMED:
        _fire(name)


def _fire(name: str) -> None:
    armed = _ARMED.get(name)
    if armed is None:
        return
    armed.hits += 1
    if armed.hits != armed.on_hit:
        return
    if armed.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise FailpointHit(name)


def arm(name: str, action: str = "raise", *, on_hit: int = 1) -> None:
    if name not in POINTS:
        raise ValueError(f"no failpoint {name!r}; the points are {', '.join(POINTS)}")
    if action not in ("raise", "kill") or on_hit < 1:
        raise ValueError(f"a failpoint raises or kills, on its first hit or later: {action!r}@{on_hit}")
    _ARMED[name] = _Armed(action, on_hit)


def disarm_all() -> None:
    _ARMED.clear()


def hits(name: str) -> int:
    """How often an armed point was reached (0 when it is not armed)."""
    armed = _ARMED.get(name)
    return 0 if armed is None else armed.hits


def arm_from(environment: Mapping[str, str]) -> None:
    """Arm what OMNI_FAILPOINTS names (see the module docstring); nothing when it is unset."""
    for part in filter(None, (p.strip() for p in environment.get(ENVIRONMENT, "").split(","))):
        name, _, action = part.partition("=")
        action, _, on_hit = (action or "raise").partition("@")
        arm(name.strip(), action.strip(), on_hit=int(on_hit or 1))
