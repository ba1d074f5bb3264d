"""``[plugins.paypal]``: credentials, where PayPal is, and how the HTTP client behaves."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import attrs
from aegispay.validators import LOOPBACK_HOSTS, non_empty_secret, not_negative, positive

LIVE_URL = "https://api-m.paypal.com"
SANDBOX_URL = "https://api-m.sandbox.paypal.com"
_NAMED_URLS = {"live": LIVE_URL, "sandbox": SANDBOX_URL}


def _url(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value in _NAMED_URLS:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"{attribute.name}: expected 'live', 'sandbox' or an http(s) URL, got {value!r}"
        )
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        # Credentials and tokens travel in these requests: plain HTTP only to a local fake.
        raise ValueError(f"{attribute.name}: http:// is allowed for loopback hosts only")


@attrs.frozen
class PayPalConfig:
    """The ``[plugins.paypal]`` section.

    ``base_url`` is ``"live"``, ``"sandbox"`` or any URL (a local fake: ``http://127.0.0.1:8765``).
    ``webhook_id`` is the id PayPal gave the webhook you registered: verification needs it.
    ``return_url`` / ``cancel_url`` are where PayPal sends the payer after approving or
    cancelling; without them the client must use PayPal's JavaScript SDK.
    """

    client_id: str = attrs.field(repr=False, validator=non_empty_secret)
    client_secret: str = attrs.field(repr=False, validator=non_empty_secret)
    webhook_id: str | None = None
    base_url: str = attrs.field(default="live", validator=_url)
    name: str = "paypal"
    connect_timeout_s: float = attrs.field(default=5.0, validator=positive)
    read_timeout_s: float = attrs.field(default=20.0, validator=positive)
    max_connections: int = attrs.field(default=20, validator=positive)
    max_keepalive_connections: int = attrs.field(default=10, validator=not_negative)
    keepalive_expiry_s: float = attrs.field(default=30.0, validator=positive)
    # A token is refreshed this long before PayPal says it expires, so no call carries a token
    # that expires in flight.
    token_refresh_margin_s: float = attrs.field(default=60.0, validator=not_negative)
    # Webhook deliveries older (or newer) than this are refused as replays.
    webhook_tolerance_s: float = attrs.field(default=300.0, validator=positive)
    # How far back a status lookup searches PayPal's transactions for a payment whose create
    # answer was lost (PayPal allows 31 days; wider windows mean more pages).
    status_search_window_h: float = attrs.field(default=72.0, validator=positive)
    return_url: str | None = None
    cancel_url: str | None = None
    brand_name: str | None = None
    fixed_fee_minor: int = attrs.field(default=49, validator=not_negative)
    fee_bps: int = attrs.field(default=349, validator=not_negative)

    @property
    def api_url(self) -> str:
        return _NAMED_URLS.get(self.base_url, self.base_url).rstrip("/")
