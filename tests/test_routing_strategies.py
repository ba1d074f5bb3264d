"""The built-in ``routing`` plugin: rules, then a named strategy, then fallbacks.

Strategy contracts (exact weighted ratios, round-robin cycling, integer fee maths, geographic
elimination, A/B stickiness), rules, configuration errors, and the engine really charging the
gateway the configured strategy picked."""

from __future__ import annotations

import tomllib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aegispay import (
    HookContext,
    Money,
    Payment,
    PaymentRequest,
    PaymentService,
    PaymentState,
    RouteDecision,
    Settings,
)
from aegispay import events as ev
from aegispay.errors import ConfigError
from aegispay.plugins.routing import RoutingPlugin
from aegispay.plugins.routing_ab import ABTest
from aegispay.plugins.routing_cost import Cost
from aegispay.settings import PluginConfig
from aegispay.testing import ScriptedGateway, make_test_service
from hypothesis import given
from hypothesis import strategies as st

NOW = datetime(2026, 11, 26, tzinfo=UTC)
CONTEXT = HookContext("m", "process", lambda: NOW, {})


def payment(amount: str = "10.00", currency: str = "USD", **fields: Any) -> Payment:
    return Payment(
        id=fields.pop("id", "pay_1"),
        merchant_id="m",
        amount=Money.of(amount, currency),
        state=PaymentState.INITIATED,
        version=1,
        created_at=NOW,
        updated_at=NOW,
        **fields,
    )


def decide(
    plugin: RoutingPlugin, candidates: list[str], pay: Payment | None = None
) -> RouteDecision:
    return plugin.decide(pay or payment(), candidates, CONTEXT)


def firsts(plugin: RoutingPlugin, candidates: list[str], n: int) -> list[str]:
    return [decide(plugin, candidates).gateways[0] for _ in range(n)]


# --- no configuration: abstain ----------------------------------------------------------------


def test_without_configuration_the_plugin_abstains() -> None:
    plugin = RoutingPlugin({})
    assert plugin.aegispay_select_gateway(payment(), ["a", "b"], CONTEXT) is None
    assert plugin.aegispay_startup(object()) is None  # type: ignore[arg-type]


# --- round robin --------------------------------------------------------------------------------


def test_round_robin_cycles_through_every_candidate() -> None:
    plugin = RoutingPlugin({"strategy": "round_robin"})
    decisions = [decide(plugin, ["a", "b", "c"]) for _ in range(6)]
    assert [d.gateways for d in decisions[:3]] == [
        ("a", "b", "c"),
        ("b", "c", "a"),
        ("c", "a", "b"),
    ]
    assert [d.gateways[0] for d in decisions] == ["a", "b", "c", "a", "b", "c"]
    assert {d.strategy for d in decisions} == {"round_robin"}
    assert "round_robin" in decisions[0].reason


def test_round_robin_state_is_per_plugin_instance() -> None:
    one, two = (
        RoutingPlugin({"strategy": "round_robin"}),
        RoutingPlugin({"strategy": "round_robin"}),
    )
    assert firsts(one, ["a", "b"], 3) == ["a", "b", "a"]
    assert firsts(two, ["a", "b"], 1) == ["a"]


# --- weighted -----------------------------------------------------------------------------------


def weighted(weights: dict[str, int]) -> RoutingPlugin:
    return RoutingPlugin({"strategy": "weighted", "weighted": {"weights": weights}})


def test_weighted_5_3_2_gives_exact_ratios_in_every_window_of_ten() -> None:
    plugin = weighted({"a": 5, "b": 3, "c": 2})
    run = firsts(plugin, ["a", "b", "c"], 50)
    for start in range(0, 50, 10):
        assert Counter(run[start : start + 10]) == {"a": 5, "b": 3, "c": 2}
    # Smooth: interleaved, never five a's in a row.
    assert "a" * 3 not in "".join(run)


