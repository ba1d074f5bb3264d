"""Money: integer minor units in an ISO 4217 currency, never a float, never rounded silently."""

from __future__ import annotations

import decimal
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import attrs
import pytest
from aegispay.errors import AegisPayError, InvalidInput, InvalidMoney
from aegispay.money import Money, currency_exponent, known_currencies
from hypothesis import given
from hypothesis import strategies as st

CURRENCIES = sorted(known_currencies())
currencies = st.sampled_from(CURRENCIES)
minors = st.integers(min_value=0, max_value=10**18)


def money_in(currency: str) -> st.SearchStrategy[Money]:
    return st.builds(Money, minors, st.just(currency))


same_currency_pairs = currencies.flatmap(lambda c: st.tuples(money_in(c), money_in(c)))
same_currency_triples = currencies.flatmap(
    lambda c: st.tuples(money_in(c), money_in(c), money_in(c))
)


# -- the currency table ---------------------------------------------------------------------


def test_invalid_money_is_a_value_error_and_an_aegispay_error() -> None:
    assert issubclass(InvalidMoney, ValueError)
    assert issubclass(InvalidMoney, InvalidInput)
    assert issubclass(InvalidMoney, AegisPayError)


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [("JPY", 0), ("KRW", 0), ("USD", 2), ("EUR", 2), ("KWD", 3), ("BHD", 3), ("CLF", 4)],
)
def test_currency_exponent(currency: str, exponent: int) -> None:
    assert currency_exponent(currency) == exponent
    assert Money(0, currency).exponent == exponent


def test_known_currencies_holds_payment_currencies_only() -> None:
    known = known_currencies()
    assert isinstance(known, frozenset)
    assert {"USD", "EUR", "JPY", "KWD", "BHD", "CLF", "GBP"} <= known
    # Metals, SDRs, fund codes, the test and "no currency" codes have no minor unit.
    assert not {"XAU", "XAG", "XPT", "XPD", "XDR", "XTS", "XXX", "XUA"} & known
    for code in known:
        assert len(code) == 3 and code.isalpha() and code.isupper(), code
        assert currency_exponent(code) in (0, 2, 3, 4), code


@pytest.mark.parametrize("code", ["XAU", "XAG", "XPT", "XPD", "XDR", "XTS", "XXX", "ABC", ""])
def test_unknown_or_non_payment_currency_is_refused(code: str) -> None:
    with pytest.raises(InvalidMoney) as info:
        currency_exponent(code)
    assert info.value.field == "currency"
    assert repr(code) in str(info.value)
    with pytest.raises(InvalidMoney) as info:
        Money(100, code)
    assert info.value.field == "currency"
    with pytest.raises(InvalidMoney) as info:
        Money.of("1", code)
    assert info.value.field == "currency"


@pytest.mark.parametrize("code", ["usd", "Usd", "jpy"])
def test_lowercase_currency_is_refused_with_a_hint(code: str) -> None:
    with pytest.raises(InvalidMoney) as info:
        Money.of("1", code)
    assert info.value.field == "currency"
    assert "upper case" in str(info.value)


@pytest.mark.parametrize("code", [None, 840, b"USD"])
def test_non_string_currency_is_refused(code: Any) -> None:
    with pytest.raises(InvalidMoney) as info:
        Money(1, code)
    assert info.value.field == "currency"


def test_currency_error_names_the_callers_field() -> None:
    with pytest.raises(InvalidMoney) as info:
        currency_exponent("ZZZ", field="refund.currency")
    assert info.value.field == "refund.currency"
    assert str(info.value).startswith("refund.currency: ")


