"""Retries of gateway calls (aegispay.retry) and the repeat of unknown creates.

Only what is safe is repeated, at the same gateway with the same idempotency key; a payment
moves to another gateway only as a new attempt after NOT_SENT. Every test injects the jitter,
the sleep and the clock: nothing here really waits.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import pytest
from aegispay import (
    AuthorizeRequest,
    GatewayResult,
    GatewayUnavailable,
    Money,
    Operation,
    Outcome,
    Payment,
    PaymentRequest,
    PaymentService,
    PaymentState,
    Settings,
    StatusRequest,
    load_settings,
)
from aegispay.errors import ConfigError
from aegispay.gateway_calls import GatewayCaller
from aegispay.gateways import (
    CaptureRequest,
    GatewayCapabilities,
    RefundRequest,
    VoidRequest,
)
from aegispay.hooks import Hooks
from aegispay.pluginmanager import PluginHost
from aegispay.retry import Retrier, may_repeat
from aegispay.settings import (
    BreakerSettings,
    EngineSettings,
    GatewayHealthSettings,
    PluginConfig,
    RetrySettings,
)
from aegispay.testing import ScriptedGateway, make_test_service
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

pytestmark = pytest.mark.anyio

S = PaymentState
O = Operation  # noqa: E741 - a table reads better with short names
RETRIES_ON = RetrySettings(enabled=True, max_attempts=3, base_delay_s=0.1, max_delay_s=2.0)


class FakeTime:
    """The retrier's clock and sleep: a sleep moves the clock and returns at once."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()


