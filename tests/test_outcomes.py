"""The outcome taxonomy: what the engine may do after each kind of gateway answer.

NOT_SENT may fail over; UNKNOWN never does (it is settled by a status lookup with the same
idempotency key); DECLINED fails unless the decline is specific to the gateway.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest
from aegispay import (
    AuthorizeRequest,
    GatewayNotSent,
    GatewayResult,
    Money,
    Operation,
    OperationNotAllowed,
    Outcome,
    Payment,
    PaymentRequest,
    PaymentService,
    PaymentState,
    Settings,
    StatusRequest,
)
from aegispay import events as ev
from aegispay.gateways import GatewayCapabilities
from aegispay.settings import EngineSettings, PluginConfig, RetrySettings
from aegispay.testing import ScriptedGateway, make_test_service

pytestmark = pytest.mark.anyio

S = PaymentState
SUCCEEDED_AND_CAPTURED = GatewayResult(Outcome.SUCCEEDED, reference="ref-1", captured=True)


def routed(
    gateways: Sequence[ScriptedGateway], *, engine: EngineSettings | None = None
) -> PaymentService:
    """A service whose built-in priority router tries ``gateways`` in the order given."""
    config = PluginConfig({"priority_routing": {"order": [g.name for g in gateways]}})
    settings = Settings(engine=engine or EngineSettings(), plugin_config=config)
    # Registered in reverse, so only the configured order can put them right.
    service: PaymentService = make_test_service(
        gateways=list(reversed(gateways)), settings=settings
    )
    return service


def request(minor: int = 1000, **fields: object) -> PaymentRequest:
    return PaymentRequest(Money(minor, "USD"), **fields)  # type: ignore[arg-type]


def calls(gateway: ScriptedGateway, operation: Operation) -> list[str]:
    return [c.idempotency_key for c in gateway.calls if c.operation is operation]


def outcomes(payment: Payment) -> list[tuple[int, str, Outcome | None]]:
    return [(a.number, a.gateway, a.outcome) for a in payment.attempts]


async def event_types(service: PaymentService, payment_id: str) -> list[type[ev.Event]]:
    return [type(e) for e in await service.payment_history(payment_id)]


class LostRequestGateway(ScriptedGateway):
    """The first authorisation times out before reaching the processor: the engine hears
    UNKNOWN, and a status lookup finds no such request (NOT_SENT)."""

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        self._record(Operation.AUTHORIZE, request.payment_id, request.idempotency_key, None)
        return GatewayResult(Outcome.UNKNOWN, message="connect timeout, maybe sent")


class CrashAfterChargeGateway(ScriptedGateway):
    """An adapter with a bug: it charges, then raises while reading the answer."""

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        await super().authorize(request)
        raise RuntimeError("could not parse the response")


class NotSentGateway(ScriptedGateway):
    """An adapter that knows the request never left (DNS failure)."""

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        self._record(Operation.AUTHORIZE, request.payment_id, request.idempotency_key, None)
        raise GatewayNotSent("DNS lookup failed")


class HangingGateway(ScriptedGateway):
    """Never answers: every call awaits an event nobody sets."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.never = anyio.Event()

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        self._record(Operation.AUTHORIZE, request.payment_id, request.idempotency_key, None)
        await self.never.wait()
        raise AssertionError("unreachable")  # pragma: no cover

    async def get_status(self, request: StatusRequest) -> GatewayResult:
        self._record(Operation.STATUS, request.payment_id, request.idempotency_key, None)
        await self.never.wait()
        raise AssertionError("unreachable")  # pragma: no cover


# -- NOT_SENT ------------------------------------------------------------------------------------