# -- Money.of: major units in, exact minor units out ------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        # exponent 0
        ("1", "JPY", 1),
        ("1500", "JPY", 1500),
        (Decimal("42"), "JPY", 42),
        (7, "JPY", 7),
        ("1.0", "JPY", 1),  # trailing zeros are not rounding
        # exponent 2
        ("19.99", "USD", 1999),
        ("0.01", "USD", 1),
        ("10.5", "USD", 1050),
        ("0", "USD", 0),
        (" 3.20 ", "USD", 320),
        ("1.000", "USD", 100),
        (Decimal("19.99"), "USD", 1999),
        (Decimal("0.10"), "USD", 10),
        (12, "USD", 1200),
        (Decimal("1E+2"), "USD", 10000),
        # exponent 3
        ("1.234", "KWD", 1234),
        ("0.001", "KWD", 1),
        ("5", "KWD", 5000),
        (Decimal("2.5"), "BHD", 2500),
        (1, "BHD", 1000),
        # exponent 4
        ("1.2345", "CLF", 12345),
        ("0.0001", "CLF", 1),
        (Decimal("3"), "CLF", 30000),
        (2, "CLF", 20000),
    ],
)
def test_of_converts_major_units_exactly(amount: Any, currency: str, minor: int) -> None:
    money = Money.of(amount, currency)
    assert money == Money(minor, currency)
    assert type(money.minor) is int


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        ("1.005", "USD"),
        ("0.001", "USD"),
        (Decimal("19.999"), "USD"),
        ("1.5", "JPY"),
        (Decimal("0.1"), "JPY"),
        ("1.2345", "KWD"),
        ("0.0005", "BHD"),
        ("1.23456", "CLF"),
        (Decimal("1E-5"), "CLF"),
    ],
)
def test_of_refuses_to_round(amount: Any, currency: str) -> None:
    with pytest.raises(InvalidMoney) as info:
        Money.of(amount, currency)
    assert info.value.field == "amount"
    assert "more decimals" in str(info.value)
    assert currency in str(info.value)


@pytest.mark.parametrize(
    "amount",
    [
        "1.0000000000000000000000000001",  # 29 significant digits
        "12345678901234567890123456789.01",
        Decimal("99999999999999999999999999999.99"),
    ],
)
def test_of_refuses_to_round_beyond_the_decimal_context_precision(amount: Any) -> None:
    """Precision must not depend on the default 28-digit decimal context: either the exact
    amount comes out, or the call refuses."""
    try:
        money = Money.of(amount, "USD")
    except InvalidMoney:
        return
    assert money.to_decimal_string() == str(Decimal(amount))


@pytest.mark.parametrize("amount", [1.0, 0.1, 19.99, float("nan"), float("inf"), -1.0])
def test_of_refuses_floats(amount: float) -> None:
    with pytest.raises(InvalidMoney) as info:
        Money.of(amount, "USD")
    assert info.value.field == "amount"
    assert "float" in str(info.value)


@pytest.mark.parametrize(
    "amount",
    ["NaN", "nan", "sNaN", "Infinity", "-Infinity", "inf", Decimal("NaN"), Decimal("Infinity")],
)
def test_of_refuses_non_finite(amount: Any) -> None:
    with pytest.raises(InvalidMoney) as info:
        Money.of(amount, "USD")
    assert info.value.field == "amount"
    assert "finite" in str(info.value)


@pytest.mark.parametrize("amount", ["-1", "-0.01", Decimal("-5"), -3])
def test_of_refuses_negative(amount: Any) -> None:
    with pytest.raises(InvalidMoney) as info:
        Money.of(amount, "USD")
    assert info.value.field == "amount"
    assert "negative" in str(info.value)


@pytest.mark.parametrize("amount", [True, False])
def test_of_refuses_bool(amount: bool) -> None:
    with pytest.raises(InvalidMoney) as info:
        Money.of(amount, "USD")
    assert info.value.field == "amount"


@pytest.mark.parametrize("amount", ["", "abc", "1,00", "1.2.3", "$5", "12 USD"])
def test_of_refuses_text_that_is_not_a_number(amount: str) -> None:
    with pytest.raises(InvalidMoney) as info:
        Money.of(amount, "USD")
    assert info.value.field == "amount"
    assert repr(amount) in str(info.value)


@pytest.mark.parametrize("amount", [None, [1], b"1", object()])
def test_of_refuses_other_types(amount: Any) -> None:
    with pytest.raises(InvalidMoney) as info:
        Money.of(amount, "USD")
    assert info.value.field == "amount"


def test_of_names_the_callers_field() -> None:
    with pytest.raises(InvalidMoney) as info:
        Money.of(1.5, "USD", field="capture.amount")
    assert info.value.field == "capture.amount"
    with pytest.raises(InvalidMoney) as info:
        Money.of("1.005", "USD", field="refund.amount")
    assert info.value.field == "refund.amount"


# -- the constructor (minor units) -------------------------------------------------------------


@pytest.mark.parametrize("minor", [1.0, Decimal("1"), "100", True, False, None])
def test_constructor_requires_an_int(minor: Any) -> None:
    with pytest.raises(InvalidMoney) as info:
        Money(minor, "USD")
    assert info.value.field == "amount"


