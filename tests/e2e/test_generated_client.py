"""A client generated from /openapi.json by a standard generator (openapi-python-client), used
as generated, with no hand edits: it creates a tenant, defines a meter, sends an event and reads
the meter back from `omni serve`."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ADMIN
from tests.e2e.test_crash_restart_embedded import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("generated") / "data")
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client_package(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The generated package's import name, on sys.path for this module's tests."""
    root = tmp_path_factory.mktemp("client")
    document = root / "openapi.json"
    document.write_bytes(httpx.get(server.url + "/openapi.json").content)
    generator = Path(sys.executable).with_name("openapi-python-client")
    run = subprocess.run(
        [str(generator), "generate", "--path", str(document), "--meta", "none", "--output-path", str(root / "omni_client")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert run.returncode == 0 and (root / "omni_client" / "client.py").exists(), run.stdout + run.stderr
    assert "Warning" not in run.stdout.replace("ruff is not in PATH", ""), run.stdout  # every operation generated
    sys.path.insert(0, str(root))
    try:
        yield "omni_client"
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == "omni_client" or m.startswith("omni_client.")]:
            del sys.modules[name]


def module(package: str, name: str) -> Any:
    return importlib.import_module(f"{package}.{name}")


def test_a_generated_client_creates_defines_sends_and_reads(server: Server, client_package: str) -> None:
    client = module(client_package, "client")
    models = module(client_package, "models")
    create_tenant = module(client_package, "api.tenants.create_tenant")
    define_meter = module(client_package, "api.meters.define_meter")
    ingest_events = module(client_package, "api.events.ingest_events")
    query_meter = module(client_package, "api.meters.query_meter")

    admin = client.AuthenticatedClient(base_url=server.url, token=ADMIN)
    tenant = create_tenant.sync(client=admin, body=models.TenantCreate(name="generated", plan="pro"))
    assert isinstance(tenant, models.TenantCreated), tenant
    meter = models.MeterDefinition(
        slug="tokens", event_type="inference", aggregation=models.Aggregation.SUM, value_property="$.data.tokens"
    )
    assert isinstance(define_meter.sync(client=admin, body=meter), models.MeterDefinition)

    own = client.AuthenticatedClient(base_url=server.url, token=tenant.api_key)
    events = [
        models.CloudEvent(
            specversion="1.0",
            id=f"gen-{i}",
            source="generated",
            type_="inference",
            subject="customer-7",
            time=datetime.now(UTC),
            data={"tokens": 800 + i},
        )  # fmt: skip
        for i in range(3)
    ]
    accepted = ingest_events.sync(client=own, body=events)
    assert isinstance(accepted, models.IngestResult), accepted
    assert (accepted.accepted, accepted.duplicates) == (3, 0)
    again = ingest_events.sync(client=own, body=events[:1])
    assert (again.accepted, again.duplicates) == (0, 1)

    deadline = time.monotonic() + 20
    while True:
        result = query_meter.sync(client=own, slug="tokens")
        assert isinstance(result, models.MeterQueryResult), result
        if [row.value for row in result.data] == [2403] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [(row.value, row.subject) for row in result.data] == [(2403, None)]
    refused = query_meter.sync(client=own, slug="no-such-meter")
    assert isinstance(refused, models.Problem) and refused.status == 404