async def test_not_sent_fails_over_to_the_next_routed_gateway() -> None:
    first = ScriptedGateway("first", script={Operation.AUTHORIZE: [Outcome.NOT_SENT]})
    second = ScriptedGateway("second")
    service = routed([first, second])
    async with service:
        payment = await service.pay(request())

    assert payment.state is S.COMPLETED
    assert payment.gateway == "second"
    assert outcomes(payment) == [
        (1, "first", Outcome.NOT_SENT),
        (2, "second", Outcome.SUCCEEDED),
    ]
    # Each attempt has its own derived key.
    assert calls(first, Operation.AUTHORIZE) == [f"{payment.id}-1"]
    assert calls(second, Operation.AUTHORIZE) == [f"{payment.id}-2"]
    assert first.charge_count(payment.id) == 0
    assert second.charge_count(payment.id) == 1


async def test_priority_order_is_honoured_without_failures() -> None:
    first, second = ScriptedGateway("first"), ScriptedGateway("second")
    service = routed([second, first])
    async with service:
        payment = await service.pay(request())
    assert payment.gateway == "second"
    assert first.calls == []


async def test_not_sent_everywhere_fails_the_payment() -> None:
    first = ScriptedGateway("first", script={Operation.AUTHORIZE: [Outcome.NOT_SENT]})
    second = ScriptedGateway("second", script={Operation.AUTHORIZE: [Outcome.NOT_SENT]})
    service = routed([first, second])
    async with service:
        payment = await service.pay(request())

    assert payment.state is S.FAILED
    assert payment.failure_code == "gateways_unavailable"
    assert [a.outcome for a in payment.attempts] == [Outcome.NOT_SENT, Outcome.NOT_SENT]
    assert first.charges == second.charges == {}


async def test_adapter_raising_gateway_not_sent_is_not_sent() -> None:
    broken = NotSentGateway("broken")
    backup = ScriptedGateway("backup")
    service = routed([broken, backup])
    async with service:
        payment = await service.pay(request())

    assert payment.state is S.COMPLETED
    assert outcomes(payment) == [(1, "broken", Outcome.NOT_SENT), (2, "backup", Outcome.SUCCEEDED)]
    assert "DNS lookup failed" in payment.attempts[0].message
    assert calls(broken, Operation.STATUS) == []  # nothing to look up: it never left
    assert backup.charge_count(payment.id) == 1


# -- UNKNOWN -------------------------------------------------------------------------------------


async def test_unknown_never_fails_over_and_is_settled_by_status_with_the_same_key() -> None:
    first = ScriptedGateway("first", script={Operation.AUTHORIZE: [Outcome.UNKNOWN]})
    second = ScriptedGateway("second")
    service = routed([first, second])
    async with service:
        payment = await service.pay(request())
        history = await event_types(service, payment.id)

    assert payment.state is S.COMPLETED
    assert outcomes(payment) == [(1, "first", Outcome.SUCCEEDED)]
    assert second.calls == []
    assert first.charge_count(payment.id) == 1
    key = f"{payment.id}-1"
    assert calls(first, Operation.AUTHORIZE) == [key]
    assert calls(first, Operation.STATUS) == [key]
    assert ev.PaymentOutcomeUnknown in history
    assert payment.captured_amount == Money(1000, "USD")


async def test_unknown_then_status_not_sent_may_route_again() -> None:
    lost = LostRequestGateway("lost")
    backup = ScriptedGateway("backup")
    service = routed([lost, backup])
    async with service:
        payment = await service.pay(request())

    assert payment.state is S.COMPLETED
    assert outcomes(payment) == [(1, "lost", Outcome.NOT_SENT), (2, "backup", Outcome.SUCCEEDED)]
    assert calls(lost, Operation.STATUS) == [f"{payment.id}-1"]
    assert lost.charge_count(payment.id) == 0
    assert backup.charge_count(payment.id) == 1


async def test_unknown_then_status_not_sent_with_no_other_gateway_fails() -> None:
    lost = LostRequestGateway("lost")
    service = routed([lost])
    async with service:
        payment = await service.pay(request())
    assert payment.state is S.FAILED
    assert payment.failure_code == "gateways_unavailable"
    assert lost.charges == {}


