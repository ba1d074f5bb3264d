"""Money <-> Stripe amounts: exact both ways, or refused with a clear error."""

from __future__ import annotations

import pytest
from aegispay.errors import InvalidMoney
from aegispay.money import Money, currency_exponent
from hypothesis import given
from hypothesis import strategies as st

from aegispay_stripe.amounts import (
    STRIPE_CURRENCIES,
    THREE_DECIMAL,
    ZERO_DECIMAL,
    from_stripe_amount,
    stripe_exponent,
    to_stripe_amount,
)

currencies = st.sampled_from(sorted(STRIPE_CURRENCIES))
minor_units = st.integers(min_value=0, max_value=10**12)


@pytest.mark.parametrize(
    ("money", "wire"),
    [
        (Money(1999, "USD"), 1999),
        (Money(0, "USD"), 0),
        (Money(500, "JPY"), 500),
        (Money(1000, "KRW"), 1000),
        (Money(5120, "KWD"), 5120),
        (Money(10_050, "BHD"), 10_050),
        (Money(5, "ISK"), 500),
        (Money(200, "MGA"), 2),
        (Money(1234, "HUF"), 1234),
    ],
)
def test_known_conversions(money: Money, wire: int) -> None:
    assert to_stripe_amount(money) == wire
    assert from_stripe_amount(wire, money.currency.lower()) == money


def test_stripe_exponents_differ_from_iso_where_stripe_says_so() -> None:
    assert (stripe_exponent("ISK"), currency_exponent("ISK")) == (2, 0)
    assert (stripe_exponent("MGA"), currency_exponent("MGA")) == (0, 2)
    assert stripe_exponent("KWD") == 3 and stripe_exponent("JPY") == 0
    assert ZERO_DECIMAL <= STRIPE_CURRENCIES and THREE_DECIMAL <= STRIPE_CURRENCIES
    assert "STD" not in STRIPE_CURRENCIES  # retired ISO code, filtered out


@pytest.mark.parametrize("currency", sorted(THREE_DECIMAL))
def test_three_decimal_amounts_must_end_in_zero(currency: str) -> None:
    with pytest.raises(InvalidMoney) as caught:
        to_stripe_amount(Money(5125, currency), "refund.amount")
    assert caught.value.field == "refund.amount"
    assert "end in 0" in str(caught.value) and "never rounds" in str(caught.value)


def test_fractional_mga_is_refused() -> None:
    with pytest.raises(InvalidMoney, match="whole units"):
        to_stripe_amount(Money(250, "MGA"))


@pytest.mark.parametrize(
    ("value", "currency"), [(150, "isk"), (-1, "usd"), (True, "usd"), ("100", "usd"), (1.5, "usd")]
)
def test_bad_stripe_amounts_are_refused(value: object, currency: str) -> None:
    with pytest.raises(InvalidMoney):
        from_stripe_amount(value, currency)


def test_unknown_currency_from_stripe_is_refused() -> None:
    with pytest.raises(InvalidMoney, match="currency"):
        from_stripe_amount(100, "xyz")


@given(currencies, minor_units)
def test_round_trip_is_exact_or_refused(currency: str, minor: int) -> None:
    money = Money(minor, currency)
    try:
        wire = to_stripe_amount(money)
    except InvalidMoney:
        # Refused only where Stripe cannot take the amount exactly.
        assert (currency in THREE_DECIMAL and minor % 10) or (currency == "MGA" and minor % 100)
        return
    assert isinstance(wire, int) and wire >= 0
    assert from_stripe_amount(wire, currency.lower()) == money
    # Same value in major units: Stripe's integer over Stripe's exponent.
    assert wire * 10**money.exponent == minor * 10 ** stripe_exponent(currency)


@given(currencies, st.integers(min_value=0, max_value=10**12))
def test_from_stripe_then_back_is_identity(currency: str, wire: int) -> None:
    try:
        money = from_stripe_amount(wire, currency.lower())
    except InvalidMoney:
        assert currency == "ISK" and wire % 100
        return
    assert money.currency == currency
    if currency in THREE_DECIMAL and wire % 10:
        with pytest.raises(InvalidMoney):  # Stripe would never send it; we never send it
            to_stripe_amount(money)
    else:
        assert to_stripe_amount(money) == wire
