"""Settings read from the environment, with their bounds."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from omni.settings import Settings


def test_redis_dedupe_seconds_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMNI_REDIS_DEDUPE_SECONDS", raising=False)
    assert Settings().redis_dedupe_seconds is None  # the whole acceptance window
    monkeypatch.setenv("OMNI_REDIS_DEDUPE_SECONDS", "86400")
    assert Settings().redis_dedupe_seconds == 86400
    monkeypatch.setenv("OMNI_REDIS_DEDUPE_SECONDS", "5")  # shorter than a claim may take to append
    with pytest.raises(ValidationError):
        Settings()
