"""Webhook endpoints: the API's bodies, and the rules a URL and its addresses must meet (pure).

A webhook is a request Omni makes to an address its caller chose: unchecked, that is a way into
the network Omni runs in (SSRF). So a URL is https, names no credentials, and every address its
host resolves to is public; checked when the endpoint is created and again at each delivery, on
the addresses actually connected to (a name that resolved to a public address then and to a
private one now, DNS rebinding, is refused then). OMNI_WEBHOOKS_ALLOW_PRIVATE (development and
tests) allows private, loopback and link-local addresses, and http.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from schemas.quantities import whole_as_int
from schemas.text import Text

URL_MAX_LENGTH = 2000
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class WebhookEndpointBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Text = Field(min_length=1, max_length=URL_MAX_LENGTH, description="Where notices are POSTed: https, a public host")
    description: Text | None = Field(default=None, max_length=500)


class WebhookEndpointPublic(BaseModel):
    id: str
    url: str
    description: str | None
    created_at: str


class WebhookEndpointCreated(WebhookEndpointPublic):
    secret: str = Field(
        description="`whsec_` and the base64 of the signing key: shown once, in this answer only. "
        "Verify each delivery's `webhook-signature` with it (README, Webhooks)."
    )


MAX_PREVIOUS_SECRET_HOURS = 168  # a week


PreviousSecretHours = Annotated[int, Field(ge=0, le=MAX_PREVIOUS_SECRET_HOURS, strict=True), BeforeValidator(whole_as_int)]


class WebhookSecretRotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    previous_secret_hours: PreviousSecretHours = Field(
        default=24,
        description="How long the secret rotated out still signs each delivery beside the new one, so the "
        "receiver can take the new one on meanwhile (0: stop at once, for a secret that leaked)",
    )


class WebhookSecretRotated(BaseModel):
    id: str
    secret: str = Field(description="The new secret (`whsec_`...): shown once, in this answer only")
    previous_secret_valid_until: str = Field(
        description="RFC 3339: until then each delivery's `webhook-signature` holds the old secret's signature "
        "too, after the new one's"
    )


class WebhookEndpointList(BaseModel):
    data: list[WebhookEndpointPublic]


class DeliveryAttempt(BaseModel):
    at: str = Field(description="When the attempt was made (RFC 3339)")
    status_code: int | None = Field(description="The receiver's HTTP status; null when there was no answer")
    error: str | None = Field(description="Why the attempt failed, when it did (a status other than 2xx, a timeout, ...)")


class WebhookDelivery(BaseModel):
    id: str = Field(description="The notice's id: the `webhook-id` header, the same on every attempt")
    type: str
    status: Literal["pending", "delivered", "failed"] = Field(
        description="`failed`: every attempt of the schedule failed, and it was given up"
    )
    created_at: str = Field(description="When the notice was queued for this endpoint")
    next_attempt_at: str | None = Field(
        description=(
            "When it is tried next: for the endpoint's first pending delivery only (null for one queued "
            "behind it, which waits for it to settle, and for a settled one)"
        )
    )
    attempts: list[DeliveryAttempt] = Field(description="Oldest first")


class WebhookDeliveryList(BaseModel):
    data: list[WebhookDelivery] = Field(description="Newest first")
    next_before: str | None = Field(description="Pass as `before` for the next (older) page; null on the last")


# The rules -------------------------------------------------------------------------------------


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why `url` may not be a webhook endpoint's (None: it may). Its host's addresses, when it is a
    name, are for `address_problem` once resolved."""
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        return "The URL holds a space or a control character."
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as bad:
        return f"The URL cannot be read: {bad}."
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme.lower() not in schemes:
        return "The URL must be https." if not allow_private else "The URL must be http or https."
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "The URL may not hold credentials (user:password@): authenticate by the signature instead."
    host = parts.hostname
    if not host:
        return "The URL names no host."
    if port == 0:
        return "The URL's port may not be 0."
    if parts.fragment:
        return "The URL may not hold a fragment (#...): it is never sent."
    literal = ip_literal(host)
    if literal is not None:
        return address_problem(literal, allow_private=allow_private)
    if not allow_private and (host.lower() == "localhost" or host.lower().rstrip(".").endswith(".localhost")):
        return "The URL's host is this machine (localhost), which is not public."
    return None


def ip_literal(host: str) -> IPAddress | None:
    """The address `host` spells (an IPv6 one without its brackets), or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4, Teredo's client), which is where
    a connection to it goes; None if it carries none."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if any(address in network for network in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def address_problem(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why a webhook may not be sent to `address` (None: it may). Public addresses only, unless
    `allow_private` (development, tests): then loopback, private and link-local ones too. An
    unspecified or multicast address is never one a server answers on."""
    inner = embedded_ipv4(address)
    if inner is not None:
        found = address_problem(inner, allow_private=allow_private)
        return None if found is None else f"{address} carries {inner}: {found}"
    if address.is_unspecified:
        return f"{address} is the unspecified address."
    if address.is_multicast:
        return f"{address} is a multicast address."
    if allow_private:
        return None
    if address.is_loopback:
        return f"{address} is a loopback address, not public."
    if address.is_link_local:
        return f"{address} is a link-local address, not public."
    if address.is_private:
        return f"{address} is a private address, not public."
    if address.is_reserved or not address.is_global:
        return f"{address} is not a public address."
    return None
