"""The plugins that ship with AegisPay, registered through the same hooks as third-party ones.

Each is a class constructed with its own configuration section (``[plugins.<name>]``), and each
hook implementation is ``trylast`` so an installed plugin runs first (and wins routing).
"""

from __future__ import annotations

from typing import Any


def BUILTIN_PLUGINS() -> tuple[tuple[str, Any], ...]:
    """(name, plugin class) for every built-in plugin, in registration order."""
    from .event_log import EventLogPlugin
    from .fraud_rules import FraudRulesPlugin
    from .priority_routing import PriorityRoutingPlugin
    from .simulated_gateways import SimulatedGatewaysPlugin
    from .validation import ValidationPlugin

    return (
        ("simulated_gateways", SimulatedGatewaysPlugin),
        ("validation", ValidationPlugin),
        ("fraud_rules", FraudRulesPlugin),
        ("priority_routing", PriorityRoutingPlugin),
        ("event_log", EventLogPlugin),
    )
