"""The printable invoice page, rendered by headless Chromium (Debian's `chromium`, installed by
ops/services/chromium.sh): it lays out within the page, shows every line and tier with the total
right-aligned at the table's edge, escapes what tenants named, and prints on one A4 page."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from projections.invoices import BillingPeriod
from tests.e2e.conftest import ADMIN, embedded_settings, served
from tests.e2e.test_invoices import after, close, invoices, setup, use

# Measured inside the page once Chromium laid it out, and written where --dump-dom shows it.
MEASURE = """<script>
addEventListener("load", () => {
  const box = (el) => { const r = el.getBoundingClientRect(); return {left: r.left, right: r.right, width: r.width, height: r.height}; };
  const table = document.querySelector("table"), total = document.getElementById("total");
  document.body.setAttribute("data-layout", JSON.stringify({
    overflow: document.documentElement.scrollWidth - innerWidth,
    table: box(table), total: box(total),
    rows: document.querySelectorAll("tbody tr").length,
    tiers: document.querySelectorAll("tbody tr.tier").length,
    h1: document.querySelector("h1").textContent,
    customer: document.querySelector(".parties div:nth-child(2) div").textContent,
    totalText: total.textContent,
  }));
});
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("OMNI_REQUIRE_SERVICES"):
            raise AssertionError("chromium is missing: ops/services/chromium.sh installs it")
        pytest.skip("chromium is not installed")
    return found


def headless(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1024,1400",
    ]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120, check=True)


async def test_the_invoice_page_renders_and_prints_on_one_page(tmp_path: Path) -> None:
    binary = chromium()
    async with served(embedded_settings(tmp_path / "data", invoice_seller="Omni Inc., 1 Log Street")) as omni:
        ((tenant_id, key),) = await setup(omni)
        renamed = await omni.client.post(
            "/v1/tenants", json={"name": "<b>Acme</b> & Co", "plan": "pro"}, headers=omni.auth(ADMIN)
        )
        customer_id, customer_key = renamed.json()["id"], renamed.json()["api_key"]
        assigned = await omni.client.put(f"/v1/tenants/{customer_id}/plan", json={"plan": "pro"}, headers=omni.auth(ADMIN))
        assert assigned.status_code == 204
        await use(omni, customer_key, tokens=2501, calls=1234, images=250)
        this_month = BillingPeriod.of(datetime.now(UTC))
        omni.platform.clock = lambda: after(this_month)
        assert (await close(omni, this_month.text)).status_code == 200
        (invoice,) = await invoices(omni, customer_key)
        response = await omni.client.get(
            f"/v1/invoices/{invoice['id']}", headers={**omni.auth(customer_key), "Accept": "text/html"}
        )
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert "<b>Acme</b>" not in response.text and "&lt;b&gt;Acme&lt;/b&gt; &amp; Co" in response.text
        as_json = await omni.client.get(
            f"/v1/invoices/{invoice['id']}", headers={**omni.auth(customer_key), "Accept": "application/json"}
        )
        assert as_json.json() == invoice
        assert tenant_id != customer_id and key

    page = tmp_path / "invoice.html"
    page.write_text(response.text.replace("</body>", MEASURE + "</body>"))
    dom = headless(binary, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()).stdout
    found = re.search(r'data-layout="([^"]*)"', dom)
    assert found is not None, dom[-2000:]
    layout = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    assert layout["h1"] == f"Invoice {invoice['number']}"
    assert layout["customer"] == "<b>Acme</b> & Co"  # shown as text, not markup
    assert layout["totalText"] == "USD 39.34"
    assert layout["overflow"] <= 0  # nothing wider than the window
    assert (layout["rows"], layout["tiers"]) == (4 + 2, 2)  # fee, three meters; tokens' two tiers
    assert layout["total"]["width"] > 0 and layout["total"]["height"] > 0
    assert abs(layout["total"]["right"] - layout["table"]["right"]) < 1  # right-aligned at the table's edge

    pdf = tmp_path / "invoice.pdf"
    headless(binary, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri())
    pages = len(re.findall(rb"/Type\s*/Page[^s]", pdf.read_bytes()))
    assert pages == 1, f"{pages} pages"
