"""PayPal amounts: ``{"currency_code": "USD", "value": "10.50"}``, decimal strings, never floats.

PayPal takes 25 currencies (developer.paypal.com, "Currency codes"). For most of them the number
of decimals is the ISO 4217 exponent, but PayPal accepts no decimals at all for HUF and TWD
(ISO: 2) nor JPY (ISO: 0, the same). A forint amount with fillér is therefore not payable through
PayPal: it is refused here, before anything is sent, rather than rounded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aegispay.errors import InvalidMoney
from aegispay.money import Money, currency_exponent

__all__ = [
    "NO_DECIMAL_CURRENCIES",
    "PAYPAL_CURRENCIES",
    "UnsupportedAmount",
    "from_paypal",
    "paypal_exponent",
    "to_paypal",
]

# Every currency PayPal's REST APIs accept as a payment currency. BRL, MYR (and CNY, INR) work
# for in-country accounts only: PayPal answers those it will not take for this account with
# CURRENCY_NOT_SUPPORTED, which the adapter marks retryable elsewhere.
PAYPAL_CURRENCIES = frozenset(
    {
        "AUD", "BRL", "CAD", "CNY", "CZK", "DKK", "EUR", "HKD", "HUF", "ILS", "INR", "JPY", "MYR",
        "MXN", "TWD", "NZD", "NOK", "PHP", "PLN", "GBP", "SGD", "SEK", "CHF", "THB", "USD",
    }
)  # fmt: skip

# "This currency does not support decimals. If you pass a decimal amount, an error occurs."
NO_DECIMAL_CURRENCIES = frozenset({"HUF", "JPY", "TWD"})


class UnsupportedAmount(InvalidMoney):
    """An amount PayPal cannot take: a currency it does not support, or more decimals than it
    accepts for the currency (HUF and TWD are whole units only at PayPal)."""


def paypal_exponent(currency: str) -> int:
    """The number of decimals PayPal accepts for ``currency`` (USD 2, JPY 0, HUF 0)."""
    if currency not in PAYPAL_CURRENCIES:
        currency_exponent(currency)  # an unknown ISO code gets the core's message
        raise UnsupportedAmount("currency", f"PayPal does not support {currency}")
    return 0 if currency in NO_DECIMAL_CURRENCIES else currency_exponent(currency)


def to_paypal(amount: Money) -> dict[str, str]:
    """``Money`` as PayPal's amount object: ``Money(1050, "USD")`` -> ``{"currency_code":
    "USD", "value": "10.50"}``; ``Money(100000, "HUF")`` (1000.00 Ft) -> ``"1000"``."""
    currency = amount.currency
    wire = paypal_exponent(currency)
    iso = amount.exponent
    whole, rest = divmod(amount.minor, 10 ** (iso - wire))
    if rest:
        raise UnsupportedAmount(
            "amount",
            f"{amount} has decimals, but PayPal takes {currency} in whole units only; "
            "AegisPay never rounds money silently",
        )
    if wire == 0:
        return {"currency_code": currency, "value": str(whole)}
    units, fraction = divmod(whole, 10**wire)
    return {"currency_code": currency, "value": f"{units}.{fraction:0{wire}d}"}


def from_paypal(obj: Mapping[str, Any] | None, field: str = "amount") -> Money:
    """PayPal's amount object as ``Money``; raises InvalidMoney naming ``field``.

    Accepts any plain decimal with at most the currency's ISO decimals ("10", "10.5", "10.50"),
    as PayPal's answers are read, not written.
    """
    if not isinstance(obj, Mapping):
        raise InvalidMoney(field, f"expected an amount object, got {type(obj).__name__}")
    currency, value = obj.get("currency_code"), obj.get("value")
    if not isinstance(currency, str) or not isinstance(value, str):
        raise InvalidMoney(field, "expected string currency_code and value")
    currency_exponent(currency, f"{field}.currency_code")
    return Money.of(value, currency, field=field)
