"""Which form `GET /v1/invoices/{id}` answers in, by the Accept header's media ranges and qualities."""

from __future__ import annotations

import pytest

from api.routes.invoices import _wants_html


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("", False),
        ("text/html", True),
        ("TEXT/HTML; charset=utf-8", True),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),  # a browser
        ("application/json, text/html", False),  # equal quality: the first listed
        ("text/html, application/json", True),
        ("text/html;q=0", False),  # q=0: not acceptable (RFC 9110, 12.4.2)
        ("text/html;q=0.5, application/json", False),  # JSON has q=1
        ("application/json;q=0.4, text/html;q=0.5", True),
        ("text/html;q=oops", False),
        ("application/pdf", False),  # neither: the API's own type
    ],
)
def test_html_is_answered_only_when_preferred_to_json(accept: str, html: bool) -> None:
    assert _wants_html(accept) is html
