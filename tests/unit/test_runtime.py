"""tune_collector: the start-up objects frozen, the youngest generation collected less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from omni.runtime import tune_collector
from omni.settings import Settings


@pytest.fixture
def collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_the_collector_is_tuned_and_what_lives_now_is_frozen(collector: None) -> None:
    _, gen1, gen2 = gc.get_threshold()
    tune_collector(100_000)
    assert gc.get_threshold() == (100_000, gen1, gen2)
    assert gc.get_freeze_count() > 0


def test_zero_keeps_the_interpreters_settings(collector: None) -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    tune_collector(0)
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen


def test_the_setting_defaults_to_a_tuned_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMNI_GC_GEN0_THRESHOLD", raising=False)
    assert Settings().gc_gen0_threshold == 100_000
    monkeypatch.setenv("OMNI_GC_GEN0_THRESHOLD", "0")
    assert Settings().gc_gen0_threshold == 0
