"""The A/B test strategy: sticky, deterministic assignment of customers to variants."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import attrs
from aegispay.decisions import HookContext
from aegispay.payment import Payment

from .routing_base import Options, Ranking, Strategy, config_error

if TYPE_CHECKING:
    from aegispay.breaker import GatewayMonitor


@attrs.frozen
class Variant:
    name: str
    weight: int
    strategy: Strategy | None
    order: tuple[str, ...]


def bucket(experiment: str, key: str, total: int) -> int:
    """A stable number in ``[0, total)`` for (experiment, key): the same on every process and
    every run (SHA-256, not Python's salted ``hash``)."""
    digest = hashlib.sha256(f"{experiment}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % total


class ABTest(Strategy):
    """``strategy = "ab_test"``: each customer is assigned to one variant of an experiment,
    always the same one, and routed by that variant's own strategy or gateway order.

    Options (``[plugins.routing.ab_test]``)::

        experiment = "cost-routing-2026-11"
        variants = [
            { name = "control", weight = 80, strategy = "round_robin" },
            { name = "cheapest", weight = 15, strategy = "cost" },
            { name = "adyen-first", weight = 5, order = ["adyen", "stripe"] },
        ]

    A variant names either a ``strategy`` (its options come from ``options = {...}`` on the
    variant, else from that strategy's own ``[plugins.routing.<strategy>]`` table; ``ab_test``
    cannot nest) or a fixed gateway ``order``. Assignment hashes (experiment, customer_id)
    with SHA-256 into ``sum(weights)`` buckets, so it is sticky per customer across payments,
    processes and restarts, and the split over many customers approaches the weights; renaming
    the experiment reshuffles everyone. A payment without a customer is assigned by its payment
    id. The decision's strategy is ``ab_test:<variant>`` and its reason names the experiment
    and variant, so results can be compared per variant from the attempts.
    """

    name: ClassVar[str] = "ab_test"

    def __init__(self, options: Options) -> None:
        from .routing_registry import build_strategy  # the registry imports this module

        self.experiment = options.string("experiment")
        if self.experiment is None:
            raise config_error(options.path("experiment"), "required key missing")
        self.variants: list[Variant] = []
        for entry in options.tables("variants"):
            name = entry.string("name")
            if name is None:
                raise config_error(entry.path("name"), "required key missing")
            if any(v.name == name for v in self.variants):
                raise config_error(entry.path("name"), "duplicate variant name", name)
            weight = entry.integer("weight", minimum=1)
            if weight is None:
                raise config_error(entry.path("weight"), "required key missing")
            strategy_name = entry.string("strategy")
            order = entry.gateways("order")
            own = entry.table("options")
            entry.finish()
            if (strategy_name is None) == (order is None):
                raise config_error(entry.where, "give exactly one of strategy or order")
            strategy = None
            if strategy_name is not None:
                if strategy_name == self.name:
                    raise config_error(entry.path("strategy"), "ab_test cannot nest", "ab_test")
                strategy = build_strategy(strategy_name, entry.path("strategy"), own, options.root)
            elif own is not None:
                raise config_error(own.where, "options need a strategy")
            self.variants.append(Variant(name, weight, strategy, order or ()))
        if not self.variants:
            raise config_error(options.path("variants"), "expected at least one variant")
        options.finish()
        self.total = sum(v.weight for v in self.variants)

    def bind(self, monitor: GatewayMonitor) -> None:
        self.monitor = monitor
        for variant in self.variants:
            if variant.strategy is not None:
                variant.strategy.bind(monitor)

    def assign(self, key: str) -> Variant:
        point = bucket(self.experiment or "", key, self.total)
        for variant in self.variants:
            if point < variant.weight:
                return variant
            point -= variant.weight
        raise AssertionError("bucket outside the weights")  # pragma: no cover

    def rank(self, candidates: Sequence[str], payment: Payment, context: HookContext) -> Ranking:
        variant = self.assign(payment.customer_id or payment.id)
        label = f"{self.name}:{variant.name}"
        head = f"ab_test {self.experiment!r} variant {variant.name!r}"
        if variant.strategy is None:
            ordered = tuple(name for name in variant.order if name in candidates)
            return Ranking(ordered, f"{head}: fixed order {list(variant.order)}", label)
        inner = variant.strategy.rank(candidates, payment, context)
        return Ranking(inner.ordered, f"{head} -> {inner.reason}", label, inner.eliminated)
