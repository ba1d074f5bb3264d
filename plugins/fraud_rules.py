"""Rule-based fraud checks: amount thresholds, velocity per customer, deny lists.

Configuration (``[plugins.fraud_rules]``; amounts are per currency, major units)::

    review_above = { USD = "5000.00" }
    deny_above = { USD = "20000.00" }
    velocity_limit = 20          # payments per customer per window...
    velocity_window_s = 60.0
    velocity_action = "review"   # ...then "review" or "deny"
    deny_customers = ["cus_bad"]
    deny_countries = ["KP"]
    deny_payment_methods = []
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from aegispay.decisions import FraudVerdict, HookContext
from aegispay.errors import ConfigError, InvalidMoney
from aegispay.hookspecs import hookimpl
from aegispay.money import Money
from aegispay.payment import Payment
from aegispay.settings import structure_config


def _action(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in ("review", "deny"):
        raise ValueError(f"{attribute.name}: expected 'review' or 'deny', got {value!r}")


@attrs.frozen
class FraudRulesConfig:
    review_above: dict[str, str] = attrs.field(factory=dict)
    deny_above: dict[str, str] = attrs.field(factory=dict)
    velocity_limit: int = 20
    velocity_window_s: float = 60.0
    velocity_action: str = attrs.field(default="review", validator=_action)
    deny_customers: tuple[str, ...] = ()
    deny_countries: tuple[str, ...] = ()
    deny_payment_methods: tuple[str, ...] = ()


class VelocityCounter:
    """Payments per key in the current and previous window: memory is bounded by the keys
    seen in two windows, not by history (rotation drops older counts)."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._window = -1
        self._current: dict[str, int] = {}
        self._previous: dict[str, int] = {}

    def hit(self, key: str, now_s: float) -> int:
        """Count one payment and return the count over roughly the last window."""
        window = int(now_s // self._window_s)
        if window != self._window:
            self._previous = self._current if window == self._window + 1 else {}
            self._current = {}
            self._window = window
        count = self._current.get(key, 0) + 1
        self._current[key] = count
        # Weight the previous window by how much of it still overlaps the sliding window.
        overlap = 1.0 - (now_s % self._window_s) / self._window_s
        return count + int(self._previous.get(key, 0) * overlap)

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)


def _thresholds(values: Mapping[str, str], where: str) -> dict[str, int]:
    out = {}
    for currency, amount in values.items():
        try:
            out[currency] = Money.of(amount, currency, f"{where}.{currency}").minor
        except InvalidMoney as exc:
            raise ConfigError(f"invalid configuration: {exc}") from None
    return out


class FraudRulesPlugin:
    def __init__(self, config: Mapping[str, Any]) -> None:
        where = "plugins.fraud_rules"
        self.config = c = structure_config(config, FraudRulesConfig, where)
        self._review = _thresholds(c.review_above, f"{where}.review_above")
        self._deny = _thresholds(c.deny_above, f"{where}.deny_above")
        self._deny_customers = frozenset(c.deny_customers)
        self._deny_countries = frozenset(c.deny_countries)
        self._deny_methods = frozenset(c.deny_payment_methods)
        self.velocity = VelocityCounter(c.velocity_window_s)

    @hookimpl(trylast=True)
    def aegispay_check_fraud(self, payment: Payment, context: HookContext) -> FraudVerdict:
        source = "fraud_rules"
        if payment.customer_id in self._deny_customers:
            return FraudVerdict.deny(100, "customer is on the deny list", source)
        if payment.country in self._deny_countries:
            return FraudVerdict.deny(100, f"country {payment.country} is on the deny list", source)
        if payment.payment_method in self._deny_methods:
            return FraudVerdict.deny(100, "payment method is on the deny list", source)
        amount = payment.amount
        deny = self._deny.get(amount.currency)
        if deny is not None and amount.minor > deny:
            return FraudVerdict.deny(90, f"amount {amount} above deny threshold", source)
        if payment.customer_id is not None:
            count = self.velocity.hit(payment.customer_id, context.now().timestamp())
            if count > self.config.velocity_limit:
                reason = (
                    f"{count} payments by this customer within {self.config.velocity_window_s:g}s"
                )
                if self.config.velocity_action == "deny":
                    return FraudVerdict.deny(80, reason, source)
                return FraudVerdict.review(60, reason, source)
        review = self._review.get(amount.currency)
        if review is not None and amount.minor > review:
            return FraudVerdict.review(50, f"amount {amount} above review threshold", source)
        return FraudVerdict.allow(0, "", source)
