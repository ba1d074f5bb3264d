"""The payment lifecycle: create, process, capture, cancel, refund - and what each refuses."""

from __future__ import annotations

import attrs
import pytest
from aegispay import (
    GatewayCapabilities,
    GatewayDeclined,
    GatewayResult,
    GatewayUnavailable,
    InvalidInput,
    InvalidTransition,
    Money,
    Operation,
    OperationNotAllowed,
    Outcome,
    OutcomeUnknown,
    Payment,
    PaymentRequest,
    PaymentService,
    PaymentState,
)
from aegispay import events as ev
from aegispay.gateways import AuthorizeRequest
from aegispay.testing import ScriptedGateway, make_test_service

pytestmark = pytest.mark.anyio

S = PaymentState


def usd(minor: int) -> Money:
    return Money(minor, "USD")


def request(minor: int = 1000, **fields: object) -> PaymentRequest:
    return PaymentRequest(usd(minor), **fields)  # type: ignore[arg-type]


def ops(gateway: ScriptedGateway, operation: Operation) -> list[str]:
    """Idempotency keys of the calls ``gateway`` received for ``operation``."""
    return [call.idempotency_key for call in gateway.calls if call.operation is operation]


def LostRefundAnswerGateway() -> ScriptedGateway:
    """Performs every refund, but the answer to the first one is lost (a read timeout after the
    gateway acted): exactly the case where a retry with a new key would refund twice."""
    return ScriptedGateway(lose_answers={Operation.REFUND: 1})


def LostCaptureAnswerGateway() -> ScriptedGateway:
    """Captures idempotently, and the answer to the first capture is lost after capturing."""
    return ScriptedGateway(lose_answers={Operation.CAPTURE: 1})


async def authorized_payment(service: PaymentService, minor: int = 1000) -> Payment:
    payment = await service.pay(request(minor, capture_mode="manual"))
    assert payment.state is S.AUTHORIZED
    return payment


def same_but_for_version(before: Payment, after: Payment) -> Payment:
    """``before`` as it would read after events that record facts but change nothing else."""
    return attrs.evolve(before, version=after.version, updated_at=after.updated_at)


# -- create and process ----------------------------------------------------------------------


async def test_create_stores_an_initiated_payment_without_calling_a_gateway() -> None:
    gateway = ScriptedGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        payment = await service.create_payment(request(1234, customer_id="cus_1"))
        stored = await service.get_payment(payment.id)

    assert payment.state is S.INITIATED
    assert payment.version == 1
    assert payment.amount == usd(1234)
    assert payment.customer_id == "cus_1"
    assert stored == payment
    assert gateway.calls == []


async def test_automatic_capture_completes_with_one_charge() -> None:
    gateway = ScriptedGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        created = await service.create_payment(request(2500))
        payment = await service.process_payment(created.id)
        history = await service.payment_history(payment.id)

    assert payment.state is S.COMPLETED
    assert payment.authorized_amount == usd(2500)
    assert payment.captured_amount == usd(2500)
    assert payment.refunded_amount == usd(0)
    assert gateway.charge_count(payment.id) == 1
    assert gateway.captured[payment.id] == 2500
    assert [type(e) for e in history] == [
        ev.PaymentInitiated,
        ev.PaymentProcessingStarted,
        ev.PaymentAuthorized,
        ev.PaymentCompleted,
    ]
    # The gateway received the attempt's derived idempotency key.
    assert ops(gateway, Operation.AUTHORIZE) == [f"{payment.id}-1"]
    assert payment.attempts[0].idempotency_key == f"{payment.id}-1"


async def test_automatic_mode_captures_separately_when_the_gateway_only_authorises() -> None:
    gateway = ScriptedGateway(capture_on_authorize=False)
    service = make_test_service(gateways=[gateway])
    async with service:
        payment = await service.pay(request(700))

    assert payment.state is S.COMPLETED
    assert payment.captured_amount == usd(700)
    assert [c.operation for c in gateway.calls] == [Operation.AUTHORIZE, Operation.CAPTURE]
    assert gateway.captured[payment.id] == 700