class WallClock:
    """The service's (datetime) clock, moved by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FaultyGateway(ScriptedGateway):
    """A ScriptedGateway behind a faulty network, declaring what it does.

    ``faults`` is consumed one per authorize call, before the gateway sees it:
    ``not_sent`` (refused: nothing arrives), ``rate_limited`` (429 with Retry-After),
    ``lost_before`` (times out before arriving: UNKNOWN, nothing done), ``lost_after`` (the
    gateway acts, the answer is lost: UNKNOWN), ``ok`` (no fault). ``status_faults`` likewise
    per lookup: ``unknown`` (unreachable, or a search that lags). ``idempotent=False`` is a
    gateway that does *not* dedupe creates: every create that arrives charges again.
    ``authoritative=False``: a lookup of a key it never saw answers UNKNOWN, not NOT_SENT.
    """

    def __init__(
        self,
        name: str,
        *,
        faults: Sequence[str] = (),
        status_faults: Sequence[str] = (),
        idempotent: bool = True,
        authoritative: bool = True,
        retry_after_s: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.faults = deque(faults)
        self.status_faults = deque(status_faults)
        self.idempotent = idempotent
        self.retry_after_s = retry_after_s
        self.capabilities = GatewayCapabilities(
            idempotent_create=idempotent, authoritative_status=authoritative
        )

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        fault = self.faults.popleft() if self.faults else "ok"
        if fault in ("not_sent", "rate_limited", "lost_before"):
            self._record(Operation.AUTHORIZE, request.payment_id, request.idempotency_key, None)
            if fault == "not_sent":
                return GatewayResult(Outcome.NOT_SENT, message="connection refused")
            if fault == "rate_limited":
                return GatewayResult(
                    Outcome.NOT_SENT, message="429", retry_after_s=self.retry_after_s
                )
            return GatewayResult(Outcome.UNKNOWN, message="connect timeout")
        if not self.idempotent:
            self.answers.pop(request.idempotency_key, None)  # no dedupe: it charges again
        result = await super().authorize(request)
        if fault == "lost_after":
            return GatewayResult(Outcome.UNKNOWN, message="read timeout")
        return result

    async def get_status(self, request: StatusRequest) -> GatewayResult:
        fault = self.status_faults.popleft() if self.status_faults else "ok"
        if fault == "unknown" or (
            not self.capabilities.authoritative_status
            and request.idempotency_key not in self.answers
            and not self.script.get(Operation.STATUS)
        ):
            self._record(Operation.STATUS, request.payment_id, request.idempotency_key, None)
            return GatewayResult(Outcome.UNKNOWN, message="not found (yet)")
        return await super().get_status(request)


def build(
    gateways: Sequence[ScriptedGateway],
    *,
    retry: RetrySettings = RETRIES_ON,
    clock: WallClock | None = None,
    rng: float = 0.5,
    **engine: Any,
) -> tuple[PaymentService, FakeTime]:
    """A service routing to ``gateways`` in the order given, its retrier on fake time."""
    config = PluginConfig({"priority_routing": {"order": [g.name for g in gateways]}})
    settings = Settings(engine=EngineSettings(retry=retry, **engine), plugin_config=config)
    extra = {"clock": clock} if clock is not None else {}
    service: PaymentService = make_test_service(
        gateways=list(reversed(gateways)), settings=settings, **extra
    )
    time = FakeTime()
    service.retrier.sleep = time.sleep
    service.retrier.clock = time.clock
    service.retrier.rng = lambda: rng
    return service, time


def request(minor: int = 1000, **fields: Any) -> PaymentRequest:
    return PaymentRequest(Money(minor, "USD"), **fields)


def keys(gateway: ScriptedGateway, operation: Operation = Operation.AUTHORIZE) -> list[str]:
    return [c.idempotency_key for c in gateway.calls if c.operation is operation]


def outcomes(payment: Payment) -> list[tuple[int, str, Outcome | None]]:
    return [(a.number, a.gateway, a.outcome) for a in payment.attempts]


# -- settings ------------------------------------------------------------------------------------


def test_defaults_are_off_with_sensible_bounds() -> None:
    retry = EngineSettings().retry
    assert retry == RetrySettings()
    assert (retry.enabled, retry.max_attempts, retry.base_delay_s, retry.max_delay_s) == (
        False,
        3,
        0.1,
        2.0,
    )
    assert retry.deadline_s == 20.0
    assert retry.repeat_unknown_create is True
    assert retry.retention_for("stripe") == 82_800.0  # a margin inside Stripe's 24 h


def test_settings_from_the_file_and_the_environment(tmp_path: Any) -> None:
    path = tmp_path / "aegispay.toml"
    path.write_text(
        "[engine.retry]\nmax_attempts = 5\nretention_overrides = { paypal = 19800 }\n",
        encoding="utf-8",
    )
    env = {"AEGISPAY_ENGINE__RETRY__ENABLED": "true", "AEGISPAY_ENGINE__RETRY__MAX_DELAY_S": "4"}
    retry = load_settings(path, env=env).engine.retry
    assert retry.enabled is True
    assert retry.max_attempts == 5
    assert retry.max_delay_s == 4.0
    assert retry.retention_for("paypal") == 19_800.0
    assert retry.retention_for("stripe") == 82_800.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_attempts": 0}, "settings.engine.retry: max_attempts: must be 1 or more, got 0"),
        ({"max_attempts": 2.5}, "settings.engine.retry.max_attempts: expected an integer"),
        ({"base_delay_s": 0}, "base_delay_s: must be greater than 0"),
        ({"base_delay_s": 3.0}, "base_delay_s: must be at most max_delay_s (2.0), got 3.0"),
        ({"max_delay_s": -1}, "max_delay_s: must be greater than 0"),
        ({"deadline_s": 0}, "deadline_s: must be greater than 0"),
        ({"enabled": "yes"}, "settings.engine.retry.enabled: expected true or false"),
        ({"retention_s": 0}, "retention_s: must be greater than 0"),
        ({"retention_overrides": {"paypal": -5}}, "retention_overrides.paypal: must be greater"),
        ({"retrys": 3}, "settings.engine.retry: unknown key(s) ['retrys']"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_field(
    values: dict[str, Any], message: str
) -> None:
    from aegispay.settings import settings_from_dict

    with pytest.raises(ConfigError) as info:
        settings_from_dict({"engine": {"retry": values}})
    assert message in str(info.value)


# -- classification: every outcome x operation x capability --------------------------------------

# For each (operation, outcome): may the call be repeated at the same gateway with the same key?
# "idempotent_create": only where the gateway declares it.
EXPECTED: dict[tuple[Operation, Outcome], bool | str] = {
    (O.AUTHORIZE, Outcome.SUCCEEDED): False,
    (O.AUTHORIZE, Outcome.PENDING): False,
    (O.AUTHORIZE, Outcome.REQUIRES_ACTION): False,
    (O.AUTHORIZE, Outcome.DECLINED): False,
    (O.AUTHORIZE, Outcome.NOT_SENT): True,
    (O.AUTHORIZE, Outcome.UNKNOWN): "idempotent_create",
    (O.CAPTURE, Outcome.SUCCEEDED): False,
    (O.CAPTURE, Outcome.PENDING): False,
    (O.CAPTURE, Outcome.REQUIRES_ACTION): False,
    (O.CAPTURE, Outcome.DECLINED): False,
    (O.CAPTURE, Outcome.NOT_SENT): True,
    (O.CAPTURE, Outcome.UNKNOWN): True,
    (O.VOID, Outcome.SUCCEEDED): False,
    (O.VOID, Outcome.PENDING): False,
    (O.VOID, Outcome.REQUIRES_ACTION): False,
    (O.VOID, Outcome.DECLINED): False,
    (O.VOID, Outcome.NOT_SENT): True,
    (O.VOID, Outcome.UNKNOWN): True,
    (O.REFUND, Outcome.SUCCEEDED): False,
    (O.REFUND, Outcome.PENDING): False,
    (O.REFUND, Outcome.REQUIRES_ACTION): False,
    (O.REFUND, Outcome.DECLINED): False,
    (O.REFUND, Outcome.NOT_SENT): True,
    (O.REFUND, Outcome.UNKNOWN): True,
    (O.STATUS, Outcome.SUCCEEDED): False,
    (O.STATUS, Outcome.PENDING): False,
    (O.STATUS, Outcome.REQUIRES_ACTION): False,
    (O.STATUS, Outcome.DECLINED): False,
    (O.STATUS, Outcome.NOT_SENT): False,  # the gateway's answer "no such request"
    (O.STATUS, Outcome.UNKNOWN): True,
}
CAPABILITIES = [
    GatewayCapabilities(idempotent_create=idempotent, authoritative_status=authoritative)
    for idempotent, authoritative in itertools.product((False, True), repeat=2)
]
CASES = [
    (operation, outcome, caps)
    for operation, outcome, caps in itertools.product(Operation, Outcome, CAPABILITIES)
]


def expected_repeat(operation: Operation, outcome: Outcome, caps: GatewayCapabilities) -> bool:
    rule = EXPECTED[operation, outcome]
    return caps.idempotent_create if rule == "idempotent_create" else bool(rule)


def test_the_table_covers_every_operation_and_outcome() -> None:
    assert set(EXPECTED) == set(itertools.product(Operation, Outcome))


@pytest.mark.parametrize(("operation", "outcome", "caps"), CASES)
def test_classification(operation: Operation, outcome: Outcome, caps: GatewayCapabilities) -> None:
    assert may_repeat(operation, outcome, caps) is expected_repeat(operation, outcome, caps)


class ConstantGateway:
    """Answers every call with the same outcome, and counts the calls."""

    def __init__(self, outcome: Outcome, caps: GatewayCapabilities) -> None:
        self.name = "g"
        self.supported_currencies = None
        self.capabilities = caps
        self.outcome = outcome
        self.calls = 0

    async def _answer(self, request: Any) -> GatewayResult:
        self.calls += 1
        return GatewayResult(self.outcome, retryable_elsewhere=self.outcome is Outcome.DECLINED)

    authorize = capture = void = refund = get_status = _answer


USD = Money(500, "USD")
REQUESTS: dict[Operation, Any] = {
    O.AUTHORIZE: AuthorizeRequest("pay_1", 1, "pay_1-1", USD, capture=True),
    O.CAPTURE: CaptureRequest("pay_1", "pay_1-capture-4", "ref", USD),
    O.VOID: VoidRequest("pay_1", "pay_1-void-4", "ref"),
    O.REFUND: RefundRequest("pay_1", "pay_1-refund-1", "ref", USD),
    O.STATUS: StatusRequest("pay_1", O.AUTHORIZE, "pay_1-1"),
}


@pytest.mark.parametrize(("operation", "outcome", "caps"), CASES)
async def test_the_caller_repeats_exactly_what_the_table_allows(
    operation: Operation, outcome: Outcome, caps: GatewayCapabilities
) -> None:
    gateway = ConstantGateway(outcome, caps)
    time = FakeTime()
    retrier = Retrier(RETRIES_ON, rng=lambda: 0.5, sleep=time.sleep, clock=time.clock)
    caller = GatewayCaller({"g": gateway}, Hooks(PluginHost().pm), 5.0, retrier=retrier)  # type: ignore[dict-item]
    result = await caller("g", operation, REQUESTS[operation], 1)

    repeats = expected_repeat(operation, outcome, caps)
    assert gateway.calls == (3 if repeats else 1)
    assert len(time.sleeps) == (2 if repeats else 0)
    assert caller.retries.get("g", 0) == (2 if repeats else 0)
    assert result.outcome is outcome  # a sequence of one outcome ends as that outcome


async def test_with_retries_off_the_caller_calls_once() -> None:
    gateway = ConstantGateway(Outcome.NOT_SENT, GatewayCapabilities(idempotent_create=True))
    time = FakeTime()
    retrier = Retrier(RetrySettings(), sleep=time.sleep, clock=time.clock)
    caller = GatewayCaller({"g": gateway}, Hooks(PluginHost().pm), 5.0, retrier=retrier)  # type: ignore[dict-item]
    result = await caller("g", O.AUTHORIZE, REQUESTS[O.AUTHORIZE], 1)
    assert (result.outcome, gateway.calls, time.sleeps) == (Outcome.NOT_SENT, 1, [])


# -- backoff -------------------------------------------------------------------------------------


def test_backoff_is_full_jitter_over_a_capped_exponential() -> None:
    draws = iter([0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25])
    retrier = Retrier(RetrySettings(base_delay_s=0.1, max_delay_s=1.0), rng=lambda: next(draws))
    assert retrier.backoff(1) == 0.0
    assert [retrier.backoff(n) for n in (1, 2, 3, 4, 5)] == [0.05, 0.1, 0.2, 0.4, 0.5]
    assert retrier.backoff(2, retry_after_s=3.0) == 3.0  # Retry-After is the least wait


@hsettings(max_examples=200)
@given(
    retry_no=st.integers(1, 200),
    draw=st.floats(0.0, 1.0, exclude_max=True),
    base=st.floats(0.001, 1.0),
    extra=st.floats(0.0, 10.0),
    retry_after=st.none() | st.floats(0.0, 100.0),
)
def test_backoff_bounds(
    retry_no: int, draw: float, base: float, extra: float, retry_after: float | None
) -> None:
    settings = RetrySettings(base_delay_s=base, max_delay_s=base + extra)
    delay = Retrier(settings, rng=lambda: draw).backoff(retry_no, retry_after)
    ceiling = min(settings.max_delay_s, base * 2 ** (retry_no - 1))
    assert delay >= 0.0
    if retry_after is None:
        assert delay < ceiling or delay == 0.0
    else:
        assert delay >= retry_after
        assert delay == max(retry_after, draw * ceiling)


# -- NOT_SENT, rate limits, deadline, circuit ------------------------------------------------------


async def test_not_sent_is_retried_at_the_same_gateway_with_the_same_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = FaultyGateway("first", faults=["not_sent", "not_sent"])
    second = ScriptedGateway("second")
    service, time = build([first, second])
    caplog.set_level(logging.INFO, logger="aegispay.retry")
    async with service:
        payment = await service.pay(request())
        health = service.gateway_health()

    assert payment.state is S.COMPLETED
    assert outcomes(payment) == [(1, "first", Outcome.SUCCEEDED)]
    assert keys(first) == [f"{payment.id}-1"] * 3
    assert second.calls == []
    assert first.charge_count(payment.id) == 1
    assert time.sleeps == [0.05, 0.1]  # 0.5 x 0.1, then 0.5 x 0.2
    assert health["first"]["retries"] == 2
    assert health["first"]["by_class"]["not_sent"] == 2
    assert health["second"]["retries"] == 0
    logged = [r.getMessage() for r in caplog.records if r.name == "aegispay.retry"]
    assert len(logged) == 2
    assert f"gateway first authorize payment {payment.id} attempt 1: retry 1 of 2" in logged[0]
    assert "not_sent (connection refused)" in logged[0]


async def test_not_sent_after_the_last_retry_fails_over_as_a_new_attempt() -> None:
    first = FaultyGateway("first", faults=["not_sent"] * 3)
    second = ScriptedGateway("second")
    service, time = build([first, second])
    async with service:
        payment = await service.pay(request())

    assert outcomes(payment) == [(1, "first", Outcome.NOT_SENT), (2, "second", Outcome.SUCCEEDED)]
    assert keys(first) == [f"{payment.id}-1"] * 3
    assert keys(second) == [f"{payment.id}-2"]
    assert len(time.sleeps) == 2
    assert first.charges == {} and second.charge_count(payment.id) == 1


async def test_not_sent_everywhere_fails_after_retrying_each_gateway() -> None:
    first = FaultyGateway("first", faults=["not_sent"] * 3)
    second = FaultyGateway("second", faults=["not_sent"] * 3)
    service, _ = build([first, second])
    async with service:
        payment = await service.pay(request())
    assert payment.state is S.FAILED
    assert payment.failure_code == "gateways_unavailable"
    assert (len(keys(first)), len(keys(second))) == (3, 3)


async def test_a_rate_limit_waits_at_least_its_retry_after() -> None:
    first = FaultyGateway("first", faults=["rate_limited"], retry_after_s=1.5)
    service, time = build([first, ScriptedGateway("second")])
    async with service:
        payment = await service.pay(request())
    assert outcomes(payment) == [(1, "first", Outcome.SUCCEEDED)]
    assert time.sleeps == [1.5]  # the jitter (0.05) is below it


async def test_a_retry_after_longer_than_max_delay_fails_over_at_once() -> None:
    first = FaultyGateway("first", faults=["rate_limited"], retry_after_s=30.0)
    second = ScriptedGateway("second")
    service, time = build([first, second])
    async with service:
        payment = await service.pay(request())
    assert outcomes(payment) == [(1, "first", Outcome.NOT_SENT), (2, "second", Outcome.SUCCEEDED)]
    assert time.sleeps == []
    assert len(keys(first)) == 1


async def test_the_deadline_ends_the_retries_and_no_wait_passes_it() -> None:
    first = FaultyGateway("first", faults=["not_sent"] * 5)
    second = ScriptedGateway("second")
    retry = RetrySettings(enabled=True, max_attempts=10, base_delay_s=0.1, deadline_s=0.3)
    service, time = build([first, second], retry=retry)
    async with service:
        payment = await service.pay(request())
    # Waits 0.05, 0.1 (0.15 in all); the next, 0.2, would end at 0.35: past the deadline.
    assert time.sleeps == [0.05, 0.1]
    assert len(keys(first)) == 3
    assert outcomes(payment) == [(1, "first", Outcome.NOT_SENT), (2, "second", Outcome.SUCCEEDED)]


async def test_the_deadline_is_per_operation() -> None:
    first = FaultyGateway("first", faults=["not_sent"] * 2)
    retry = RetrySettings(enabled=True, max_attempts=10, base_delay_s=0.1, deadline_s=0.3)
    service, time = build([first], retry=retry)
    async with service:
        one = await service.pay(request())
        time.now += 3600  # an hour later: the next payment has its own deadline
        first.faults.extend(["not_sent"] * 2)
        two = await service.pay(request())
    assert one.state is two.state is S.COMPLETED
    assert time.sleeps == [0.05, 0.1, 0.05, 0.1]


async def test_nothing_is_retried_into_an_open_circuit() -> None:
    first = FaultyGateway("first", faults=["not_sent"] * 3)
    second = ScriptedGateway("second")
    health = GatewayHealthSettings(breaker=BreakerSettings(failure_threshold=1))
    service, time = build([first, second], gateway_health=health)
    async with service:
        payment = await service.pay(request())
        circuit = service.gateway_health()["first"]["circuit"]
    assert circuit == "open"  # the first NOT_SENT opened it
    assert len(keys(first)) == 1 and time.sleeps == []
    assert outcomes(payment) == [(1, "first", Outcome.NOT_SENT), (2, "second", Outcome.SUCCEEDED)]


@pytest.mark.parametrize("elsewhere", [False, True])
async def test_a_decline_is_never_retried(elsewhere: bool) -> None:
    declined = GatewayResult(Outcome.DECLINED, decline_code="nope", retryable_elsewhere=elsewhere)
    first = FaultyGateway("first", script={Operation.AUTHORIZE: [declined]})
    second = ScriptedGateway("second")
    service, time = build([first, second])
    async with service:
        payment = await service.pay(request())
    assert len(keys(first)) == 1 and time.sleeps == []
    if elsewhere:  # failover: a new attempt with its own key, not a retry
        assert keys(second) == [f"{payment.id}-2"]
        assert payment.state is S.COMPLETED
    else:
        assert second.calls == []
        assert payment.state is S.FAILED


async def test_with_retries_off_not_sent_fails_over_at_once() -> None:
    first = FaultyGateway("first", faults=["not_sent"])
    second = ScriptedGateway("second")
    service, time = build([first, second], retry=RetrySettings())
    async with service:
        payment = await service.pay(request())
    assert outcomes(payment) == [(1, "first", Outcome.NOT_SENT), (2, "second", Outcome.SUCCEEDED)]
    assert len(keys(first)) == 1 and time.sleeps == []
    assert service.gateway_health()["first"]["retries"] == 0


# -- UNKNOWN -------------------------------------------------------------------------------------


async def test_unknown_is_repeated_with_the_same_key_where_creates_are_deduped() -> None:
    first = FaultyGateway("first", faults=["lost_after"])
    second = ScriptedGateway("second")
    service, time = build([first, second])
    async with service:
        payment = await service.pay(request())
    assert outcomes(payment) == [(1, "first", Outcome.SUCCEEDED)]
    assert keys(first) == [f"{payment.id}-1"] * 2  # the repeat got the original answer
    assert keys(first, Operation.STATUS) == []
    assert first.charge_count(payment.id) == 1 and second.calls == []
    assert time.sleeps == [0.05]


async def test_unknown_is_not_repeated_where_creates_are_not_deduped() -> None:
    first = FaultyGateway("first", faults=["lost_after"], idempotent=False)
    second = ScriptedGateway("second")
    service, _ = build([first, second])
    async with service:
        payment = await service.pay(request())
    assert keys(first) == [f"{payment.id}-1"]  # settled by a status lookup instead
    assert keys(first, Operation.STATUS) == [f"{payment.id}-1"]
    assert outcomes(payment) == [(1, "first", Outcome.SUCCEEDED)]
    assert first.charge_count(payment.id) == 1 and second.calls == []


async def test_not_sent_after_unknown_never_fails_over() -> None:
    # The first create was processed but its answer lost; both repeats were refused. The
    # repeats' "not sent" says nothing about the first: the attempt stays UNKNOWN.
    first = FaultyGateway("first", faults=["lost_after", "not_sent", "not_sent"])
    second = ScriptedGateway("second")
    service, _ = build([first, second])
    async with service:
        payment = await service.pay(request())
    assert second.calls == []
    assert keys(first, Operation.STATUS) == [f"{payment.id}-1"]
    assert outcomes(payment) == [(1, "first", Outcome.SUCCEEDED)]
    assert first.charge_count(payment.id) == 1


async def test_a_gateway_specific_decline_after_unknown_does_not_fail_over() -> None:
    declined = GatewayResult(Outcome.DECLINED, decline_code="x", retryable_elsewhere=True)
    first = FaultyGateway("first", faults=["lost_before"], script={Operation.AUTHORIZE: [declined]})
    second = ScriptedGateway("second")
    service, _ = build([first, second])
    async with service:
        payment = await service.pay(request())
    assert second.calls == []
    assert payment.state is S.FAILED and payment.failure_code == "x"


async def test_status_lookups_are_spaced_by_the_backoff_when_retries_are_on() -> None:
    unknown = [Outcome.UNKNOWN, Outcome.UNKNOWN]
    gateway = ScriptedGateway(
        "only", script={Operation.AUTHORIZE: [Outcome.UNKNOWN], Operation.STATUS: unknown}
    )
    service, time = build([gateway], status_lookups=3)
    async with service:
        payment = await service.pay(request())
    assert payment.state is S.COMPLETED
    assert keys(gateway, Operation.STATUS) == [f"{payment.id}-1"] * 3
    assert time.sleeps == [0.05, 0.1]


async def test_status_lookups_are_immediate_when_retries_are_off() -> None:
    unknown = [Outcome.UNKNOWN] * 3
    gateway = ScriptedGateway(
        "only", script={Operation.AUTHORIZE: [Outcome.UNKNOWN], Operation.STATUS: unknown}
    )
    service, time = build([gateway], retry=RetrySettings(), status_lookups=3)
    async with service:
        payment = await service.pay(request())
        settled = await service.sync_payment(payment.id)
    assert payment.state is S.PROCESSING and settled.state is S.COMPLETED
    assert len(keys(gateway, Operation.STATUS)) == 4
    assert time.sleeps == []


# -- capture, void, refund -----------------------------------------------------------------------


async def test_a_capture_not_sent_is_retried_with_its_recorded_key() -> None:
    gateway = ScriptedGateway("only", script={Operation.CAPTURE: [Outcome.NOT_SENT]})
    service, time = build([gateway])
    async with service:
        authorized = await service.pay(request(capture_mode="manual"))
        captured = await service.capture(authorized.id)
    assert captured.state is S.COMPLETED
    key = f"{authorized.id}-capture-{authorized.version + 1}"
    assert keys(gateway, Operation.CAPTURE) == [key, key]
    assert time.sleeps == [0.05]


async def test_a_capture_not_sent_without_retries_drops_the_intent() -> None:
    gateway = ScriptedGateway("only", script={Operation.CAPTURE: [Outcome.NOT_SENT]})
    service, _ = build([gateway], retry=RetrySettings())
    async with service:
        authorized = await service.pay(request(capture_mode="manual"))
        with pytest.raises(GatewayUnavailable):
            await service.capture(authorized.id)
    assert len(keys(gateway, Operation.CAPTURE)) == 1


async def test_a_lost_refund_answer_is_repeated_and_refunds_once() -> None:
    gateway = ScriptedGateway("only", lose_answers={Operation.REFUND: 1})
    service, _ = build([gateway])
    async with service:
        paid = await service.pay(request())
        refunded = await service.refund(paid.id, Money(400, "USD"))
    assert refunded.state is S.PARTIALLY_REFUNDED
    assert keys(gateway, Operation.REFUND) == [f"{paid.id}-refund-1"] * 2
    assert gateway.refunded[paid.id] == 400


async def test_a_void_not_sent_is_retried() -> None:
    gateway = ScriptedGateway("only", script={Operation.VOID: [Outcome.NOT_SENT]})
    service, _ = build([gateway])
    async with service:
        authorized = await service.pay(request(capture_mode="manual"))
        cancelled = await service.cancel(authorized.id)
    assert cancelled.state is S.CANCELLED
    assert len(keys(gateway, Operation.VOID)) == 2


# -- repeating an unknown create (lookups that cannot see it) ------------------------------------


def lagging(name: str, fault: str, **kwargs: Any) -> FaultyGateway:
    """Like Stripe: dedupes creates by key, but its lookup lags (every lookup here UNKNOWN)."""
    return FaultyGateway(
        name, faults=[fault], status_faults=["unknown"] * 20, authoritative=False, **kwargs
    )


@pytest.mark.parametrize("fault", ["lost_after", "lost_before"])
@pytest.mark.parametrize("retry", [RetrySettings(), RETRIES_ON], ids=["retries off", "on"])
async def test_sync_repeats_an_unknown_create_with_the_same_key(
    fault: str, retry: RetrySettings
) -> None:
    first = lagging("first", fault, idempotent=True)
    if retry.enabled:  # the in-line repeats are lost too
        first.faults.extend(["lost_before"] * (retry.max_attempts - 1))
    second = ScriptedGateway("second")
    service, _ = build([first, second], retry=retry)
    async with service:
        pending = await service.pay(request())
        assert pending.state is S.PROCESSING
        settled = await service.sync_payment(pending.id)
    assert settled.state is S.COMPLETED
    assert outcomes(settled) == [(1, "first", Outcome.SUCCEEDED)]
    assert set(keys(first)) == {f"{pending.id}-1"}
    # Either the original charge is returned, or (it never arrived) the repeat makes it.
    assert first.charge_count(pending.id) == 1
    assert second.calls == []


async def test_no_repeat_where_the_gateway_does_not_dedupe_creates() -> None:
    first = lagging("first", "lost_after", idempotent=False)
    service, _ = build([first, ScriptedGateway("second")], retry=RetrySettings())
    async with service:
        pending = await service.pay(request())
        still = await service.sync_payment(pending.id)
    assert still.state is S.PROCESSING
    assert keys(first) == [f"{pending.id}-1"]
    assert first.charge_count(pending.id) == 1


async def test_no_repeat_when_switched_off() -> None:
    first = lagging("first", "lost_before")
    retry = RetrySettings(repeat_unknown_create=False)
    service, _ = build([first], retry=retry)
    async with service:
        pending = await service.pay(request())
        still = await service.sync_payment(pending.id)
    assert still.state is S.PROCESSING and len(keys(first)) == 1


async def test_no_repeat_once_the_gateway_may_have_forgotten_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = WallClock()
    first = lagging("first", "lost_before")
    retry = RetrySettings(retention_s=86_400, retention_overrides={"first": 3600})
    service, _ = build([first], retry=retry, clock=clock)
    async with service:
        pending = await service.pay(request())
        clock.advance(3600)  # PayPal keeps an order's request id 6 h; this "first" only 1 h
        still = await service.sync_payment(pending.id)
    assert still.state is S.PROCESSING
    assert len(keys(first)) == 1 and first.charges == {}
    assert "older than the 3600s the gateway keeps it" in caplog.text


async def test_a_declared_key_retention_caps_the_configured_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Configured for a day, but the adapter says its gateway forgets keys after 6 h (PayPal
    # orders): a repeat at 5.5 h is past 90 % of that and could charge a second time.
    clock = WallClock()
    first = lagging("first", "lost_before")
    first.capabilities = attrs.evolve(first.capabilities, idempotency_retention_s=6 * 3600)
    service, _ = build([first], retry=RetrySettings(retention_s=86_400), clock=clock)
    async with service:
        pending = await service.pay(request())
        clock.advance(5.5 * 3600)
        still = await service.sync_payment(pending.id)
    assert still.state is S.PROCESSING
    assert len(keys(first)) == 1 and first.charges == {}
    assert "older than the 19440s the gateway keeps it" in caplog.text


async def test_the_window_counts_from_the_attempt_not_the_payment() -> None:
    clock = WallClock()
    first = lagging("first", "lost_before")
    retry = RetrySettings(retention_s=3 * 3600)
    service, _ = build([first], retry=retry, clock=clock)
    async with service:
        created = await service.create_payment(request())
        clock.advance(2 * 3600)
        pending = await service.process_payment(created.id)  # the key is first used now
        clock.advance(1.5 * 3600)  # payment 3.5 h old, its key 1.5 h
        settled = await service.sync_payment(pending.id)
    assert settled.state is S.COMPLETED
    assert keys(first) == [f"{created.id}-1"] * 2
    assert first.charge_count(created.id) == 1


async def test_a_repeat_not_sent_leaves_the_payment_with_its_gateway() -> None:
    first = lagging("first", "lost_after")
    first.faults.append("not_sent")
    second = ScriptedGateway("second")
    service, _ = build([first, second], retry=RetrySettings(), status_lookups=1)
    async with service:
        pending = await service.pay(request())
        still = await service.sync_payment(pending.id)
        settled = await service.sync_payment(pending.id)
    assert still.state is S.PROCESSING
    assert outcomes(still) == [(1, "first", Outcome.UNKNOWN)]
    assert settled.state is S.COMPLETED
    assert second.calls == []
    assert first.charge_count(pending.id) == 1


# -- properties ----------------------------------------------------------------------------------

ANY_RESULT = st.one_of(
    st.sampled_from(list(Outcome)).map(GatewayResult),
    st.builds(
        GatewayResult,
        st.just(Outcome.NOT_SENT),
        retry_after_s=st.sampled_from([0.3, 1.0, 5.0]),
    ),
    st.builds(GatewayResult, st.just(Outcome.DECLINED), retryable_elsewhere=st.just(True)),
)


class SequenceGateway:
    """Answers each call with the next result of ``answers`` (then SUCCEEDED)."""

    def __init__(self, answers: list[GatewayResult], caps: GatewayCapabilities) -> None:
        self.name = "g"
        self.supported_currencies = None
        self.capabilities = caps
        self.answers = deque(answers)
        self.seen: list[GatewayResult] = []

    async def _answer(self, request: Any) -> GatewayResult:
        result = self.answers.popleft() if self.answers else GatewayResult(Outcome.SUCCEEDED)
        self.seen.append(result)
        return result

    authorize = capture = void = refund = get_status = _answer


@hsettings(max_examples=400, deadline=None)
@given(
    answers=st.lists(ANY_RESULT, min_size=1, max_size=6),
    operation=st.sampled_from(list(Operation)),
    idempotent=st.booleans(),
    max_attempts=st.integers(1, 5),
    deadline_s=st.sampled_from([0.25, 1.0, 20.0]),
    rng=st.floats(0.01, 1.0, exclude_max=True),  # a wait of 0 is not slept at all
)
async def test_a_sequence_repeats_only_what_is_safe(
    answers: list[GatewayResult],
    operation: Operation,
    idempotent: bool,
    max_attempts: int,
    deadline_s: float,
    rng: float,
) -> None:
    caps = GatewayCapabilities(idempotent_create=idempotent)
    gateway = SequenceGateway(answers, caps)
    time = FakeTime()
    settings = RetrySettings(enabled=True, max_attempts=max_attempts, deadline_s=deadline_s)
    retrier = Retrier(settings, rng=lambda: rng, sleep=time.sleep, clock=time.clock)
    caller = GatewayCaller({"g": gateway}, Hooks(PluginHost().pm), 5.0, retrier=retrier)  # type: ignore[dict-item]
    result = await caller("g", operation, REQUESTS[operation], 1)

    seen = gateway.seen
    assert 1 <= len(seen) <= max_attempts
    # Every call but the last was repeated, so each was safe to repeat...
    for earlier in seen[:-1]:
        assert may_repeat(operation, earlier.outcome, caps)
    # ...and each wait honoured its Retry-After and the bounds.
    assert len(time.sleeps) == len(seen) - 1
    for waited, before in zip(time.sleeps, seen, strict=False):
        assert waited >= (before.retry_after_s or 0.0)
        assert waited <= settings.max_delay_s
    assert sum(time.sleeps) <= deadline_s
    # The answer is the last call's, except that after an UNKNOWN nothing may fail over.
    last = seen[-1]
    if operation is not Operation.STATUS and any(r.outcome is Outcome.UNKNOWN for r in seen):
        assert result.outcome is not Outcome.NOT_SENT
        assert not result.retryable_elsewhere
        assert result.outcome is (
            Outcome.UNKNOWN if last.outcome is Outcome.NOT_SENT else last.outcome
        )
    else:
        assert result == last
    # It stopped for a reason: an answer, the attempts, the deadline or a too-long wait.
    if len(seen) < max_attempts and may_repeat(operation, last.outcome, caps):
        jitter = rng * min(settings.max_delay_s, settings.base_delay_s * 2 ** (len(seen) - 1))
        wanted = max(jitter, last.retry_after_s or 0.0)
        assert wanted > settings.max_delay_s or sum(time.sleeps) + wanted > deadline_s


# -- the property: no sequence of outcomes and faults charges twice ------------------------------

# Weighted towards the faults that tempt an engine to charge twice: a charge whose answer is
# lost, then repeats that do not arrive.
AUTH_FAULTS = st.sampled_from(
    ["ok", "not_sent", "not_sent", "rate_limited", "lost_before", "lost_after", "lost_after"]
)
ANSWERS = st.sampled_from(
    [
        None,
        GatewayResult(Outcome.DECLINED, decline_code="card_declined"),
        GatewayResult(Outcome.DECLINED, decline_code="not_here", retryable_elsewhere=True),
        GatewayResult(Outcome.REQUIRES_ACTION, next_action={"type": "redirect"}),
    ]
)


@st.composite
def gateways(draw: st.DrawFn) -> list[FaultyGateway]:
    made = []
    for index in range(draw(st.sampled_from([1, 2, 2, 3]))):
        answers = [a for a in draw(st.lists(ANSWERS, max_size=3)) if a is not None]
        made.append(
            FaultyGateway(
                f"g{index}",
                faults=draw(st.lists(AUTH_FAULTS, min_size=1, max_size=5)),
                status_faults=draw(st.lists(st.sampled_from(["ok", "unknown"]), max_size=6)),
                idempotent=draw(st.booleans()),
                authoritative=draw(st.booleans()),
                retry_after_s=draw(st.sampled_from([0.5, 5.0])),
                script={Operation.AUTHORIZE: answers},
            )
        )
    return made


@hsettings(max_examples=300, deadline=None)
@given(
    gateways=gateways(),
    max_attempts=st.integers(1, 4),
    deadline_s=st.sampled_from([0.2, 20.0]),
    syncs=st.integers(0, 4),
    rng=st.floats(0.0, 1.0, exclude_max=True),
)
async def test_no_sequence_of_outcomes_charges_twice(
    gateways: list[FaultyGateway],
    max_attempts: int,
    deadline_s: float,
    syncs: int,
    rng: float,
) -> None:
    retry = RetrySettings(enabled=True, max_attempts=max_attempts, deadline_s=deadline_s)
    service, _ = build(gateways, retry=retry, rng=rng, status_lookups=2)
    async with service:
        payment = await service.pay(request())
        for _ in range(syncs):
            payment = await service.sync_payment(payment.id)
        assert await service.replay(payment.id) == payment

    charged = [(g.name, g.charge_count(payment.id)) for g in gateways if g.charge_count(payment.id)]
    assert sum(n for _, n in charged) <= 1, charged
    if payment.state is S.COMPLETED:
        assert charged == [(payment.gateway, 1)]
    if payment.state is S.FAILED:
        assert charged == []
