"""The pure decisions of webhooks: the signature (Standard Webhooks), the retry schedule, the URL and
address rules (SSRF), the message, and the sealing of the signing secret."""

from __future__ import annotations

import base64
import ipaddress

import orjson
import pytest

from commands.webhooks import secret_aad
from omni.personal_data import MasterKey
from projections.webhooks import (
    RETRY_SCHEDULE,
    attempt_error,
    headers,
    message,
    parse_schedule,
    retry_delay,
    secret_key,
    secret_text,
    signature,
)
from schemas.webhooks import address_problem, url_problem


def test_the_signature_is_the_standard_webhooks_example() -> None:
    """The example of the Standard Webhooks specification (and its reference libraries' tests)."""
    key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signed = signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signed == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_headers_sign_the_body_sent_with_the_id_and_timestamp_sent() -> None:
    key = bytes(range(32))
    sent = headers([key], "n-1", 1700000000, b"{}")
    assert sent["webhook-id"] == "n-1" and sent["webhook-timestamp"] == "1700000000"
    assert sent["content-type"] == "application/json"
    assert sent["webhook-signature"] == signature(key, "n-1", 1700000000, b"{}")
    assert sent["webhook-signature"] != signature(key, "n-1", 1700000001, b"{}")
    assert sent["webhook-signature"] != signature(key, "n-2", 1700000000, b"{}")


def test_the_secret_is_whsec_and_base64_of_its_key() -> None:
    key = bytes(range(32))
    text = secret_text(key)
    assert text.startswith("whsec_") and base64.b64decode(text[6:]) == key
    assert secret_key(text) == key
    with pytest.raises(ValueError):
        secret_key("sk_" + text[6:])


def test_the_message_carries_the_notice_as_the_notifications_list_shows_it() -> None:
    data = {"tenant_id": "t", "meter": "calls", "threshold": 80, "occurred_at": "2026-01-01T00:00:00.000000Z"}
    body = orjson.loads(message("omni.quota.threshold_crossed", "n-1", data))
    assert body == {
        "type": "omni.quota.threshold_crossed",
        "timestamp": "2026-01-01T00:00:00.000000Z",
        "data": {"id": "n-1", "type": "omni.quota.threshold_crossed", **data},
    }


def test_retries_follow_the_schedule_then_give_up() -> None:
    assert [retry_delay(n) for n in range(1, 8)] == [5, 300, 1800, 7200, 18000, 36000, None]
    assert len(RETRY_SCHEDULE) + 1 == 7  # attempts in all
    assert retry_delay(0) is None
    assert [retry_delay(n, (0.1, 0.2)) for n in (1, 2, 3)] == [0.1, 0.2, None]
    assert retry_delay(1, ()) is None  # no retries: the first failure gives up


def test_the_schedule_setting_is_read_or_refused() -> None:
    assert parse_schedule("5, 300,1800") == (5, 300, 1800)
    assert parse_schedule("") == ()
    for bad in ("5,x", "-1", "nan", "inf"):
        with pytest.raises(ValueError):
            parse_schedule(bad)


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (200, None, None),
        (204, None, None),
        (299, None, None),
        (301, None, "HTTP 301: redirects are not followed"),
        (302, None, "HTTP 302: redirects are not followed"),
        (404, None, "HTTP 404"),
        (500, None, "HTTP 500"),
        (None, "no answer within 10 s", "no answer within 10 s"),
        (None, None, "no answer"),
    ],
    ids=["200", "204", "299", "301", "302", "404", "500", "timeout", "nothing"],
)
def test_only_a_2xx_is_delivered(status: int | None, error: str | None, expected: str | None) -> None:
    assert attempt_error(status, error) == expected


