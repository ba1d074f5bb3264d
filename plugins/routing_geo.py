"""The geographic strategy: customer country and currency -> allowed and preferred gateways."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import attrs
from aegispay.decisions import HookContext
from aegispay.payment import Payment

from .routing_base import Options, Ranking, Strategy, check_currency, config_error


@attrs.frozen
class Region:
    allow: frozenset[str] | None
    prefer: tuple[str, ...]


def _regions(options: Options, key: str, check: bool) -> dict[str, Region]:
    table = options.table(key)
    if table is None:
        return {}
    regions = {}
    for code in list(table.data):
        if check:
            check_currency(code, table.path(code))
        elif len(code) != 2 or not code.isalpha() or not code.isupper():
            raise config_error(table.path(code), "expected an ISO 3166 alpha-2 code such as DE")
        entry = table.table(code)
        assert entry is not None
        allow = entry.gateways("allow")
        prefer = entry.gateways("prefer") or ()
        entry.finish()
        if allow is None and not prefer:
            raise config_error(entry.where, "expected allow and/or prefer")
        if allow is not None and not set(prefer) <= set(allow):
            raise config_error(entry.path("prefer"), "prefers a gateway it does not allow")
        regions[code] = Region(None if allow is None else frozenset(allow), prefer)
    table.finish()
    return regions


class Geographic(Strategy):
    """``strategy = "geographic"``: where the customer is and what they pay in decide which
    gateways may take the payment, and which go first.

    Options (``[plugins.routing.geographic]``)::

        countries.DE = { prefer = ["adyen"] }
        countries.BR = { allow = ["ebanx", "adyen"], prefer = ["ebanx"] }
        currencies.INR = { allow = ["razorpay"] }      # INR only through razorpay

    ``allow`` is a compliance rule: every other gateway is eliminated and never tried, not
    merely moved back (if nothing is left the payment fails with ``no_gateway``). Country
    (``payment.country``) and currency rules both apply. ``prefer`` puts gateways first, the
    country's before the currency's; the other allowed gateways follow as fallbacks. A payment
    whose country and currency have no entry keeps all candidates in candidate order.
    """

    name: ClassVar[str] = "geographic"

    def __init__(self, options: Options) -> None:
        self.countries = _regions(options, "countries", check=False)
        self.currencies = _regions(options, "currencies", check=True)
        options.finish()

    def rank(self, candidates: Sequence[str], payment: Payment, context: HookContext) -> Ranking:
        applied = [
            (f"country {payment.country}", self.countries.get(payment.country or "")),
            (f"currency {payment.amount.currency}", self.currencies.get(payment.amount.currency)),
        ]
        allowed = list(candidates)
        prefer: list[str] = []
        notes = []
        for what, region in applied:
            if region is None:
                continue
            if region.allow is not None:
                allowed = [name for name in allowed if name in region.allow]
                notes.append(f"{what} allows only {sorted(region.allow)}")
            if region.prefer:
                prefer.extend(name for name in region.prefer if name not in prefer)
                notes.append(f"{what} prefers {list(region.prefer)}")
        eliminated = frozenset(candidates) - set(allowed)
        ordered = tuple(name for name in prefer if name in allowed)
        reason = "geographic: " + ("; ".join(notes) or "no rule for this country or currency")
        return Ranking(ordered, reason, self.name, eliminated)