async def test_manual_capture_authorises_then_captures_in_full() -> None:
    gateway = ScriptedGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        authorized = await authorized_payment(service, 1000)
        assert authorized.authorized_amount == usd(1000)
        assert authorized.captured_amount == usd(0)
        assert authorized.id not in gateway.captured

        payment = await service.capture(authorized.id)
        history = await service.payment_history(authorized.id)

    assert payment.state is S.COMPLETED
    assert payment.captured_amount == usd(1000)
    assert payment.pending is None
    # The intent first, then the result.
    assert payment.version == authorized.version + 2
    requested, completed = history[-2:]
    assert isinstance(requested, ev.CaptureRequested)
    assert isinstance(completed, ev.PaymentCompleted)
    assert requested.amount == completed.amount == usd(1000)
    key = f"{authorized.id}-capture-{authorized.version + 1}"
    assert requested.idempotency_key == completed.idempotency_key == key
    assert ops(gateway, Operation.CAPTURE) == [key]
    assert gateway.captured[payment.id] == 1000
    assert gateway.charge_count(payment.id) == 1


async def test_partial_capture_completes_with_less_than_authorised() -> None:
    gateway = ScriptedGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        authorized = await authorized_payment(service, 1000)
        payment = await service.capture(authorized.id, usd(600))
        stored = await service.get_payment(authorized.id)

    assert payment.state is S.COMPLETED
    assert payment.captured_amount == usd(600)
    assert payment.authorized_amount == usd(1000)
    assert payment.captured_amount < payment.authorized_amount
    assert stored == payment
    assert gateway.captured[payment.id] == 600
    # Only what was captured can be refunded.
    assert payment.refundable_amount == usd(600)


async def test_capture_more_than_authorised_is_refused_and_writes_nothing() -> None:
    gateway = ScriptedGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        authorized = await authorized_payment(service, 1000)
        with pytest.raises(OperationNotAllowed) as raised:
            await service.capture(authorized.id, usd(1001))
        stored = await service.get_payment(authorized.id)

    assert authorized.id in str(raised.value)
    assert stored == authorized
    assert ops(gateway, Operation.CAPTURE) == []


# -- cancel ------------------------------------------------------------------------------------


async def test_cancel_initiated_payment_needs_no_gateway() -> None:
    gateway = ScriptedGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        created = await service.create_payment(request())
        payment = await service.cancel(created.id, reason="customer changed mind")
        history = await service.payment_history(created.id)

    assert payment.state is S.CANCELLED
    assert gateway.calls == []
    last = history[-1]
    assert isinstance(last, ev.PaymentCancelled)
    assert last.voided is False
    assert last.reason == "customer changed mind"


async def test_cancel_authorised_payment_voids_at_the_gateway() -> None:
    gateway = ScriptedGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        authorized = await authorized_payment(service)
        payment = await service.cancel(authorized.id, reason="out of stock")
        history = await service.payment_history(authorized.id)

    assert payment.state is S.CANCELLED
    assert payment.pending is None
    assert payment.version == authorized.version + 2
    assert authorized.id in gateway.voided
    key = f"{authorized.id}-void-{authorized.version + 1}"
    assert ops(gateway, Operation.VOID) == [key]
    requested, last = history[-2:]
    assert isinstance(requested, ev.VoidRequested)
    assert requested.idempotency_key == key
    assert requested.reason == "out of stock"
    assert isinstance(last, ev.PaymentCancelled)
    assert last.voided is True
    assert last.reason == "out of stock"


async def test_declined_void_leaves_the_payment_authorised() -> None:
    gateway = ScriptedGateway(script={Operation.VOID: [Outcome.DECLINED]})
    service = make_test_service(gateways=[gateway])
    async with service:
        authorized = await authorized_payment(service)
        with pytest.raises(GatewayDeclined) as raised:
            await service.cancel(authorized.id)
        stored = await service.get_payment(authorized.id)

    assert raised.value.payment_id == authorized.id
    assert raised.value.operation == "void"
    assert stored.state is S.AUTHORIZED
    assert authorized.id not in gateway.voided


# -- operations from the wrong state ----------------------------------------------------------


async def test_capture_from_wrong_states_raises_invalid_transition() -> None:
    service = make_test_service(gateways=[ScriptedGateway()])
    async with service:
        initiated = await service.create_payment(request())
        completed = await service.pay(request())
        for payment in (initiated, completed):
            with pytest.raises(InvalidTransition) as raised:
                await service.capture(payment.id)
            assert raised.value.payment_id == payment.id
            assert payment.id in str(raised.value)
            assert (await service.get_payment(payment.id)).version == payment.version


