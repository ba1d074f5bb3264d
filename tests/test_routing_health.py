"""Health-aware routing: elimination before the strategy, and the metrics / latency / thompson
strategies reading live gateway health (fake clocks throughout, no sleeps, no timings)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from aegispay import (
    HookContext,
    Money,
    Payment,
    PaymentRequest,
    PaymentState,
    Settings,
    hookimpl,
)
from aegispay import events as ev
from aegispay.breaker import CircuitState, GatewayMonitor
from aegispay.errors import ConfigError
from aegispay.gateways import Operation, Outcome
from aegispay.health import CallClass
from aegispay.plugins.routing import RoutingPlugin
from aegispay.plugins.routing_base import Options, Ranking, Strategy
from aegispay.plugins.routing_health import Thompson
from aegispay.settings import (
    BreakerSettings,
    EngineSettings,
    GatewayHealthSettings,
    PluginConfig,
)
from aegispay.testing import ScriptedGateway, make_test_service
from hypothesis import given, settings
from hypothesis import strategies as st

C = CallClass
NOW = datetime(2026, 11, 26, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def payment(currency: str = "USD", amount: int = 10_000, **fields: Any) -> Payment:
    return Payment(
        id=fields.pop("id", "pay_1"),
        merchant_id="m",
        amount=Money(amount, currency),
        state=PaymentState.INITIATED,
        version=1,
        created_at=NOW,
        updated_at=NOW,
        **fields,
    )


def context(*gateways: ScriptedGateway) -> HookContext:
    return HookContext("m", "process", lambda: NOW, {g.name: g for g in gateways})


def setup(
    config: dict[str, Any],
    names: tuple[str, ...] = ("a", "b", "c"),
    breaker: BreakerSettings | None = None,
    **health: Any,
) -> tuple[RoutingPlugin, GatewayMonitor, FakeClock, HookContext]:
    clock = FakeClock()
    settings = GatewayHealthSettings(breaker=breaker or BreakerSettings(), **health)
    monitor = GatewayMonitor(names, settings, clock=clock, on_change=None)
    plugin = RoutingPlugin(config)
    plugin.bind(monitor)
    return plugin, monitor, clock, context(*(ScriptedGateway(n) for n in names))


def feed(
    monitor: GatewayMonitor, name: str, cls: CallClass, n: int = 1, latency: float = 50.0
) -> None:
    health, breaker = monitor.pairs[name]
    for _ in range(n):
        token = breaker.allow()
        health.record(cls, latency)
        breaker.record(token, cls in (C.NOT_SENT, C.UNKNOWN, C.TIMEOUT))


# --- elimination -------------------------------------------------------------------------------


def test_open_circuit_is_eliminated_and_named_in_the_reason() -> None:
    plugin, monitor, _clock, ctx = setup(
        {"strategy": "round_robin"}, breaker=BreakerSettings(failure_threshold=2)
    )
    feed(monitor, "a", C.NOT_SENT, 2)
    assert monitor.breakers["a"].state is CircuitState.OPEN
    for _ in range(4):
        decision = plugin.decide(payment(), ["a", "b", "c"], ctx)
        assert "a" not in decision.gateways
        assert set(decision.gateways) == {"b", "c"}
    assert "circuit open: a (half-opens in 30.0s)" in decision.reason


def test_half_open_gateway_gets_the_probe_first_then_closes() -> None:
    plugin, monitor, clock, ctx = setup(
        {"strategy": "metrics"},
        breaker=BreakerSettings(failure_threshold=2, open_timeout_s=10.0, success_threshold=1),
    )
    feed(monitor, "b", C.SUCCESS, 20)
    feed(monitor, "a", C.NOT_SENT, 2)
    clock.now += 9.9
    assert plugin.decide(payment(), ["a", "b"], ctx).gateways == ("b",)
    clock.now += 0.1  # the open timeout has elapsed: the next call would be a probe
    decision = plugin.decide(payment(), ["a", "b"], ctx)
    # The metrics strategy ranks a last (its window still holds the failures), yet the
    # probe goes first, or a recovered gateway would never be tried again.
    assert decision.gateways == ("a", "b")
    assert "a first: half-open circuit, probe call" in decision.reason
    feed(monitor, "a", C.SUCCESS)
    assert monitor.breakers["a"].state is CircuitState.CLOSED
    assert plugin.decide(payment(), ["a", "b"], ctx).gateways[0] == "a"  # cleared window


def test_probe_in_flight_is_not_offered_twice() -> None:
    plugin, monitor, clock, ctx = setup(
        {"strategy": "round_robin"},
        breaker=BreakerSettings(failure_threshold=1, open_timeout_s=5.0),
    )
    feed(monitor, "a", C.TIMEOUT)
    clock.now += 5
    assert plugin.decide(payment(), ["a", "b"], ctx).gateways[0] == "a"
    token = monitor.breakers["a"].allow()  # the probe is now in flight
    decision = plugin.decide(payment(), ["a", "b"], ctx)
    assert decision.gateways == ("b",)
    assert "a (probe in flight)" in decision.reason
    monitor.breakers["a"].release(token)


def test_probe_first_can_be_switched_off() -> None:
    plugin, monitor, clock, ctx = setup(
        {"strategy": "metrics", "probe_half_open": False},
        breaker=BreakerSettings(failure_threshold=1, open_timeout_s=5.0),
    )
    feed(monitor, "b", C.SUCCESS, 5)
    feed(monitor, "a", C.TIMEOUT)
    clock.now += 5
    assert plugin.decide(payment(), ["a", "b"], ctx).gateways == ("b", "a")


def test_health_floor_eliminates_weak_gateways_once_they_have_enough_calls() -> None:
    plugin, monitor, _clock, ctx = setup(
        {"strategy": "round_robin", "health_floor": 0.8, "health_floor_min_calls": 10},
        breaker=BreakerSettings(enabled=False),
    )
    feed(monitor, "a", C.SUCCESS, 5)
    feed(monitor, "a", C.UNKNOWN, 4)  # score 0.56 but only 9 judged calls: not yet
    assert "a" in plugin.decide(payment(), ["a", "b"], ctx).gateways
    feed(monitor, "a", C.DECLINED, 50)  # declines are not judged: still 9
    assert "a" in plugin.decide(payment(), ["a", "b"], ctx).gateways
    feed(monitor, "a", C.UNKNOWN)
    decision = plugin.decide(payment(), ["a", "b"], ctx)
    assert decision.gateways == ("b",)
    assert "below health floor 0.8: a 0.50" in decision.reason


def test_when_only_the_floor_empties_the_list_the_weak_are_tried_anyway() -> None:
    plugin, monitor, _clock, ctx = setup(
        {"strategy": "metrics", "health_floor": 0.9, "health_floor_min_calls": 4},
        breaker=BreakerSettings(enabled=False),
    )
    feed(monitor, "a", C.SUCCESS, 3)
    feed(monitor, "a", C.NOT_SENT, 2)  # 0.6
    feed(monitor, "b", C.SUCCESS, 4)
    feed(monitor, "b", C.NOT_SENT, 1)  # 0.8
    decision = plugin.decide(payment(), ["a", "b"], ctx)
    assert decision.gateways == ("b", "a")
    assert "below health floor 0.9" in decision.reason
    assert "trying them anyway" in decision.reason


def test_every_circuit_open_gives_an_empty_decision_with_the_reason() -> None:
    plugin, monitor, clock, ctx = setup(
        {"strategy": "metrics"}, breaker=BreakerSettings(failure_threshold=1, open_timeout_s=20)
    )
    feed(monitor, "a", C.NOT_SENT)
    clock.now += 5
    feed(monitor, "b", C.NOT_SENT)
    decision = plugin.decide(payment(), ["a", "b"], ctx)
    assert decision.gateways == ()
    assert decision.strategy == "elimination"
    assert "every circuit is open (a (half-opens in 15.0s), b (half-opens in 20.0s))" in (
        decision.reason
    )


def test_a_gateway_without_the_currency_is_never_a_fallback() -> None:
    usd_only = ScriptedGateway("usd_only", currencies=["USD"])
    anything = ScriptedGateway("anything")
    plugin = RoutingPlugin({"strategy": "round_robin"})
    ctx = context(usd_only, anything)
    decision = plugin.decide(payment("EUR"), ["usd_only", "anything"], ctx)
    assert decision.gateways == ("anything",)
    assert "eliminated ['usd_only']: EUR not supported" in decision.reason
    empty = plugin.decide(payment("EUR"), ["usd_only"], ctx)
    assert empty.gateways == ()
    assert "no gateway left" in empty.reason


def test_rules_run_before_elimination_so_compliance_still_holds() -> None:
    # INR only through c; c is below the floor but nothing else may take INR: it is tried.
    plugin, monitor, _clock, ctx = setup(
        {
            "strategy": "metrics",
            "health_floor": 0.9,
            "health_floor_min_calls": 2,
            "rules": [{"when": {"currency": "INR"}, "only": ["c"]}],
        },
        breaker=BreakerSettings(enabled=False),
    )
    feed(monitor, "c", C.NOT_SENT, 2)
    decision = plugin.decide(payment("INR"), ["a", "b", "c"], ctx)
    assert decision.gateways == ("c",)


# --- the metrics strategy ----------------------------------------------------------------------


FEES = {
    "a": [{"currency": "USD", "fixed": "0.30", "basis_points": 290}],  # 3.20 on 100.00
    "b": [{"currency": "USD", "fixed": "0.10", "basis_points": 200}],  # 2.10
    "c": [{"currency": "USD", "fixed": "0.00", "basis_points": 400}],  # 4.00
}


def test_metrics_orders_by_success_rate_with_success_weight_only() -> None:
    plugin, monitor, _clock, ctx = setup(
        {"strategy": "metrics", "metrics": {"weights": {"success": 1}}}
    )
    feed(monitor, "a", C.SUCCESS, 9)
    feed(monitor, "a", C.NOT_SENT, 1)  # 0.9
    feed(monitor, "b", C.SUCCESS, 99)
    feed(monitor, "b", C.UNKNOWN, 1)  # 0.99
    feed(monitor, "c", C.SUCCESS, 5)
    feed(monitor, "c", C.TIMEOUT, 5)  # 0.5
    feed(monitor, "c", C.DECLINED, 100)  # declines do not count against it
    decision = plugin.decide(payment(), ["a", "b", "c"], ctx)
    assert decision.gateways == ("b", "a", "c")
    assert decision.strategy == "metrics"
    assert decision.reason.startswith("metrics: b 0.990 (success 0.990, p95 ")
    assert "then a 0.900, c 0.500" in decision.reason


def test_metrics_relative_latency_and_cost_scores() -> None:
    # success all 1.0: latency weight 1 -> fastest first; cost weight 1 -> cheapest first.
    fast = {"strategy": "metrics", "metrics": {"weights": {"latency": 1}}}
    plugin, monitor, _clock, ctx = setup(fast)
    feed(monitor, "a", C.SUCCESS, 20, latency=200.0)
    feed(monitor, "b", C.SUCCESS, 20, latency=50.0)
    feed(monitor, "c", C.SUCCESS, 20, latency=100.0)
    assert plugin.decide(payment(), ["a", "b", "c"], ctx).gateways == ("b", "c", "a")

    cheap = {"strategy": "metrics", "metrics": {"weights": {"cost": 1}, "fees": FEES}}
    plugin, monitor, _clock, ctx = setup(cheap)
    decision = plugin.decide(payment(), ["a", "b", "c"], ctx)
    assert decision.gateways == ("b", "a", "c")
    assert "fee 2.10 USD" in decision.reason


def test_metrics_weighted_score_formula() -> None:
    config = {
        "strategy": "metrics",
        "metrics": {"weights": {"success": 2, "latency": 1, "cost": 1}, "fees": FEES},
    }
    plugin, monitor, _clock, ctx = setup(config, names=("a", "b"))
    feed(monitor, "a", C.SUCCESS, 8, latency=100.0)
    feed(monitor, "a", C.NOT_SENT, 2, latency=100.0)  # success 0.8
    feed(monitor, "b", C.SUCCESS, 10, latency=200.0)  # success 1.0
    decision = plugin.decide(payment(), ["a", "b"], ctx)
    # a: (2*0.8 + 1*1.0 + 1*(211/321)) / 4 ; b: (2*1.0 + 1*(p95a/p95b) + 1*1.0) / 4
    p95a = monitor.health["a"].percentile_ms(95)
    p95b = monitor.health["b"].percentile_ms(95)
    score_a = (2 * 0.8 + 1.0 + 211 / 321) / 4
    score_b = (2 * 1.0 + p95a / p95b + 1.0) / 4
    assert score_b > score_a + 0.05
    assert decision.gateways == ("b", "a")
    assert f"b {score_b:.3f}" in decision.reason
    assert f"then a {score_a:.3f}" in decision.reason


def test_metrics_latency_target_caps_the_latency_score() -> None:
    config = {
        "strategy": "metrics",
        "metrics": {"weights": {"latency": 1}, "latency_target_ms": 300},
    }
    plugin, monitor, _clock, ctx = setup(config, names=("a", "b"))
    feed(monitor, "a", C.SUCCESS, 10, latency=250.0)
    feed(monitor, "b", C.SUCCESS, 10, latency=100.0)
    # Both within the target: equal scores, candidate order kept.
    assert plugin.decide(payment(), ["a", "b"], ctx).gateways == ("a", "b")


def test_metrics_reads_a_segment_window_when_it_has_enough_calls() -> None:
    config = {"strategy": "metrics", "metrics": {"segment": "currency", "segment_min_calls": 5}}
    plugin, monitor, clock, ctx = setup(config, names=("a", "b"))
    now = clock()
    for _ in range(50):  # a: fine overall, failing for INR
        monitor.health["a"].record(C.SUCCESS, 50.0, now)
        monitor.record_segments("a", C.SUCCESS, 50.0, now, ("USD", "card", "US"))
    for _ in range(10):
        monitor.health["a"].record(C.NOT_SENT, 50.0, now)
        monitor.record_segments("a", C.NOT_SENT, 50.0, now, ("INR", "upi", "IN"))
    for _ in range(50):
        monitor.health["b"].record(C.SUCCESS, 50.0, now)
        monitor.record_segments("b", C.SUCCESS, 50.0, now, ("USD", "card", "US"))
    monitor.health["b"].record(C.NOT_SENT, 50.0, now)
    assert plugin.decide(payment("USD"), ["a", "b"], ctx).gateways == ("a", "b")
    # For INR, a's INR window (10 failures) counts; b has no INR window: its gateway window.
    assert plugin.decide(payment("INR"), ["a", "b"], ctx).gateways == ("b", "a")


def test_metrics_with_no_health_bound_keeps_candidate_order() -> None:
    plugin = RoutingPlugin({"strategy": "metrics"})
    decision = plugin.decide(payment(), ["a", "b", "c"], context())
    assert decision.gateways == ("a", "b", "c")


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"metrics": {"weights": {"success": 0}}}, "plugins.routing.metrics.weights"),
        ({"metrics": {"weights": {"speed": 1}}}, "plugins.routing.metrics.weights"),
        ({"metrics": {"weights": {"success": -1}}}, "metrics.weights.success"),
        ({"metrics": {"weights": {"cost": 1}}}, "plugins.routing.metrics.fees"),
        ({"metrics": {"segment": "planet"}}, "plugins.routing.metrics.segment"),
        ({"metrics": {"latency_target_ms": "fast"}}, "metrics.latency_target_ms"),
        ({"health_floor": 1.5}, "plugins.routing.health_floor"),
        ({"health_floor_min_calls": 0}, "plugins.routing.health_floor_min_calls"),
        ({"probe_half_open": "yes"}, "plugins.routing.probe_half_open"),
    ],
)
def test_bad_health_routing_configuration(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=r"plugins\.routing") as caught:
        RoutingPlugin({"strategy": "metrics", **config})
    assert field in str(caught.value)


# --- the latency strategy ----------------------------------------------------------------------


def test_latency_puts_the_lowest_p95_first_and_unmeasured_last() -> None:
    plugin, monitor, _clock, ctx = setup({"strategy": "latency", "latency": {"min_calls": 5}})
    feed(monitor, "a", C.SUCCESS, 10, latency=300.0)
    feed(monitor, "b", C.SUCCESS, 10, latency=80.0)
    feed(monitor, "c", C.SUCCESS, 4, latency=1.0)  # fast but not enough calls
    decision = plugin.decide(payment(), ["a", "b", "c"], ctx)
    assert decision.gateways == ("b", "a", "c")
    assert decision.reason.startswith("latency: fastest first (b p95 ")
    assert "1 unmeasured" in decision.reason


def test_latency_p95_is_refreshed_on_its_own_cadence() -> None:
    plugin, monitor, clock, ctx = setup(
        {"strategy": "latency", "latency": {"min_calls": 1}},
        names=("a", "b"),
        percentile_refresh_s=1.0,
    )
    feed(monitor, "a", C.SUCCESS, 10, latency=100.0)
    feed(monitor, "b", C.SUCCESS, 10, latency=200.0)
    assert plugin.decide(payment(), ["a", "b"], ctx).gateways == ("a", "b")
    feed(monitor, "a", C.SUCCESS, 200, latency=900.0)  # a becomes slow
    clock.now += 0.5
    assert plugin.decide(payment(), ["a", "b"], ctx).gateways == ("a", "b")  # cached p95
    clock.now += 0.5
    assert plugin.decide(payment(), ["a", "b"], ctx).gateways == ("b", "a")


# --- Thompson sampling -------------------------------------------------------------------------


def traffic(
    plugin: RoutingPlugin,
    monitor: GatewayMonitor,
    clock: FakeClock,
    ctx: HookContext,
    seconds: float,
    failing: set[str],
    per_second: int = 100,
) -> Counter[str]:
    """``per_second`` payments a second for ``seconds``, each to the first routed gateway,
    whose health records the outcome: a gateway in ``failing`` times out."""
    firsts: Counter[str] = Counter()
    for _ in range(int(seconds * per_second)):
        clock.now += 1 / per_second
        first = plugin.decide(payment(), ["a", "b"], ctx).gateways[0]
        firsts[first] += 1
        feed(monitor, first, C.TIMEOUT if first in failing else C.SUCCESS)
    return firsts


def test_thompson_moves_traffic_off_a_degrading_gateway_within_seconds_and_back() -> None:
    plugin, monitor, clock, ctx = setup(
        {"strategy": "thompson", "thompson": {"seed": 3}},
        names=("a", "b"),
        breaker=BreakerSettings(enabled=False),  # exploration alone, no circuit help
        window_s=10.0,
        window_calls=0,
    )
    steady = traffic(plugin, monitor, clock, ctx, 10, failing=set())
    assert steady["a"] > 200 and steady["b"] > 200  # both healthy: both used
    # a starts timing out: after one second it gets a small share of the traffic.
    traffic(plugin, monitor, clock, ctx, 1, failing={"a"})
    degraded = traffic(plugin, monitor, clock, ctx, 2, failing={"a"})
    assert degraded["a"] < 0.1 * sum(degraded.values())
    # a recovers: exploration keeps probing it, and within seconds it is back in use.
    back = traffic(plugin, monitor, clock, ctx, 5, failing=set())
    assert back["a"] > 0
    later = traffic(plugin, monitor, clock, ctx, 10, failing=set())
    assert later["a"] > 0.25 * sum(later.values())


def test_thompson_is_reproducible_with_a_seed_and_uses_its_own_generator() -> None:
    import random

    def run() -> list[tuple[str, ...]]:
        plugin, monitor, _clock, ctx = setup({"strategy": "thompson", "thompson": {"seed": 11}})
        feed(monitor, "a", C.SUCCESS, 5)
        feed(monitor, "b", C.NOT_SENT, 5)
        return [plugin.decide(payment(), ["a", "b", "c"], ctx).gateways for _ in range(50)]

    random.seed(1)
    first = run()
    random.seed(2)  # the module-global generator plays no part
    assert run() == first
    assert len(set(first)) > 1  # it does explore


def test_thompson_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"thompson\.prior_failures"):
        RoutingPlugin({"strategy": "thompson", "thompson": {"prior_failures": 0}})
    with pytest.raises(ConfigError, match=r"thompson\.max_evidence"):
        RoutingPlugin({"strategy": "thompson", "thompson": {"max_evidence": 0}})
    strategy = RoutingPlugin({"strategy": "thompson"}).strategy
    assert isinstance(strategy, Thompson)
    assert strategy.seed is None


# --- third-party strategies and composition -----------------------------------------------------


class Reverse(Strategy):
    """``strategy = "reverse"``: candidates in reverse order (a test strategy)."""

    name: ClassVar[str] = "reverse"

    def __init__(self, options: Options) -> None:
        self.note = options.string("note", "reversed")
        options.finish()

    def rank(self, candidates: Any, payment: Payment, context: HookContext) -> Ranking:
        bound = "bound" if self.monitor is not None else "unbound"
        return Ranking(tuple(reversed(candidates)), f"{self.note} ({bound})", self.name)


class ReversePlugin:
    @hookimpl
    def aegispay_register_routing_strategies(self, register: Any) -> None:
        register(Reverse)


async def route_reasons(service: Any, payment_id: str) -> list[str]:
    history = await service.payment_history(payment_id)
    return [e.route_reason for e in history if isinstance(e, ev.PaymentProcessingStarted)]


def service_with(
    routing: dict[str, Any], *gateways: ScriptedGateway, plugins: tuple[Any, ...] = ()
) -> Any:
    config = PluginConfig({"routing": routing})
    return make_test_service(
        gateways=list(gateways),
        plugins=plugins,
        builtins=("validation", "routing", "priority_routing"),
        settings=Settings(plugin_config=config),
    )


@pytest.mark.anyio
async def test_a_plugin_strategy_is_selectable_by_name_and_as_an_ab_variant() -> None:
    a, b = ScriptedGateway("a"), ScriptedGateway("b")
    service = service_with(
        {"strategy": "reverse", "reverse": {"note": "last first"}}, a, b, plugins=(ReversePlugin(),)
    )
    async with service:
        paid = await service.pay(PaymentRequest(Money(500, "USD")))
        assert paid.attempts[0].gateway == "b"
        assert await route_reasons(service, paid.id) == ["last first (bound)"]

    ab = {
        "strategy": "ab_test",
        "ab_test": {
            "experiment": "e",
            "variants": [{"name": "r", "weight": 1, "strategy": "reverse"}],
        },
    }
    service = service_with(
        ab, ScriptedGateway("a"), ScriptedGateway("b"), plugins=(ReversePlugin(),)
    )
    async with service:
        paid = await service.pay(PaymentRequest(Money(500, "USD"), customer_id="c1"))
        assert paid.attempts[0].gateway == "b"


@pytest.mark.anyio
async def test_an_unknown_strategy_is_a_config_error_at_startup() -> None:
    plugin = RoutingPlugin({"strategy": "fastest"})  # perhaps a plugin's: checked at startup
    with pytest.raises(ConfigError, match=r"plugins\.routing\.strategy: unknown strategy"):
        plugin.decide(payment(), ["a"], context())
    service = service_with({"strategy": "fastest"}, ScriptedGateway("a"))
    with pytest.raises(ConfigError, match=r"plugins\.routing\.strategy: unknown strategy"):
        async with service:
            pass


def test_a_plugin_strategy_cannot_take_a_builtin_name() -> None:
    class Clash(Reverse):
        name: ClassVar[str] = "metrics"

    class Host:
        class hook:
            @staticmethod
            def aegispay_register_routing_strategies(register: Any) -> None:
                register(Clash)

    plugin = RoutingPlugin({"strategy": "round_robin"})
    with pytest.raises(ConfigError, match="'metrics' is registered twice"):
        plugin.register_strategies(Host())


def test_ab_test_variants_get_live_health() -> None:
    config = {
        "strategy": "ab_test",
        "ab_test": {
            "experiment": "e",
            "variants": [{"name": "m", "weight": 1, "strategy": "metrics"}],
        },
    }
    plugin, monitor, _clock, ctx = setup(config, names=("a", "b"))
    feed(monitor, "a", C.NOT_SENT, 3)
    feed(monitor, "b", C.SUCCESS, 3)
    decision = plugin.decide(payment(customer_id="c1"), ["a", "b"], ctx)
    assert decision.gateways == ("b", "a")
    assert decision.strategy == "ab_test:m"


# --- the engine --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_engine_routes_away_from_a_failing_gateway_by_metrics() -> None:
    flaky = ScriptedGateway("flaky", script={Operation.AUTHORIZE: [Outcome.NOT_SENT] * 3})
    steady = ScriptedGateway("steady")
    config = PluginConfig({"routing": {"strategy": "metrics"}})
    engine = EngineSettings(
        gateway_health=GatewayHealthSettings(breaker=BreakerSettings(failure_threshold=50))
    )
    service = make_test_service(
        gateways=[flaky, steady],
        builtins=("validation", "routing", "priority_routing"),
        settings=Settings(engine=engine, plugin_config=config),
    )
    async with service:
        first = await service.pay(PaymentRequest(Money(100, "USD"), country="DE"))
        # Nothing known yet: candidate order, flaky answers NOT_SENT, steady takes it.
        assert [a.gateway for a in first.attempts] == ["flaky", "steady"]
        for i in range(5):
            paid = await service.pay(PaymentRequest(Money(101 + i, "USD")))
            assert paid.state is PaymentState.COMPLETED
            assert paid.attempts[0].gateway == "steady"
            reasons = await route_reasons(service, paid.id)
            assert reasons[0].startswith("metrics: steady")
        health = service.gateway_health()
        assert health["flaky"]["by_class"]["not_sent"] == 1
        assert health["steady"]["volume"] == 6
        segments = service.gateway_monitor.snapshot(segments=True)["steady"]["segments"]
        assert segments["currency"]["USD"]["volume"] == 6


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30)),
        min_size=1,
        max_size=8,
    )
)
def test_metrics_success_only_orders_by_availability(
    windows: list[tuple[int, int, int]],
) -> None:
    names = tuple(f"g{i}" for i in range(len(windows)))
    config = {"strategy": "metrics", "metrics": {"weights": {"success": 1}}}
    plugin, monitor, _clock, ctx = setup(
        config, names=names, breaker=BreakerSettings(enabled=False)
    )
    for name, (ok, failed, declined) in zip(names, windows, strict=True):
        feed(monitor, name, C.SUCCESS, ok)
        feed(monitor, name, C.UNKNOWN, failed)
        feed(monitor, name, C.DECLINED, declined)
    decision = plugin.decide(payment(), list(names), ctx)
    assert sorted(decision.gateways) == sorted(names)  # a permutation: nothing lost
    availability = [monitor.health[name].availability() for name in decision.gateways]
    assert availability == sorted(availability, reverse=True)
    # ties keep candidate order
    for first, second in zip(decision.gateways, decision.gateways[1:], strict=False):
        if monitor.health[first].availability() == monitor.health[second].availability():
            assert names.index(first) < names.index(second)


def test_a_gateway_that_lost_its_traffic_is_forgiven_once_its_failures_age_out() -> None:
    # Routed away from, it records no calls; only reading can age its bad spell out of the
    # window, or it would never be chosen (nor pass the floor) again.
    plugin, monitor, clock, ctx = setup(
        {
            "strategy": "metrics",
            "metrics": {"weights": {"success": 1}},
            "health_floor": 0.8,
            "health_floor_min_calls": 5,
        },
        breaker=BreakerSettings(enabled=False),
        window_calls=0,
        window_s=60.0,
    )
    feed(monitor, "c", C.TIMEOUT, 10)
    assert plugin.decide(payment(), ["a", "b", "c"], ctx).gateways == ("a", "b")
    clock.now += 61  # the outage is over a window ago; c has had no traffic since
    feed(monitor, "a", C.SUCCESS, 9)
    feed(monitor, "a", C.NOT_SENT, 1)
    feed(monitor, "b", C.SUCCESS, 8)
    feed(monitor, "b", C.UNKNOWN, 2)
    decision = plugin.decide(payment(), ["a", "b", "c"], ctx)
    assert decision.gateways == ("c", "a", "b")  # unmeasured again: full marks
