"""Schemathesis with every check it has (`--checks all`: status codes, content types, headers,
response schemas, schema-valid data accepted and invalid data refused, Allow, authentication,
resources usable after their creation and gone after their deletion) against `omni serve`, once
with the admin's key and once with a tenant's (two files, so the suite's workers run them side by
side: tests/e2e/test_openapi_conformance_tenant.py is the tenant's).

Every phase runs only on the operations the caller may use: on the others every case answers the
same 403, before anything the case sent is read (api/roles.py), which the access matrix
(tests/e2e/test_access_matrix.py) holds for every caller in both modes, with valid input and with
a malformed body and query. A fixed seed and a bounded number of cases per operation, so a run takes
about the same time on every machine and fails the same way."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ADMIN
from tests.e2e.test_access_matrix import EXPECTED
from tests.e2e.test_crash_restart_embedded import Server

CONFIG = Path(__file__).with_name("schemathesis.toml")  # the rules JSON Schema cannot state
SEED = 20261204
CASES_PER_OPERATION = 6
FORBIDDEN = {  # what each caller may not call: the access matrix's 403s (README's route table)
    "admin": [f"{method} {path}" for (method, path), (_, _, admin) in EXPECTED.items() if admin == 403],
    "tenant": [f"{method} {path}" for (method, path), (owner, _, _) in EXPECTED.items() if owner == 403],
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    running = Server(tmp_path_factory.mktemp("conformance") / "data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMNI_WATCH_SECONDS", "0.2")  # a live watch the generated cases open ends soon
        running.start()
    admin = {"Authorization": f"Bearer {ADMIN}"}
    tenant = httpx.post(running.url + "/v1/tenants", json={"name": "conformance", "plan": "p"}, headers=admin).json()
    meter = {"slug": "tokens", "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"}
    assert httpx.post(running.url + "/v1/meters", json=meter, headers=admin).status_code == 201
    yield running, tenant["api_key"]
    running.stop()


def schemathesis_finds_nothing(served: tuple[Server, str], who: str, tmp_path: Path) -> None:
    server, tenant_key = served
    key = ADMIN if who == "admin" else tenant_key
    assert FORBIDDEN[who], "the access matrix names no operation this caller may not call"
    excluded = [option for name in FORBIDDEN[who] for option in ("--exclude-name", name)]
    for phases in ("coverage", "examples,fuzzing,stateful"):
        command = [
            str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(CONFIG),
            "run", server.url + "/openapi.json", "--phases", phases, *excluded,
            "--checks", "all", "--header", f"Authorization: Bearer {key}",
            "--seed", str(SEED), "--max-examples", str(CASES_PER_OPERATION), "--workers", "1",
            "--no-color", "--generation-database", "none", "--report-dir", str(tmp_path),
            "--generation-allow-x00", "false",
        ]  # fmt: skip
        run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        # The report's failures, each line cut short: a reproduction can hold megabytes of generated body.
        lines = [line[:400] for line in run.stdout.splitlines()]
        failures = lines[next((i for i, line in enumerate(lines) if " FAILURES " in line), 0) :]
        assert run.returncode == 0, f"phases {phases}:\n" + "\n".join(failures)[:20000] + run.stderr[-3000:]
        selected = next((line for line in lines if "Selected:" in line), "")
        print(f"{who}, {phases}: {selected.strip()}")


def test_schemathesis_finds_nothing_with_the_admins_key(served: tuple[Server, str], tmp_path: Path) -> None:
    schemathesis_finds_nothing(served, "admin", tmp_path)