async def test_cancel_from_wrong_states_raises_invalid_transition() -> None:
    service = make_test_service(
        gateways=[
            ScriptedGateway(script={Operation.AUTHORIZE: [Outcome.SUCCEEDED, Outcome.DECLINED]})
        ]
    )
    async with service:
        completed = await service.pay(request())
        failed = await service.pay(request())
        cancelled = await service.cancel((await service.create_payment(request())).id)
        assert (completed.state, failed.state) == (S.COMPLETED, S.FAILED)
        for payment in (completed, failed, cancelled):
            with pytest.raises(InvalidTransition) as raised:
                await service.cancel(payment.id)
            assert raised.value.payment_id == payment.id
            assert payment.id in str(raised.value)
            assert raised.value.from_state is payment.state


async def test_refund_from_wrong_states_raises_invalid_transition() -> None:
    gateway = ScriptedGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        initiated = await service.create_payment(request())
        authorized = await authorized_payment(service)
        refunded = await service.refund((await service.pay(request())).id)
        assert refunded.state is S.REFUNDED
        for payment in (initiated, authorized, refunded):
            with pytest.raises(InvalidTransition) as raised:
                await service.refund(payment.id, usd(1))
            assert raised.value.payment_id == payment.id
            assert payment.id in str(raised.value)
    assert len(ops(gateway, Operation.REFUND)) == 1


# -- refunds -----------------------------------------------------------------------------------


async def test_several_partial_refunds_then_refunded() -> None:
    gateway = ScriptedGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        paid = await service.pay(request(1000))
        first = await service.refund(paid.id, usd(300), reason="one item returned")
        second = await service.refund(paid.id, usd(300))
        last = await service.refund(paid.id)  # the rest

    assert first.state is S.PARTIALLY_REFUNDED
    assert first.refunded_amount == usd(300)
    assert second.state is S.PARTIALLY_REFUNDED
    assert second.refunded_amount == usd(600)
    assert last.state is S.REFUNDED
    assert last.refunded_amount == usd(1000)
    assert last.refundable_amount == usd(0)
    assert [r.amount for r in last.refunds] == [usd(300), usd(300), usd(400)]
    assert all(r.succeeded for r in last.refunds)
    assert last.refunds[0].reason == "one item returned"
    assert gateway.refunded[paid.id] == 1000
    assert ops(gateway, Operation.REFUND) == [f"{paid.id}-refund-{n}" for n in (1, 2, 3)]


async def test_over_refund_is_refused_and_writes_nothing() -> None:
    gateway = ScriptedGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        paid = await service.pay(request(1000))
        partly = await service.refund(paid.id, usd(800))
        with pytest.raises(OperationNotAllowed) as raised:
            await service.refund(paid.id, usd(201))
        stored = await service.get_payment(paid.id)
        history = await service.payment_history(paid.id)

    assert raised.value.payment_id == paid.id
    assert stored == partly
    assert stored.version == partly.version
    assert len(history) == partly.version
    assert gateway.refunded[paid.id] == 800
    assert len(ops(gateway, Operation.REFUND)) == 1


@pytest.mark.parametrize("operation", ["capture", "refund"])
async def test_wrong_currency_amount_is_invalid_input_naming_amount(operation: str) -> None:
    gateway = ScriptedGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        payment = await service.pay(request(1000, capture_mode="manual"))
        if operation == "refund":
            payment = await service.capture(payment.id)
        calls_before = len(gateway.calls)
        with pytest.raises(InvalidInput) as raised:
            await getattr(service, operation)(payment.id, Money(100, "EUR"))
        stored = await service.get_payment(payment.id)

    assert raised.value.field == "amount"
    assert "EUR" in str(raised.value)
    assert stored.version == payment.version
    assert len(gateway.calls) == calls_before


