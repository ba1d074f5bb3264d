"""Chaos scenarios for ``aegispay simulate --scenario NAME``, and the run's timeline.

A scenario is a set of settings: simulated gateways, a routing strategy, health windows and
breaker thresholds, and faults for :mod:`aegispay.plugins.fault_injection`. It runs on a
*virtual clock*: payments arrive at a fixed rate over ``duration_s`` virtual seconds, each
payment runs on its own timeline from its arrival time, and gateway latency (injected as
latency faults) advances the timeline of the payment that waits instead of the wall clock.
Breakers, health windows, routing and fault windows all read that clock, so a 20-second
outage with its recovery takes as long to simulate as the payments take to process, and a
seeded run on the in-memory store is reproducible.

The :class:`Timeline` records every gateway call (through the lifecycle hooks) and every
payment's result, and reports them in time buckets: per gateway the traffic share, success
rate, latency and circuit state, overall the payments' success rate, and the breaker
transitions.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio.lowlevel
import attrs

from .breaker import CircuitState
from .errors import ConfigError
from .gateways import Operation, Outcome
from .hookspecs import hookimpl
from .metrics import LatencyHistogram
from .settings import BreakerSettings, GatewayHealthSettings, Settings

if TYPE_CHECKING:
    from aegispay.plugins.fault_injection import FaultInjectionPlugin

    from .breaker import GatewayMonitor
    from .gateways import GatewayResult
    from .observe import GatewayCall
    from .payment import Payment
    from .service import PaymentService


class VirtualClock:
    """Scenario time in seconds. Each task (a payment being processed) has its own cursor,
    set by :meth:`begin` to the payment's arrival time and advanced by :meth:`sleep`; a task
    without one (the relay, the janitor) reads the latest arrival time."""

    def __init__(self) -> None:
        self._cursor: contextvars.ContextVar[float | None] = contextvars.ContextVar(
            "aegispay_scenario_time", default=None
        )
        self.frontier = 0.0

    def now(self) -> float:
        at = self._cursor.get()
        return self.frontier if at is None else at

    def begin(self, at: float) -> None:
        self._cursor.set(at)
        if at > self.frontier:
            self.frontier = at

    async def sleep(self, seconds: float) -> None:
        self._cursor.set(self.now() + seconds)
        await anyio.lowlevel.checkpoint()  # a wait is a suspension point, as a real one


# -- the scenarios ---------------------------------------------------------------------------


@attrs.frozen
class ScenarioGateway:
    """A simulated gateway (every currency) and its normal latency on the virtual clock."""

    name: str
    latency_ms: float
    decline_rate: float = 0.03
    not_sent_rate: float = 0.005
    unknown_rate: float = 0.002
    fixed_fee_minor: int = 30
    fee_bps: int = 290


# Scenario health windows and breakers: short, so the virtual run shows a whole cycle
# (open, half-open, closed) within seconds; and one failure cannot open a circuit.
SCENARIO_HEALTH = GatewayHealthSettings(
    window_calls=200,
    window_s=5.0,
    percentile_refresh_s=0.2,
    breaker=BreakerSettings(
        failure_threshold=5,
        failure_rate=0.5,
        min_calls=20,
        open_timeout_s=1.0,
        half_open_max_probes=1,
        success_threshold=3,
    ),
)


@attrs.frozen
class Scenario:
    name: str
    description: str
    gateways: tuple[ScenarioGateway, ...]
    routing: Mapping[str, Any]  # [plugins.routing]
    faults: tuple[Mapping[str, Any], ...] = ()  # [[plugins.fault_injection.faults]]
    duration_s: float = 20.0  # virtual seconds the arrivals are spread over
    payments: int = 3000  # default when --payments is not given
    concurrency: int = 8
    buckets: int = 20
    health: GatewayHealthSettings = attrs.field(factory=lambda: SCENARIO_HEALTH)

    def fault_section(self, seed: int, extra: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """``[plugins.fault_injection]``: each gateway's normal latency (+/- 50 %) for the
        whole run, the scenario's faults, then ``extra`` (the user's own)."""
        base = [
            {"gateway": g.name, "kind": "latency", "latency_ms": g.latency_ms, "jitter": 0.5}
            for g in self.gateways
            if g.latency_ms
        ]
        return {"seed": seed, "faults": [*base, *self.faults, *extra]}

    def describe(self) -> dict[str, Any]:
        breaker = self.health.breaker
        return {
            "name": self.name,
            "description": self.description,
            "duration_s": self.duration_s,
            "gateways": {g.name: {"latency_ms": g.latency_ms} for g in self.gateways},
            "routing": dict(self.routing),
            "breaker": attrs.asdict(breaker),
            "faults": [dict(f) for f in self.faults],
        }


GATEWAYS = (
    ScenarioGateway("sim-alpha", 25.0, not_sent_rate=0.002, unknown_rate=0.001),
    ScenarioGateway("sim-beta", 40.0, not_sent_rate=0.004, unknown_rate=0.002),
    ScenarioGateway("sim-gamma", 60.0, not_sent_rate=0.006, unknown_rate=0.003),
)
_METRICS = {"strategy": "metrics", "metrics": {"weights": {"success": 0.6, "latency": 0.4}}}

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "steady",
            "three healthy gateways, metrics routing: the baseline",
            GATEWAYS,
            _METRICS,
        ),
        Scenario(
            "outage",
            "sim-alpha, the best gateway, is down (connection refused) from 6 s to 11 s, "
            "then recovers; metrics routing",
            GATEWAYS,
            _METRICS,
            ({"gateway": "sim-alpha", "kind": "outage", "start_s": 6.0, "end_s": 11.0},),
        ),
        Scenario(
            "brownout",
            "sim-alpha's latency climbs by up to 600 ms from 4 s to 14 s, then recovers; "
            "metrics routing weighted towards latency (target 100 ms)",
            GATEWAYS,
            {
                "strategy": "metrics",
                "metrics": {
                    "weights": {"success": 0.4, "latency": 0.6},
                    # Absolute, so a slow gateway loses even before the others are measured.
                    "latency_target_ms": 100.0,
                },
            },
            (
                {
                    "gateway": "sim-alpha",
                    "kind": "latency",
                    "start_s": 4.0,
                    "end_s": 14.0,
                    "latency_ms": 0.0,
                    "latency_to_ms": 600.0,
                },
            ),
        ),
        Scenario(
            "flaky",
            "every gateway loses answers in bursts (4-6 s, 10-12 s, 16-18 s): 10 % of "
            "authorisations charge but answer UNKNOWN, 5 % more answer UNKNOWN without "
            "charging; each is settled by a status lookup; Thompson-sampling routing",
            GATEWAYS,
            {"strategy": "thompson", "thompson": {"half_life_s": 2.0}},
            tuple(
                {
                    "gateway": "*",
                    "start_s": start,
                    "end_s": start + 2.0,
                    "operations": ["authorize"],
                    **fault,
                }
                for start in (4.0, 10.0, 16.0)
                for fault in (
                    {"kind": "lost_answer", "rate": 0.10},
                    {"kind": "error", "outcome": "unknown", "rate": 0.05},
                )
            ),
        ),
    )
}


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ConfigError(
            f"--scenario: unknown scenario {name!r}; available: {', '.join(SCENARIOS)}"
        ) from None


def scenario_sections(
    scenario: Scenario, sections: Mapping[str, Mapping[str, Any]], seed: int
) -> dict[str, Mapping[str, Any]]:
    """The plugin sections a scenario run uses: the scenario's gateways (no real latency:
    latency is on the virtual clock), routing and faults. The user's own
    ``[plugins.fault_injection]`` faults are added after the scenario's; the user's fraud
    rules are kept."""
    from .simulation_defaults import SIMULATION_FRAUD_RULES

    routing: dict[str, Any] = {
        k: dict(v) if isinstance(v, Mapping) else v for k, v in scenario.routing.items()
    }
    strategy = routing.get("strategy")
    if strategy == "thompson":
        routing["thompson"] = {**routing.get("thompson", {}), "seed": seed}
    gateways = [
        {
            "name": g.name,
            "decline_rate": g.decline_rate,
            "not_sent_rate": g.not_sent_rate,
            "unknown_rate": g.unknown_rate,
            "fixed_fee_minor": g.fixed_fee_minor,
            "fee_bps": g.fee_bps,
        }
        for g in scenario.gateways
    ]
    user_faults = sections.get("fault_injection", {}).get("faults", ())
    out: dict[str, Mapping[str, Any]] = {
        "simulated_gateways": {"seed": seed, "latency_ms": 0.0, "gateways": gateways},
        "routing": routing,
        "fault_injection": scenario.fault_section(seed, list(user_faults)),
    }
    out["fraud_rules"] = sections.get("fraud_rules", SIMULATION_FRAUD_RULES)
    return out


# -- the timeline ------------------------------------------------------------------------------

_SEVERITY = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}
_BY_SEVERITY = (CircuitState.CLOSED, CircuitState.HALF_OPEN, CircuitState.OPEN)
_JUDGED_OK = frozenset({Outcome.SUCCEEDED, Outcome.PENDING, Outcome.REQUIRES_ACTION})
_FAILED = frozenset({Outcome.NOT_SENT, Outcome.UNKNOWN})


class Timeline:
    """Records a simulation run over time: a plugin (the gateway-call hooks) plus the
    per-payment calls :func:`aegispay.simulation.run_simulation` makes.

    With a :class:`VirtualClock` and ``rate_per_s``, payment *i* arrives at ``i / rate``
    virtual seconds; otherwise payments are timed by ``clock`` (the wall clock) from
    :meth:`start`."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        virtual: VirtualClock | None = None,
        rate_per_s: float = 0.0,
        duration_s: float | None = None,
        buckets: int = 20,
    ) -> None:
        if buckets < 1:
            raise ValueError("buckets must be at least 1")
        self.clock = clock
        self.virtual = virtual
        self.rate_per_s = rate_per_s
        self.duration_s = duration_s
        self.buckets = buckets
        self.origin = 0.0
        self._began: dict[int, float] = {}  # id(call) -> start time
        # (start, gateway, operation, outcome, latency ms), in the order calls finished
        self.calls: list[tuple[float, str, Operation, Outcome, float]] = []
        # (arrival, not denied by the fraud checks, authorised, declined by the bank)
        self.payments: list[tuple[float, bool, bool, bool]] = []

    def start(self) -> None:
        self.origin = self.clock()

    def begin(self, index: int) -> float:
        """Payment ``index`` starts: its arrival time (seconds since the start)."""
        if self.virtual is not None and self.rate_per_s > 0:
            at = index / self.rate_per_s
            self.virtual.begin(self.origin + at)
            return at
        return self.clock() - self.origin

    def finish(self, arrival: float, payment: Payment) -> None:
        eligible = payment.failure_code != "fraud_denied"
        succeeded = any(a.outcome is Outcome.SUCCEEDED for a in payment.attempts)
        declined = (
            not succeeded
            and bool(payment.attempts)
            and payment.attempts[-1].outcome is Outcome.DECLINED
        )
        self.payments.append((arrival, eligible, succeeded, declined))

    @hookimpl
    def aegispay_before_gateway_call(self, call: GatewayCall) -> None:
        self._began[id(call)] = self.clock()

    @hookimpl
    def aegispay_after_gateway_call(
        self, call: GatewayCall, result: GatewayResult, elapsed_ms: float
    ) -> None:
        now = self.clock()
        began = self._began.pop(id(call), now)
        latency_ms = (now - began) * 1000
        self.calls.append(
            (began - self.origin, call.gateway, call.operation, result.outcome, latency_ms)
        )

    def report(self, monitor: GatewayMonitor) -> dict[str, Any]:
        """The run in ``buckets`` equal time buckets (see docs/architecture.md, "Chaos
        scenarios", for each figure)."""
        names = sorted(monitor.breakers)
        end = self.duration_s
        if end is None:
            end = max([c[0] for c in self.calls] + [p[0] for p in self.payments] + [0.0])
        end = max(end, 1e-9)
        n = self.buckets
        width = end / n

        def slot(at: float) -> int:
            return min(n - 1, max(0, int(at / width)))

        calls = {name: [0] * n for name in names}
        ok = {name: [0] * n for name in names}
        failed = {name: [0] * n for name in names}
        latency = {name: [LatencyHistogram() for _ in range(n)] for name in names}
        for at, gateway, operation, outcome, ms in self.calls:
            if operation is not Operation.AUTHORIZE or gateway not in calls:
                continue
            i = slot(at)
            calls[gateway][i] += 1
            latency[gateway][i].record_ms(ms)
            if outcome in _JUDGED_OK:
                ok[gateway][i] += 1
            elif outcome in _FAILED:
                failed[gateway][i] += 1
        totals = [sum(calls[name][i] for name in names) for i in range(n)]
        eligible = [0] * n
        succeeded = [0] * n
        declined = 0
        for arrival, counted, success, decline in self.payments:
            if counted:
                i = slot(arrival)
                eligible[i] += 1
                succeeded[i] += success
                declined += decline
        gateways: dict[str, Any] = {}
        for name in names:
            gateways[name] = {
                "calls": calls[name],
                "share": [
                    round(calls[name][i] / totals[i], 4) if totals[i] else 0.0 for i in range(n)
                ],
                "success_rate": [
                    round(ok[name][i] / (ok[name][i] + failed[name][i]), 4)
                    if ok[name][i] + failed[name][i]
                    else None
                    for i in range(n)
                ],
                "latency_p50_ms": [
                    round(h.percentile_ms(50), 1) if h.count else None for h in latency[name]
                ],
                "latency_p95_ms": [
                    round(h.percentile_ms(95), 1) if h.count else None for h in latency[name]
                ],
                "circuit": self._circuit(monitor, name, width),
            }
        transitions = sorted(
            (at - self.origin, name, old.value, new.value, reason)
            for name in names
            for at, old, new, reason in monitor.breakers[name].transitions
        )
        all_eligible = sum(eligible)
        return {
            "clock": "virtual" if self.virtual is not None else "wall",
            "duration_s": round(end, 3),
            "bucket_s": round(width, 3),
            "success_rate": round(sum(succeeded) / all_eligible, 4) if all_eligible else None,
            # Without the banks' declines: the share of payments a gateway failure can cost.
            "success_rate_excluding_declines": (
                round(sum(succeeded) / (all_eligible - declined), 4)
                if all_eligible > declined
                else None
            ),
            "buckets": [
                {
                    "t_s": round(i * width, 3),
                    "payments": eligible[i],
                    "success_rate": round(succeeded[i] / eligible[i], 4) if eligible[i] else None,
                    "authorizations": totals[i],
                }
                for i in range(n)
            ],
            "gateways": gateways,
            "transitions": [
                {"at_s": round(at, 3), "gateway": name, "from": old, "to": new, "reason": reason}
                for at, name, old, new, reason in transitions
            ],
        }

    def _circuit(self, monitor: GatewayMonitor, name: str, width: float) -> list[str]:
        """Per bucket, the most severe circuit state ``name`` was in during it."""
        changes = sorted(
            (at - self.origin, new) for at, _, new, _ in monitor.breakers[name].transitions
        )
        states = []
        current = CircuitState.CLOSED
        k = 0
        for i in range(self.buckets):
            end = (i + 1) * width
            worst = _SEVERITY[current]
            while k < len(changes) and (changes[k][0] < end or i == self.buckets - 1):
                current = changes[k][1]
                worst = max(worst, _SEVERITY[current])
                k += 1
            states.append(_BY_SEVERITY[worst].value)
        return states