REFUSED_URLS = {
    "http": "http://example.com/hook",
    "ftp": "ftp://example.com/hook",
    "credentials": "https://user:pw@example.com/hook",
    "user-only": "https://user@example.com/hook",
    "no-host": "https:///hook",
    "space": "https://example.com/a hook",
    "bad-port": "https://example.com:99999/hook",
    "port-zero": "https://example.com:0/hook",
    "fragment": "https://example.com/hook#x",
    "loopback": "https://127.0.0.1/hook",
    "loopback-v6": "https://[::1]/hook",
    "localhost": "https://localhost/hook",
    "sub-localhost": "https://a.localhost/hook",
    "private-10": "https://10.1.2.3/hook",
    "private-192": "https://192.168.0.1/hook",
    "private-172": "https://172.16.5.4/hook",
    "metadata": "https://169.254.169.254/latest",
    "cgnat": "https://100.64.0.1/hook",
    "unspecified": "https://0.0.0.0/hook",
    "multicast": "https://224.0.0.1/hook",
    "mapped": "https://[::ffff:127.0.0.1]/hook",
    "nat64": "https://[64:ff9b::a00:1]/hook",
    "6to4": "https://[2002:7f00:1::]/hook",
    "unique-local-v6": "https://[fd00::1]/hook",
    "link-local-v6": "https://[fe80::1]/hook",
    "documentation": "https://192.0.2.1/hook",
}


@pytest.mark.parametrize("url", REFUSED_URLS.values(), ids=REFUSED_URLS.keys())
def test_a_url_that_could_reach_inside_is_refused(url: str) -> None:
    assert url_problem(url, allow_private=False) is not None


@pytest.mark.parametrize(
    "url",
    ["https://example.com/hook", "https://example.com:8443/a?b=c", "https://93.184.215.14/hook", "https://[2606:4700::1111]/"],
    ids=["name", "port-and-query", "public-v4", "public-v6"],
)
def test_a_public_https_url_is_allowed(url: str) -> None:
    assert url_problem(url, allow_private=False) is None


def test_allowing_private_addresses_allows_http_and_loopback_but_not_credentials() -> None:
    for url in ("http://127.0.0.1:8080/hook", "https://10.0.0.1/", "http://localhost/", "http://[::1]:9/"):
        assert url_problem(url, allow_private=True) is None, url
    assert url_problem("https://u:p@127.0.0.1/", allow_private=True) is not None
    assert url_problem("ftp://127.0.0.1/", allow_private=True) is not None
    assert url_problem("http://0.0.0.0/", allow_private=True) is not None  # no server answers there


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("10.0.0.1", False),
        ("172.31.255.255", False),
        ("192.168.1.1", False),
        ("169.254.0.1", False),
        ("100.100.100.100", False),
        ("198.18.0.1", False),
        ("255.255.255.255", False),
        ("239.1.1.1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::7f00:1", False),
        ("64:ff9b::808:808", True),
        ("2002:a00:1::", False),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),  # Teredo, whose client is 127.0.0.1
    ],
    ids=lambda value: str(value),
)
def test_addresses_resolved_must_be_public(address: str, public: bool) -> None:
    problem = address_problem(ipaddress.ip_address(address), allow_private=False)
    assert (problem is None) is public, problem


def test_the_secret_is_sealed_for_its_endpoint_alone() -> None:
    master = MasterKey(bytes(range(32)))
    sealed = master.seal_secret(b"k" * 32, secret_aad("tenant", "e1"))
    assert b"k" * 32 not in base64.b64decode(sealed)
    assert master.open_secret(sealed, secret_aad("tenant", "e1")) == b"k" * 32
    with pytest.raises(ValueError):
        master.open_secret(sealed, secret_aad("other", "e1"))
    with pytest.raises(ValueError):
        MasterKey(bytes(32)).open_secret(sealed, secret_aad("tenant", "e1"))


def test_the_readmes_verifier_accepts_a_delivery_and_refuses_a_changed_one() -> None:
    """README's "Verifying one, in Python" is code that works on what Omni sends."""
    import time
    from pathlib import Path

    readme = Path(__file__).parents[2].joinpath("README.md").read_text()
    code = readme.split("Verifying one, in Python:\n\n```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, object] = {}
    exec(code, scope)  # noqa: S102 - the README's own snippet
    verify = scope["verify"]
    key = bytes(range(32))
    body = message("omni.gdpr.breach_overdue", "n-1", {"occurred_at": "2026-01-01T00:00:00.000000Z"})
    sent = headers([key], "n-1", int(time.time()), body)
    assert verify(secret_text(key), sent, body) is True  # type: ignore[operator]
    assert verify(secret_text(key), sent, body + b" ") is False  # type: ignore[operator]
    assert verify(secret_text(bytes(32)), sent, body) is False  # type: ignore[operator]