@given(st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=6), st.integers(1, 3))
def test_weighted_each_gateway_is_first_exactly_weight_times(weights: list[int], runs: int) -> None:
    names = [f"g{i}" for i in range(len(weights))]
    plugin = weighted(dict(zip(names, weights, strict=True)))
    total = sum(weights)
    for _ in range(runs):
        counts = Counter(firsts(plugin, names, total))
        assert counts == {name: w for name, w in zip(names, weights, strict=True)}


def test_weighted_orders_the_rest_by_weight_and_unweighted_gateways_are_fallbacks() -> None:
    plugin = weighted({"a": 1, "b": 5, "c": 0})
    decision = decide(plugin, ["a", "b", "c", "d"])
    assert decision.gateways == ("b", "a", "c", "d")
    assert decision.strategy == "weighted"
    assert "smooth weighted round-robin" in decision.reason
    assert "fallbacks ['c', 'd']" in decision.reason


# --- cost ---------------------------------------------------------------------------------------


def cost(fees: dict[str, list[dict[str, Any]]]) -> RoutingPlugin:
    return RoutingPlugin({"strategy": "cost", "cost": {"fees": fees}})


def test_cost_orders_by_integer_fee_with_stable_ties_and_unpriced_last() -> None:
    plugin = cost(
        {
            "flat": [{"currency": "USD", "fixed": "1.00"}],  # 100
            "pct": [{"currency": "USD", "basis_points": 250}],  # 2.5 % of 40.00 = 100
            "mixed": [{"currency": "USD", "fixed": "0.30", "basis_points": 290}],  # 30 + 116
        }
    )
    decision = decide(plugin, ["mixed", "unpriced", "pct", "flat"], payment("40.00"))
    assert decision.gateways == ("pct", "flat", "mixed", "unpriced")  # pct before flat: order
    assert "pct 1.00 USD" in decision.reason and "mixed 1.46 USD" in decision.reason
    # A small amount flips it: 2.5 % of 10.00 = 25 < 100.
    assert decide(plugin, ["flat", "mixed", "pct"], payment("10.00")).gateways[0] == "pct"
    assert decide(plugin, ["flat", "mixed", "pct"], payment("100.00")).gateways[0] == "flat"


def test_cost_per_payment_method_wins_over_the_currency_entry() -> None:
    plugin = cost(
        {
            "a": [
                {"currency": "USD", "basis_points": 100},
                {"currency": "USD", "payment_method": "amex", "basis_points": 400},
            ],
            "b": [{"currency": "USD", "basis_points": 200}],
        }
    )
    assert decide(plugin, ["a", "b"], payment("10.00")).gateways == ("a", "b")
    amex = payment("10.00", payment_method="amex")
    assert decide(plugin, ["a", "b"], amex).gateways == ("b", "a")


def test_cost_fee_maths_in_zero_and_three_decimal_currencies() -> None:
    plugin = cost(
        {
            "a": [
                {"currency": "JPY", "fixed": "30", "basis_points": 360},
                {"currency": "KWD", "fixed": "0.100", "basis_points": 275},
            ],
        }
    )
    strategy = plugin.strategy
    assert isinstance(strategy, Cost)
    # 30 + 3.6 % of 1234 yen = 30 + 44.424 -> 44 (half up) = 74 yen.
    assert strategy.fee("a", payment("1234", "JPY")) == Money(74, "JPY")
    # 0.100 KWD + 2.75 % of 12.345 KWD = 100 + 339.4875 -> 339 fils = 0.439 KWD.
    assert strategy.fee("a", payment("12.345", "KWD")) == Money(439, "KWD")
    # Half up: 2.75 % of 0.010 KWD = 0.275 fils -> 0; of 0.020 = 0.55 -> 1.
    assert strategy.fee("a", payment("0.020", "KWD")) == Money(101, "KWD")
    assert strategy.fee("a", payment("10.00", "USD")) is None


