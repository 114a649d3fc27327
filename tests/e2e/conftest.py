"""An embedded-mode Omni served in-process over ASGI, with its state in a temporary folder."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from omni.bootstrap import Platform, build
from omni.settings import Settings

ADMIN = "test-admin-key"
BATCH = "application/cloudevents-batch+json"
SINGLE = "application/cloudevents+json"


class Omni:
    """A client with the platform behind it, so tests can settle the runner deterministically."""

    def __init__(self, client: httpx.AsyncClient, platform: Platform, app: Any) -> None:
        self.client = client
        self.platform = platform
        self.app = app

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def settle(self) -> None:
        await self.app.state.api_calls.flush()
        await self.platform.settle()

    async def tenant(self, name: str = "acme", plan: str = "pro") -> tuple[str, str]:
        response = await self.client.post("/v1/tenants", json={"name": name, "plan": plan}, headers=self.auth(ADMIN))
        assert response.status_code == 201, response.text
        body = response.json()
        return body["id"], body["api_key"]

    async def meter(self, **definition: Any) -> None:
        response = await self.client.post("/v1/meters", json=definition, headers=self.auth(ADMIN))
        assert response.status_code == 201, response.text

    async def send(self, key: str, events: list[dict[str, Any]]) -> httpx.Response:
        import orjson

        return await self.client.post(
            "/v1/events", content=orjson.dumps(events), headers={**self.auth(key), "Content-Type": BATCH}
        )

    async def query(self, key: str, slug: str, **params: Any) -> list[dict[str, Any]]:
        response = await self.client.get(f"/v1/meters/{slug}/query", params=params, headers=self.auth(key))
        assert response.status_code == 200, response.text
        # Decimals, so the test sees exactly the digits the API wrote.
        return json.loads(response.text, parse_float=Decimal)["data"]  # type: ignore[no-any-return]


def embedded_settings(data_dir: Path, **overrides: Any) -> Settings:
    return Settings(mode="embedded", data_dir=data_dir, admin_key=ADMIN, usage_partitions=3, **overrides)


@pytest.fixture
async def omni(tmp_path: Path) -> AsyncIterator[Omni]:
    platform = build(embedded_settings(tmp_path / "data"))
    app = create_app(platform=platform, background=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://omni.test") as client:
            yield Omni(client, platform, app)
