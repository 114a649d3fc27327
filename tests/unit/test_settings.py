"""Settings read from the environment, with their bounds."""

from __future__ import annotations

import re
from pathlib import Path

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


# Variables the README's table documents that Omni does not read itself (OpenTelemetry's SDK does).
NOT_SETTINGS = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"}


def configuration_table() -> dict[str, str]:
    """README's "Configuration" table: each variable's default cell."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `([A-Z][A-Z0-9_]*)` \| (.*?) \|", section, re.MULTILINE)}


def documented(default: object) -> str:
    """A default as the README writes it: `true`, `10` (not 10.0), `.omni-data`."""
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def variable(name: str) -> str:
    alias = Settings.model_fields[name].validation_alias
    return alias if isinstance(alias, str) else f"OMNI_{name.upper()}"


def test_every_setting_is_in_the_readme_configuration_table_with_its_default() -> None:
    """The billing settings (OMNI_BILLING_AUTO_CLOSE, ..._CLOSE_GRACE_SECONDS, ..._CATCH_UP_SECONDS)
    and OMNI_INVOICE_SELLER were read but missing from the table a newcomer configures Omni by."""
    table = configuration_table()
    missing = [variable(name) for name in Settings.model_fields if variable(name) not in table]
    assert missing == []
    unknown = sorted(set(table) - {variable(name) for name in Settings.model_fields} - NOT_SETTINGS)
    assert unknown == []
    for name, field in Settings.model_fields.items():
        cell = table[variable(name)]
        if field.default is None:
            assert not cell.startswith("`"), (variable(name), cell)  # "unset (...)", "generated ..."
        else:
            assert cell.startswith(f"`{documented(field.default)}`"), (variable(name), cell)