def test_cost_with_no_fee_for_the_currency_keeps_candidate_order() -> None:
    plugin = cost({"a": [{"currency": "EUR", "basis_points": 1}]})
    decision = decide(plugin, ["b", "a"])
    assert decision.gateways == ("b", "a")
    assert "no fee configured for USD" in decision.reason


# --- geographic ---------------------------------------------------------------------------------


def geographic(**options: Any) -> RoutingPlugin:
    return RoutingPlugin({"strategy": "geographic", "geographic": options})


def test_geographic_allow_eliminates_the_other_gateways() -> None:
    plugin = geographic(currencies={"INR": {"allow": ["x"]}})
    decision = decide(plugin, ["a", "x", "b"], payment("100.00", "INR"))
    assert decision.gateways == ("x",)  # a and b are never tried, not merely moved back
    assert "currency INR allows only ['x']" in decision.reason
    assert decide(plugin, ["a", "x", "b"]).gateways == ("a", "x", "b")  # USD: untouched


def test_geographic_allow_with_no_allowed_candidate_leaves_nothing() -> None:
    plugin = geographic(currencies={"INR": {"allow": ["x"]}})
    assert decide(plugin, ["a", "b"], payment("1.00", "INR")).gateways == ()


def test_geographic_country_and_currency_rules_combine() -> None:
    plugin = geographic(
        countries={
            "BR": {"allow": ["ebanx", "adyen"], "prefer": ["ebanx"]},
            "DE": {"prefer": ["adyen"]},
        },
        currencies={"EUR": {"prefer": ["stripe"]}},
    )
    br = decide(plugin, ["stripe", "adyen", "ebanx"], payment(country="BR"))
    assert br.gateways == ("ebanx", "adyen")
    de = decide(plugin, ["ebanx", "stripe", "adyen"], payment("5.00", "EUR", country="DE"))
    assert de.gateways == ("adyen", "stripe", "ebanx")
    assert de.strategy == "geographic"


# --- A/B test -----------------------------------------------------------------------------------


def ab_config(**extra: Any) -> dict[str, Any]:
    return {
        "strategy": "ab_test",
        "ab_test": {
            "experiment": "exp-1",
            "variants": [
                {"name": "control", "weight": 70, "order": ["a", "b"]},
                {"name": "treatment", "weight": 30, "order": ["b", "a"]},
            ],
        },
        **extra,
    }


def test_ab_test_is_sticky_per_customer() -> None:
    plugin = RoutingPlugin(ab_config())
    for customer in ("cus_1", "cus_2", "cus_3", "cus_42"):
        decisions = {
            decide(plugin, ["a", "b"], payment(id=f"pay_{i}", customer_id=customer))
            for i in range(20)
        }
        assert len(decisions) == 1
        (decision,) = decisions
        variant = decision.strategy.removeprefix("ab_test:")
        assert variant in ("control", "treatment")
        assert f"variant {variant!r}" in decision.reason
        assert decision.gateways == (("a", "b") if variant == "control" else ("b", "a"))
    # The same configuration in another instance (another process) assigns the same way.
    other = RoutingPlugin(ab_config())
    pay = payment(customer_id="cus_42")
    assert decide(other, ["a", "b"], pay) == decide(plugin, ["a", "b"], pay)


def test_ab_test_split_over_many_customers_is_near_the_weights() -> None:
    plugin = RoutingPlugin(ab_config())
    strategy = plugin.strategy
    assert isinstance(strategy, ABTest)
    counts = Counter(strategy.assign(f"cus_{i}").name for i in range(10_000))
    assert 6_700 < counts["control"] < 7_300
    assert counts["control"] + counts["treatment"] == 10_000


def test_ab_test_variant_with_its_own_strategy() -> None:
    config = {
        "strategy": "ab_test",
        "ab_test": {
            "experiment": "e",
            "variants": [
                {
                    "name": "rr",
                    "weight": 1,
                    "strategy": "weighted",
                    "options": {"weights": {"b": 1}},
                }
            ],
        },
    }
    decision = decide(RoutingPlugin(config), ["a", "b"], payment(customer_id="c"))
    assert decision.gateways == ("b", "a")
    assert decision.strategy == "ab_test:rr"
    assert "ab_test 'e' variant 'rr' -> weighted" in decision.reason


