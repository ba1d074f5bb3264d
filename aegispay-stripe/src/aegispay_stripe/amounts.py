"""Amounts between AegisPay's :class:`~aegispay.money.Money` and Stripe's ``amount`` integers.

Stripe wants integers in the currency's smallest unit, but its idea of that unit is not always
ISO 4217's (https://docs.stripe.com/currencies):

* zero-decimal at Stripe: BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF.
  ISO agrees except for MGA (ISO: 2 decimals), so a MGA amount must be whole ariary.
* ISK is zero-decimal in ISO 4217 but two-decimal in Stripe's API (``100`` is 1 krona, and the
  amount must be divisible by 100): ISO minor units are multiplied by 100.
* three-decimal: BHD JOD KWD OMR TND. Stripe accepts them in PaymentIntents and Refunds but
  requires the last digit to be 0 ("round to the nearest ten"). AegisPay never rounds money, so
  an amount like 5.125 KWD is refused here, before anything is sent.

Every conversion is exact or raises :class:`~aegispay.errors.InvalidMoney` naming the field.
"""

from __future__ import annotations

from aegispay.errors import InvalidMoney
from aegispay.money import Money, currency_exponent, known_currencies

__all__ = [
    "STRIPE_CURRENCIES",
    "THREE_DECIMAL",
    "ZERO_DECIMAL",
    "from_stripe_amount",
    "stripe_exponent",
    "to_stripe_amount",
]

ZERO_DECIMAL = frozenset(
    [
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    ]
)
THREE_DECIMAL = frozenset("BHD JOD KWD OMR TND".split())  # noqa: SIM905
# Two-decimal at Stripe although ISO 4217 says zero decimals ("special cases").
_TWO_DECIMAL_OVERRIDES = frozenset({"ISK"})

# Stripe's presentment currencies (card payments), intersected with the ISO 4217 codes AegisPay
# knows, so retired codes Stripe still lists (e.g. STD, SLL) drop out. An account may support
# fewer: narrow it with ``currencies`` in [plugins.stripe].
_STRIPE_LISTED = """
USD AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BWP BYN
BZD CAD CDF CHF CLP CNY COP CRC CVE CZK DJF DKK DOP DZD EGP ETB EUR FJD FKP GBP GEL GIP GMD GNF
GTQ GYD HKD HNL HTG HUF IDR ILS INR ISK JMD JOD JPY KES KGS KHR KMF KRW KWD KYD KZT LAK LBP LKR
LRD LSL MAD MDL MGA MKD MMK MNT MOP MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN
PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SEK SGD SHP SLE SOS SRD STD SZL THB TJS TND
TOP TRY TTD TWD TZS UAH UGX UYU UZS VND VUV WST XAF XCD XOF XPF YER ZAR ZMW
""".split()  # noqa: SIM905
STRIPE_CURRENCIES = frozenset(_STRIPE_LISTED) & known_currencies()


def stripe_exponent(currency: str) -> int:
    """How many decimals Stripe's ``amount`` has for ``currency`` (JPY 0, USD 2, ISK 2, KWD 3)."""
    iso = currency_exponent(currency)
    if currency in ZERO_DECIMAL:
        return 0
    if currency in _TWO_DECIMAL_OVERRIDES:
        return 2
    return iso


def to_stripe_amount(money: Money, field: str = "amount") -> int:
    """The integer Stripe expects for ``money``; raises InvalidMoney when Stripe cannot take it
    exactly (fractional MGA, three-decimal amounts not ending in 0)."""
    iso = money.exponent
    shift = stripe_exponent(money.currency) - iso
    scale: int = 10 ** abs(shift)
    if shift >= 0:
        value = money.minor * scale
    else:
        value, remainder = divmod(money.minor, scale)
        if remainder:
            raise InvalidMoney(
                field,
                f"{money} cannot be charged through Stripe: Stripe takes {money.currency} in "
                "whole units only, and AegisPay never rounds money",
            )
    if money.currency in THREE_DECIMAL and value % 10:
        raise InvalidMoney(
            field,
            f"{money} cannot be charged through Stripe: Stripe requires {money.currency} amounts "
            "to end in 0 (a multiple of 0.010), and AegisPay never rounds money",
        )
    return value


def from_stripe_amount(value: object, currency: str, field: str = "amount") -> Money:
    """Money for a Stripe ``amount`` and ``currency`` (Stripe sends lower-case codes)."""
    if not isinstance(currency, str):
        raise InvalidMoney("currency", f"expected a currency code, got {currency!r}")
    code = currency.upper()
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMoney(field, f"expected an integer amount from Stripe, got {value!r}")
    if value < 0:
        raise InvalidMoney(field, f"must not be negative, got {value}")
    shift = stripe_exponent(code) - currency_exponent(code, "currency")
    scale: int = 10 ** abs(shift)
    if shift <= 0:
        return Money(value * scale, code)
    minor, remainder = divmod(value, scale)
    if remainder:
        raise InvalidMoney(
            field,
            f"Stripe amount {value} {code} is not a whole {code} minor unit "
            f"(ISO 4217 has {currency_exponent(code)} decimals)",
        )
    return Money(minor, code)