async def test_unsettled_unknown_stays_processing_until_sync() -> None:
    first = ScriptedGateway(
        "first",
        script={
            Operation.AUTHORIZE: [Outcome.UNKNOWN],
            Operation.STATUS: [Outcome.UNKNOWN] * EngineSettings().status_lookups,
        },
    )
    second = ScriptedGateway("second")
    service = routed([first, second])
    async with service:
        pending = await service.pay(request())
        assert pending.state is S.PROCESSING
        assert outcomes(pending) == [(1, "first", Outcome.UNKNOWN)]
        assert pending.unresolved_attempt == pending.attempts[0]
        assert await service.get_payment(pending.id) == pending
        with pytest.raises(OperationNotAllowed):
            await service.cancel(pending.id)

        settled = await service.sync_payment(pending.id)
        again = await service.sync_payment(pending.id)

    assert settled.state is S.COMPLETED
    assert again == settled  # nothing left to settle
    assert second.calls == []
    assert first.charge_count(pending.id) == 1
    key = f"{pending.id}-1"
    assert calls(first, Operation.AUTHORIZE) == [key]
    assert set(calls(first, Operation.STATUS)) == {key}
    assert len(calls(first, Operation.STATUS)) == EngineSettings().status_lookups + 1


async def test_process_payment_again_also_settles_an_unknown_attempt() -> None:
    first = ScriptedGateway(
        "first",
        script={Operation.AUTHORIZE: [Outcome.UNKNOWN], Operation.STATUS: [Outcome.UNKNOWN] * 3},
    )
    service = routed([first], engine=EngineSettings(status_lookups=3))
    async with service:
        pending = await service.pay(request())
        settled = await service.process_payment(pending.id)
    assert pending.state is S.PROCESSING
    assert settled.state is S.COMPLETED
    assert calls(first, Operation.AUTHORIZE) == [f"{pending.id}-1"]
    assert first.charge_count(pending.id) == 1


async def test_status_declined_after_unknown_fails_the_payment() -> None:
    declined = GatewayResult(Outcome.DECLINED, decline_code="do_not_honor")
    first = LostRequestGateway("first", script={Operation.STATUS: [declined]})
    second = ScriptedGateway("second")
    service = routed([first, second])
    async with service:
        payment = await service.pay(request())
    assert payment.state is S.FAILED
    assert payment.failure_code == "do_not_honor"
    assert second.calls == []


async def test_adapter_raising_an_arbitrary_exception_is_unknown_not_failed_over() -> None:
    crashing = CrashAfterChargeGateway("crashing")
    backup = ScriptedGateway("backup")
    service = routed([crashing, backup])
    async with service:
        payment = await service.pay(request())
        history = await service.payment_history(payment.id)

    assert backup.calls == []
    unknown = [e for e in history if isinstance(e, ev.PaymentOutcomeUnknown)]
    assert len(unknown) == 1
    assert "RuntimeError" in unknown[0].message
    # The status lookup found the charge the adapter made before it crashed.
    assert payment.state is S.COMPLETED
    assert outcomes(payment) == [(1, "crashing", Outcome.SUCCEEDED)]
    assert crashing.charge_count(payment.id) == 1


async def test_gateway_hanging_past_the_timeout_is_unknown() -> None:
    hanging = HangingGateway("hanging")
    backup = ScriptedGateway("backup")
    engine = EngineSettings(gateway_timeout_s=0.05, status_lookups=2)
    service = routed([hanging, backup], engine=engine)
    async with service:
        with anyio.fail_after(5):
            payment = await service.pay(request())
        history = await service.payment_history(payment.id)

    assert payment.state is S.PROCESSING
    assert outcomes(payment) == [(1, "hanging", Outcome.UNKNOWN)]
    assert backup.calls == []
    key = f"{payment.id}-1"
    assert calls(hanging, Operation.STATUS) == [key, key]
    unknown = [e for e in history if isinstance(e, ev.PaymentOutcomeUnknown)]
    assert len(unknown) == 1
    assert "0.05" in unknown[0].message


