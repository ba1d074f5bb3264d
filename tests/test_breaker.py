"""The circuit breaker: its transition table with a fake clock, and its place in the engine."""

from __future__ import annotations

import logging

import pytest
from aegispay import Money, Operation, Outcome, PaymentRequest, PaymentService, PaymentState
from aegispay.breaker import REJECTED, CircuitBreaker, CircuitState, GatewayMonitor
from aegispay.health import CallClass, GatewayHealth
from aegispay.settings import (
    BreakerSettings,
    EngineSettings,
    GatewayHealthSettings,
    PluginConfig,
    Settings,
)
from aegispay.testing import ScriptedGateway, make_test_service
from hypothesis import given
from hypothesis import strategies as st

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """A breaker over a health window, both on one fake clock, with its changes recorded."""

    def __init__(self, **settings: object) -> None:
        self.clock = FakeClock()
        self.changes: list[tuple[CircuitState, CircuitState, str]] = []
        self.health = GatewayHealth("g", window_calls=100, window_s=0, clock=self.clock)
        self.breaker = CircuitBreaker(
            "g",
            BreakerSettings(**settings),  # type: ignore[arg-type]
            health=self.health,
            clock=self.clock,
            on_change=lambda name, old, new, why: self.changes.append((old, new, why)),
        )

    def call(self, cls: CallClass = CallClass.SUCCESS) -> bool:
        """One call through the breaker; False if it failed fast."""
        token = self.breaker.allow()
        if token == REJECTED:
            return False
        self.health.record(cls, 1.0)
        self.breaker.record(
            token, cls in (CallClass.NOT_SENT, CallClass.UNKNOWN, CallClass.TIMEOUT)
        )
        return True

    def fail(self, times: int = 1, cls: CallClass = CallClass.NOT_SENT) -> None:
        for _ in range(times):
            assert self.call(cls)

    @property
    def state(self) -> CircuitState:
        return self.breaker.state

    def open(self) -> None:
        self.fail(self.breaker.settings.failure_threshold)
        assert self.state is OPEN


# -- CLOSED ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [CallClass.NOT_SENT, CallClass.UNKNOWN, CallClass.TIMEOUT])
def test_closed_to_open_on_consecutive_failures(cls: CallClass) -> None:
    rig = Rig(failure_threshold=3, min_calls=100)
    rig.fail(2, cls)
    assert rig.state is CLOSED
    rig.fail(1, cls)
    assert rig.state is OPEN
    assert rig.changes == [(CLOSED, OPEN, "3 consecutive failures")]
    assert rig.breaker.opened == 1


def test_a_success_resets_the_consecutive_count() -> None:
    rig = Rig(failure_threshold=3, min_calls=100)
    for _ in range(10):
        rig.fail(2)
        assert rig.call(CallClass.SUCCESS)
    assert rig.state is CLOSED


def test_declines_never_open_the_circuit() -> None:
    rig = Rig(failure_threshold=2, min_calls=2, failure_rate=0.1)
    for _ in range(50):
        assert rig.call(CallClass.DECLINED)
    assert rig.state is CLOSED
    rig.fail(1)
    assert rig.call(CallClass.DECLINED)  # the gateway answered: the streak is broken
    rig.fail(1)
    assert rig.state is OPEN  # 2 failures of 2 judged calls (declines are not judged)
    assert "failure rate 2/2" in rig.changes[0][2]


def test_one_early_failure_does_not_open_it() -> None:
    rig = Rig(failure_threshold=100, failure_rate=0.5, min_calls=10)
    rig.fail(1)  # 100% failure rate, but only one call
    assert rig.state is CLOSED


def test_failure_rate_needs_the_minimum_volume() -> None:
    rig = Rig(failure_threshold=100, failure_rate=0.5, min_calls=10)
    for _ in range(4):
        rig.fail(1)
        assert rig.call(CallClass.SUCCESS)
    rig.fail(1)
    assert rig.state is CLOSED  # 5/9: rate reached, volume not
    assert rig.call(CallClass.SUCCESS)
    assert rig.state is CLOSED  # 5/10 but a success does not open
    rig.fail(1)  # 6/11
    assert rig.state is OPEN
    assert rig.changes[0][2] == "failure rate 6/11 over the window"


