"""Capture, refund and void as recorded intents: the intent is committed before the gateway is
called and stays pending until an answer settles it, so a lost answer is resolved by repeating
exactly the recorded call (same idempotency key, same amount) - never by a new one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
from aegispay import (
    CaptureRequest,
    GatewayDeclined,
    GatewayResult,
    GatewayUnavailable,
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
    RefundRequest,
    VoidRequest,
)
from aegispay import events as ev
from aegispay.testing import ScriptedGateway, make_test_service

pytestmark = pytest.mark.anyio

S = PaymentState
KINDS = ("capture", "refund", "void")
INTENTS: dict[str, type[ev.Event]] = {
    "capture": ev.CaptureRequested,
    "refund": ev.RefundRequested,
    "void": ev.VoidRequested,
}
OPERATIONS = {"capture": Operation.CAPTURE, "refund": Operation.REFUND, "void": Operation.VOID}


def usd(minor: int) -> Money:
    return Money(minor, "USD")


def keys(gateway: ScriptedGateway, operation: Operation) -> list[str]:
    return [call.idempotency_key for call in gateway.calls if call.operation is operation]


def amounts(gateway: ScriptedGateway, operation: Operation) -> list[int | None]:
    return [call.amount_minor for call in gateway.calls if call.operation is operation]


@attrs.frozen
class Seen:
    """What the store held while the gateway was handling one call."""

    operation: Operation
    idempotency_key: str
    amount_minor: int | None
    stored: Payment
    replayed: Payment
    last_event: ev.Event


class InspectingGateway(ScriptedGateway):
    """A ScriptedGateway that, on every capture, refund and void, reads the store first: the
    intent must already be committed when the gateway hears of the operation."""

    def __init__(self, name: str = "scripted", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.service: PaymentService | None = None
        self.seen: list[Seen] = []

    async def _inspect(
        self, operation: Operation, payment_id: str, key: str, minor: int | None
    ) -> None:
        assert self.service is not None
        stored = await self.service.get_payment(payment_id)
        history = await self.service.payment_history(payment_id)
        replayed = await self.service.replay(payment_id)
        self.seen.append(Seen(operation, key, minor, stored, replayed, history[-1]))

    async def capture(self, request: CaptureRequest) -> GatewayResult:
        await self._inspect(
            Operation.CAPTURE, request.payment_id, request.idempotency_key, request.amount.minor
        )
        return await super().capture(request)

    async def refund(self, request: RefundRequest) -> GatewayResult:
        await self._inspect(
            Operation.REFUND, request.payment_id, request.idempotency_key, request.amount.minor
        )
        return await super().refund(request)

    async def void(self, request: VoidRequest) -> GatewayResult:
        await self._inspect(Operation.VOID, request.payment_id, request.idempotency_key, None)
        return await super().void(request)


def LostCaptureAnswerGateway() -> ScriptedGateway:
    """Captures idempotently (a repeated key gets the first answer and captures nothing new),
    and loses the answer to the first capture after capturing."""
    return ScriptedGateway(capture_on_authorize=False, lose_answers={Operation.CAPTURE: 1})


async def consistent(service: PaymentService, payment_id: str) -> Payment:
    """The stored payment, after checking that its events rebuild it exactly."""
    stored = await service.get_payment(payment_id)
    assert await service.replay(payment_id) == stored
    return stored


async def types_since(
    service: PaymentService, payment_id: str, version: int
) -> list[type[ev.Event]]:
    history = await service.payment_history(payment_id)
    return [type(e) for e in history if e.version > version]


async def ready_for(service: PaymentService, kind: str, minor: int = 1000) -> Payment:
    """A payment on which ``kind`` can run: AUTHORIZED (manual) for capture and void,
    COMPLETED for refund."""
    if kind == "refund":
        payment = await service.pay(PaymentRequest(usd(minor)))
        assert payment.state is S.COMPLETED
    else:
        payment = await service.pay(PaymentRequest(usd(minor), capture_mode="manual"))
        assert payment.state is S.AUTHORIZED
    return payment


def run(
    service: PaymentService, kind: str, payment_id: str, minor: int | None = None
) -> Awaitable[Payment]:
    """Start ``kind`` on ``payment_id`` (``minor``: the amount of a capture or refund)."""
    amount = None if minor is None else usd(minor)
    if kind == "capture":
        return service.capture(payment_id, amount)
    if kind == "refund":
        return service.refund(payment_id, amount)
    assert minor is None
    return service.cancel(payment_id, "changed mind")


def money_of(payment: Payment) -> tuple[Money, Money, Money]:
    return payment.authorized_amount, payment.captured_amount, payment.refunded_amount


# -- the intent comes first --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_intent_is_committed_before_the_gateway_is_called(kind: str) -> None:
    gateway = InspectingGateway()
    service = make_test_service(gateways=[gateway])
    gateway.service = service
    minor = None if kind == "void" else 400
    async with service:
        before = await ready_for(service, kind)
        after = await run(service, kind, before.id, minor)
        stored = await consistent(service, before.id)

    [seen] = gateway.seen
    assert seen.operation is OPERATIONS[kind]
    # While the gateway was working, the store already held the intent, pending.
    assert isinstance(seen.last_event, INTENTS[kind])
    assert seen.stored.version == before.version + 1
    assert seen.replayed == seen.stored
    pending = seen.stored.pending
    assert pending is not None
    assert pending.kind == kind
    assert pending.idempotency_key == seen.idempotency_key
    assert seen.last_event.idempotency_key == seen.idempotency_key  # type: ignore[attr-defined]
    if kind != "void":
        assert pending.amount == usd(400)
        assert seen.amount_minor == 400
    # ... and nothing had moved yet.
    assert seen.stored.state is before.state
    assert money_of(seen.stored) == money_of(before)
    # Then the result settled it.
    assert after == stored
    assert stored.pending is None
    assert stored.version == before.version + 2
    expected_state = {"capture": S.COMPLETED, "refund": S.PARTIALLY_REFUNDED, "void": S.CANCELLED}
    assert stored.state is expected_state[kind]


async def test_idempotency_keys_follow_from_the_intent() -> None:
    gateway = ScriptedGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        authorized = await ready_for(service, "capture")
        captured = await service.capture(authorized.id, usd(700))
        await service.refund(authorized.id, usd(100))
        refunded = await service.refund(authorized.id)
        history = await service.payment_history(authorized.id)

    requests = [e for e in history if isinstance(e, ev.CaptureRequested | ev.RefundRequested)]
    pid = authorized.id
    assert [e.idempotency_key for e in requests] == [
        f"{pid}-capture-{authorized.version + 1}",
        f"{pid}-refund-1",
        f"{pid}-refund-2",
    ]
    assert keys(gateway, Operation.CAPTURE) == [requests[0].idempotency_key]
    assert keys(gateway, Operation.REFUND) == [f"{pid}-refund-1", f"{pid}-refund-2"]
    assert [e.amount for e in requests] == [usd(700), usd(100), usd(600)]
    assert captured.captured_amount == usd(700) == usd(gateway.captured[pid])
    assert refunded.state is S.REFUNDED
    assert refunded.refunded_amount == usd(700) == usd(gateway.refunded[pid])


# -- UNKNOWN: the intent stays pending ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("settle", ["sync_payment", "retry", "process_payment"])
async def test_unknown_keeps_the_operation_pending_until_a_repeat_settles_it(
    kind: str, settle: str
) -> None:
    operation = OPERATIONS[kind]
    gateway = ScriptedGateway(script={operation: [Outcome.UNKNOWN]})
    service = make_test_service(gateways=[gateway])
    minor = None if kind == "void" else 300
    async with service:
        before = await ready_for(service, kind)
        with pytest.raises(OutcomeUnknown) as raised:
            await run(service, kind, before.id, minor)
        pending = await consistent(service, before.id)
        settlers: dict[str, Callable[[], Awaitable[Payment]]] = {
            "sync_payment": lambda: service.sync_payment(before.id),
            "retry": lambda: run(service, kind, before.id, minor),
            "process_payment": lambda: service.process_payment(before.id),
        }
        settled = await settlers[settle]()
        stored = await consistent(service, before.id)
        new_events = await types_since(service, before.id, before.version)

    assert raised.value.payment_id == before.id
    assert raised.value.operation == kind
    # Only the intent is recorded: the operation is pending and no money moved.
    assert pending.version == before.version + 1
    assert pending.state is before.state
    assert money_of(pending) == money_of(before)
    assert pending.pending is not None
    assert pending.pending.kind == kind
    key = pending.pending.idempotency_key
    # The repeat is exactly the recorded call.
    assert keys(gateway, operation) == [key, key]
    if kind != "void":
        assert pending.pending.amount == usd(300)
        assert amounts(gateway, operation) == [300, 300]
    assert settled == stored
    assert stored.pending is None
    assert stored.version == before.version + 2
    pid = before.id
    if kind == "capture":
        assert new_events == [ev.CaptureRequested, ev.PaymentCompleted]
        assert stored.state is S.COMPLETED
        assert stored.captured_amount == usd(300) == usd(gateway.captured[pid])
    elif kind == "refund":
        assert new_events == [ev.RefundRequested, ev.RefundSucceeded]
        assert stored.state is S.PARTIALLY_REFUNDED
        assert stored.refunded_amount == usd(300) == usd(gateway.refunded[pid])
        assert [(r.idempotency_key, r.succeeded) for r in stored.refunds] == [(key, True)]
    else:
        assert new_events == [ev.VoidRequested, ev.PaymentCancelled]
        assert stored.state is S.CANCELLED
        assert pid in gateway.voided


async def test_a_repeat_that_is_unknown_again_changes_nothing() -> None:
    gateway = ScriptedGateway(script={Operation.REFUND: [Outcome.UNKNOWN] * 3})
    service = make_test_service(gateways=[gateway])
    async with service:
        paid = await ready_for(service, "refund")
        with pytest.raises(OutcomeUnknown):
            await service.refund(paid.id, usd(250))
        pending = await consistent(service, paid.id)
        with pytest.raises(OutcomeUnknown):
            await service.sync_payment(paid.id)
        with pytest.raises(OutcomeUnknown):
            await service.refund(paid.id)
        still = await consistent(service, paid.id)
        settled = await service.sync_payment(paid.id)

    assert still == pending
    assert keys(gateway, Operation.REFUND) == [f"{paid.id}-refund-1"] * 4
    assert amounts(gateway, Operation.REFUND) == [250] * 4
    assert settled.refunded_amount == usd(250) == usd(gateway.refunded[paid.id])
    assert settled.version == paid.version + 2


@pytest.mark.parametrize("kind", ["capture", "refund"])
async def test_a_different_amount_while_pending_is_refused_naming_the_pending_amount(
    kind: str,
) -> None:
    operation = OPERATIONS[kind]
    gateway = ScriptedGateway(script={operation: [Outcome.UNKNOWN]})
    service = make_test_service(gateways=[gateway])
    async with service:
        before = await ready_for(service, kind)
        with pytest.raises(OutcomeUnknown):
            await run(service, kind, before.id, 300)
        pending = await service.get_payment(before.id)
        with pytest.raises(OperationNotAllowed) as raised:
            await run(service, kind, before.id, 500)
        after_refusal = await consistent(service, before.id)
        calls_after_refusal = list(gateway.calls)
        # The same amount, or none, is the retry.
        settled = await run(service, kind, before.id, None if kind == "refund" else 300)

    assert raised.value.payment_id == before.id
    assert str(usd(300)) in str(raised.value)
    assert kind in str(raised.value)
    assert after_refusal == pending
    assert [c.amount_minor for c in calls_after_refusal if c.operation is operation] == [300]
    assert amounts(gateway, operation) == [300, 300]
    assert settled.pending is None
    if kind == "capture":
        assert settled.captured_amount == usd(300) == usd(gateway.captured[before.id])
    else:
        assert settled.refunded_amount == usd(300) == usd(gateway.refunded[before.id])


# Each pending kind, and the operations that must wait for it.
OTHERS = [
    ("capture", "void"),
    ("capture", "refund"),
    ("void", "capture"),
    ("void", "refund"),
    ("refund", "capture"),
    ("refund", "void"),
]


@pytest.mark.parametrize(("kind", "other"), OTHERS)
async def test_another_operation_while_one_is_pending_is_refused(kind: str, other: str) -> None:
    gateway = ScriptedGateway(script={OPERATIONS[kind]: [Outcome.UNKNOWN]})
    service = make_test_service(gateways=[gateway])
    async with service:
        before = await ready_for(service, kind)
        with pytest.raises(OutcomeUnknown):
            await run(service, kind, before.id, None)
        pending = await service.get_payment(before.id)
        calls = len(gateway.calls)
        with pytest.raises(OperationNotAllowed) as raised:
            await run(service, other, before.id, None)
        after = await consistent(service, before.id)

    assert raised.value.payment_id == before.id
    assert f"a {kind} is awaiting" in str(raised.value)
    assert after == pending
    assert len(gateway.calls) == calls


# -- NOT_SENT and refused voids drop the intent ------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_not_sent_drops_the_intent_and_moves_no_money(kind: str) -> None:
    operation = OPERATIONS[kind]
    gateway = ScriptedGateway(script={operation: [Outcome.NOT_SENT]})
    service = make_test_service(gateways=[gateway])
    minor = None if kind == "void" else 450
    async with service:
        before = await ready_for(service, kind)
        with pytest.raises(GatewayUnavailable) as raised:
            await run(service, kind, before.id, minor)
        dropped = await consistent(service, before.id)
        history = await service.payment_history(before.id)
        retried = await run(service, kind, before.id, minor)
        final = await consistent(service, before.id)

    assert raised.value.payment_id == before.id
    assert raised.value.operation == kind
    assert dropped.version == before.version + 2
    intent, not_sent = history[-2:]
    assert isinstance(intent, INTENTS[kind])
    assert isinstance(not_sent, ev.OperationNotSent)
    assert not_sent.operation == kind
    assert not_sent.idempotency_key == intent.idempotency_key  # type: ignore[attr-defined]
    # Nothing but the two records: same state, same money, nothing pending.
    assert dropped.pending is None
    assert attrs.evolve(before, version=dropped.version, updated_at=dropped.updated_at) == dropped
    pid = before.id
    assert retried == final
    assert final.pending is None
    if kind == "capture":
        assert final.captured_amount == usd(450) == usd(gateway.captured[pid])
    elif kind == "refund":
        assert final.refunded_amount == usd(450) == usd(gateway.refunded[pid])
        assert [r.amount for r in final.refunds] == [usd(450)]
    else:
        assert final.state is S.CANCELLED
        assert pid in gateway.voided


async def test_declined_void_drops_the_intent_and_keeps_the_authorisation() -> None:
    decline = GatewayResult(Outcome.DECLINED, decline_code="too_late", message="no")
    gateway = ScriptedGateway(script={Operation.VOID: [decline]})
    service = make_test_service(gateways=[gateway])
    async with service:
        authorized = await ready_for(service, "void")
        with pytest.raises(GatewayDeclined) as raised:
            await service.cancel(authorized.id)
        stored = await consistent(service, authorized.id)
        history = await service.payment_history(authorized.id)
        captured = await service.capture(authorized.id)

    assert raised.value.operation == "void"
    assert raised.value.code == "too_late"
    intent, dropped = history[-2:]
    assert isinstance(intent, ev.VoidRequested)
    assert isinstance(dropped, ev.OperationNotSent)
    assert dropped.operation == "void"
    assert dropped.message == "declined: too_late"
    assert stored.state is S.AUTHORIZED
    assert stored.pending is None
    assert stored.version == authorized.version + 2
    assert authorized.id not in gateway.voided
    assert captured.state is S.COMPLETED
    assert captured.captured_amount == usd(1000) == usd(gateway.captured[authorized.id])


@pytest.mark.parametrize("kind", ["capture", "refund"])
async def test_declined_capture_or_refund_is_recorded_and_clears_pending(kind: str) -> None:
    decline = GatewayResult(Outcome.DECLINED, decline_code="nope")
    gateway = ScriptedGateway(script={OPERATIONS[kind]: [decline]})
    service = make_test_service(gateways=[gateway])
    async with service:
        before = await ready_for(service, kind)
        with pytest.raises(GatewayDeclined):
            await run(service, kind, before.id, 200)
        stored = await consistent(service, before.id)
        new_events = await types_since(service, before.id, before.version)

    assert stored.pending is None
    assert stored.state is before.state
    assert money_of(stored) == money_of(before)
    failed = ev.CaptureFailed if kind == "capture" else ev.RefundFailed
    assert new_events == [INTENTS[kind], failed]


# -- process_payment finishes an automatic capture ---------------------------------------------


@pytest.mark.parametrize("first", [Outcome.NOT_SENT, Outcome.DECLINED])
async def test_process_payment_retries_an_automatic_capture_that_did_not_happen(
    first: Outcome,
) -> None:
    gateway = ScriptedGateway(capture_on_authorize=False, script={Operation.CAPTURE: [first]})
    service = make_test_service(gateways=[gateway])
    async with service:
        created = await service.create_payment(PaymentRequest(usd(800)))
        with pytest.raises(GatewayUnavailable if first is Outcome.NOT_SENT else GatewayDeclined):
            await service.process_payment(created.id)
        authorized = await consistent(service, created.id)
        completed = await service.process_payment(created.id)
        stored = await consistent(service, created.id)
        again = await service.process_payment(created.id)

    assert authorized.state is S.AUTHORIZED
    assert authorized.capture_mode == "automatic"
    assert authorized.pending is None
    assert completed == stored == again
    assert stored.state is S.COMPLETED
    assert stored.captured_amount == usd(800) == usd(gateway.captured[created.id])
    # Authorised once; captured by a second, new capture (the first never took effect).
    assert gateway.charge_count(created.id) == 1
    assert len(keys(gateway, Operation.AUTHORIZE)) == 1
    first_key, second_key = keys(gateway, Operation.CAPTURE)
    assert first_key != second_key


async def test_process_payment_resumes_an_unknown_automatic_capture_with_the_same_key() -> None:
    gateway = ScriptedGateway(
        capture_on_authorize=False, script={Operation.CAPTURE: [Outcome.UNKNOWN]}
    )
    service = make_test_service(gateways=[gateway])
    async with service:
        with pytest.raises(OutcomeUnknown):
            await service.pay(PaymentRequest(usd(800)))
        [payment_id] = await service.store.payment_ids()
        pending = await consistent(service, payment_id)
        completed = await service.process_payment(payment_id)

    assert pending.state is S.AUTHORIZED
    assert pending.pending is not None and pending.pending.kind == "capture"
    assert keys(gateway, Operation.CAPTURE) == [pending.pending.idempotency_key] * 2
    assert completed.state is S.COMPLETED
    assert completed.captured_amount == usd(800) == usd(gateway.captured[payment_id])
    assert gateway.charge_count(payment_id) == 1


# -- what is recorded never exceeds what the gateway did ---------------------------------------


@pytest.mark.parametrize("answer_lost", [True, False], ids=["answer-lost", "request-lost"])
async def test_unknown_capture_retried_with_another_amount_never_overstates_the_capture(
    answer_lost: bool,
) -> None:
    """The first capture (600) is UNKNOWN: either the gateway captured and the answer was lost,
    or the request was lost. A retry asking for 1000 is refused; whatever happens after, the
    payment never records more than the gateway captured."""
    gateway = (
        LostCaptureAnswerGateway()
        if answer_lost
        else ScriptedGateway(script={Operation.CAPTURE: [Outcome.UNKNOWN]})
    )
    service = make_test_service(gateways=[gateway])

    async def agrees(payment_id: str) -> Payment:
        stored = await consistent(service, payment_id)
        assert stored.captured_amount.minor <= gateway.captured.get(payment_id, 0)
        return stored

    async with service:
        authorized = await ready_for(service, "capture")
        pid = authorized.id
        with pytest.raises(OutcomeUnknown):
            await service.capture(pid, usd(600))
        await agrees(pid)
        with pytest.raises(OperationNotAllowed):
            await service.capture(pid, usd(1000))
        await agrees(pid)
        with pytest.raises(OperationNotAllowed):
            await service.cancel(pid)  # a void now could release captured funds' authorisation
        await agrees(pid)
        settled = await service.sync_payment(pid)
        stored = await agrees(pid)
        with pytest.raises(InvalidTransition):
            await service.capture(pid, usd(1000))
        final = await agrees(pid)

    assert settled == stored == final
    assert stored.state is S.COMPLETED
    assert stored.captured_amount == usd(600) == usd(gateway.captured[pid])
    assert set(amounts(gateway, Operation.CAPTURE)) == {600}


# -- REQUIRES_ACTION: a pending void -----------------------------------------------------------


async def test_unknown_void_of_a_payment_awaiting_action_is_settled_by_sync() -> None:
    """cancel() on a REQUIRES_ACTION payment voids at the gateway. If the void's answer is lost,
    sync_payment must repeat that void (same key), like for any other pending operation."""
    gateway = ScriptedGateway(
        script={Operation.AUTHORIZE: [Outcome.REQUIRES_ACTION], Operation.VOID: [Outcome.UNKNOWN]}
    )
    service = make_test_service(gateways=[gateway])
    async with service:
        waiting = await service.pay(PaymentRequest(usd(500)))
        assert waiting.state is S.REQUIRES_ACTION
        with pytest.raises(OutcomeUnknown):
            await service.cancel(waiting.id)
        pending = await consistent(service, waiting.id)
        synced = await service.sync_payment(waiting.id)
        stored = await consistent(service, waiting.id)

    assert pending.pending is not None and pending.pending.kind == "void"
    assert keys(gateway, Operation.VOID) == [pending.pending.idempotency_key] * 2
    assert synced == stored
    assert stored.state is S.CANCELLED
    assert stored.pending is None
    assert waiting.id in gateway.voided


async def test_pending_void_is_not_stranded_when_the_customer_fails_the_challenge() -> None:
    """The void's answer is lost while the payment awaits 3-D Secure, and then the customer
    fails the challenge (the gateway now reports the attempt DECLINED). Syncing must leave the
    payment settled - cancelled or failed, nothing pending - not stuck with a void that can
    never be recorded."""
    gateway = ScriptedGateway(
        script={Operation.AUTHORIZE: [Outcome.REQUIRES_ACTION], Operation.VOID: [Outcome.UNKNOWN]}
    )
    service = make_test_service(gateways=[gateway])
    async with service:
        waiting = await service.pay(PaymentRequest(usd(500)))
        assert waiting.state is S.REQUIRES_ACTION
        with pytest.raises(OutcomeUnknown):
            await service.cancel(waiting.id)
        attempt_key = waiting.attempts[-1].idempotency_key
        gateway.answers[attempt_key] = GatewayResult(Outcome.DECLINED, decline_code="3ds_failed")
        await service.sync_payment(waiting.id)
        # Whatever the first sync did, a second one finds nothing left to do.
        settled = await service.sync_payment(waiting.id)
        stored = await consistent(service, waiting.id)

    assert settled == stored
    assert stored.pending is None
    assert stored.state in (S.CANCELLED, S.FAILED)
    assert gateway.charge_count(waiting.id) == 0
