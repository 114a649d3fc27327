"""JSON bodies whose numbers are quantities, read as written: the routes that take limits and amounts.

FastAPI reads a JSON body with `json.loads`, which turns every fraction into a binary float before
a model sees it: `1.00000000000000000000000000000000001` arrived as 1.0 and was counted as 1, and
`0.00099999999999999999999` as 0.001, where at most three decimal places are taken (422). It also
takes `NaN` and `Infinity`, which are not JSON (RFC 8259) and which the log's encoder then wrote
as null. Here a fraction is read as a Decimal with every digit it was written with, so the
quantity's own checks (schemas.quantities.exact_quantity) see them; `NaN` and `Infinity` are
malformed JSON (400, with where they stand), as `POST /v1/events` answers them.

A route opts in with `route_class=ExactJsonRoute` on its router; only routers whose bodies carry no
free-form JSON do (a Decimal in a free-form object would reach the log's encoder, which refuses
it), except consume, whose `data` turns its Decimals back to floats (schemas.plans.ConsumeBody).
The consume path at the connection (api/consume_path.py) parses with `loads_exact` too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any

from fastapi import Request, Response

from api.roles import RoleFirstRoute

# A JSON string (skipped whole, so a constant's name inside one is not taken), or a constant.
_CONSTANT = re.compile(r'"(?:[^"\\]|\\.)*"|(NaN|-?Infinity)')


def _constant_at(document: str) -> int:
    """Where the first of NaN, Infinity or -Infinity outside a string stands (0 if none is found)."""
    for found in _CONSTANT.finditer(document):
        if found.group(1):
            return found.start(1)
    return 0


class _NotJson(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _refuse(name: str) -> Any:
    raise _NotJson(name)


def _fraction(text: str) -> Decimal:
    try:
        return Decimal(text)
    except ArithmeticError:  # an exponent past what a decimal holds (1e-999999999999999999999): a 500 before
        raise _NotJson(text[:40] + ("..." if len(text) > 40 else "")) from None


# One decoder for every call: json.loads with options builds a decoder (and its scanner) each time,
# 5 µs more per consume than the decode itself.
_DECODER = json.JSONDecoder(parse_float=_fraction, parse_constant=_refuse)


def loads_exact(body: bytes | str) -> Any:
    """`json.loads`, with fractions as Decimals and NaN, Infinity and -Infinity refused."""
    document = body if isinstance(body, str) else body.decode(json.detect_encoding(body), "surrogatepass")
    try:
        return _DECODER.decode(document)
    except _NotJson as constant:
        where = (
            _constant_at(document)
            if constant.name in ("NaN", "Infinity", "-Infinity")
            else max(0, document.find(constant.name.removesuffix("...")))
        )
        raise json.JSONDecodeError(f"{constant.name} is not a JSON number Omni can read", document, where) from None


class ExactJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_exact(await self.body())
        return self._json


class ExactJsonRoute(RoleFirstRoute):
    """A route whose JSON body is read by `loads_exact` (and its caller's role checked first)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def exact(request: Request) -> Response:
            return await handler(ExactJsonRequest(request.scope, request.receive))

        return exact