def test_failure_rate_below_threshold_stays_closed() -> None:
    rig = Rig(failure_threshold=100, failure_rate=0.5, min_calls=10)
    for _ in range(50):
        rig.fail(1)
        assert rig.call(CallClass.SUCCESS)
        assert rig.call(CallClass.SUCCESS)
    assert rig.state is CLOSED


# -- OPEN ------------------------------------------------------------------------------------


def test_open_fails_fast_until_the_timeout() -> None:
    rig = Rig(failure_threshold=2, open_timeout_s=30.0)
    rig.open()
    rig.clock.now += 29.9
    assert not rig.call()
    assert rig.breaker.rejected == 1
    assert rig.breaker.current_state() is OPEN
    rig.clock.now += 0.1
    assert rig.breaker.current_state() is HALF_OPEN  # reported, not yet moved
    assert rig.state is OPEN
    assert rig.call()
    assert rig.changes[-1] == (OPEN, HALF_OPEN, "open timeout elapsed")


# -- HALF_OPEN -------------------------------------------------------------------------------


def half_open(rig: Rig) -> int:
    rig.open()
    rig.clock.now += rig.breaker.settings.open_timeout_s
    token = rig.breaker.allow()
    assert token != REJECTED
    assert rig.state is HALF_OPEN
    return token


def test_half_open_limits_concurrent_probes() -> None:
    rig = Rig(failure_threshold=1, half_open_max_probes=2, success_threshold=5)
    first = half_open(rig)
    second = rig.breaker.allow()
    assert second != REJECTED
    assert rig.breaker.allow() == REJECTED  # both probe slots taken
    rig.breaker.record(first, False)
    third = rig.breaker.allow()  # a slot is free again
    assert third != REJECTED
    assert rig.breaker.allow() == REJECTED
    rig.breaker.release(third)  # a cancelled probe gives its slot back
    assert rig.breaker.allow() != REJECTED


def test_half_open_closes_after_enough_successes() -> None:
    rig = Rig(failure_threshold=1, success_threshold=2, half_open_max_probes=1)
    token = half_open(rig)
    rig.health.record(CallClass.SUCCESS, 1.0)
    rig.breaker.record(token, False)
    assert rig.state is HALF_OPEN
    assert rig.call(CallClass.DECLINED)  # an answer counts as a good probe
    assert rig.state is CLOSED
    assert rig.changes[-1] == (HALF_OPEN, CLOSED, "2 successful probes")
    # The window that opened the circuit was cleared: it takes new failures to open it.
    assert rig.health.failures == 0
    assert rig.breaker.consecutive_failures == 0


def test_half_open_reopens_on_a_failed_probe() -> None:
    rig = Rig(failure_threshold=1, success_threshold=3, open_timeout_s=10.0)
    token = half_open(rig)
    rig.breaker.record(token, False)
    rig.fail(1)
    assert rig.state is OPEN
    assert rig.changes[-1] == (HALF_OPEN, OPEN, "probe failed")
    assert rig.breaker.opened == 2
    rig.clock.now += 9.9  # the open timeout starts again
    assert not rig.call()


def test_results_from_before_a_state_change_do_not_move_the_breaker() -> None:
    rig = Rig(failure_threshold=2, success_threshold=1)
    slow = rig.breaker.allow()  # admitted while CLOSED
    rig.open()
    rig.breaker.record(slow, False)  # arrives while OPEN: ignored
    assert rig.state is OPEN
    rig.clock.now += rig.breaker.settings.open_timeout_s
    probe = rig.breaker.allow()
    assert rig.state is HALF_OPEN
    rig.breaker.record(slow, False)  # arrives while HALF_OPEN: not a probe
    assert rig.state is HALF_OPEN
    assert rig.breaker.allow() == REJECTED  # and it did not free the probe slot
    rig.breaker.record(probe, False)
    assert rig.state is CLOSED


def test_full_cycle_transition_table() -> None:
    rig = Rig(failure_threshold=2, open_timeout_s=5.0, success_threshold=1)
    rig.open()
    rig.clock.now += 5
    rig.fail(1)  # HALF_OPEN probe fails
    rig.clock.now += 5
    assert rig.call()  # HALF_OPEN probe succeeds
    assert [(old, new) for old, new, _ in rig.changes] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]
    assert [t[0] for t in rig.breaker.transitions] == [500.0, 505.0, 505.0, 510.0, 510.0]


