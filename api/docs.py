"""The OpenAPI document and Swagger UI, served with no request leaving the machine.

FastAPI's own /docs loads Swagger UI from a CDN, so it is blank offline; here its files come from
the `swagger-ui-bundle-v2` package. Both pages are ordinary routes, so metrics name them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from swagger_ui_bundle import swagger_ui_path

from api.problems import Problem

ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}


def install(app: FastAPI) -> None:
    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="data:,",  # none: nothing to fetch
        )

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def swagger_asset(name: str) -> Any:
        if name not in ASSETS:
            raise Problem(404, "Not found", f"No documentation asset {name!r}.", kind="not-found")
        path = swagger_ui_path / name
        return FileResponse(str(path), media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})
