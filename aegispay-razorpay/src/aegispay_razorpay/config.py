"""The ``[plugins.razorpay]`` configuration section.

::

    [plugins.razorpay]
    key_id = "rzp_test_..."            # or AEGISPAY_PLUGINS__RAZORPAY__KEY_ID
    key_secret = "..."                 # AEGISPAY_PLUGINS__RAZORPAY__KEY_SECRET
    webhook_secret = "..."             # the secret set on the webhook in the Dashboard
    base_url = "https://api.razorpay.com"   # the default; a fake: "http://127.0.0.1:8766"
                                       # (plain http: loopback only, the keys are in every call)
    currencies = ["INR", "USD"]        # what the account has enabled (default: all Razorpay's)
    connect_timeout_s = 5.0
    read_timeout_s = 10.0
    max_connections = 20
    max_keepalive_connections = 10
    refund_speed = "normal"            # or "optimum" (instant when possible)

Razorpay has no separate sandbox host: test mode is chosen by ``rzp_test_`` keys.
Secrets are kept out of every repr.
"""

from __future__ import annotations

from typing import Any

import attrs
from aegispay.money import known_currencies
from aegispay.validators import api_base_url, non_empty_secret, positive

from .amounts import SUPPORTED_CURRENCIES

LIVE_BASE_URL = "https://api.razorpay.com"


def _currencies(
    instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...] | None
) -> None:
    if value is None:
        return
    if not value:
        raise ValueError("currencies: must list at least one currency (omit it for all)")
    unknown = sorted(set(value) - known_currencies())
    if unknown:
        raise ValueError(f"currencies: unknown ISO 4217 codes {unknown}")
    unsupported = sorted(set(value) - SUPPORTED_CURRENCIES)
    if unsupported:
        raise ValueError(f"currencies: not supported by Razorpay: {unsupported}")


def _speed(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in ("normal", "optimum"):
        raise ValueError(f"refund_speed: expected 'normal' or 'optimum', got {value!r}")


def _normalise_url(value: str) -> str:
    # Paths carry /v1 themselves; accept the documented "https://api.razorpay.com/v1" too.
    value = value.rstrip("/")
    return value.removesuffix("/v1")


@attrs.frozen
class RazorpayConfig:
    key_id: str = attrs.field(validator=non_empty_secret)
    key_secret: str = attrs.field(repr=False, validator=non_empty_secret)
    webhook_secret: str | None = attrs.field(default=None, repr=False)
    name: str = attrs.field(default="razorpay", validator=non_empty_secret)
    base_url: str = attrs.field(
        default=LIVE_BASE_URL, converter=_normalise_url, validator=api_base_url
    )
    currencies: tuple[str, ...] | None = attrs.field(default=None, validator=_currencies)
    connect_timeout_s: float = attrs.field(default=5.0, validator=positive)
    # One authorize makes up to five requests; the engine's gateway_timeout_s bounds the whole.
    read_timeout_s: float = attrs.field(default=10.0, validator=positive)
    max_connections: int = attrs.field(default=20, validator=positive)
    max_keepalive_connections: int = attrs.field(default=10, validator=positive)
    refund_speed: str = attrs.field(default="normal", validator=_speed)
    fixed_fee_minor: int = 0
    fee_bps: int = 200  # Razorpay's standard domestic rate, 2 %

    @property
    def supported_currencies(self) -> frozenset[str]:
        return frozenset(self.currencies) if self.currencies else SUPPORTED_CURRENCIES
