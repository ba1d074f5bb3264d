"""The cost strategy: cheapest configured fee first, in integer minor units."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import attrs
from aegispay.decisions import HookContext
from aegispay.money import Money
from aegispay.payment import Payment

from .routing_base import Options, Ranking, Strategy, check_currency, config_error


@attrs.frozen
class Fee:
    fixed_minor: int
    basis_points: int

    def of(self, amount: Money) -> Money:
        """Fixed fee plus ``basis_points`` of the amount (rounded half up to a minor unit)."""
        return Money(self.fixed_minor, amount.currency) + amount.percentage(self.basis_points)


FeeTable = dict[str, dict[tuple[str, str | None], Fee]]


def parse_fees(options: Options, required: bool) -> FeeTable:
    """The ``fees`` table (see :class:`Cost`), per gateway: (currency, method) -> Fee."""
    table = options.table("fees")
    if table is None:
        if required:
            raise config_error(options.path("fees"), "required key missing")
        return {}
    fees: FeeTable = {}
    for gateway in list(table.data):
        table.gateway(gateway, table.path(gateway))
        entries: dict[tuple[str, str | None], Fee] = {}
        for entry in table.tables(gateway):
            currency = entry.string("currency")
            if currency is None:
                raise config_error(entry.path("currency"), "required key missing")
            check_currency(currency, entry.path("currency"))
            method = entry.string("payment_method")
            fixed = entry.money("fixed", currency) or 0
            bps = entry.integer("basis_points", 0) or 0
            entry.finish()
            if (currency, method) in entries:
                raise config_error(entry.where, f"a second fee for {currency} {method or ''}")
            entries[(currency, method)] = Fee(fixed, bps)
        fees[gateway] = entries
    return fees


def fee_minor(fees: FeeTable, gateway: str, payment: Payment) -> int | None:
    """``gateway``'s fee for ``payment`` in minor units of its currency (None: no fee), with
    Money's rounding (half up) but no Money objects: routing computes this per candidate."""
    entries = fees.get(gateway)
    if not entries:
        return None
    amount = payment.amount
    fee = entries.get((amount.currency, payment.payment_method)) or entries.get(
        (amount.currency, None)
    )
    if fee is None:
        return None
    return fee.fixed_minor + (amount.minor * fee.basis_points + 5000) // 10000


class Cost(Strategy):
    """``strategy = "cost"``: the gateway with the lowest fee for this payment first.

    Options (``[plugins.routing.cost]``): per gateway, a list of fee entries, each for one
    currency and optionally one payment method::

        [plugins.routing.cost.fees]
        stripe = [
            { currency = "USD", fixed = "0.30", basis_points = 290 },
            { currency = "USD", payment_method = "amex", fixed = "0.30", basis_points = 350 },
            { currency = "JPY", fixed = "30", basis_points = 360 },
        ]
        adyen = [{ currency = "USD", fixed = "0.12", basis_points = 300 }]

    ``fixed`` is a decimal string in the currency's major units (``"30"`` yen, ``"0.100"``
    dinar; more decimals than the currency has is an error), ``basis_points`` an integer
    (290 = 2.9 %). The fee is ``fixed + amount * basis_points / 10000`` rounded half up to a
    whole minor unit, all in integers: money is never a float. The entry for the payment's
    currency and method wins over the currency's entry without a method. Ties keep candidate
    order; gateways without a fee for the payment follow the priced ones, as fallbacks.
    """

    name: ClassVar[str] = "cost"

    def __init__(self, options: Options) -> None:
        self.fees = parse_fees(options, required=True)
        options.finish()

    def fee(self, gateway: str, payment: Payment) -> Money | None:
        """The configured fee of ``gateway`` for ``payment``, or None if it has none."""
        entries = self.fees.get(gateway)
        if not entries:
            return None
        currency = payment.amount.currency
        fee = entries.get((currency, payment.payment_method)) or entries.get((currency, None))
        return None if fee is None else fee.of(payment.amount)

    def rank(self, candidates: Sequence[str], payment: Payment, context: HookContext) -> Ranking:
        # Stable sort on the integer fee alone: equal fees keep candidate order.
        ordered = sorted(
            ((fee, name) for name in candidates if (fee := self.fee(name, payment)) is not None),
            key=lambda pair: pair[0].minor,
        )
        names = tuple(name for _, name in ordered)
        if not names:
            return Ranking((), f"cost: no fee configured for {payment.amount.currency}", self.name)
        listed = ", ".join(f"{name} {fee}" for fee, name in ordered)
        unpriced = [name for name in candidates if name not in names]
        tail = f"; no fee for {unpriced}" if unpriced else ""
        return Ranking(names, f"cost: cheapest first ({listed}){tail}", self.name)
