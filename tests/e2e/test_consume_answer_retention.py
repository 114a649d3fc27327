"""How long a consume's answer is kept for retries (OMNI_QUOTA_ANSWER_SECONDS), in both modes: a
retry within it gets the first answer; once it has lapsed a retry is decided again, and the meters
still count the usage once."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from omni.settings import Settings
from streams.embedded_quotas import EmbeddedQuotaLedger
from streams.redis_quotas import QuotaKeys, RedisQuotaLedger
from tests.e2e.conftest import Omni, embedded_settings, kafka_settings, served, services_or_skip
from tests.e2e.test_plans_and_quotas import consume, on_a_tokens_plan, put_plan

KEEP = 120


@pytest.fixture(params=["embedded", "kafka"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "embedded":
        return embedded_settings(tmp_path / "data", quota_answer_seconds=KEEP)
    services_or_skip()
    return kafka_settings(uuid.uuid4().hex[:12], quota_answer_seconds=KEEP)


async def seconds_kept(omni: Omni, tenant_id: str, idempotency_key: str) -> float:
    """How much longer the ledger keeps the answer under this key."""
    ledger = omni.platform.quotas
    if isinstance(ledger, RedisQuotaLedger):
        return int(await ledger.redis.pttl(QuotaKeys(omni.platform.topics).answer(tenant_id, idempotency_key))) / 1000
    assert isinstance(ledger, EmbeddedQuotaLedger)
    (until,) = ledger.log.run_locked(
        lambda db: db.execute(
            "SELECT keep_until FROM quota_answers WHERE tenant_id = ? AND idempotency_key = ?", (tenant_id, idempotency_key)
        ).fetchone()
    )
    return int(until) - time.time()


async def lapse(omni: Omni, tenant_id: str, idempotency_key: str) -> None:
    """What the end of the answer's time does: Redis expires its key; the embedded ledger's row is
    past its keep_until (its purge deletes it later, hourly)."""
    ledger = omni.platform.quotas
    if isinstance(ledger, RedisQuotaLedger):
        raw = aioredis.Redis.from_url(omni.platform.settings.redis_url)
        try:
            assert await raw.delete(QuotaKeys(omni.platform.topics).answer(tenant_id, idempotency_key)) == 1
        finally:
            await raw.aclose()
        return
    assert isinstance(ledger, EmbeddedQuotaLedger)
    past = int(time.time()) - 1
    ledger.log.run_locked(
        lambda db: db.execute(
            "UPDATE quota_answers SET keep_until = ? WHERE tenant_id = ? AND idempotency_key = ?",
            (past, tenant_id, idempotency_key),
        )
    )


async def test_an_answer_is_kept_for_its_retry_window_then_a_retry_is_decided_again(settings: Settings) -> None:
    async with served(settings) as omni:
        tenant_id, key = await on_a_tokens_plan(omni, 100, "DAY")
        first = await consume(omni, key, "tokens", 30, "req-1")
        again = await consume(omni, key, "tokens", 30, "req-1")
        assert first.status_code == again.status_code == 200
        assert first.json() == again.json() and first.json()["used"] == 30, "within the window: the first answer"
        assert KEEP - 10 < await seconds_kept(omni, tenant_id, "req-1") <= KEEP, "kept for the setting, not the acceptance window"

        await lapse(omni, tenant_id, "req-1")
        late = await consume(omni, key, "tokens", 30, "req-1")
        assert late.status_code == 200
        # Decided again: the hot counter counts it a second time (it then refuses early, never
        # late, until it is next rebuilt from the log: README, "Quotas") ...
        assert late.json()["used"] == 60
        await omni.settle()
        # ... while the meters count its usage once: its event carries the same id.
        assert sum(row["value"] for row in await omni.query(key, "tokens")) == 30


async def test_a_retry_accepted_after_its_refusal_lapsed_is_metered(settings: Settings) -> None:
    """A refusal is an event of its own (source omni://quotas/refusals), not the identity of the
    idempotency key: a retry accepted under that key later (the limit raised meanwhile) is counted
    by the meters, which count each (tenant, source, id) once."""
    async with served(settings) as omni:
        tenant_id, key = await on_a_tokens_plan(omni, 50, "DAY")
        assert (await consume(omni, key, "tokens", 40, "req-1")).status_code == 200
        assert (await consume(omni, key, "tokens", 30, "req-2")).status_code == 429
        await omni.settle()  # the refusal folded (and remembered) before the retry

        await lapse(omni, tenant_id, "req-2")
        await put_plan(omni, "pro", {"meter": "tokens", "limit": 100, "period": "DAY"}, status=200)
        retried = await consume(omni, key, "tokens", 30, "req-2")
        assert retried.status_code == 200 and retried.json()["used"] == 70
        await omni.settle()
        assert sum(row["value"] for row in await omni.query(key, "tokens")) == 70, "the retry's usage is metered"


def test_answers_are_kept_a_day_by_default_and_never_past_the_acceptance_window() -> None:
    assert Settings().quota_answer_keep.total_seconds() == 86_400
    assert Settings(quota_answer_seconds=600).quota_answer_keep.total_seconds() == 600
    short = Settings(acceptance_window_seconds=3600, quota_answer_seconds=86_400)
    assert short.quota_answer_keep.total_seconds() == 3600