def test_ab_test_variant_strategy_reads_its_shared_table() -> None:
    config = {
        "strategy": "ab_test",
        "ab_test": {
            "experiment": "e",
            "variants": [{"name": "cheap", "weight": 1, "strategy": "cost"}],
        },
        "cost": {"fees": {"b": [{"currency": "USD", "fixed": "0.01"}]}},
    }
    decision = decide(RoutingPlugin(config), ["a", "b"], payment(customer_id="c"))
    assert decision.gateways == ("b", "a")
    assert decision.strategy == "ab_test:cheap"


# --- rules --------------------------------------------------------------------------------------


def test_rules_only_exclude_and_prefer() -> None:
    plugin = RoutingPlugin(
        {
            "rules": [
                {"name": "inr", "when": {"currency": "INR"}, "only": ["x"]},
                {
                    "name": "big",
                    "when": {"amount_gte": "500.00", "currency": "USD"},
                    "prefer": ["c"],
                },
                {"when": {"country": ["DE", "AT"], "payment_method": "sepa"}, "exclude": ["a"]},
                {"when": {"metadata": {"channel": "b2b"}}, "prefer": ["b"]},
            ]
        }
    )
    names = ["a", "b", "c", "x"]
    assert decide(plugin, names, payment("1.00", "INR")).gateways == ("x",)
    assert decide(plugin, names, payment("499.99")).gateways == ("a", "b", "c", "x")
    big = decide(plugin, names, payment("500.00"))
    assert big.gateways == ("c", "a", "b", "x")
    assert "rule 'big': prefer ['c']" in big.reason
    sepa = payment(country="AT", payment_method="sepa", metadata={"channel": "b2b"})
    assert decide(plugin, names, sepa).gateways == ("b", "c", "x")
    assert decide(plugin, names, payment(country="AT")).gateways == ("a", "b", "c", "x")
    # Amount conditions compare in the condition's currency only.
    assert decide(plugin, names, payment("50000", "JPY")).gateways == ("a", "b", "c", "x")


def test_rules_on_the_payment_method_type() -> None:
    """``payment_method_type`` is the family, apart from the ``payment_method`` token: a rule
    on one ignores the other, and a payment that names no family matches no family rule."""
    plugin = RoutingPlugin(
        {
            "rules": [
                {"when": {"payment_method_type": "upi"}, "prefer": ["x"]},
                {"when": {"payment_method_type": ["card", "emi"]}, "exclude": ["x"]},
            ]
        }
    )
    names = ["a", "x"]
    assert decide(plugin, names, payment(payment_method_type="upi")).gateways == ("x", "a")
    assert decide(plugin, names, payment(payment_method_type="emi")).gateways == ("a",)
    assert decide(plugin, names, payment(payment_method="upi")).gateways == ("a", "x")
    assert decide(plugin, names, payment()).gateways == ("a", "x")


def test_rules_then_strategy_with_rule_preference_first() -> None:
    plugin = RoutingPlugin(
        {
            "rules": [{"when": {"currency": "USD"}, "exclude": ["c"], "prefer": ["b"]}],
            "strategy": "round_robin",
        }
    )
    decisions = [decide(plugin, ["a", "b", "c"]) for _ in range(2)]
    assert [d.gateways for d in decisions] == [("b", "a"), ("b", "a")]
    assert decisions[0].strategy == "round_robin"
    assert decisions[0].reason.startswith("rule '#1': exclude ['c'], prefer ['b']; round_robin")


def test_rules_that_leave_nothing_give_an_empty_decision() -> None:
    plugin = RoutingPlugin({"rules": [{"when": {}, "exclude": ["a"]}]})
    decision = decide(plugin, ["a"])
    assert decision.gateways == ()
    assert "no gateway left" in decision.reason