def test_constructor_refuses_negative() -> None:
    with pytest.raises(InvalidMoney) as info:
        Money(-1, "USD")
    assert info.value.field == "amount"
    assert "negative" in str(info.value)


def test_money_is_frozen_and_hashable() -> None:
    money = Money(100, "USD")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        money.minor = 5  # type: ignore[misc]
    assert money.minor == 100
    assert {Money(100, "USD"), Money(100, "USD"), Money(100, "EUR")} == {
        Money(100, "USD"),
        Money(100, "EUR"),
    }


def test_equality_includes_the_currency() -> None:
    assert Money(100, "USD") == Money(100, "USD")
    assert Money(100, "USD") != Money(100, "EUR")
    assert Money(100, "USD") != Money(101, "USD")
    assert Money(100, "USD") != 100


def test_zero_and_truthiness() -> None:
    assert Money.zero("KWD") == Money(0, "KWD")
    assert not Money.zero("USD")
    assert Money(1, "USD")


# -- formatting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("money", "text"),
    [
        (Money(500, "JPY"), "500"),
        (Money(0, "JPY"), "0"),
        (Money(1999, "USD"), "19.99"),
        (Money(5, "USD"), "0.05"),
        (Money(0, "USD"), "0.00"),
        (Money(100000, "USD"), "1000.00"),
        (Money(1250, "KWD"), "1.250"),
        (Money(1, "BHD"), "0.001"),
        (Money(1, "CLF"), "0.0001"),
        (Money(123456, "CLF"), "12.3456"),
    ],
)
def test_to_decimal_string_has_exactly_the_currency_decimals(money: Money, text: str) -> None:
    assert money.to_decimal_string() == text
    assert str(money) == f"{text} {money.currency}"
    assert money.amount == Decimal(text)


# -- arithmetic -------------------------------------------------------------------------------


def test_add_and_subtract() -> None:
    assert Money(150, "USD") + Money(250, "USD") == Money(400, "USD")
    assert Money(400, "USD") - Money(150, "USD") == Money(250, "USD")
    assert Money(400, "USD") - Money(400, "USD") == Money(0, "USD")


def test_subtraction_below_zero_is_refused() -> None:
    with pytest.raises(InvalidMoney) as info:
        Money(100, "USD") - Money(101, "USD")
    assert info.value.field == "amount"
    assert "negative" in str(info.value)


@pytest.mark.parametrize("op", ["+", "-", "<", "<=", ">", ">="])
def test_mixing_currencies_is_refused(op: str) -> None:
    usd, eur = Money(100, "USD"), Money(100, "EUR")
    operations = {
        "+": lambda: usd + eur,
        "-": lambda: usd - eur,
        "<": lambda: usd < eur,
        "<=": lambda: usd <= eur,
        ">": lambda: usd > eur,
        ">=": lambda: usd >= eur,
    }
    with pytest.raises(InvalidMoney) as info:
        operations[op]()
    assert info.value.field == "currency"
    assert "USD" in str(info.value) and "EUR" in str(info.value)


@pytest.mark.parametrize("other", [1, 1.0, Decimal("1"), "1.00"])
def test_mixing_with_non_money_is_a_type_error(other: Any) -> None:
    usd = Money(100, "USD")
    with pytest.raises(TypeError):
        usd + other
    with pytest.raises(TypeError):
        usd - other
    with pytest.raises(TypeError):
        usd < other  # noqa: B015


def test_comparisons() -> None:
    small, large = Money(100, "USD"), Money(200, "USD")
    assert small < large and small <= large and large > small and large >= small
    assert small <= Money(100, "USD") and small >= Money(100, "USD")
    assert not small > large and not large < small


# -- percentage (fees in basis points) -------------------------------------------------------


@pytest.mark.parametrize(
    ("minor", "bp", "expected"),
    [
        (10000, 290, 290),  # 2.9 % of 100.00
        (1000, 290, 29),
        (50, 100, 1),  # 0.50 rounds half up to 1
        (49, 100, 0),  # 0.49 rounds down
        (150, 100, 2),  # 1.50 -> 2
        (250, 100, 3),  # 2.50 -> 3: half up, not half even
        (1, 5000, 1),  # 0.5 -> 1
        (1, 4999, 0),
        (12345, 0, 0),
        (12345, 10000, 12345),
        (12345, 20000, 24690),
        (0, 290, 0),
    ],
)
def test_percentage_rounds_half_up(minor: int, bp: int, expected: int) -> None:
    assert Money(minor, "USD").percentage(bp) == Money(expected, "USD")


