"""Every built-in routing strategy by the name used in ``strategy = "..."``.

To add a strategy: subclass :class:`aegispay.plugins.routing_base.Strategy`, give it a ``name``
and a docstring that documents its options, and list it here.
"""

from __future__ import annotations

from .routing_ab import ABTest
from .routing_base import Options, Strategy, config_error
from .routing_basic import RoundRobin, Weighted
from .routing_cost import Cost
from .routing_geo import Geographic

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (RoundRobin, Weighted, Cost, Geographic, ABTest)
}


def build_strategy(name: str, path: str, options: Options | None, root: Options) -> Strategy:
    """The strategy ``name`` (read from the field ``path``), configured by ``options``, or by
    its own ``[plugins.routing.<name>]`` table when ``options`` is None."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise config_error(path, f"unknown strategy; expected one of {sorted(STRATEGIES)}", name)
    if options is None:
        options = root.table(name) or Options({}, root.path(name), root.refs, root)
    return cls(options)