# --- configuration errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"strategy": 3}, "plugins.routing.strategy"),
        ({"strategee": "cost"}, "plugins.routing"),
        ({"strategy": "weighted"}, "plugins.routing.weighted.weights"),
        ({"strategy": "weighted", "weighted": {"weights": {"a": -1}}}, "weighted.weights.a"),
        ({"strategy": "weighted", "weighted": {"weights": {"a": 1.5}}}, "weighted.weights.a"),
        ({"strategy": "weighted", "weighted": {"weights": {"a": True}}}, "weighted.weights.a"),
        ({"strategy": "weighted", "weighted": {"weights": {"a": 0}}}, "weighted.weights"),
        ({"strategy": "round_robin", "cost": {}}, "plugins.routing"),
        (
            {"strategy": "cost", "cost": {"fees": {"a": [{"currency": "JPY", "fixed": "0.5"}]}}},
            "cost.fees.a[0].fixed",
        ),
        (
            {"strategy": "cost", "cost": {"fees": {"a": [{"currency": "USD", "fixed": 0.3}]}}},
            "cost.fees.a[0].fixed",
        ),
        (
            {"strategy": "cost", "cost": {"fees": {"a": [{"currency": "usd"}]}}},
            "cost.fees.a[0].currency",
        ),
        (
            {"strategy": "geographic", "geographic": {"countries": {"india": {"allow": ["a"]}}}},
            "geographic.countries.india",
        ),
        (
            {"strategy": "ab_test", "ab_test": {"experiment": "e", "variants": []}},
            "ab_test.variants",
        ),
        (
            {
                "strategy": "ab_test",
                "ab_test": {
                    "experiment": "e",
                    "variants": [{"name": "v", "weight": 0, "order": ["a"]}],
                },
            },
            "ab_test.variants[0].weight",
        ),
        (
            {
                "strategy": "ab_test",
                "ab_test": {
                    "experiment": "e",
                    "variants": [{"name": "v", "weight": 1, "strategy": "ab_test"}],
                },
            },
            "ab_test.variants[0].strategy",
        ),
        ({"rules": [{"when": {"currency": "USD"}}]}, "plugins.routing.rules[0]"),
        ({"rules": [{"when": {"amount_gte": "5.00"}, "only": ["a"]}]}, "rules[0].when.amount_gte"),
        (
            {"rules": [{"when": {"amount_gte": "5.001", "currency": "USD"}, "only": ["a"]}]},
            "rules[0].when.amount_gte",
        ),
        (
            {"rules": [{"when": {"amount_gte": "1e3", "currency": "USD"}, "only": ["a"]}]},
            "rules[0].when.amount_gte",
        ),
        ({"rules": [{"when": {"colour": "red"}, "only": ["a"]}]}, "rules[0].when"),
        ({"rules": [{"only": "a"}]}, "rules[0].only"),
    ],
)
def test_bad_configuration_is_a_config_error_naming_the_field(
    config: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError, match=r"plugins\.routing") as caught:
        RoutingPlugin(config)
    assert field in str(caught.value)


def test_unknown_gateway_names_are_config_errors_naming_the_field() -> None:
    plugin = RoutingPlugin(
        {
            "rules": [{"when": {"currency": "USD"}, "prefer": ["a"]}],
            "strategy": "weighted",
            "weighted": {"weights": {"a": 1, "typo": 2}},
        }
    )
    plugin.check_gateways({"a", "typo", "b"})  # all registered: fine
    with pytest.raises(ConfigError, match=r"plugins\.routing\.weighted\.weights\.typo: unknown"):
        plugin.check_gateways({"a"})
    assert plugin.refs[0] == ("plugins.routing.rules[0].prefer[0]", "a")


# --- through the engine -------------------------------------------------------------------------


