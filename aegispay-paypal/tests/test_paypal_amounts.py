"""PayPal amount strings: exact in every exponent, refused rather than rounded."""

from __future__ import annotations

import re

import pytest
from aegispay.errors import InvalidMoney
from aegispay.money import Money, currency_exponent
from hypothesis import given
from hypothesis import strategies as st

from aegispay_paypal.amounts import (
    NO_DECIMAL_CURRENCIES,
    PAYPAL_CURRENCIES,
    UnsupportedAmount,
    from_paypal,
    paypal_exponent,
    to_paypal,
)

CURRENCIES = sorted(PAYPAL_CURRENCIES)


@st.composite
def payable(draw: st.DrawFn) -> Money:
    """Any amount PayPal can take: whole units for HUF and TWD."""
    currency = draw(st.sampled_from(CURRENCIES))
    step = 10 ** (currency_exponent(currency) - paypal_exponent(currency))
    return Money(draw(st.integers(min_value=0, max_value=10**15)) * step, currency)


@given(payable())
def test_round_trip_is_exact(amount: Money) -> None:
    assert from_paypal(to_paypal(amount)) == amount


@given(payable())
def test_value_is_a_plain_decimal_with_paypals_decimals(amount: Money) -> None:
    wire = to_paypal(amount)
    decimals = paypal_exponent(amount.currency)
    pattern = r"\d+" if decimals == 0 else rf"\d+\.\d{{{decimals}}}"
    assert re.fullmatch(pattern, wire["value"]), wire
    assert wire["currency_code"] == amount.currency


@given(
    st.sampled_from(sorted(NO_DECIMAL_CURRENCIES - {"JPY"})),
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=1, max_value=99),
)
def test_fractions_of_huf_and_twd_are_refused_not_rounded(
    currency: str, units: int, cents: int
) -> None:
    with pytest.raises(UnsupportedAmount, match="whole units"):
        to_paypal(Money(units * 100 + cents, currency))


@pytest.mark.parametrize(
    ("minor", "currency", "value"),
    [
        (1050, "USD", "10.50"),
        (5, "USD", "0.05"),
        (0, "EUR", "0.00"),
        (1000, "JPY", "1000"),
        (100_000, "HUF", "1000"),
        (12_300, "TWD", "123"),
        (199_999, "GBP", "1999.99"),
    ],
)
def test_known_values(minor: int, currency: str, value: str) -> None:
    assert to_paypal(Money(minor, currency)) == {"currency_code": currency, "value": value}


@pytest.mark.parametrize("currency", ["KWD", "BHD", "INR_", "usd"])
def test_currencies_paypal_does_not_take_are_refused(currency: str) -> None:
    with pytest.raises(InvalidMoney) as caught:
        paypal_exponent(currency)
    assert caught.value.field == "currency"


def test_three_decimal_currency_is_not_in_the_list() -> None:
    assert not any(currency_exponent(c) == 3 for c in PAYPAL_CURRENCIES)
    with pytest.raises(UnsupportedAmount, match="PayPal does not support KWD"):
        to_paypal(Money(10_050, "KWD"))


@pytest.mark.parametrize(
    "obj",
    [
        {"currency_code": "USD", "value": "10.001"},  # more decimals than USD has
        {"currency_code": "USD", "value": 10.5},  # a float
        {"currency_code": "USD"},
        {"currency_code": "XXX", "value": "1"},
        "10.00 USD",
        None,
    ],
)
def test_bad_amounts_from_paypal_name_the_field(obj: object) -> None:
    with pytest.raises(InvalidMoney) as caught:
        from_paypal(obj, "resource.amount")  # type: ignore[arg-type]
    assert caught.value.field.startswith("resource.amount")