def test_percentage_keeps_the_currency() -> None:
    assert Money(1000, "KWD").percentage(250) == Money(25, "KWD")


@pytest.mark.parametrize("bp", [-1, 2.9, Decimal("290"), True, "290", None])
def test_percentage_refuses_bad_basis_points(bp: Any) -> None:
    with pytest.raises(InvalidMoney) as info:
        Money(1000, "USD").percentage(bp)
    assert info.value.field == "basis_points"


# -- properties -------------------------------------------------------------------------------


@given(currency=currencies, minor=minors)
def test_decimal_string_round_trips(currency: str, minor: int) -> None:
    money = Money(minor, currency)
    assert Money.of(money.to_decimal_string(), currency) == money
    assert Money.of(money.amount, currency) == money
    assert money.to_decimal_string().count(".") == (1 if money.exponent else 0)


@given(currency=currencies, minor=st.integers(min_value=10**25, max_value=10**40))
def test_decimal_string_round_trips_for_very_large_amounts(currency: str, minor: int) -> None:
    """Exactness must not stop at the 28 significant digits of the default decimal context."""
    money = Money(minor, currency)
    assert Money.of(money.to_decimal_string(), currency) == money


@given(currency=currencies, whole=minors, extra=st.integers(min_value=1, max_value=9))
def test_one_decimal_too_many_is_always_refused(currency: str, whole: int, extra: int) -> None:
    exponent = currency_exponent(currency)
    text = f"{Money(whole, currency).to_decimal_string()}{'.' if exponent == 0 else ''}{extra}"
    with pytest.raises(InvalidMoney):
        Money.of(text, currency)


@given(pair=same_currency_pairs)
def test_addition_is_commutative_and_subtraction_undoes_it(pair: tuple[Money, Money]) -> None:
    a, b = pair
    total = a + b
    assert total == b + a
    assert total.minor == a.minor + b.minor
    assert total - b == a
    assert total - a == b
    assert a + Money.zero(a.currency) == a


@given(triple=same_currency_triples)
def test_addition_is_associative(triple: tuple[Money, Money, Money]) -> None:
    a, b, c = triple
    assert (a + b) + c == a + (b + c)


@given(pair=same_currency_pairs)
def test_subtraction_is_refused_exactly_when_it_would_go_negative(
    pair: tuple[Money, Money],
) -> None:
    a, b = pair
    if b.minor > a.minor:
        with pytest.raises(InvalidMoney):
            a - b
    else:
        assert (a - b).minor == a.minor - b.minor


@given(pair=same_currency_pairs)
def test_ordering_follows_minor_units(pair: tuple[Money, Money]) -> None:
    a, b = pair
    assert (a < b) == (a.minor < b.minor)
    assert (a <= b) == (a.minor <= b.minor)
    assert (a > b) == (a.minor > b.minor)
    assert (a >= b) == (a.minor >= b.minor)
    assert (a == b) == (a.minor == b.minor)


@given(currency=currencies, minor=minors, bp=st.integers(min_value=0, max_value=10000))
def test_percentage_never_exceeds_the_amount(currency: str, minor: int, bp: int) -> None:
    money = Money(minor, currency)
    fee = money.percentage(bp)
    assert fee.currency == currency
    assert Money.zero(currency) <= fee <= money


@given(minor=minors, bp=st.integers(min_value=0, max_value=100_000))
def test_percentage_matches_exact_half_up_rounding(minor: int, bp: int) -> None:
    with decimal.localcontext() as ctx:
        ctx.prec = 100
        exact = (Decimal(minor) * bp / 10000).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    assert Money(minor, "USD").percentage(bp).minor == int(exact)


@given(minor=minors, bp=st.integers(min_value=0, max_value=9999))
def test_percentage_is_monotonic_in_basis_points(minor: int, bp: int) -> None:
    money = Money(minor, "EUR")
    assert money.percentage(bp) <= money.percentage(bp + 1)


@pytest.mark.parametrize("amount", ["1E+2", "1e2", "1_000", "1,00", "", "."])
def test_of_refuses_strings_that_are_not_plain_decimals(amount: str) -> None:
    with pytest.raises(InvalidMoney) as info:
        Money.of(amount, "USD")
    assert info.value.field == "amount"
