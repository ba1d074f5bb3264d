"""Amount conversion: Money <-> Razorpay's integer subunits, across exponents."""

from __future__ import annotations

import pytest
from aegispay.errors import InvalidMoney
from aegispay.money import Money, currency_exponent
from hypothesis import given
from hypothesis import strategies as st

from aegispay_razorpay.amounts import (
    SUPPORTED_CURRENCIES,
    THREE_DECIMAL_CURRENCIES,
    amount_problem,
    from_razorpay,
    to_razorpay,
)

currencies = st.sampled_from(sorted(SUPPORTED_CURRENCIES))


def test_the_exponents_razorpay_documents() -> None:
    assert currency_exponent("INR") == 2 and "INR" in SUPPORTED_CURRENCIES
    assert currency_exponent("USD") == 2
    assert currency_exponent("JPY") == 0 and "JPY" in SUPPORTED_CURRENCIES
    assert {"KWD", "BHD", "OMR"} == THREE_DECIMAL_CURRENCIES
    # Withdrawn ISO codes on Razorpay's old list are not offered.
    assert "HRK" not in SUPPORTED_CURRENCIES and "SLL" not in SUPPORTED_CURRENCIES


@given(currency=currencies, minor=st.integers(min_value=1, max_value=10**15))
def test_round_trip_is_exact(currency: str, minor: int) -> None:
    if currency in THREE_DECIMAL_CURRENCIES:
        minor *= 10  # Razorpay's rule: the last of three decimals is 0
    money = Money(minor, currency)
    wire = to_razorpay(money)
    assert isinstance(wire, int) and not isinstance(wire, bool)
    assert wire == minor  # subunits are minor units: 100.50 USD -> 10050, 10050 JPY -> 10050
    assert from_razorpay(wire, currency) == money


@given(major=st.integers(min_value=1, max_value=10**9), currency=currencies)
def test_major_units_scale_by_the_exponent(major: int, currency: str) -> None:
    money = Money.of(str(major), currency)
    assert to_razorpay(money) == major * 10 ** currency_exponent(currency)


@given(
    currency=st.sampled_from(sorted(THREE_DECIMAL_CURRENCIES)),
    minor=st.integers(min_value=1, max_value=10**12).filter(lambda n: n % 10),
)
def test_three_decimal_amounts_must_end_in_zero(currency: str, minor: int) -> None:
    problem = amount_problem(Money(minor, currency))
    assert problem is not None and "end in 0" in problem
    with pytest.raises(InvalidMoney, match="amount"):
        to_razorpay(Money(minor, currency))


def test_unsupported_and_zero_amounts_are_refused() -> None:
    assert "not supported" in str(amount_problem(Money(100, "XOF")))
    assert amount_problem(Money(100, "USD"), frozenset({"INR"})) is not None
    assert "zero" in str(amount_problem(Money(0, "INR")))


@pytest.mark.parametrize(
    ("amount", "currency"),
    [(10.5, "INR"), ("1050", "INR"), (True, "INR"), (-1, "INR"), (100, None), (100, "ZZZ")],
)
def test_from_razorpay_refuses_what_is_not_an_amount(amount: object, currency: object) -> None:
    with pytest.raises(InvalidMoney):
        from_razorpay(amount, currency)