# -- building a scenario run -------------------------------------------------------------------


@attrs.define
class ScenarioRun:
    """A service ready for ``run_simulation(service, options, ledger, timeline=timeline)``."""

    scenario: Scenario
    service: PaymentService
    timeline: Timeline
    faults: FaultInjectionPlugin
    ledger: Any  # the simulated gateways' Ledger (None if that plugin is denied)

    def describe(self) -> dict[str, Any]:
        """The report's ``scenario`` entry: the scenario's settings and the faults injected."""
        injected: dict[str, dict[str, int]] = {}
        for (gateway, kind), count in sorted(self.faults.injected.items()):
            injected.setdefault(gateway, {})[kind] = count
        return {**self.scenario.describe(), "faults_injected": injected}


def build_scenario_run(
    settings: Settings, scenario: Scenario, *, seed: int, payments: int
) -> ScenarioRun:
    """A service on ``settings`` (store, locks, engine) with the scenario's gateways,
    routing, health settings and faults, on a fresh virtual clock."""
    from aegispay.plugins.fault_injection import FaultInjectionPlugin

    from .settings import PluginConfig
    from .stack import build_service

    config = settings.plugin_config
    sections: dict[str, Mapping[str, Any]] = {name: config.section(name) for name in config.names()}
    sections.update(scenario_sections(scenario, sections, seed))
    engine = attrs.evolve(settings.engine, gateway_health=scenario.health)
    settings = attrs.evolve(settings, plugin_config=PluginConfig(sections), engine=engine)
    clock = VirtualClock()
    faults = FaultInjectionPlugin(sections["fault_injection"], clock=clock.now, sleep=clock.sleep)
    timeline = Timeline(
        clock.now,
        virtual=clock,
        rate_per_s=payments / scenario.duration_s,
        duration_s=scenario.duration_s,
        buckets=scenario.buckets,
    )
    service = build_service(settings, plugins={"fault_injection": faults, "timeline": timeline})
    # Breakers, health windows and the routing strategies read the monitor's clock.
    service.gateway_monitor.clock = clock.now
    ledger = getattr(service.host.plugin("simulated_gateways"), "ledger", None)
    return ScenarioRun(scenario, service, timeline, faults, ledger)
