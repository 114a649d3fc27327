"""The catalog cache consume reads through: served only while no catalog event it has not seen the views hold."""

from __future__ import annotations

from dataclasses import dataclass

from eventsourcing.utils import get_topic

from commands.control_plane import ApiKey, AuditEntry, Meter, Tenant
from commands.plans import Plan, QuotaOverride
from omni.catalog_cache import CATALOG_TOPICS, CatalogCache

PLAN = get_topic(Plan.Revised)
AUDIT = get_topic(AuditEntry.Recorded)


@dataclass
class Notification:
    id: int
    topic: str


class Store:
    """The two calls of an eventsourcing ApplicationRecorder the cache makes."""

    def __init__(self) -> None:
        self.notifications: list[Notification] = []

    def store(self, topic: str) -> int:
        self.notifications.append(Notification(len(self.notifications) + 1, topic))
        return len(self.notifications)

    def max_notification_id(self) -> int | None:
        return len(self.notifications) or None

    def select_notifications(
        self, start: int, limit: int, stop: int, topics: tuple[str, ...], inclusive_of_start: bool
    ) -> list[Notification]:
        assert not inclusive_of_start
        return [n for n in self.notifications if start < n.id <= stop and n.topic in topics][:limit]


def watching(store: Store, applied: int = 0, **options: int) -> CatalogCache:
    cache = CatalogCache(store, **options)  # type: ignore[arg-type]
    cache.start_watching(applied)
    return cache


def test_the_catalog_topics_are_every_event_of_meters_tenants_plans_and_overrides() -> None:
    assert get_topic(Meter.Defined) in CATALOG_TOPICS
    assert {get_topic(Tenant.Created), get_topic(Tenant.PlanAssigned)} <= set(CATALOG_TOPICS)
    assert {get_topic(Plan.Published), PLAN} <= set(CATALOG_TOPICS)
    assert {get_topic(QuotaOverride.Set), get_topic(QuotaOverride.Changed), get_topic(QuotaOverride.Removed)} <= set(
        CATALOG_TOPICS
    )
    assert AUDIT not in CATALOG_TOPICS and get_topic(ApiKey.Revoked) not in CATALOG_TOPICS


def test_unwatched_it_keeps_and_serves_nothing() -> None:
    cache = CatalogCache(Store())  # type: ignore[arg-type]
    cache.put("k", 10, "value")
    assert cache.get("k") == (False, None) and len(cache) == 0
    cache.start_watching(10)
    cache.put("k", 10, "value")
    assert cache.get("k") == (True, "value")
    cache.stop_watching()
    assert cache.get("k") == (False, None) and len(cache) == 0, "losing the watch drops what was kept"


def test_a_change_heard_stops_serving_until_the_store_is_read() -> None:
    store = Store()
    cache = watching(store)
    cache.put("k", 0, "old")
    cache.heard()
    assert cache.get("k") == (False, None), "heard of, not read yet: nothing is served"
    cache.put("k", 0, "read meanwhile")
    cache.catch_up()
    assert cache.get("k") == (True, "old"), "the store held no catalog event: what was kept holds"


def test_an_entry_read_before_the_views_held_a_catalog_event_is_read_again() -> None:
    store = Store()
    cache = watching(store)
    cache.put("k", 0, "old")
    position = store.store(PLAN)
    cache.heard()
    cache.catch_up()
    assert cache.get("k") == (False, None)
    cache.put("k", position - 1, "read before the worker folded it")
    assert cache.get("k") == (False, None), "views behind the change are not kept"
    cache.put("k", position, "new")
    assert cache.get("k") == (True, "new")


def test_events_outside_the_catalog_leave_what_is_kept() -> None:
    store = Store()
    cache = watching(store)
    cache.put("k", 0, "kept")
    store.store(AUDIT)
    store.store(get_topic(ApiKey.Revoked))
    cache.heard()
    cache.catch_up()
    assert cache.get("k") == (True, "kept"), "an audit entry or a key change never reaches the catalog position"


def test_watching_starts_from_the_views_position_and_reads_what_they_do_not_hold() -> None:
    store = Store()
    folded = store.store(PLAN)
    unfolded = store.store(get_topic(Tenant.PlanAssigned))
    store.store(AUDIT)
    cache = watching(store, applied=folded, page=1)
    cache.put("k", folded, "behind")
    assert cache.get("k") == (False, None), "a plan change stored before the watch began but not yet folded"
    cache.put("k", unfolded, "current")
    assert cache.get("k") == (True, "current")


def test_a_change_heard_while_reading_the_store_keeps_it_from_serving() -> None:
    store = Store()
    cache = watching(store)
    cache.put("k", 0, "v")
    cache.heard()
    original = store.max_notification_id

    def top() -> int | None:
        cache.heard()  # another notice arrives while this look is under way
        return original()

    store.max_notification_id = top  # type: ignore[method-assign]
    cache.catch_up()
    assert cache.get("k") == (False, None), "the second change is not accounted for yet"
    store.max_notification_id = original  # type: ignore[method-assign]
    cache.catch_up()
    assert cache.get("k") == (True, "v")


def test_the_least_recently_used_goes_first() -> None:
    cache = watching(Store(), capacity=2)
    cache.put("a", 0, 1)
    cache.put("b", 0, 2)
    assert cache.get("a") == (True, 1)
    cache.put("c", 0, 3)
    assert cache.get("b") == (False, None) and cache.get("a") == (True, 1) and cache.get("c") == (True, 3)
