"""Round-robin and weighted (smooth weighted round-robin) routing strategies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from aegispay.decisions import HookContext
from aegispay.payment import Payment

from .routing_base import Options, Ranking, Strategy, check_int, config_error


class RoundRobin(Strategy):
    """``strategy = "round_robin"``: each decision starts one gateway further along.

    No options. Decision *n* puts candidate ``n mod len(candidates)`` first and the others after
    it in candidate order, wrapping around, so with a fixed set of candidates every gateway is
    first once per cycle. The counter lives on the plugin instance (one per service).
    """

    name: ClassVar[str] = "round_robin"

    def __init__(self, options: Options) -> None:
        options.finish()
        self._count = 0

    def rank(self, candidates: Sequence[str], payment: Payment, context: HookContext) -> Ranking:
        if not candidates:
            return Ranking((), "round_robin: no candidates", self.name)
        start = self._count % len(candidates)
        self._count += 1
        ordered = (*candidates[start:], *candidates[:start])
        reason = f"round_robin: turn {self._count}, {ordered[0]} first"
        return Ranking(ordered, reason, self.name)


class Weighted(Strategy):
    """``strategy = "weighted"``: smooth weighted round-robin (the nginx algorithm).

    Options (``[plugins.routing.weighted]``)::

        weights = { stripe = 5, adyen = 3, braintree = 2 }

    Weights are integers >= 0, at least one above 0. Over every ``sum(weights)`` consecutive
    decisions (with the same candidates) each gateway is first exactly ``weight`` times, and
    the picks are interleaved (5:3:2 gives a a b c a b a c b a ... not a run of five). Each
    decision adds every gateway's weight to its running score, picks the highest (ties: the
    earlier in ``weights``) and subtracts the total from the winner. The other weighted
    gateways follow by descending weight; a gateway with weight 0, or none, is only a fallback.
    """

    name: ClassVar[str] = "weighted"

    def __init__(self, options: Options) -> None:
        table = options.table("weights")
        if table is None:
            raise config_error(options.path("weights"), "required key missing")
        weights: dict[str, int] = {}
        for name, value in table.data.items():
            path = table.path(name)
            weights[table.gateway(name, path)] = check_int(value, path, 0)
        if not any(weights.values()):
            raise config_error(table.where, "needs at least one weight above 0", table.data)
        options.finish()
        self.weights = {name: weight for name, weight in weights.items() if weight}
        self._current = dict.fromkeys(self.weights, 0)
        by_weight = sorted(self.weights, key=lambda name: -self.weights[name])
        self._rank = {name: i for i, name in enumerate(by_weight)}

    def rank(self, candidates: Sequence[str], payment: Payment, context: HookContext) -> Ranking:
        present = [name for name in self.weights if name in candidates]
        if not present:
            return Ranking((), "weighted: no weighted gateway among the candidates", self.name)
        current = self._current
        total = 0
        best = present[0]
        for name in present:
            weight = self.weights[name]
            total += weight
            current[name] += weight
            if current[name] > current[best]:
                best = name
        current[best] -= total
        rest = sorted((n for n in present if n != best), key=self._rank.__getitem__)
        shares = ", ".join(f"{n}={self.weights[n]}" for n in present)
        reason = f"weighted: {best} first by smooth weighted round-robin ({shares})"
        return Ranking((best, *rest), reason, self.name)
