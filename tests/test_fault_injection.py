"""The fault-injection plugin's contract: every fault kind, windows on a fake clock, seeding,
what a wrapped gateway keeps, and that a charge-happened UNKNOWN is settled by a status lookup
with exactly one charge. No sleeps: latency goes to a recording fake ``sleep``; the only real
waits are the engine's own (50 ms) gateway timeouts in the timeout tests."""

from __future__ import annotations

import random
from typing import Any

import pytest
from aegispay import Money, PaymentRequest, PaymentState, Settings
from aegispay.errors import ConfigError
from aegispay.gateways import (
    AuthorizeRequest,
    FeeModel,
    GatewayCapabilities,
    GatewayNotSent,
    Operation,
    Outcome,
    StatusRequest,
    capabilities_of,
)
from aegispay.plugins.fault_injection import (
    ERROR_OUTCOMES,
    OPERATIONS,
    FaultConfig,
    FaultInjectionPlugin,
    FaultyGateway,
)
from aegispay.plugins.simulated_gateways import Ledger, SimulatedGateway, SimulatedGatewayConfig
from aegispay.settings import EngineSettings, PluginConfig
from aegispay.testing import ScriptedGateway, make_test_service
from hypothesis import given
from hypothesis import strategies as st


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class RecordingSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def plugin(*faults: dict[str, Any], seed: int | None = 1, **kwargs: Any) -> FaultInjectionPlugin:
    config: dict[str, Any] = {"faults": list(faults)}
    if seed is not None:
        config["seed"] = seed
    return FaultInjectionPlugin(config, **kwargs)


def authorize_request(key: str = "pay_1-1", amount: int = 1000) -> AuthorizeRequest:
    return AuthorizeRequest("pay_1", 1, key, Money(amount, "USD"), capture=True)


def status_request(key: str = "pay_1-1") -> StatusRequest:
    return StatusRequest("pay_1", Operation.AUTHORIZE, key)


