"""The plugins that ship with AegisPay, registered through the same hooks as third-party ones.

Each is a class constructed with its own configuration section (``[plugins.<name>]``), and each
hook implementation is ``trylast`` so an installed plugin runs first (and wins routing).

The event sinks (``log_sink``, ``redis_streams``, ``webhooks``) register nothing unless their
section is configured; see docs/plugin-guide.md, "Event sinks". Likewise ``routing`` abstains
(and ``priority_routing`` decides) unless ``[plugins.routing]`` is configured; see "Routing
strategies".
"""

from __future__ import annotations

from typing import Any


def BUILTIN_PLUGINS() -> tuple[tuple[str, Any], ...]:
    """(name, plugin class) for every built-in plugin, in registration order."""
    from .event_log import EventLogPlugin
    from .fraud_rules import FraudRulesPlugin
    from .log_sink import LogSinkPlugin
    from .priority_routing import PriorityRoutingPlugin
    from .redis_streams_sink import RedisStreamsPlugin
    from .routing import RoutingPlugin
    from .simulated_gateways import SimulatedGatewaysPlugin
    from .validation import ValidationPlugin
    from .webhook_sink import WebhooksPlugin

    return (
        ("simulated_gateways", SimulatedGatewaysPlugin),
        ("validation", ValidationPlugin),
        ("fraud_rules", FraudRulesPlugin),
        # Both trylast: pluggy asks the earlier-registered of the two first, so the
        # configured router comes before priority_routing, the last-resort default.
        ("routing", RoutingPlugin),
        ("priority_routing", PriorityRoutingPlugin),
        ("event_log", EventLogPlugin),
        ("log_sink", LogSinkPlugin),
        ("redis_streams", RedisStreamsPlugin),
        ("webhooks", WebhooksPlugin),
    )
