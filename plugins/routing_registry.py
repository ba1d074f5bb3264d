"""Every built-in routing strategy by the name used in ``strategy = "..."``.

To add a built-in strategy: subclass :class:`aegispay.plugins.routing_base.Strategy`, give it a
``name`` and a docstring that documents its options, and list it here. A third-party plugin
registers its own through the ``aegispay_register_routing_strategies`` hook instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from aegispay.errors import ConfigError

from .routing_ab import ABTest
from .routing_base import Options, Strategy, config_error
from .routing_basic import RoundRobin, Weighted
from .routing_cost import Cost
from .routing_geo import Geographic
from .routing_health import Latency, Metrics, Thompson

# Read-only: third-party strategies are registered per routing plugin, through the
# ``aegispay_register_routing_strategies`` hook, never by changing this table.
STRATEGIES: Mapping[str, type[Strategy]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (RoundRobin, Weighted, Cost, Geographic, ABTest, Metrics, Latency, Thompson)
    }
)


class UnknownStrategy(ConfigError):
    """``strategy = "..."`` names no strategy known so far (a plugin may still register it)."""


def build_strategy(name: str, path: str, options: Options | None, root: Options) -> Strategy:
    """The strategy ``name`` (read from the field ``path``), configured by ``options``, or by
    its own ``[plugins.routing.<name>]`` table when ``options`` is None."""
    registry = root.registry
    cls = registry.get(name)
    if cls is None:
        error = config_error(path, f"unknown strategy; expected one of {sorted(registry)}", name)
        raise UnknownStrategy(str(error))
    if options is None:
        options = root.table(name) or Options({}, root.path(name), root.refs, root)
    return cls(options)