def test_disabled_breaker_never_opens() -> None:
    rig = Rig(enabled=False, failure_threshold=1)
    rig.fail(20)
    assert rig.state is CLOSED


def test_state_changes_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    breaker = CircuitBreaker("gw", BreakerSettings(failure_threshold=1), clock=FakeClock())
    with caplog.at_level(logging.WARNING, logger="aegispay.breaker"):
        breaker.record(breaker.allow(), True)
    assert [r.getMessage() for r in caplog.records] == [
        "circuit for gateway gw: closed -> open (1 consecutive failures)"
    ]
    assert caplog.records[0].name == "aegispay.breaker"


def test_monitor_uses_per_gateway_overrides() -> None:
    settings = GatewayHealthSettings(overrides={"b": BreakerSettings(failure_threshold=9)})
    monitor = GatewayMonitor(["a", "b"], settings)
    assert monitor.breakers["a"].settings.failure_threshold == 10
    assert monitor.breakers["b"].settings.failure_threshold == 9
    assert set(monitor.snapshot()) == {"a", "b"}


# -- the engine ------------------------------------------------------------------------------

pytestmark_engine = pytest.mark.anyio


def two_gateways(
    first: ScriptedGateway, second: ScriptedGateway, breaker: BreakerSettings
) -> PaymentService:
    config = PluginConfig({"priority_routing": {"order": [first.name, second.name]}})
    engine = EngineSettings(gateway_health=GatewayHealthSettings(breaker=breaker))
    service: PaymentService = make_test_service(
        gateways=[first, second], settings=Settings(engine=engine, plugin_config=config)
    )
    return service


def authorizations(gateway: ScriptedGateway) -> int:
    return sum(1 for c in gateway.calls if c.operation is Operation.AUTHORIZE)


@pytestmark_engine
async def test_open_circuit_is_not_called_and_traffic_fails_over() -> None:
    down = ScriptedGateway("down", script={Operation.AUTHORIZE: [Outcome.NOT_SENT] * 100})
    backup = ScriptedGateway("backup")
    service = two_gateways(down, backup, BreakerSettings(failure_threshold=3, open_timeout_s=30.0))
    clock = FakeClock()
    service.gateway_monitor.clock = clock
    async with service:
        for i in range(10):
            payment = await service.pay(PaymentRequest(Money(1000 + i, "USD")))
            assert payment.state is PaymentState.COMPLETED
            assert payment.attempts[-1].gateway == "backup"
        assert authorizations(down) == 3  # then the circuit opened: never called again
        assert authorizations(backup) == 10
        health = service.gateway_health()
        assert health["down"]["circuit"] == "open"
        assert health["down"]["rejected"] == 7
        assert health["down"]["score"] == 0.0
        assert health["down"]["by_class"]["not_sent"] == 3
        assert health["backup"]["circuit"] == "closed"
        assert health["backup"]["score"] == 1.0
        assert health["backup"]["volume"] == 10
        assert set(health["backup"]["latency_ms"]) == {"p50", "p95", "p99"}
        # The failed-fast attempt is an ordinary NOT_SENT attempt naming the circuit.
        skipped = payment.attempts[0]
        assert skipped.gateway == "down"
        assert skipped.outcome is Outcome.NOT_SENT

        # After the open timeout, one probe goes to the recovered gateway and closes it.
        down.script[Operation.AUTHORIZE].clear()
        clock.now += 30
        payment = await service.pay(PaymentRequest(Money(5000, "USD")))
        assert payment.attempts[0].gateway == "down"
        assert payment.state is PaymentState.COMPLETED
        assert authorizations(down) == 4
        assert service.gateway_health()["down"]["circuit"] == "half_open"
        await service.pay(PaymentRequest(Money(5001, "USD")))
        assert service.gateway_health()["down"]["circuit"] == "closed"
        assert sum(down.charges.values()) + sum(backup.charges.values()) == 12


@pytestmark_engine
async def test_declines_do_not_open_the_circuit_in_the_engine() -> None:
    declining = ScriptedGateway("declining", script={Operation.AUTHORIZE: [Outcome.DECLINED] * 20})
    backup = ScriptedGateway("backup")
    service = two_gateways(declining, backup, BreakerSettings(failure_threshold=2, min_calls=2))
    async with service:
        for i in range(20):
            payment = await service.pay(PaymentRequest(Money(100 + i, "USD")))
            assert payment.state is PaymentState.FAILED  # a bank decline does not fail over
        health = service.gateway_health()["declining"]
        assert health["circuit"] == "closed"
        assert health["score"] == 1.0
        assert health["by_class"]["declined"] == 20
        assert authorizations(backup) == 0