async def test_declined_refund_records_refund_failed_and_raises() -> None:
    decline = GatewayResult(Outcome.DECLINED, decline_code="insufficient_balance", message="no")
    gateway = ScriptedGateway(script={Operation.REFUND: [decline]})
    service = make_test_service(gateways=[gateway])
    async with service:
        paid = await service.pay(request(1000))
        with pytest.raises(GatewayDeclined) as raised:
            await service.refund(paid.id, usd(400))
        stored = await service.get_payment(paid.id)
        history = await service.payment_history(paid.id)
        # A later refund is a new refund with a new key, and succeeds.
        retried = await service.refund(paid.id, usd(400))

    assert raised.value.payment_id == paid.id
    assert raised.value.operation == "refund"
    assert raised.value.code == "insufficient_balance"
    assert stored.state is S.COMPLETED
    assert stored.version == paid.version + 2  # RefundRequested, RefundFailed
    assert stored.pending is None
    assert stored.refunded_amount == usd(0)
    requested, failed = history[-2:]
    assert isinstance(requested, ev.RefundRequested)
    assert requested.amount == usd(400)
    assert requested.idempotency_key == f"{paid.id}-refund-1"
    assert isinstance(failed, ev.RefundFailed)
    assert failed.code == "insufficient_balance"
    assert failed.amount == usd(400)
    assert failed.idempotency_key == f"{paid.id}-refund-1"
    assert [r.succeeded for r in stored.refunds] == [False]
    assert retried.state is S.PARTIALLY_REFUNDED
    assert retried.refunded_amount == usd(400)
    assert [r.succeeded for r in retried.refunds] == [False, True]
    assert ops(gateway, Operation.REFUND) == [f"{paid.id}-refund-1", f"{paid.id}-refund-2"]
    assert gateway.refunded[paid.id] == 400


async def test_not_sent_capture_raises_gateway_unavailable_and_moves_no_money() -> None:
    gateway = ScriptedGateway(script={Operation.CAPTURE: [Outcome.NOT_SENT]})
    service = make_test_service(gateways=[gateway])
    async with service:
        authorized = await authorized_payment(service)
        with pytest.raises(GatewayUnavailable) as raised:
            await service.capture(authorized.id)
        stored = await service.get_payment(authorized.id)
        history = await service.payment_history(authorized.id)
        # Safe to retry: nothing happened.
        captured = await service.capture(authorized.id)

    assert raised.value.payment_id == authorized.id
    assert raised.value.operation == "capture"
    # The intent and its dropping are recorded; nothing else changed.
    assert stored.version == authorized.version + 2
    requested, dropped = history[-2:]
    assert isinstance(requested, ev.CaptureRequested)
    assert isinstance(dropped, ev.OperationNotSent)
    assert dropped.operation == "capture"
    assert dropped.idempotency_key == requested.idempotency_key
    assert stored.pending is None
    assert stored == same_but_for_version(authorized, stored)
    assert stored.captured_amount == usd(0)
    assert captured.state is S.COMPLETED
    assert captured.captured_amount == usd(1000)
    assert gateway.captured[authorized.id] == 1000
    # The retry is a new capture with a new key.
    first, second = ops(gateway, Operation.CAPTURE)
    assert first == requested.idempotency_key
    assert second == f"{authorized.id}-capture-{stored.version + 1}"


async def test_unknown_refund_is_retried_with_the_same_key_and_refunds_once() -> None:
    gateway = LostRefundAnswerGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        paid = await service.pay(request(1000))
        with pytest.raises(OutcomeUnknown) as raised:
            await service.refund(paid.id, usd(250))
        unchanged = await service.get_payment(paid.id)
        refunded = await service.refund(paid.id, usd(250))

    assert raised.value.payment_id == paid.id
    assert raised.value.operation == "refund"
    # Only the intent is recorded: no money moved in the projection, the refund is pending.
    assert unchanged.version == paid.version + 1
    assert unchanged.pending is not None
    assert unchanged.pending.kind == "refund"
    assert unchanged.pending.amount == usd(250)
    assert unchanged.pending.idempotency_key == f"{paid.id}-refund-1"
    assert attrs.evolve(unchanged, pending=None) == same_but_for_version(paid, unchanged)
    assert refunded.version == paid.version + 2
    assert refunded.pending is None
    keys = ops(gateway, Operation.REFUND)
    assert keys == [f"{paid.id}-refund-1", f"{paid.id}-refund-1"]
    # The gateway acted on the first call; the retry got its stored answer, not a new refund.
    assert gateway.refunded[paid.id] == 250
    assert refunded.state is S.PARTIALLY_REFUNDED
    assert refunded.refunded_amount == usd(250)
    assert [r.idempotency_key for r in refunded.refunds] == [f"{paid.id}-refund-1"]