def service_with(gateways: list[ScriptedGateway], config: dict[str, Any]) -> PaymentService:
    settings = Settings(plugin_config=PluginConfig(config))
    service: PaymentService = make_test_service(
        gateways=gateways, settings=settings, builtins=("priority_routing", "routing")
    )
    return service


@pytest.mark.anyio
async def test_the_configured_strategy_decides_which_gateway_is_charged() -> None:
    a, b, c = ScriptedGateway("a"), ScriptedGateway("b"), ScriptedGateway("c")
    config = {
        "priority_routing": {"order": ["a", "b", "c"]},
        "routing": {"strategy": "weighted", "weighted": {"weights": {"a": 1, "b": 2, "c": 1}}},
    }
    service = service_with([a, b, c], config)
    async with service:
        paid = [await service.pay(PaymentRequest(Money(1000, "USD"))) for _ in range(8)]
        history = await service.payment_history(paid[0].id)
    assert all(p.state is PaymentState.COMPLETED for p in paid)
    assert Counter(p.gateway for p in paid) == {"a": 2, "b": 4, "c": 2}
    for gateway in (a, b, c):
        assert (
            sum(gateway.charge_count(p.id) for p in paid)
            == Counter(p.gateway for p in paid)[gateway.name]
        )
    started = [e for e in history if isinstance(e, ev.PaymentProcessingStarted)]
    assert started[0].gateway == "b"
    assert started[0].route_reason.startswith("weighted: b first")


@pytest.mark.anyio
async def test_engine_compliance_rule_fails_the_payment_rather_than_use_another_gateway() -> None:
    a = ScriptedGateway("a")
    config = {
        "routing": {
            "strategy": "geographic",
            "geographic": {"currencies": {"INR": {"allow": ["x"]}}},
        }
    }
    x = ScriptedGateway("x", currencies=["USD"])  # registered, but cannot take INR
    service = service_with([a, x], config)
    async with service:
        payment = await service.pay(PaymentRequest(Money(1000, "INR")))
    assert payment.state is PaymentState.FAILED
    assert payment.failure_code == "no_gateway"
    assert a.calls == [] and x.calls == []


@pytest.mark.anyio
async def test_without_routing_config_priority_routing_still_decides() -> None:
    a, b = ScriptedGateway("a"), ScriptedGateway("b")
    service = service_with([a, b], {"priority_routing": {"order": ["b", "a"]}})
    async with service:
        payment = await service.pay(PaymentRequest(Money(1000, "USD")))
    assert payment.gateway == "b"
    assert a.calls == []


@pytest.mark.anyio
async def test_unknown_gateway_in_config_stops_the_service_from_starting() -> None:
    service = service_with(
        [ScriptedGateway("a")], {"routing": {"rules": [{"when": {}, "only": ["nope"]}]}}
    )
    with pytest.raises(ConfigError, match=r"plugins\.routing\.rules\[0\]\.only\[0\]"):
        async with service:
            pass  # pragma: no cover


# --- the documented example ---------------------------------------------------------------------


def test_the_plugin_guide_example_configuration_is_valid() -> None:
    guide = (Path(__file__).resolve().parent.parent / "docs" / "plugin-guide.md").read_text(
        encoding="utf-8"
    )
    body = guide.split("## Routing strategies\n", 1)[1].split("\n## ", 1)[0]
    example = body.split("```toml\n", 1)[1].split("```", 1)[0]
    plugin = RoutingPlugin(tomllib.loads(example)["plugins"]["routing"])
    plugin.check_gateways({"stripe", "adyen", "braintree", "razorpay"})
    names = ["stripe", "adyen", "braintree", "razorpay"]
    inr = decide(plugin, names, payment("100.00", "INR", customer_id="c1"))
    assert inr.gateways == ("razorpay",)
    big = decide(plugin, names, payment("900.00", customer_id="c1"))
    assert big.gateways[0] == "adyen"
    assert big.strategy in ("ab_test:control", "ab_test:cheapest")
