"""Money: integer minor units in an ISO 4217 currency, never a float.

The currency table comes from the ``iso4217`` package (the ISO 4217 list, with each currency's
minor-unit exponent). Codes without a minor unit (gold, SDRs, the test code XTS...) are not
payment currencies and are refused.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

import attrs
import iso4217

from .errors import InvalidMoney

__all__ = ["Money", "currency_exponent", "known_currencies"]


@cache
def _exponents() -> dict[str, int]:
    return {c.code: c.exponent for c in iso4217.Currency if c.exponent is not None}


def known_currencies() -> frozenset[str]:
    """Every active ISO 4217 code that has a minor unit."""
    return frozenset(_exponents())


def currency_exponent(currency: str, field: str = "currency") -> int:
    """The number of decimals of ``currency`` (JPY 0, USD 2, KWD 3); raises InvalidMoney."""
    if not isinstance(currency, str):
        raise InvalidMoney(
            field, f"expected an ISO 4217 code string, got {type(currency).__name__}"
        )
    try:
        return _exponents()[currency]
    except KeyError:
        hint = " (codes are upper case)" if currency.upper() in _exponents() else ""
        raise InvalidMoney(field, f"unknown ISO 4217 currency {currency!r}{hint}") from None


_DECIMAL = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)\s*$")


def _check_minor(value: object, field: str) -> int:
    # bool is an int subclass; True is not an amount.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMoney(
            field, f"minor units must be an int, got {type(value).__name__} {value!r}"
        )
    if value < 0:
        raise InvalidMoney(field, f"must not be negative, got {value}")
    return value


@attrs.frozen(order=False)
class Money:
    """An amount of one currency in integer minor units (cents, yen, fils).

    Construct with ``Money(1999, "USD")`` (minor units) or ``Money.of("19.99", "USD")``
    (major units, decimal string or Decimal). Arithmetic between different currencies, floats,
    negative amounts and amounts with more decimals than the currency has are refused.
    """

    minor: int
    currency: str

    def __attrs_post_init__(self) -> None:
        _check_minor(self.minor, "amount")
        currency_exponent(self.currency)

    @classmethod
    def of(cls, amount: str | Decimal | int, currency: str, field: str = "amount") -> Money:
        """Money from major units: ``Money.of("10.50", "USD") == Money(1050, "USD")``."""
        exponent = currency_exponent(currency)
        if isinstance(amount, float):
            raise InvalidMoney(
                field, f"floats are not accepted for money, got {amount!r}; pass a decimal string"
            )
        if isinstance(amount, bool):
            raise InvalidMoney(
                field, f"expected a decimal string, Decimal or int, got bool {amount!r}"
            )
        if isinstance(amount, int):
            value = Decimal(amount)
        elif isinstance(amount, str):
            # Plain decimals only: no exponents ("1E+2"), no digit separators ("1_000").
            try:
                value = Decimal(amount.strip())
            except InvalidOperation:
                raise InvalidMoney(field, f"not a decimal number: {amount!r}") from None
            if value.is_finite() and not _DECIMAL.match(amount):
                raise InvalidMoney(
                    field, f"not a plain decimal number (no exponent or '_'): {amount!r}"
                )
        elif isinstance(amount, Decimal):
            value = amount
        else:
            raise InvalidMoney(
                field, f"expected a decimal string or Decimal, got {type(amount).__name__}"
            )
        if not value.is_finite():
            raise InvalidMoney(field, f"must be a finite number, got {amount!r}")
        if value < 0:
            raise InvalidMoney(field, f"must not be negative, got {amount!r}")
        # Integer arithmetic on the decimal's digits: Decimal.scaleb would round to the
        # context's 28 significant digits, and money is never rounded silently.
        _, digits, decimal_exponent = value.as_tuple()
        assert isinstance(decimal_exponent, int)  # finite, checked above
        coefficient = int("".join(map(str, digits)) or "0")
        shift = decimal_exponent + exponent
        if shift >= 0:
            return cls(coefficient * 10**shift, currency)
        whole, remainder = divmod(coefficient, 10**-shift)
        if remainder:
            raise InvalidMoney(
                field,
                f"{amount!r} has more decimals than {currency} allows ({exponent}); "
                "AegisPay never rounds money silently",
            )
        return cls(whole, currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    @property
    def exponent(self) -> int:
        return _exponents()[self.currency]

    @property
    def amount(self) -> Decimal:
        """The value in major units, exact."""
        return Decimal(self.to_decimal_string())  # exact: built from digits, no context

    def to_decimal_string(self) -> str:
        """Major units with exactly the currency's decimals: ``"19.99"``, ``"500"``, ``"1.250"``."""
        exponent = self.exponent
        if exponent == 0:
            return str(self.minor)
        whole, frac = divmod(self.minor, 10**exponent)
        return f"{whole}.{frac:0{exponent}d}"

    def _same(self, other: Any) -> Money:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise InvalidMoney("currency", f"cannot combine {self.currency} with {other.currency}")
        return other

    def __add__(self, other: Money) -> Money:
        return Money(self.minor + self._same(other).minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        other = self._same(other)
        if other.minor > self.minor:
            raise InvalidMoney("amount", f"{self} - {other} would be negative")
        return Money(self.minor - other.minor, self.currency)

    def __lt__(self, other: Money) -> bool:
        return self.minor < self._same(other).minor

    def __le__(self, other: Money) -> bool:
        return self.minor <= self._same(other).minor

    def __gt__(self, other: Money) -> bool:
        return self.minor > self._same(other).minor

    def __ge__(self, other: Money) -> bool:
        return self.minor >= self._same(other).minor

    def __bool__(self) -> bool:
        return self.minor != 0

    def percentage(self, basis_points: int) -> Money:
        """``basis_points``/10000 of this amount, rounded half up to a whole minor unit.

        Integer arithmetic only: used for fees (e.g. 290 bp = 2.9 %).
        """
        if isinstance(basis_points, bool) or not isinstance(basis_points, int) or basis_points < 0:
            raise InvalidMoney("basis_points", f"must be a non-negative int, got {basis_points!r}")
        return Money((self.minor * basis_points + 5000) // 10000, self.currency)

    def __str__(self) -> str:
        return f"{self.to_decimal_string()} {self.currency}"
