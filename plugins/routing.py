"""Configurable routing: rules first, then a named strategy, then the remaining fallbacks.

Configuration (``[plugins.routing]``; without it this plugin abstains and ``priority_routing``
decides as before)::

    strategy = "weighted"                    # round_robin, weighted, cost, geographic, ab_test
    rules = [{ when = { currency = "INR" }, only = ["razorpay"] }]

    [plugins.routing.weighted]               # the strategy's own options
    weights = { stripe = 5, adyen = 3, braintree = 2 }

Each decision: the rules (see ``routing_rules``) eliminate and pick preferred gateways, the
strategy orders (and may eliminate from) what is left, candidates it did not rank follow as
fallbacks in candidate order, and rule preferences go first. The reason names every rule that
applied and the strategy's own explanation. Gateway names in the configuration must be
registered gateways: checked when the service starts (ConfigError naming the field).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aegispay.decisions import HookContext, RouteDecision
from aegispay.hookspecs import hookimpl
from aegispay.payment import Payment

from .routing_base import Options, Ranking, Strategy, config_error
from .routing_registry import build_strategy
from .routing_rules import Rule, apply_rules, parse_rule

if TYPE_CHECKING:
    from aegispay.service import PaymentService

WHERE = "plugins.routing"


class RoutingPlugin:
    def __init__(self, config: Mapping[str, Any]) -> None:
        self.active = bool(config)
        self.refs: list[tuple[str, str]] = []  # (field, gateway name) to check at startup
        root = Options(config, WHERE, self.refs)
        self.rules: list[Rule] = [parse_rule(o, i) for i, o in enumerate(root.tables("rules"))]
        name = root.string("strategy")
        self.strategy: Strategy | None = None
        if name is not None:
            self.strategy = build_strategy(name, root.path("strategy"), None, root)
        root.finish()
        self._checked = False

    def check_gateways(self, known: Collection[str]) -> None:
        """Raise ConfigError naming the first configured gateway that is not registered."""
        for path, name in self.refs:
            if name not in known:
                raise config_error(path, f"unknown gateway; registered: {sorted(known)}", name)
        self._checked = True

    @hookimpl(trylast=True)
    def aegispay_startup(self, service: PaymentService) -> None:
        if self.active:
            self.check_gateways(service.gateways)

    @hookimpl(trylast=True)
    def aegispay_select_gateway(
        self, payment: Payment, candidates: Sequence[str], context: HookContext
    ) -> RouteDecision | None:
        if not self.active:
            return None
        if not self._checked:  # a service used without ``async with``
            self.check_gateways(context.gateways)
        return self.decide(payment, candidates, context)

    def decide(
        self, payment: Payment, candidates: Sequence[str], context: HookContext
    ) -> RouteDecision:
        rules = apply_rules(self.rules, candidates, payment)
        notes = list(rules.notes)
        allowed = rules.allowed
        if not allowed:
            return RouteDecision((), "; ".join([*notes, "no gateway left"]), "rules")
        if self.strategy is None:
            ranking = Ranking((), "candidate order", "rules")
        else:
            ranking = self.strategy.rank(allowed, payment, context)
        kept = set(allowed) - ranking.eliminated
        ranked = list(dict.fromkeys(name for name in ranking.ordered if name in kept))
        rest = [name for name in allowed if name in kept and name not in ranked]
        order = [*ranked, *rest]
        prefer = [name for name in rules.prefer if name in kept]
        final = (*prefer, *(name for name in order if name not in prefer))
        notes.append(ranking.reason)
        if rest and ranked:
            notes.append(f"fallbacks {rest}")
        if not final:
            notes.append("no gateway left")
        return RouteDecision(final, "; ".join(notes), ranking.label)
