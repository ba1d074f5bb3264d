"""The demo workload's plugin configuration for ``aegispay simulate``.

A user's own ``[plugins.<name>]`` sections win; the simulation only fills what they leave
unset, so ``aegispay simulate`` works with no configuration at all and still exercises every
path: fraud denials (a deny-listed customer), reviews (amounts above a threshold), failover.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .errors import ConfigError

SIMULATION_FRAUD_RULES: Mapping[str, Any] = {
    "deny_customers": ["cus_blocked_0", "cus_blocked_1", "cus_blocked_2"],
    "review_above": {"USD": "480.00", "EUR": "480.00"},
    "velocity_limit": 1000,
}


def simulation_plugin_sections(
    sections: Mapping[str, Mapping[str, Any]],
    *,
    seed: int,
    gateways: str | None,
    latency_ms: float | None,
) -> dict[str, Mapping[str, Any]]:
    from aegispay.plugins.simulated_gateways import SimulatedGatewaysConfig
    from aegispay.settings import structure_config

    sim = dict(sections.get("simulated_gateways", {}))
    sim["seed"] = seed
    if latency_ms is not None:
        sim["latency_ms"] = latency_ms
    if gateways:
        wanted = [name.strip() for name in gateways.split(",") if name.strip()]
        configured = structure_config(sim, SimulatedGatewaysConfig, "plugins.simulated_gateways")
        available = {g.name: g for g in configured.gateways}
        unknown = [name for name in wanted if name not in available]
        if unknown:
            raise ConfigError(
                f"--gateways: unknown simulated gateway(s) {unknown}; "
                f"available: {sorted(available)}"
            )
        sim["gateways"] = [attrs.asdict(available[name]) for name in wanted]
    out: dict[str, Mapping[str, Any]] = {"simulated_gateways": sim}
    if "fraud_rules" not in sections:
        out["fraud_rules"] = SIMULATION_FRAUD_RULES
    return out
