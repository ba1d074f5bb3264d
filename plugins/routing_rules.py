"""Routing rules: structured conditions and actions, evaluated before the strategy (no eval).

Each rule in ``rules = [...]`` is a table::

    { name = "inr-local", when = { currency = "INR" }, only = ["razorpay"] }
    { when = { amount_gte = "500.00", currency = "USD" }, prefer = ["adyen"] }
    { when = { country = ["DE", "AT"], payment_method = "sepa" }, exclude = ["stripe"] }
    { when = { metadata = { channel = "b2b" } }, prefer = ["adyen", "stripe"] }
    { when = { payment_method_type = "upi" }, prefer = ["razorpay"] }

Conditions (all must hold; an empty or missing ``when`` always holds): ``currency``,
``payment_method`` (the instrument's token), ``payment_method_type`` (its family: "card",
"upi"...), ``country`` (a value or a list of values), ``metadata`` (key = value, all must
match), ``amount_gt`` / ``amount_gte`` / ``amount_lt`` / ``amount_lte`` (a decimal string
in major units, compared in integer minor units; requires exactly one ``currency``).

Actions (at least one): ``only`` keeps just the listed gateways, ``exclude`` removes them (both
eliminate: a removed gateway is never tried), ``prefer`` moves the listed gateways to the front,
in that order, ahead of the strategy's own order. Every matching rule applies, in file order.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

import attrs
from aegispay.payment import Payment

from .routing_base import Options, check_currency, config_error

_COMPARISONS: dict[str, Callable[[int, int], bool]] = {
    "amount_gt": operator.gt,
    "amount_gte": operator.ge,
    "amount_lt": operator.lt,
    "amount_lte": operator.le,
}


@attrs.frozen
class Rule:
    name: str
    currencies: frozenset[str] | None = None
    methods: frozenset[str] | None = None
    method_types: frozenset[str] | None = None
    countries: frozenset[str] | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    amounts: tuple[tuple[Callable[[int, int], bool], int], ...] = ()
    only: tuple[str, ...] | None = None
    prefer: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def matches(self, payment: Payment) -> bool:
        if self.currencies is not None and payment.amount.currency not in self.currencies:
            return False
        if self.methods is not None and payment.payment_method not in self.methods:
            return False
        if self.method_types is not None and payment.payment_method_type not in self.method_types:
            return False
        if self.countries is not None and payment.country not in self.countries:
            return False
        if any(payment.metadata.get(key) != value for key, value in self.metadata):
            return False
        return all(compare(payment.amount.minor, limit) for compare, limit in self.amounts)


def _optional_set(values: tuple[str, ...] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


def parse_rule(options: Options, index: int) -> Rule:
    name = options.string("name", f"#{index + 1}") or ""
    when = options.table("when") or Options({}, options.path("when"), options.refs, options.root)
    currencies = when.strings("currency")
    for currency in currencies or ():
        check_currency(currency, when.path("currency"))
    amounts = []
    for key, compare in _COMPARISONS.items():
        if not when.has(key):
            continue
        if currencies is None or len(currencies) != 1:
            raise config_error(when.path(key), "an amount condition needs exactly one currency")
        limit = when.money(key, currencies[0])
        assert limit is not None
        amounts.append((compare, limit))
    metadata = when.table("metadata")
    pairs: list[tuple[str, str]] = []
    if metadata is not None:
        for key in list(metadata.data):
            value = metadata.string(key)
            assert value is not None
            pairs.append((key, value))
        metadata.finish()
    rule = Rule(
        name=name,
        currencies=_optional_set(currencies),
        methods=_optional_set(when.strings("payment_method")),
        method_types=_optional_set(when.strings("payment_method_type")),
        countries=_optional_set(when.strings("country")),
        metadata=tuple(pairs),
        amounts=tuple(amounts),
        only=options.gateways("only"),
        prefer=options.gateways("prefer") or (),
        exclude=options.gateways("exclude") or (),
    )
    when.finish()
    options.finish()
    if rule.only is None and not rule.prefer and not rule.exclude:
        raise config_error(options.where, "a rule needs an action: only, prefer or exclude")
    return rule


@attrs.frozen
class RulesOutcome:
    allowed: tuple[str, ...]  # candidates left, in candidate order
    prefer: tuple[str, ...]  # to put first, in this order (only names still allowed)
    notes: tuple[str, ...]  # what each matching rule did, for the reason


def apply_rules(rules: Sequence[Rule], candidates: Sequence[str], payment: Payment) -> RulesOutcome:
    allowed = list(candidates)
    prefer: list[str] = []
    notes = []
    for rule in rules:
        if not rule.matches(payment):
            continue
        did = []
        if rule.only is not None:
            allowed = [name for name in allowed if name in rule.only]
            did.append(f"only {list(rule.only)}")
        if rule.exclude:
            allowed = [name for name in allowed if name not in rule.exclude]
            did.append(f"exclude {list(rule.exclude)}")
        if rule.prefer:
            prefer.extend(name for name in rule.prefer if name not in prefer)
            did.append(f"prefer {list(rule.prefer)}")
        notes.append(f"rule {rule.name!r}: {', '.join(did)}")
    kept = set(allowed)
    return RulesOutcome(tuple(allowed), tuple(n for n in prefer if n in kept), tuple(notes))
