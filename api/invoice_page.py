"""An invoice or credit note as a printable HTML page (GET /v1/invoices/{id} with Accept: text/html).

Pure: the document, its status and the two parties in, one self-contained page out (inline CSS, no
script, no external resource), every value escaped. Amounts are the document's integer minor units,
shown with the currency's digits.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

STYLE = """
@page { size: A4; margin: 18mm; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1d2330; margin: 0 auto; max-width: 820px; padding: 32px; }
header { display: flex; justify-content: space-between; align-items: flex-start; gap: 24px; }
h1 { font-size: 26px; margin: 0 0 4px; }
.muted { color: #5b6474; }
.status { display: inline-block; padding: 2px 10px; border-radius: 10px; background: #eef1f6; font-size: 12px;
          text-transform: uppercase; letter-spacing: .05em; }
.status.void, .status.uncollectible { background: #fdecec; color: #9b1c1c; }
.status.paid { background: #e7f6ec; color: #17643a; }
.parties { display: grid; grid-template-columns: 1fr 1fr; gap: 24px; margin: 28px 0; }
.parties h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .06em; color: #5b6474; margin: 0 0 6px; }
table { width: 100%; border-collapse: collapse; }
th { text-align: left; font-size: 12px; text-transform: uppercase; letter-spacing: .05em; color: #5b6474;
     border-bottom: 2px solid #1d2330; padding: 8px 6px; }
td { padding: 8px 6px; border-bottom: 1px solid #e3e7ee; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.tier td { border-bottom: none; padding-top: 0; color: #5b6474; font-size: 12px; }
tr.tier td:first-child { padding-left: 22px; }
tfoot td { border-bottom: none; font-weight: 600; }
tfoot tr.total td { font-size: 18px; border-top: 2px solid #1d2330; }
footer { margin-top: 32px; font-size: 12px; color: #5b6474; word-break: break-all; }
@media print { body { padding: 0; } }
"""


def money(minor: int, currency: str, digits: int) -> str:
    """Minor units as the currency's decimal amount: 1930 USD -> "USD 19.30", 500 JPY -> "JPY 500"."""
    sign = "-" if minor < 0 else ""
    whole, part = divmod(abs(minor), 10**digits) if digits else (abs(minor), 0)
    grouped = f"{whole:,}"
    return f"{currency} {sign}{grouped}.{part:0{digits}d}" if digits else f"{currency} {sign}{grouped}"


def _describe(line: Mapping[str, Any]) -> str:
    match line["type"]:
        case "fee":
            return f"Plan fee ({line.get('plan', '')})"
        case "usage":
            return f"{line['meter']} ({line['model'].replace('_', ' ')})"
        case "adjustment":
            return f"{line['meter']}: usage of {line['period']} after it was invoiced"
        case "void":
            return f"Voids invoice {line['number']}"
    return str(line["type"])


def _quantity(line: Mapping[str, Any]) -> str:
    if line["type"] == "usage":
        text = f"{line['quantity']}"
        if line.get("included"):
            text += f" ({line['included']} included)"
        if "packages" in line:
            text += f" = {line['packages']} packages"
        return text
    if line["type"] == "adjustment":
        text = f"{line['billed_quantity']} → {line['corrected_quantity']}"
        if "forgiven_quantity" in line:  # a voided invoice's, not billed again
            text += f" ({line['forgiven_quantity']} forgiven)"
        return text
    return ""


def _unit_price(line: Mapping[str, Any]) -> str:
    if "package_price" in line:
        return f"{line['package_price']} per package"
    return str(line.get("unit_price", ""))


def render(document: Mapping[str, Any], status: str, *, seller: str, customer: str) -> str:
    currency, digits = str(document["currency"]), int(document["minor_units"])
    title = "Credit note" if document["kind"] == "credit_note" else "Invoice"
    number = document.get("number") or "draft"
    rows: list[str] = []
    for line in document["lines"]:
        rows.append(
            f"<tr><td>{escape(_describe(line))}</td><td class=num>{escape(_quantity(line))}</td>"
            f"<td class=num>{escape(_unit_price(line))}</td>"
            f"<td class=num>{escape(money(int(line['amount']), currency, digits))}</td></tr>"
        )
        for tier in line.get("tiers", []):
            upper = "and above" if tier["up_to"] is None else f"up to {tier['up_to']}"
            flat = f" + {tier['flat_price']}" if tier.get("flat_price") else ""
            rows.append(
                f"<tr class=tier><td>Tier {tier['tier']} ({escape(upper)})</td><td class=num>{escape(str(tier['quantity']))}</td>"
                f"<td class=num>{escape(str(tier['unit_price']) + flat)}</td><td class=num>{escape(currency)} {escape(str(tier['amount']))}</td></tr>"
            )
    plan = document.get("plan") or {}
    plan_text = f"{plan.get('slug')} v{plan.get('version')}" if plan else "none"
    reason = f"<p class=muted>{escape(str(document['reason']))}</p>" if document.get("reason") else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} {escape(number)}</title><style>{STYLE}</style></head>
<body>
<header>
  <div><h1>{escape(title)} {escape(number)}</h1>
  <div class=muted>Period {escape(str(document["period"]))} ({escape(str(document["period_start"]))} to {escape(str(document["period_end"]))})</div>
  <div class=muted>Issued {escape(str(document.get("issued_at") or "not yet"))}</div></div>
  <div><span class="status {escape(status)}">{escape(status)}</span></div>
</header>
{reason}
<section class=parties>
  <div><h2>From</h2><div>{escape(seller)}</div></div>
  <div><h2>Bill to</h2><div>{escape(customer)}</div><div class=muted>{escape(str(document["tenant_id"]))}</div></div>
</section>
<table>
<thead><tr><th>Description</th><th class=num>Quantity</th><th class=num>Unit price</th><th class=num>Amount</th></tr></thead>
<tbody>
{"".join(rows)}
</tbody>
<tfoot>
<tr><td colspan=3>Subtotal</td><td class=num>{escape(money(int(document["subtotal"]), currency, digits))}</td></tr>
<tr class=total><td colspan=3>Total</td><td class=num id=total>{escape(money(int(document["total"]), currency, digits))}</td></tr>
</tfoot>
</table>
<footer>Plan {escape(plan_text)} · {escape(currency)}, amounts rounded half-even to the minor unit once per line · id {escape(str(document["id"]))}</footer>
</body></html>
"""