async def test_unknown_capture_is_retried_with_the_same_key_and_captures_once() -> None:
    gateway = LostCaptureAnswerGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        authorized = await authorized_payment(service, 1000)
        with pytest.raises(OutcomeUnknown) as raised:
            await service.capture(authorized.id, usd(600))
        unchanged = await service.get_payment(authorized.id)
        captured = await service.capture(authorized.id, usd(600))

    assert raised.value.operation == "capture"
    assert unchanged.state is S.AUTHORIZED
    assert unchanged.version == authorized.version + 1
    assert unchanged.pending is not None
    assert unchanged.pending.kind == "capture"
    assert unchanged.pending.amount == usd(600)
    assert attrs.evolve(unchanged, pending=None) == same_but_for_version(authorized, unchanged)
    keys = ops(gateway, Operation.CAPTURE)
    assert len(keys) == 2
    assert keys[0] == keys[1] == unchanged.pending.idempotency_key
    assert captured.version == authorized.version + 2
    assert captured.pending is None
    assert captured.state is S.COMPLETED
    assert captured.captured_amount == usd(600) == usd(gateway.captured[authorized.id])


async def test_unknown_refund_retried_with_another_amount_is_refused() -> None:
    """The first refund (250) reached the gateway but its answer was lost. A retry with a
    different amount would reuse the same idempotency key, so the gateway would replay
    "refunded 250": the engine refuses the different amount and writes nothing; a retry with
    the same amount (or none) refunds exactly the first amount, once."""
    gateway = LostRefundAnswerGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        paid = await service.pay(request(1000))
        with pytest.raises(OutcomeUnknown):
            await service.refund(paid.id, usd(250))
        pending = await service.get_payment(paid.id)
        with pytest.raises(OperationNotAllowed) as raised:
            await service.refund(paid.id, usd(400))
        after_refusal = await service.get_payment(paid.id)
        calls_after_refusal = len(ops(gateway, Operation.REFUND))
        refunded = await service.refund(paid.id)  # no amount: the pending one
        stored = await service.get_payment(paid.id)

    assert raised.value.payment_id == paid.id
    assert str(usd(250)) in str(raised.value)
    assert after_refusal == pending
    assert calls_after_refusal == 1  # the refused retry called nothing
    assert refunded == stored
    assert stored.state is S.PARTIALLY_REFUNDED
    assert stored.pending is None
    assert [(r.amount, r.succeeded) for r in stored.refunds] == [(usd(250), True)]
    assert stored.refunded_amount.minor == gateway.refunded[paid.id] == 250
    assert ops(gateway, Operation.REFUND) == [f"{paid.id}-refund-1"] * 2


async def test_unknown_capture_retried_with_another_amount_matches_the_gateway() -> None:
    """As for refunds: the lost capture of 600 is replayed by the gateway for the same key, so
    the engine must not record a capture of 1000."""
    gateway = LostCaptureAnswerGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        authorized = await authorized_payment(service, 1000)
        with pytest.raises(OutcomeUnknown):
            await service.capture(authorized.id, usd(600))
        with pytest.raises(OperationNotAllowed):
            await service.capture(authorized.id, usd(1000))  # the full amount this time
        # No amount means "the pending capture": it settles the capture of 600.
        await service.capture(authorized.id)
        stored = await service.get_payment(authorized.id)

    assert stored.state is S.COMPLETED
    assert stored.captured_amount.minor == gateway.captured[authorized.id] == 600


async def test_automatic_capture_not_sent_leaves_an_authorised_payment_to_capture() -> None:
    gateway = ScriptedGateway(
        capture_on_authorize=False, script={Operation.CAPTURE: [Outcome.NOT_SENT]}
    )
    service = make_test_service(gateways=[gateway])
    async with service:
        created = await service.create_payment(request(800))
        with pytest.raises(GatewayUnavailable):
            await service.process_payment(created.id)
        authorized = await service.get_payment(created.id)
        captured = await service.capture(created.id)

    assert authorized.state is S.AUTHORIZED
    assert authorized.capture_mode == "automatic"
    assert captured.state is S.COMPLETED
    assert captured.captured_amount == usd(800)
    assert gateway.charge_count(created.id) == 1
    assert gateway.captured[created.id] == 800


# -- declared capabilities ----------------------------------------------------------------------


def declaring(name: str, **capabilities: object) -> ScriptedGateway:
    gateway = ScriptedGateway(name)
    gateway.capabilities = GatewayCapabilities(**capabilities)  # type: ignore[attr-defined,arg-type]
    return gateway


