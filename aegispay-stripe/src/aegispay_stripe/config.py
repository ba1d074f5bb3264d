"""``[plugins.stripe]``: keys, endpoint, timeouts and pool limits of the Stripe gateway.

::

    [plugins.stripe]
    secret_key = "sk_live_..."          # or AEGISPAY_PLUGINS__STRIPE__SECRET_KEY
    webhook_secret = "whsec_..."        # the endpoint's signing secret
    base_url = "https://api.stripe.com" # or a fake: "http://127.0.0.1:12111"
    read_timeout_s = 30.0

Secrets are fields with ``repr=False``: a config object can be printed or logged safely.
"""

from __future__ import annotations

from typing import Any

import attrs
from aegispay.money import known_currencies
from aegispay.validators import api_base_url, not_negative, positive

from .amounts import STRIPE_CURRENCIES
from .signature import DEFAULT_TOLERANCE_S

__all__ = ["LIVE_BASE_URL", "REFUND_REASONS", "StripeConfig"]

LIVE_BASE_URL = "https://api.stripe.com"  # test mode uses the same host with an sk_test_ key
# The only refund reasons Stripe accepts; any other reason travels in metadata.
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})


def _secret_key(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    # Never echo the value: it is a secret.
    if not value.startswith(("sk_", "rk_")):
        raise ValueError(
            f"{attribute.name}: expected a Stripe secret or restricted key (sk_... or rk_...)"
        )


def _webhook_secret(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value and not value.startswith("whsec_"):
        raise ValueError(f"{attribute.name}: expected a Stripe signing secret (whsec_...)")


def _currencies(
    instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...] | None
) -> None:
    if value is None:
        return
    unknown = sorted(set(value) - known_currencies())
    if unknown:
        raise ValueError(f"{attribute.name}: unknown ISO 4217 currencies {unknown}")
    unsupported = sorted(set(value) - STRIPE_CURRENCIES)
    if unsupported:
        raise ValueError(f"{attribute.name}: Stripe does not charge in {unsupported}")


def _methods(instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError(f"{attribute.name}: at least one payment method type is needed")


@attrs.frozen
class StripeConfig:
    """One Stripe account as a gateway. Only ``secret_key`` is required."""

    secret_key: str = attrs.field(repr=False, validator=_secret_key)
    webhook_secret: str = attrs.field(default="", repr=False, validator=_webhook_secret)
    # Older signing secrets still accepted while a secret is being rolled.
    previous_webhook_secrets: tuple[str, ...] = attrs.field(default=(), repr=False)
    name: str = "stripe"
    base_url: str = attrs.field(default=LIVE_BASE_URL, validator=api_base_url)
    api_version: str | None = None  # Stripe-Version header; None: the account's default
    connect_timeout_s: float = attrs.field(default=5.0, validator=positive)
    read_timeout_s: float = attrs.field(default=30.0, validator=positive)
    write_timeout_s: float = attrs.field(default=10.0, validator=positive)
    pool_timeout_s: float = attrs.field(default=5.0, validator=positive)
    max_connections: int = attrs.field(default=20, validator=positive)
    max_keepalive_connections: int = attrs.field(default=10, validator=not_negative)
    keepalive_expiry_s: float = attrs.field(default=30.0, validator=not_negative)
    # None: every currency Stripe charges in. Narrow it to what the account has enabled.
    currencies: tuple[str, ...] | None = attrs.field(default=None, validator=_currencies)
    payment_method_types: tuple[str, ...] = attrs.field(default=("card",), validator=_methods)
    # Used when a payment names no payment method (e.g. "pm_card_visa" in test mode). With
    # neither, the PaymentIntent is created unconfirmed and the client collects the card.
    default_payment_method: str | None = None
    return_url: str | None = None  # where a redirect (3DS) returns; needed for redirect methods
    webhook_tolerance_s: int = attrs.field(default=DEFAULT_TOLERANCE_S, validator=positive)
    fixed_fee_minor: int = attrs.field(default=30, validator=not_negative)
    fee_bps: int = attrs.field(default=290, validator=not_negative)

    def webhook_secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.webhook_secret, *self.previous_webhook_secrets) if s)

    def __attrs_post_init__(self) -> None:
        for secret in self.previous_webhook_secrets:
            _webhook_secret(self, attrs.fields(StripeConfig).previous_webhook_secrets, secret)