# -- REQUIRES_ACTION -------------------------------------------------------------------------


async def test_requires_action_waits_then_sync_completes() -> None:
    still_waiting = GatewayResult(Outcome.REQUIRES_ACTION, next_action={"type": "redirect"})
    gateway = ScriptedGateway(
        "threeds",
        script={
            Operation.AUTHORIZE: [Outcome.REQUIRES_ACTION],
            Operation.STATUS: [still_waiting, SUCCEEDED_AND_CAPTURED],
        },
    )
    service = routed([gateway])
    async with service:
        waiting = await service.pay(request())
        unchanged = await service.sync_payment(waiting.id)
        done = await service.sync_payment(waiting.id)

    assert waiting.state is S.REQUIRES_ACTION
    assert waiting.next_action == {"type": "redirect"}
    assert waiting.attempts[0].outcome is Outcome.REQUIRES_ACTION
    assert waiting.gateway_reference == f"threeds-{waiting.id}-1"
    assert unchanged == waiting
    assert done.state is S.COMPLETED
    assert done.next_action is None
    assert done.captured_amount == Money(1000, "USD")
    assert calls(gateway, Operation.STATUS) == [f"{waiting.id}-1"] * 2


async def test_requires_action_can_be_cancelled_with_a_void() -> None:
    gateway = ScriptedGateway("threeds", script={Operation.AUTHORIZE: [Outcome.REQUIRES_ACTION]})
    service = routed([gateway])
    async with service:
        waiting = await service.pay(request())
        cancelled = await service.cancel(waiting.id)
    assert cancelled.state is S.CANCELLED
    assert cancelled.next_action is None
    assert waiting.id in gateway.voided


# -- DECLINED ------------------------------------------------------------------------------------


async def test_declined_fails_with_the_code_and_does_not_fail_over() -> None:
    declined = GatewayResult(Outcome.DECLINED, decline_code="insufficient_funds", message="nsf")
    first = ScriptedGateway("first", script={Operation.AUTHORIZE: [declined]})
    second = ScriptedGateway("second")
    service = routed([first, second])
    async with service:
        payment = await service.pay(request())
        history = await event_types(service, payment.id)

    assert payment.state is S.FAILED
    assert payment.failure_code == "insufficient_funds"
    assert payment.failure_message == "nsf"
    assert outcomes(payment) == [(1, "first", Outcome.DECLINED)]
    assert payment.attempts[0].decline_code == "insufficient_funds"
    assert second.calls == []
    assert history[-2:] == [ev.PaymentAttemptFailed, ev.PaymentFailed]


async def test_gateway_specific_decline_fails_over() -> None:
    declined = GatewayResult(
        Outcome.DECLINED, decline_code="currency_not_enabled", retryable_elsewhere=True
    )
    first = ScriptedGateway("first", script={Operation.AUTHORIZE: [declined]})
    second = ScriptedGateway("second")
    service = routed([first, second])
    async with service:
        payment = await service.pay(request())

    assert payment.state is S.COMPLETED
    assert outcomes(payment) == [(1, "first", Outcome.DECLINED), (2, "second", Outcome.SUCCEEDED)]
    assert second.charge_count(payment.id) == 1


async def test_gateway_specific_decline_on_the_last_gateway_fails_with_its_code() -> None:
    declined = GatewayResult(
        Outcome.DECLINED, decline_code="currency_not_enabled", retryable_elsewhere=True
    )
    only = ScriptedGateway("only", script={Operation.AUTHORIZE: [declined]})
    service = routed([only])
    async with service:
        payment = await service.pay(request())
    assert payment.state is S.FAILED
    assert payment.failure_code == "currency_not_enabled"