def wrapped(faults: FaultInjectionPlugin, gateway: Any = None) -> FaultyGateway:
    result = faults.wrap(gateway or ScriptedGateway("gw"))
    assert isinstance(result, FaultyGateway)
    return result


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ({"gateway": "a", "kind": "boom"}, "kind: must be one of latency, outage"),
        ({"gateway": "a", "kind": "error", "rate": 1.5}, "rate: must be between 0 and 1"),
        ({"gateway": "a", "kind": "error", "outcome": "maybe"}, "outcome: must be one of"),
        ({"gateway": "a", "kind": "outage", "start_s": 5, "end_s": 2}, "end_s (2.0) must be"),
        ({"gateway": "a", "kind": "outage", "operations": ["charge"]}, "operations: must be"),
        ({"gateway": "a", "kind": "latency"}, "needs latency_ms or latency_to_ms"),
        ({"gateway": "a", "kind": "latency", "latency_to_ms": 9}, "latency_to_ms needs end_s"),
        ({"gateway": "a", "kind": "latency", "latency_ms": -1}, "latency_ms: must be 0 or more"),
        ({"kind": "outage"}, "faults[0].gateway: required key missing"),
        ({"gateway": "a", "kind": "outage", "colour": "red"}, "unknown key(s) ['colour']"),
    ],
)
def test_bad_configuration_names_the_field(fault: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        FaultInjectionPlugin({"faults": [fault]})
    assert "plugins.fault_injection.faults[0]" in str(raised.value)
    assert expected in str(raised.value)


@pytest.mark.anyio
async def test_an_unregistered_gateway_is_named_when_the_service_starts() -> None:
    faults = plugin({"gateway": "nope", "kind": "outage"})
    service = make_test_service(plugins=[faults], gateways=[ScriptedGateway("gw")])
    with pytest.raises(ConfigError, match=r"faults\[0\]\.gateway: unknown gateway 'nope'"):
        async with service:
            pass


# -- what a wrapped gateway keeps ---------------------------------------------------------------


def test_wrapping_keeps_name_currencies_fees_and_capabilities() -> None:
    config = SimulatedGatewayConfig("sim-x", ("USD", "EUR"), fixed_fee_minor=25, fee_bps=190)
    simulated = SimulatedGateway(config, Ledger(), seed=0, latency_ms=0.0)
    scripted = ScriptedGateway("scripted", currencies=["JPY"])
    faults = plugin({"gateway": "*", "kind": "outage", "start_s": 100})
    for inner in (simulated, scripted):
        outer = wrapped(faults, inner)
        assert outer.name == inner.name
        assert outer.supported_currencies == inner.supported_currencies
        assert outer.fees == inner.fees
        assert capabilities_of(outer) == capabilities_of(inner)
    assert capabilities_of(wrapped(faults, simulated)).manual_capture is True
    # A gateway without declared capabilities gets the same conservative default as before.
    assert capabilities_of(wrapped(faults, scripted)) == GatewayCapabilities(
        currencies=frozenset({"JPY"})
    )
    # Everything else is the inner gateway's (test controls, webhooks, aclose).
    outer = wrapped(faults, simulated)
    assert outer.control().gateway is simulated
    assert outer.parse_webhook == simulated.parse_webhook
    assert isinstance(outer.fees, FeeModel)


def test_a_gateway_without_faults_is_not_wrapped_and_wrapping_is_done_once() -> None:
    faults = plugin({"gateway": "other", "kind": "outage"})
    gateway = ScriptedGateway("gw")
    assert faults.wrap(gateway) is gateway
    everywhere = plugin({"gateway": "*", "kind": "outage"})
    once = everywhere.wrap(gateway)
    assert everywhere.wrap(once) is once


@pytest.mark.anyio
async def test_status_lookups_and_calls_outside_the_windows_reach_the_gateway() -> None:
    clock = FakeClock()
    faults = plugin({"gateway": "gw", "kind": "outage", "start_s": 10, "end_s": 20}, clock=clock)
    inner = ScriptedGateway("gw")
    gateway = wrapped(faults, inner)
    faults.start()
    assert (await gateway.authorize(authorize_request())).outcome is Outcome.SUCCEEDED
    looked_up = await gateway.get_status(status_request())
    assert looked_up.outcome is Outcome.SUCCEEDED and looked_up.reference == "gw-pay_1-1"
    clock.now += 10  # the window opens (start inclusive)
    with pytest.raises(GatewayNotSent, match="injected outage"):
        await gateway.authorize(authorize_request("pay_1-2"))
    with pytest.raises(GatewayNotSent):
        await gateway.get_status(status_request())
    clock.now += 10  # and closes (end exclusive)
    assert (await gateway.authorize(authorize_request("pay_1-3"))).outcome is Outcome.SUCCEEDED
    assert [c.idempotency_key for c in inner.calls] == ["pay_1-1", "pay_1-1", "pay_1-3"]
    assert faults.injected == {("gw", "outage"): 2}


# -- each kind ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_latency_is_added_climbs_over_its_window_and_has_bounded_jitter() -> None:
    clock, sleep = FakeClock(), RecordingSleep()
    faults = plugin(
        {"gateway": "gw", "kind": "latency", "latency_ms": 20},
        {
            "gateway": "gw",
            "kind": "latency",
            "start_s": 10,
            "end_s": 20,
            "latency_ms": 0,
            "latency_to_ms": 100,
        },
        clock=clock,
        sleep=sleep,
    )
    gateway = wrapped(faults)
    faults.start()
    for step in (0, 10, 15, 19):  # before the climb, its start, half-way, near the end
        clock.now = 500.0 + step
        await gateway.authorize(authorize_request(f"k{step}"))
    assert sleep.waits == pytest.approx([0.020, 0.020, 0.070, 0.110])
    clock.now = 520.0  # the climb's window is over: only the constant latency is left
    await gateway.authorize(authorize_request("k20"))
    assert sleep.waits[-1] == pytest.approx(0.020)

    jittery_sleep = RecordingSleep()
    jittery = plugin(
        {"gateway": "gw", "kind": "latency", "latency_ms": 40, "jitter": 0.5},
        sleep=jittery_sleep,
    )
    gateway = wrapped(jittery)
    for i in range(200):
        await gateway.authorize(authorize_request(f"j{i}"))
    assert all(0.020 <= wait <= 0.060 for wait in jittery_sleep.waits)
    assert max(jittery_sleep.waits) - min(jittery_sleep.waits) > 0.030  # it does vary


@given(
    start=st.floats(0, 100),
    length=st.floats(0.5, 100),
    low=st.floats(0, 1000),
    high=st.floats(0, 1000),
    at=st.floats(0, 1),
)
def test_a_latency_climb_stays_between_its_two_ends(
    start: float, length: float, low: float, high: float, at: float
) -> None:
    fault = FaultConfig(
        "gw", "latency", start, start + length, latency_ms=low, latency_to_ms=high or 1.0
    )
    value = fault.latency_at(start + at * length)
    assert min(low, high or 1.0) - 1e-9 <= value <= max(low, high or 1.0) + 1e-9


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("outcome", "expected", "reaches_gateway"),
    [
        ("unknown", Outcome.UNKNOWN, False),
        ("server_error", Outcome.UNKNOWN, False),
        ("declined", Outcome.DECLINED, False),
        ("rate_limited", Outcome.NOT_SENT, False),
    ],
)
async def test_error_bursts_answer_by_outcome_class_without_calling_the_gateway(
    outcome: str, expected: Outcome, reaches_gateway: bool
) -> None:
    faults = plugin(
        {"gateway": "gw", "kind": "error", "outcome": outcome, "retry_after_s": 3, "rate": 1}
    )
    inner = ScriptedGateway("gw")
    result = await wrapped(faults, inner).authorize(authorize_request())
    assert result.outcome is expected
    assert bool(inner.calls) is reaches_gateway
    assert inner.charges == {}
    if outcome == "rate_limited":
        assert result.retry_after_s == 3.0
    if outcome == "declined":
        assert result.decline_code == "gateway_unavailable_for_payment"
        assert result.retryable_elsewhere  # gateway-specific: routing may try the next one
    assert faults.injected == {("gw", f"error:{outcome}"): 1}


