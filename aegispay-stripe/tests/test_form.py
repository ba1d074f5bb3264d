"""Stripe's bracket-nested form encoding, both ways."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aegispay_stripe.form import decode_form, encode_form


def test_nested_tables_lists_and_flags() -> None:
    body = encode_form(
        {
            "amount": 1999,
            "confirm": True,
            "metadata": {"order": "42", "note": "a&b=c"},
            "payment_method_types": ["card"],
            "return_url": None,
        }
    )
    assert body == (
        "amount=1999&confirm=true&metadata%5Border%5D=42&metadata%5Bnote%5D=a%26b%3Dc"
        "&payment_method_types%5B0%5D=card"
    )
    assert decode_form(body) == {
        "amount": "1999",
        "confirm": "true",
        "metadata": {"order": "42", "note": "a&b=c"},
        "payment_method_types": ["card"],
    }


def test_empty_brackets_append() -> None:
    assert decode_form("a[]=x&a[]=y") == {"a": ["x", "y"]}


def test_floats_are_refused() -> None:
    with pytest.raises(TypeError, match="amount"):
        encode_form({"amount": 19.99})


def test_a_value_and_a_table_under_one_name_is_refused() -> None:
    with pytest.raises(ValueError, match="both"):
        decode_form("a=1&a[b]=2")


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
values = st.text(max_size=12)
trees: st.SearchStrategy[Any] = st.recursive(
    values,
    lambda inner: (
        st.dictionaries(names, inner, min_size=1, max_size=3)
        | st.lists(inner, min_size=1, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(names, trees, max_size=4))
def test_round_trip(params: dict[str, Any]) -> None:
    assert decode_form(encode_form(params)) == params
