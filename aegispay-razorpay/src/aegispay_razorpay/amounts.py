"""Razorpay amounts: integer subunits of the ISO 4217 currency, with Razorpay's own rules.

Razorpay takes ``amount`` as an integer in the currency's smallest unit (paise for INR, cents
for USD, yen for JPY, fils for KWD), which is exactly :attr:`aegispay.Money.minor`. Two rules are
Razorpay's own:

* three-decimal currencies (KWD, BHD, OMR) must end in 0: 99.991 KWD cannot be charged, 99.990
  can ("pass the last decimal number as 0", Razorpay Checkout / Orders docs);
* only the currencies Razorpay accepts for international payments (below) are supported, and an
  account accepts currencies other than INR only once international payments are enabled on it
  (configure ``currencies`` to narrow the list to what the account has).
"""

from __future__ import annotations

from aegispay.errors import InvalidMoney
from aegispay.money import Money, currency_exponent, known_currencies

__all__ = [
    "SUPPORTED_CURRENCIES",
    "THREE_DECIMAL_CURRENCIES",
    "amount_problem",
    "from_razorpay",
    "to_razorpay",
]

# Razorpay's international currency list, plus the zero-decimal (JPY, May 2024) and
# three-decimal (KWD, BHD, OMR, April 2023) currencies it added. Codes ISO 4217 has withdrawn
# (HRK, SLL) are dropped below: Money refuses them anyway.
_RAZORPAY_CURRENCIES = (  # noqa: SIM905 - a code table reads better as text
    "AED ALL AMD ARS AUD AWG BBD BDT BHD BMD BND BOB BSD BWP BZD CAD CHF CNY COP CRC CUP CZK "
    "DKK DOP DZD EGP ETB EUR FJD GBP GHS GIP GMD GTQ GYD HKD HNL HRK HTG HUF IDR ILS INR JMD "
    "JPY KES KGS KHR KWD KYD KZT LAK LBP LKR LRD LSL MAD MDL MKD MMK MNT MOP MUR MVR MWK MXN "
    "MYR NAD NGN NIO NOK NPR NZD OMR PEN PGK PHP PKR QAR RUB SAR SCR SEK SGD SLL SOS SSP SVC "
    "SZL THB TTD TZS USD UYU UZS YER ZAR"
).split()

SUPPORTED_CURRENCIES: frozenset[str] = frozenset(_RAZORPAY_CURRENCIES) & known_currencies()
THREE_DECIMAL_CURRENCIES: frozenset[str] = frozenset(
    code for code in SUPPORTED_CURRENCIES if currency_exponent(code) == 3
)


def amount_problem(money: Money, currencies: frozenset[str] = SUPPORTED_CURRENCIES) -> str | None:
    """Why Razorpay would refuse ``money`` (None when it can be charged)."""
    if money.currency not in currencies:
        return f"{money.currency} is not supported by this Razorpay gateway"
    if money.currency in THREE_DECIMAL_CURRENCIES and money.minor % 10:
        return (
            f"{money} cannot be charged by Razorpay: three-decimal currencies must end in 0 "
            f"(e.g. {Money(money.minor - money.minor % 10, money.currency)})"
        )
    if money.minor == 0:
        return "Razorpay does not accept a zero amount"
    return None


def to_razorpay(money: Money, currencies: frozenset[str] = SUPPORTED_CURRENCIES) -> int:
    """``money`` as Razorpay's integer ``amount`` (its subunits); raises InvalidMoney."""
    problem = amount_problem(money, currencies)
    if problem is not None:
        raise InvalidMoney("amount", problem)
    return money.minor


def from_razorpay(amount: object, currency: object, field: str = "amount") -> Money:
    """Money from a Razorpay ``amount`` and ``currency``; raises InvalidMoney on anything else
    than a non-negative integer amount and a known currency code (never guesses)."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidMoney(field, f"Razorpay amount must be an integer, got {amount!r}")
    if not isinstance(currency, str):
        raise InvalidMoney("currency", f"Razorpay currency must be a string, got {currency!r}")
    return Money(amount, currency.upper())