# --- probes, segments, and the caller feeding them -------------------------------------------


def test_wants_probe_and_reopens_in() -> None:
    rig = Rig(failure_threshold=1, open_timeout_s=10.0, half_open_max_probes=1)
    breaker = rig.breaker
    assert not breaker.wants_probe(rig.clock.now)  # closed: an ordinary call, not a probe
    assert breaker.reopens_in(rig.clock.now) == 0.0
    breaker.record(breaker.allow(), failed=True)
    assert breaker.state is OPEN
    assert breaker.reopens_in(rig.clock.now + 4) == 6.0
    assert not breaker.wants_probe(rig.clock.now + 9.9)
    assert breaker.wants_probe(rig.clock.now + 10)
    rig.clock.now += 10
    token = breaker.allow()  # the probe: half-open, its only slot taken
    assert breaker.state is HALF_OPEN
    assert not breaker.wants_probe(rig.clock.now)
    breaker.release(token)
    assert breaker.wants_probe(rig.clock.now)
    disabled = Rig(enabled=False)
    assert not disabled.breaker.wants_probe(disabled.clock.now)


def test_monitor_records_segments_and_bounds_their_number() -> None:
    clock = FakeClock()
    settings = GatewayHealthSettings(
        segments=("currency", "country"), segment_window_calls=3, max_segments=2
    )
    monitor = GatewayMonitor(["a"], settings, clock=clock, on_change=None)
    for currency in ("USD", "USD", "EUR", "JPY"):
        monitor.record_segments("a", CallClass.SUCCESS, 5.0, clock.now, (currency, "card", "DE"))
    monitor.record_segments("a", CallClass.NOT_SENT, 5.0, clock.now, ("USD", "card", None))
    usd = monitor.segment("a", "currency", "USD")
    assert usd is not None and usd.counts[CallClass.SUCCESS] == 2 and usd.failures == 1
    assert monitor.segment("a", "currency", "JPY") is None  # a third currency: over the bound
    assert monitor.segments_dropped == 1
    assert monitor.segment("a", "payment_method", "card") is None  # dimension switched off
    assert monitor.segment("a", "country", "DE").volume == 3  # type: ignore[union-attr]
    for _ in range(3):  # the segment window holds segment_window_calls calls
        monitor.record_segments("a", CallClass.SUCCESS, 5.0, clock.now, ("USD", None, None))
    assert usd.volume == 3 and usd.failures == 0
    report = monitor.snapshot(segments=True)["a"]["segments"]
    assert set(report) == {"currency", "country"}
    assert report["currency"]["USD"]["volume"] == 3
    assert "segments" not in monitor.snapshot()["a"]
    monitor.record_segments("new", CallClass.SUCCESS, 5.0, clock.now, ("USD", None, None))
    assert "new" in monitor.health  # a gateway seen first here gets its windows


@pytestmark_engine
async def test_the_caller_records_authorisations_by_segment() -> None:
    gateway = ScriptedGateway(
        "g", script={Operation.AUTHORIZE: [Outcome.SUCCEEDED, Outcome.DECLINED, Outcome.UNKNOWN]}
    )
    service: PaymentService = make_test_service(gateways=[gateway])
    async with service:
        for method in ("card", "card", "upi"):
            await service.pay(PaymentRequest(Money(700, "EUR"), payment_method=method))
    monitor = service.gateway_monitor
    eur = monitor.segment("g", "currency", "EUR")
    assert eur is not None
    assert eur.counts[CallClass.SUCCESS] == 1
    assert eur.counts[CallClass.DECLINED] == 1
    upi = monitor.segment("g", "payment_method", "upi")
    assert upi is not None and upi.failures == 1
    # The UNKNOWN was settled by status lookups: recorded in the gateway's window only.
    gateway_window = monitor.health["g"]
    assert gateway_window.total > eur.total
    assert monitor.segments["g"][2] == {}  # no country: requests do not carry it (see caller)


