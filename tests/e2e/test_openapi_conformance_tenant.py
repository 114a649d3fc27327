"""The conformance run of tests/e2e/test_openapi_conformance.py with a tenant's key, in a file of its
own so that the suite's workers (`--dist loadfile`) run it beside the admin's."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_crash_restart_embedded import Server
from tests.e2e.test_openapi_conformance import schemathesis_finds_nothing, served

__all__ = ["served"]  # the fixture: one server for this file's run


def test_schemathesis_finds_nothing_with_a_tenants_key(served: tuple[Server, str], tmp_path: Path) -> None:
    schemathesis_finds_nothing(served, "tenant", tmp_path)