async def test_routing_skips_gateways_whose_capabilities_rule_the_payment_out() -> None:
    auto_only = declaring("auto_only", manual_capture=False, partial_capture=True)
    eur_only = declaring("eur_only", currencies=frozenset({"EUR"}), manual_capture=True)
    both = declaring("both", manual_capture=True, partial_capture=True)
    service = make_test_service(gateways=[auto_only, eur_only, both])
    async with service:
        manual = await service.pay(request(1000, capture_mode="manual"))
        automatic = await service.pay(request(1000))
    assert [a.gateway for a in manual.attempts] == ["both"]  # USD, authorise only
    assert [a.gateway for a in automatic.attempts] == ["auto_only"]
    lonely = make_test_service(gateways=[auto_only])
    async with lonely:
        refused = await lonely.pay(request(1000, capture_mode="manual"))
    assert refused.state is S.FAILED
    assert "manual capture" in (refused.failure_message or "")


async def test_a_payment_method_type_routes_only_to_gateways_that_list_it() -> None:
    """``payment_method_type`` names the method's family: only gateways whose declared
    capabilities list it are tried (one that declares nothing is not second-guessed); without
    it any gateway may be. The family travels to the gateway, is kept with the payment, and
    a family nobody takes fails the payment with a reason naming it."""
    cards = declaring("cards", methods=frozenset({"card"}))
    upi = declaring("upi", methods=frozenset({"card", "upi"}))
    wallet = declaring("wallet", methods=frozenset({"paypal"}))
    seen: list[str | None] = []
    authorize = upi.authorize

    async def telling(call: AuthorizeRequest) -> GatewayResult:
        seen.append(call.payment_method_type)
        return await authorize(call)

    upi.authorize = telling  # type: ignore[method-assign]
    service = make_test_service(gateways=[cards, upi, wallet])
    async with service:
        by_upi = await service.pay(request(1000, payment_method_type="upi"))
        by_wallet = await service.pay(request(1000, payment_method_type="paypal"))
        unstated = await service.pay(request(1000))
        nobody = await service.pay(request(1000, payment_method_type="sepa_debit"))
        stored = await service.get_payment(by_upi.id)
    assert [a.gateway for a in by_upi.attempts] == ["upi"]
    assert [a.gateway for a in by_wallet.attempts] == ["wallet"]
    assert [a.gateway for a in unstated.attempts] == ["cards"]  # registration order
    assert stored.payment_method_type == "upi" and unstated.payment_method_type is None
    assert nobody.state is S.FAILED and nobody.attempts == ()
    assert "USD paid by sepa_debit" in (nobody.failure_message or "")
    assert seen == ["upi"]  # the adapter is told the family too
    undeclared = ScriptedGateway("undeclared")  # no capabilities: any family
    anything = make_test_service(gateways=[undeclared])
    async with anything:
        taken = await anything.pay(request(1000, payment_method_type="upi"))
    assert [a.gateway for a in taken.attempts] == ["undeclared"]


@pytest.mark.parametrize("value", ["", "UPI", "card payments", "1card", "x" * 65, 7])
def test_a_malformed_payment_method_type_is_invalid_input_naming_it(value: object) -> None:
    with pytest.raises(InvalidInput) as raised:
        request(1000, payment_method_type=value)
    assert raised.value.field == "payment_method_type"
    assert "payment method family" in str(raised.value)


async def test_partial_operations_only_where_the_gateway_declares_them() -> None:
    gateway = declaring("whole_only", manual_capture=True)  # no partial capture or refund
    service = make_test_service(gateways=[gateway])
    async with service:
        authorized = await authorized_payment(service, 1000)
        with pytest.raises(OperationNotAllowed, match="does not support a partial capture"):
            await service.capture(authorized.id, usd(600))
        assert await service.get_payment(authorized.id) == authorized  # nothing written
        captured = await service.capture(authorized.id, usd(1000))  # the whole amount is fine
        with pytest.raises(OperationNotAllowed, match="does not support a partial refund"):
            await service.refund(captured.id, usd(100))
        refunded = await service.refund(captured.id)
    assert refunded.state is S.REFUNDED
    assert ops(gateway, Operation.REFUND) and len(ops(gateway, Operation.CAPTURE)) == 1