@pytest.mark.anyio
async def test_not_sent_errors_are_raised_as_gateway_not_sent() -> None:
    faults = plugin({"gateway": "gw", "kind": "error", "outcome": "not_sent"})
    with pytest.raises(GatewayNotSent, match="injected not_sent"):
        await wrapped(faults).authorize(authorize_request())


@pytest.mark.anyio
@pytest.mark.parametrize("outcome", ERROR_OUTCOMES)
async def test_an_injected_status_lookup_never_claims_no_such_request_or_a_decline(
    outcome: str,
) -> None:
    # NOT_SENT from a lookup means "the gateway has no record": the engine may then route the
    # payment elsewhere. An injected fault cannot know that, so it must never say it.
    faults = plugin({"gateway": "gw", "kind": "error", "outcome": outcome})
    try:
        result = await wrapped(faults).get_status(status_request())
    except GatewayNotSent:
        return  # the engine reads a lookup that could not be made as UNKNOWN
    assert result.outcome is Outcome.UNKNOWN


@pytest.mark.anyio
async def test_a_lost_answer_is_unknown_but_the_gateway_did_charge() -> None:
    faults = plugin({"gateway": "gw", "kind": "lost_answer", "operations": ["authorize"]})
    inner = ScriptedGateway("gw")
    gateway = wrapped(faults, inner)
    result = await gateway.authorize(authorize_request())
    assert result.outcome is Outcome.UNKNOWN
    assert inner.charges == {"pay_1": 1}
    found = await gateway.get_status(status_request())  # status is not in its operations
    assert found.outcome is Outcome.SUCCEEDED


# -- seeding -----------------------------------------------------------------------------------


async def _decisions(seed: int | None, calls: int = 300) -> list[Outcome]:
    faults = plugin({"gateway": "gw", "kind": "error", "rate": 0.3}, seed=seed)
    gateway = wrapped(faults)
    return [(await gateway.authorize(authorize_request(f"k{i}"))).outcome for i in range(calls)]


@pytest.mark.anyio
async def test_a_seed_fixes_which_calls_fail_and_the_rate_holds() -> None:
    first, again, other = await _decisions(7), await _decisions(7), await _decisions(8)
    assert first == again
    assert first != other
    failed = first.count(Outcome.UNKNOWN)
    assert 60 <= failed <= 120  # 30 % of 300, give or take four standard deviations


@pytest.mark.anyio
async def test_each_gateway_draws_from_its_own_generator_made_by_the_factory() -> None:
    made: list[str | None] = []

    def factory(seed: str | None) -> random.Random:
        made.append(seed)
        return random.Random(seed)

    faults = plugin({"gateway": "*", "kind": "error", "rate": 0.5}, seed=3, rng_factory=factory)
    wrapped(faults, ScriptedGateway("a"))
    wrapped(faults, ScriptedGateway("b"))
    assert made == ["3/a", "3/b"]
    unseeded = plugin({"gateway": "*", "kind": "error"}, seed=None, rng_factory=factory)
    wrapped(unseeded, ScriptedGateway("c"))
    assert made[-1] is None  # no seed: from the OS, never the module-global generator


# -- through the engine ------------------------------------------------------------------------


def _service(
    faults: FaultInjectionPlugin, *gateways: ScriptedGateway, timeout_s: float = 10.0
) -> Any:
    order = {"priority_routing": {"order": [g.name for g in gateways]}}
    settings = Settings(
        engine=EngineSettings(gateway_timeout_s=timeout_s), plugin_config=PluginConfig(order)
    )
    return make_test_service(plugins=[faults], gateways=list(gateways), settings=settings)


@pytest.mark.anyio
async def test_an_outage_fails_over_to_the_next_gateway_with_nothing_sent() -> None:
    down, backup = ScriptedGateway("down"), ScriptedGateway("backup")
    faults = plugin({"gateway": "down", "kind": "outage"})
    async with _service(faults, down, backup) as service:
        payment = await service.pay(PaymentRequest(Money(1500, "USD")))
    assert payment.state is PaymentState.COMPLETED
    assert [(a.gateway, a.outcome) for a in payment.attempts] == [
        ("down", Outcome.NOT_SENT),
        ("backup", Outcome.SUCCEEDED),
    ]
    assert down.calls == [] and backup.charges == {payment.id: 1}