# -- safe failover: the first gateway charged, the engine saw a timeout ----------------------------


class ChargeThenFailGateway(ScriptedGateway):
    """Charges, then the engine never hears back: the call hangs past the engine's timeout
    (``failure="timeout"``) or the adapter raises while reading the answer (``"raises"``).
    A repeat of a key it already processed is answered at once, as an idempotent gateway
    does. While ``lookups_fail``, status lookups cannot be made (connection refused).
    ``idempotent_create`` is what it declares (the engine repeats UNKNOWN creates only then).
    """

    def __init__(self, name: str, failure: str, idempotent_create: bool) -> None:
        super().__init__(name)
        self.failure = failure
        self.never = anyio.Event()
        self.lookups_fail = True
        self.capabilities = GatewayCapabilities(idempotent_create=idempotent_create)

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        repeat = request.idempotency_key in self.answers
        answer = await super().authorize(request)
        if repeat:
            return answer
        if self.failure == "raises":
            raise RuntimeError("connection reset while reading the response")
        await self.never.wait()  # the engine's timeout ends this
        raise AssertionError("unreachable")  # pragma: no cover

    async def get_status(self, request: StatusRequest) -> GatewayResult:
        if self.lookups_fail:
            self._record(Operation.STATUS, request.payment_id, request.idempotency_key, None)
            raise GatewayNotSent("connection refused")
        return await super().get_status(request)


@pytest.mark.parametrize("failure", ["timeout", "raises"])
@pytest.mark.parametrize("idempotent_create", [False, True], ids=["plain", "idempotent"])
@pytest.mark.parametrize("retries", [False, True], ids=["retries off", "retries on"])
async def test_a_gateway_that_charged_then_failed_ends_with_exactly_one_charge(
    failure: str, idempotent_create: bool, retries: bool
) -> None:
    """The failover-after-charge proof (issue #4), with retries off and on: after the first
    gateway charged and the engine saw UNKNOWN, the payment never moves to the backup; it is
    settled at its own gateway - by a same-key repeat where the gateway dedupes creates,
    else by a status lookup once one can be made - and exactly one charge exists."""
    first = ChargeThenFailGateway("first", failure, idempotent_create)
    backup = ScriptedGateway("backup")
    engine = EngineSettings(
        gateway_timeout_s=0.05, status_lookups=2, retry=RetrySettings(enabled=retries)
    )
    service = routed([first, backup], engine=engine)
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    service.retrier.sleep = no_wait
    async with service:
        with anyio.fail_after(10):
            paid = await service.pay(request())
            synced = await service.sync_payment(paid.id)  # lookups still cannot be made
            first.lookups_fail = False
            settled = await service.sync_payment(paid.id)
        history = await event_types(service, paid.id)

    def charges() -> int:
        return first.charge_count(paid.id) + backup.charge_count(paid.id)

    assert backup.calls == []  # never failed over
    assert charges() == 1
    key = f"{paid.id}-1"
    assert set(calls(first, Operation.AUTHORIZE)) == {key}  # only ever the attempt's own key
    if retries and idempotent_create:
        # The in-line repeat with the same key got the original answer.
        assert paid.state is S.COMPLETED
        assert calls(first, Operation.AUTHORIZE) == [key, key]
        assert len(waits) == 1
    else:
        assert paid.state is S.PROCESSING
        assert outcomes(paid) == [(1, "first", Outcome.UNKNOWN)]
        assert ev.PaymentOutcomeUnknown in history
        # Reconciliation: a same-key repeat where creates are deduped; else it waits for a
        # lookup that can be made.
        assert synced.state is (S.COMPLETED if idempotent_create else S.PROCESSING)
    assert settled.state is S.COMPLETED
    assert outcomes(settled) == [(1, "first", Outcome.SUCCEEDED)]
    assert settled.captured_amount == Money(1000, "USD")