@pytestmark_engine
async def test_the_caller_takes_the_country_when_given() -> None:
    from aegispay.gateway_calls import GatewayCaller
    from aegispay.gateways import AuthorizeRequest
    from aegispay.hooks import Hooks
    from aegispay.pluginmanager import PluginHost

    gateway = ScriptedGateway("g")
    caller = GatewayCaller({"g": gateway}, Hooks(PluginHost().pm), 5.0)
    request = AuthorizeRequest("pay_1", 1, "pay_1-1", Money(100, "USD"), True, None, "card")
    result = await caller("g", Operation.AUTHORIZE, request, 1, country="FR")
    assert result.outcome is Outcome.SUCCEEDED
    assert caller.monitor.segment("g", "country", "FR") is not None
    assert caller.monitor.segment("g", "payment_method", "card") is not None


# -- fleet-wide state (aegispay.shared_breaker drives these; no Redis here) -----------------


def test_an_adopted_open_fails_fast_for_the_remaining_time_then_half_opens() -> None:
    rig = Rig(failure_threshold=3, open_timeout_s=30.0, success_threshold=1)
    rig.breaker.adopt_open(12.0, "3 consecutive failures")
    assert rig.breaker.state is OPEN and rig.breaker.consecutive_failures == 0
    assert rig.breaker.reopens_in(rig.clock()) == 12.0
    assert rig.changes == [(CLOSED, OPEN, "opened by another worker: 3 consecutive failures")]
    rig.clock.now += 11.9
    assert not rig.call()
    rig.clock.now += 0.1
    assert rig.call() and rig.breaker.state is CLOSED  # half-opened alone: not shared


def test_adopting_a_later_open_extends_without_a_second_transition() -> None:
    rig = Rig(failure_threshold=1, open_timeout_s=30.0)
    rig.fail()
    rig.breaker.adopt_open(40.0, "probe failed")
    assert rig.breaker.reopens_in(rig.clock()) == 40.0 and rig.breaker.opened == 1
    assert [new for _, new, _ in rig.changes] == [OPEN]


def test_adopt_close_closes_and_clears_the_window() -> None:
    rig = Rig(failure_threshold=2)
    rig.fail(2)
    rig.breaker.adopt_close("closed elsewhere")
    assert rig.breaker.state is CLOSED and rig.health.failures == 0
    assert rig.changes[-1] == (OPEN, CLOSED, "closed elsewhere")
    rig.breaker.adopt_close("again")  # already closed: nothing
    assert len(rig.changes) == 2


def test_a_disabled_breaker_adopts_nothing() -> None:
    rig = Rig(enabled=False)
    rig.breaker.adopt_open(10.0, "elsewhere")
    assert rig.breaker.state is CLOSED and rig.call()


def test_shared_breaker_half_opens_only_with_the_probe_slot() -> None:
    rig = Rig(failure_threshold=1, open_timeout_s=5.0, success_threshold=1)
    rig.breaker.shared = True
    rig.fail()
    rig.clock.now += 5.0
    assert not rig.breaker.wants_probe(rig.clock()) and not rig.call()
    assert rig.breaker.state is OPEN  # still waiting for the slot, not half-open
    rig.breaker.probe_granted = True
    assert rig.breaker.wants_probe(rig.clock())
    token = rig.breaker.allow()
    assert token != REJECTED and rig.breaker.state is HALF_OPEN
    rig.breaker.probe_granted = False  # the slot went elsewhere mid-spell
    assert rig.breaker.allow() == REJECTED
    rig.breaker.record(token, failed=True)
    assert rig.breaker.state is OPEN and not rig.breaker.probe_granted  # the grant is spent


@given(
    steps=st.lists(
        st.tuples(st.floats(0, 20), st.sampled_from(list(CallClass)), st.booleans()),
        max_size=40,
    )
)
def test_without_the_slot_an_open_shared_breaker_admits_nothing(
    steps: list[tuple[float, CallClass, bool]],
) -> None:
    """Whatever time passes and whatever is adopted, a shared breaker without the probe slot
    never lets a call through once open (the CLOSED path is not affected)."""
    rig = Rig(failure_threshold=1, open_timeout_s=5.0)
    rig.breaker.shared = True
    rig.fail()
    for elapsed, cls, adopt in steps:
        rig.clock.now += elapsed
        if adopt:
            rig.breaker.adopt_open(elapsed, "elsewhere")
        assert not rig.call(cls)
        assert rig.breaker.state is OPEN