@pytest.mark.anyio
async def test_a_charge_behind_a_lost_answer_is_settled_by_a_status_lookup_once() -> None:
    flaky, backup = ScriptedGateway("flaky"), ScriptedGateway("backup")
    faults = plugin({"gateway": "flaky", "kind": "lost_answer", "operations": ["authorize"]})
    async with _service(faults, flaky, backup) as service:
        payment = await service.pay(PaymentRequest(Money(2500, "USD")))
        assert await service.replay(payment.id) == payment
    assert payment.state is PaymentState.COMPLETED
    assert [a.gateway for a in payment.attempts] == ["flaky"]  # UNKNOWN never fails over
    assert flaky.charges == {payment.id: 1} and backup.calls == []
    lookups = [c for c in flaky.calls if c.operation is Operation.STATUS]
    assert lookups and {c.idempotency_key for c in lookups} == {payment.attempts[0].idempotency_key}
    assert faults.injected == {("flaky", "lost_answer"): 1}


@pytest.mark.anyio
async def test_a_timeout_after_processing_really_waits_and_charges_exactly_once() -> None:
    slow, backup = ScriptedGateway("slow"), ScriptedGateway("backup")
    faults = plugin(
        {
            "gateway": "slow",
            "kind": "timeout",
            "after_processing": True,
            "operations": ["authorize"],
        }
    )
    async with _service(faults, slow, backup, timeout_s=0.05) as service:
        payment = await service.pay(PaymentRequest(Money(3500, "USD")))
        health = service.gateway_health()["slow"]
    assert health["by_class"]["timeout"] == 1  # the engine's own timer fired
    assert payment.state is PaymentState.COMPLETED
    assert [a.gateway for a in payment.attempts] == ["slow"]
    assert slow.charges == {payment.id: 1} and backup.charges == {}


@pytest.mark.anyio
async def test_a_timeout_before_processing_charges_nothing_and_the_lookup_says_so() -> None:
    slow, backup = ScriptedGateway("slow"), ScriptedGateway("backup")
    faults = plugin({"gateway": "slow", "kind": "timeout", "operations": ["authorize"]})
    async with _service(faults, slow, backup, timeout_s=0.05) as service:
        payment = await service.pay(PaymentRequest(Money(4500, "USD")))
    assert slow.charges == {}
    # The gateway answered the lookup "no such request", so the payment moved on, once.
    assert payment.state is PaymentState.COMPLETED
    assert [a.gateway for a in payment.attempts] == ["slow", "backup"]
    assert backup.charges == {payment.id: 1}


@pytest.mark.anyio
async def test_windows_are_relative_to_the_service_start_on_the_injected_clock() -> None:
    clock = FakeClock()
    down, backup = ScriptedGateway("down"), ScriptedGateway("backup")
    faults = plugin({"gateway": "down", "kind": "outage", "start_s": 30}, clock=clock)
    clock.now = 1000.0
    async with _service(faults, down, backup) as service:
        assert faults.started_at == 1000.0
        first = await service.pay(PaymentRequest(Money(100, "USD")))
        clock.now = 1030.0
        second = await service.pay(PaymentRequest(Money(200, "USD")))
    assert [a.gateway for a in first.attempts] == ["down"]
    assert [a.gateway for a in second.attempts] == ["down", "backup"]


@pytest.mark.anyio
async def test_closing_the_service_closes_the_wrapped_gateway() -> None:
    closed: list[str] = []

    class Pooled(ScriptedGateway):
        async def aclose(self) -> None:
            closed.append(self.name)

    faults = plugin({"gateway": "*", "kind": "outage", "start_s": 60})
    service = _service(faults, Pooled("pooled"))
    async with service:
        assert isinstance(service.gateways["pooled"], FaultyGateway)
    await service.aclose()
    assert closed == ["pooled"]


def test_operations_default_to_every_call() -> None:
    assert FaultConfig("gw", "outage").operations == OPERATIONS


@pytest.mark.anyio
async def test_a_stall_shorter_than_the_engine_timeout_is_only_a_slow_call() -> None:
    slow = ScriptedGateway("slow")
    faults = plugin({"gateway": "slow", "kind": "timeout", "hang_s": 0.01})
    async with _service(faults, slow, timeout_s=10.0) as service:
        payment = await service.pay(PaymentRequest(Money(5500, "USD")))
        health = service.gateway_health()["slow"]
    assert payment.state is PaymentState.COMPLETED
    assert health["by_class"]["timeout"] == 0 and health["by_class"]["success"] >= 1
    assert slow.charges == {payment.id: 1}
