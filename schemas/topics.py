"""Topic names and how events are keyed onto partitions (README, "Topics", documents each)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

# The CloudEvents extension attribute on each control event the outbox relays: its position in the
# event store (notification id). The catalog fold keeps the highest it applied, so the caller of a
# command can wait until its own writes are readable.
STORE_POSITION = "storeposition"
# What the API records of each authenticated request (api/metering.py), on the api_calls topic. A
# tenant may send events of that type too (under a source of its own: `omni:` ones are Omni's).
API_CALL_TYPE = "api_call"
API_CALL_SOURCE = "omni://api"


@dataclass(frozen=True, slots=True)
class Topics:
    """The log's topics. The prefix lets tests and tenants of a shared broker keep apart."""

    prefix: str = "omni"
    usage_partitions: int = 4

    @property
    def usage(self) -> str:
        """Data-plane facts: API calls, inferences, any metered usage."""
        return f"{self.prefix}.usage"

    @property
    def control(self) -> str:
        """Control-plane events relayed from the event store (one partition: total order)."""
        return f"{self.prefix}.control"

    @property
    def audit(self) -> str:
        """One entry per command, accepted or rejected."""
        return f"{self.prefix}.audit"

    @property
    def notifications(self) -> str:
        """Events the platform emits about itself (thresholds, alerts)."""
        return f"{self.prefix}.notifications"

    @property
    def api_calls(self) -> str:
        """Self-metering: one `api_call` event per authenticated request, keyed by tenant like usage
        (`_platform` for the admin's). Apart from usage, so the tenants' own facts are all that
        consumers of the usage topic see; meters fold both."""
        return f"{self.prefix}.api_calls"

    def partitions(self, topic: str) -> int:
        return 1 if topic == self.control else self.usage_partitions

    def all(self) -> tuple[str, ...]:
        return (self.usage, self.control, self.audit, self.notifications, self.api_calls)


def partition_for(key: str, partitions: int) -> int:
    """Stable in every runner and mode, so one tenant's events keep their order."""
    return zlib.crc32(key.encode()) % partitions
