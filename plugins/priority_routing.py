"""The default router: a configured priority order, then the rest in registration order.

Configuration (``[plugins.priority_routing]``)::

    order = ["sim-gamma", "sim-alpha"]   # first choice first; unnamed gateways follow

Runs last, so any installed routing plugin that returns a decision wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from aegispay.decisions import HookContext, RouteDecision
from aegispay.hookspecs import hookimpl
from aegispay.payment import Payment
from aegispay.settings import structure_config


@attrs.frozen
class PriorityRoutingConfig:
    order: tuple[str, ...] = ()


class PriorityRoutingPlugin:
    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = structure_config(config, PriorityRoutingConfig, "plugins.priority_routing")
        self._rank = {name: i for i, name in enumerate(self.config.order)}

    @hookimpl(trylast=True)
    def aegispay_select_gateway(
        self, payment: Payment, candidates: Sequence[str], context: HookContext
    ) -> RouteDecision:
        rank = self._rank
        if rank:
            last = len(rank)
            ordered = sorted(candidates, key=lambda name: rank.get(name, last))
            reason = "configured priority order"
        else:
            ordered = list(candidates)
            reason = "registration order"
        return RouteDecision(tuple(ordered), reason, "priority")
