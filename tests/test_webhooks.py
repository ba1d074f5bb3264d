"""Gateway webhooks (aegispay.webhooks): verify, dedupe on (gateway, event id), apply once.

Driven through the simulated gateway, whose in-process control signs webhooks as a gateway
would; the planning step is also checked on its own, over every state and update kind.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from aegispay import Money, OutcomeUnknown, PaymentRequest, PaymentState
from aegispay import events as ev
from aegispay.errors import StoreUnavailable
from aegispay.fake_server import Fault
from aegispay.payment import Payment, apply, replay
from aegispay.plugins.simulated_gateways import (
    Ledger,
    SimulatedGateway,
    SimulatedGatewayConfig,
    SimulatedGatewayControl,
)
from aegispay.stack import open_store
from aegispay.store.memory import MemoryStore
from aegispay.testing import ScriptedGateway, make_test_service
from aegispay.webhooks import (
    UnknownWebhookGateway,
    WebhookKind,
    WebhookSignatureError,
    WebhookStatus,
    WebhookUpdate,
    dedup_scope,
    plan_webhook,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

S = PaymentState
SECRET = "whsec_test_webhooks_0123456789abcdef"
GW = "sim-hooks"
USD = "USD"


def _gateway(name: str = GW) -> SimulatedGateway:
    config = SimulatedGatewayConfig(
        name, None, decline_rate=0.0, not_sent_rate=0.0, unknown_rate=0.0, webhook_secret=SECRET
    )
    return SimulatedGateway(config, Ledger(), seed=3, latency_ms=0.0)


def _service(gateway: SimulatedGateway, **kwargs: Any) -> Any:
    return make_test_service(gateways=[gateway], builtins=("priority_routing",), **kwargs)


async def _waiting(service: Any, control: SimulatedGatewayControl, **request: Any) -> Payment:
    """A payment left waiting for the customer (REQUIRES_ACTION)."""
    control.require_action_next()
    payment = await service.pay(PaymentRequest(Money(5000, USD), **request))
    assert payment.state is S.REQUIRES_ACTION
    return payment


def _hook(
    control: SimulatedGatewayControl,
    kind: WebhookKind,
    payment: Payment,
    amount_minor: int = 5000,
    **extra: Any,
) -> tuple[dict[str, str], bytes]:
    assert payment.gateway_reference is not None
    return control.signed_webhook(
        kind, payment.gateway_reference, amount_minor=amount_minor, currency=USD, **extra
    )


pytestmark = pytest.mark.anyio


# -- routing a delivery --------------------------------------------------------------------------


async def test_unknown_gateway_and_gateway_without_webhooks_are_refused() -> None:
    service = make_test_service(gateways=[ScriptedGateway("plain")])
    with pytest.raises(UnknownWebhookGateway, match=r"'nope'.*no such gateway"):
        await service.handle_webhook("nope", {}, b"{}")
    with pytest.raises(UnknownWebhookGateway, match="does not receive webhooks"):
        await service.handle_webhook("plain", {}, b"{}")


async def test_bad_signature_changes_nothing() -> None:
    gateway = _gateway()
    control = gateway.control()
    service = _service(gateway)
    payment = await _waiting(service, control)
    headers, body = _hook(control, WebhookKind.SUCCEEDED, payment, secret="whsec_wrong_one")
    with pytest.raises(WebhookSignatureError) as caught:
        await service.handle_webhook(GW, headers, body)
    assert SECRET not in str(caught.value) and "whsec_wrong_one" not in str(caught.value)
    assert SECRET not in repr(gateway) and SECRET not in repr(gateway.config)
    assert await service.get_payment(payment.id) == payment


async def test_header_names_are_matched_case_insensitively() -> None:
    gateway = _gateway()
    control = gateway.control()
    service = _service(gateway)
    payment = await _waiting(service, control)
    control.complete_action(payment.gateway_reference or "")
    headers, body = _hook(control, WebhookKind.SUCCEEDED, payment)
    shouted = {name.upper(): value for name, value in headers.items()}
    result = await service.handle_webhook(GW, shouted, body)
    assert result.status is WebhookStatus.APPLIED


async def test_ignored_event_type_and_unknown_payment() -> None:
    gateway = _gateway()
    control = gateway.control()
    service = _service(gateway)
    headers, body = control.signed_webhook(
        WebhookKind.IGNORED, "ch_not_ours", amount_minor=100, currency=USD
    )
    result = await service.handle_webhook(GW, headers, body)
    assert result.status is WebhookStatus.IGNORED
    headers, body = control.signed_webhook(
        WebhookKind.SUCCEEDED, "ch_not_ours", amount_minor=100, currency=USD
    )
    result = await service.handle_webhook(GW, headers, body)
    assert result.status is WebhookStatus.IGNORED
    assert result.reason == "no payment of ours matches"


# -- applying ------------------------------------------------------------------------------------


async def test_succeeded_completes_a_waiting_payment_once() -> None:
    gateway = _gateway()
    control = gateway.control()
    service = _service(gateway)
    payment = await _waiting(service, control)
    control.complete_action(payment.gateway_reference or "")
    headers, body = _hook(control, WebhookKind.SUCCEEDED, payment, event_id="evt_1")
    first = await service.handle_webhook(GW, headers, body)
    assert (first.status, first.state, first.payment_id) == (
        WebhookStatus.APPLIED,
        S.COMPLETED,
        payment.id,
    )
    done = await service.get_payment(payment.id)
    assert done.captured == Money(5000, USD)
    assert await service.replay(payment.id) == done
    again = await service.handle_webhook(GW, headers, body)
    assert again.status is WebhookStatus.DUPLICATE
    record = await service.store.find_idempotency(dedup_scope(GW), "evt_1")
    assert record is not None and record.payment_id == payment.id
    assert await service.get_payment(payment.id) == done
    assert control.charges() == 1


async def test_authorized_on_an_automatic_capture_payment_is_then_captured() -> None:
    gateway = _gateway()
    control = gateway.control()
    service = _service(gateway)
    payment = await _waiting(service, control)
    headers, body = _hook(control, WebhookKind.AUTHORIZED, payment)
    result = await service.handle_webhook(GW, headers, body)
    assert result.status is WebhookStatus.APPLIED
    assert result.state is S.COMPLETED  # the engine captured after the authorization
    assert control.charges() == 1


async def test_authorized_on_a_manual_capture_payment_stays_authorized() -> None:
    gateway = _gateway()
    control = gateway.control()
    service = _service(gateway)
    payment = await _waiting(service, control, capture_mode="manual")
    headers, body = _hook(control, WebhookKind.AUTHORIZED, payment)
    result = await service.handle_webhook(GW, headers, body)
    assert (result.status, result.state) == (WebhookStatus.APPLIED, S.AUTHORIZED)
    assert control.charges() == 0


async def test_failed_fails_a_waiting_payment_with_the_code() -> None:
    gateway = _gateway()
    control = gateway.control()
    service = _service(gateway)
    payment = await _waiting(service, control)
    headers, body = _hook(
        control, WebhookKind.FAILED, payment, decline_code="authentication_failed"
    )
    result = await service.handle_webhook(GW, headers, body)
    assert (result.status, result.state) == (WebhookStatus.APPLIED, S.FAILED)
    failed = await service.get_payment(payment.id)
    assert failed.failure_code == "authentication_failed"


async def test_requires_action_for_a_waiting_payment_syncs_it_now() -> None:
    """The customer acted (PayPal's CHECKOUT.ORDER.APPROVED): the payment is looked up at once
    and completed by the lookup, not left for the next reconcile. A redelivery is a no-op."""
    gateway = _gateway()
    control = gateway.control()
    service = _service(gateway)
    payment = await _waiting(service, control)
    control.complete_action(payment.gateway_reference or "")
    headers, body = _hook(control, WebhookKind.REQUIRES_ACTION, payment, event_id="evt_ok")
    result = await service.handle_webhook(GW, headers, body)
    assert (result.status, result.state, result.payment_id) == (
        WebhookStatus.APPLIED,
        S.COMPLETED,
        payment.id,
    )
    done = await service.get_payment(payment.id)
    assert done.captured == Money(5000, USD) and control.charges() == 1
    assert await service.replay(payment.id) == done
    again = await service.handle_webhook(GW, headers, body)
    assert (again.status, again.state) == (WebhookStatus.IGNORED, S.COMPLETED)
    assert await service.get_payment(payment.id) == done


async def test_requires_action_while_the_gateway_still_waits_changes_nothing() -> None:
    gateway = _gateway()
    control = gateway.control()
    service = _service(gateway)
    payment = await _waiting(service, control)
    headers, body = _hook(control, WebhookKind.REQUIRES_ACTION, payment)
    result = await service.handle_webhook(GW, headers, body)
    assert (result.status, result.state) == (WebhookStatus.IGNORED, S.REQUIRES_ACTION)
    assert await service.get_payment(payment.id) == payment
    assert control.charges() == 0


async def test_an_update_contradicting_the_payment_is_rejected_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = _gateway()
    control = gateway.control()
    service = _service(gateway)
    payment = await _waiting(service, control)
    fail_headers, fail_body = _hook(control, WebhookKind.FAILED, payment)
    assert (await service.handle_webhook(GW, fail_headers, fail_body)).status is (
        WebhookStatus.APPLIED
    )
    failed = await service.get_payment(payment.id)
    headers, body = _hook(control, WebhookKind.SUCCEEDED, payment, event_id="evt_late")
    with caplog.at_level(logging.WARNING, logger="aegispay.webhooks"):
        result = await service.handle_webhook(GW, headers, body)
    assert result.status is WebhookStatus.REJECTED
    assert "FAILED" in result.reason
    assert "evt_late" in caplog.text and payment.id in caplog.text
    assert await service.get_payment(payment.id) == failed
    # Not recorded as applied: nothing was.
    assert await service.store.find_idempotency(dedup_scope(GW), "evt_late") is None


async def test_a_wrong_amount_is_rejected() -> None:
    gateway = _gateway()
    control = gateway.control()
    service = _service(gateway)
    payment = await _waiting(service, control)
    headers, body = _hook(control, WebhookKind.SUCCEEDED, payment, amount_minor=4999)
    result = await service.handle_webhook(GW, headers, body)
    assert result.status is WebhookStatus.REJECTED
    assert "differs" in result.reason
    assert (await service.get_payment(payment.id)).state is S.REQUIRES_ACTION


async def test_refund_whose_answer_was_lost_is_settled_by_webhook() -> None:
    gateway = _gateway()
    control = gateway.control()
    service = _service(gateway)
    payment = await service.pay(PaymentRequest(Money(5000, USD)))
    assert payment.state is S.COMPLETED
    control.inject(Fault.DROP_AFTER_PROCESSING, path_prefix="/refund")
    with pytest.raises(OutcomeUnknown):
        await service.refund(payment.id, Money(2000, USD))
    pending = await service.get_payment(payment.id)
    assert pending.pending is not None and pending.pending.kind == "refund"
    headers, body = _hook(
        control, WebhookKind.REFUND_SUCCEEDED, payment, amount_minor=2000, refund_reference="re_1"
    )
    result = await service.handle_webhook(GW, headers, body)
    assert (result.status, result.state) == (WebhookStatus.APPLIED, S.PARTIALLY_REFUNDED)
    refunded = await service.get_payment(payment.id)
    assert refunded.refunded == Money(2000, USD) and refunded.pending is None
    # The same refund reported again under a new event id: recorded already, a no-op.
    headers, body = _hook(
        control, WebhookKind.REFUND_SUCCEEDED, payment, amount_minor=2000, refund_reference="re_1"
    )
    assert (await service.handle_webhook(GW, headers, body)).status is WebhookStatus.IGNORED
    # ... and a failure of that refund now contradicts what is recorded.
    headers, body = _hook(
        control, WebhookKind.REFUND_FAILED, payment, amount_minor=2000, refund_reference="re_1"
    )
    assert (await service.handle_webhook(GW, headers, body)).status is WebhookStatus.REJECTED


async def test_a_refund_made_at_the_gateway_is_recorded_once() -> None:
    """A refund issued in the gateway's dashboard (AegisPay never asked for it) still gave the
    customer money back: the payment records it, with the gateway's reference, exactly once."""
    gateway = _gateway()
    control = gateway.control()
    service = _service(gateway)
    payment = await service.pay(PaymentRequest(Money(5000, USD)))
    ours = await service.refund(payment.id, Money(1000, USD))  # one of ours first
    assert ours.refunds[-1].gateway_reference is not None

    def dashboard(minor: int, reference: str) -> tuple[Any, bytes]:
        return _hook(
            control, WebhookKind.REFUND_SUCCEEDED, payment, amount_minor=minor,
            refund_reference=reference,
        )  # fmt: skip

    result = await service.handle_webhook(GW, *dashboard(1500, "re_dashboard"))
    assert (result.status, result.state) == (WebhookStatus.APPLIED, S.PARTIALLY_REFUNDED)
    after = await service.get_payment(payment.id)
    assert after.refunded == Money(2500, USD) and after.pending is None
    made = after.refunds[-1]
    assert (made.number, made.amount, made.gateway_reference) == (
        2,
        Money(1500, USD),
        "re_dashboard",
    )
    assert made.succeeded and "gateway" in (made.reason or "")
    # Reported again (a new event id): already recorded.
    again = await service.handle_webhook(GW, *dashboard(1500, "re_dashboard"))
    assert again.status is WebhookStatus.IGNORED and "already recorded" in again.reason
    # More than is left to refund: a report AegisPay cannot square with the payment.
    too_much = await service.handle_webhook(GW, *dashboard(2600, "re_other"))
    assert too_much.status is WebhookStatus.REJECTED and "refundable" in too_much.reason
    # The rest, refunded at the gateway: the payment is fully refunded, and still replays.
    rest = await service.handle_webhook(GW, *dashboard(2500, "re_rest"))
    assert (rest.status, rest.state) == (WebhookStatus.APPLIED, S.REFUNDED)
    assert replay(await service.store.events(payment.id)) == await service.get_payment(payment.id)


def test_a_gateway_refund_that_may_be_one_already_recorded_is_left_alone() -> None:
    """Only a refund that cannot be one of ours is recorded as made at the gateway: without a
    reference, or while a recorded refund lacks one, it is ignored; a failed one changes nothing."""
    payment = _history(S.PARTIALLY_REFUNDED)  # refund 1 recorded with reference re_1
    base = WebhookUpdate("e", WebhookKind.REFUND_SUCCEEDED, REF, payment.id, Money(500, USD))
    no_reference = plan_webhook(payment, GW, base, T0)
    assert no_reference.status is WebhookStatus.IGNORED and no_reference.events == ()
    failed = attrs.evolve(base, kind=WebhookKind.REFUND_FAILED, refund_reference="re_9")
    assert plan_webhook(payment, GW, failed, T0).status is WebhookStatus.IGNORED
    unreferenced = attrs.evolve(
        payment, refunds=(attrs.evolve(payment.refunds[0], gateway_reference=None),)
    )
    maybe_ours = attrs.evolve(base, refund_reference="re_9")
    plan = plan_webhook(unreferenced, GW, maybe_ours, T0)
    assert plan.status is WebhookStatus.IGNORED and "no gateway reference" in plan.reason
    assert plan_webhook(payment, GW, maybe_ours, T0).status is WebhookStatus.APPLIED


async def test_concurrent_deliveries_of_one_event_apply_once() -> None:
    gateway = _gateway()
    control = gateway.control()
    service = _service(gateway)
    payment = await _waiting(service, control)
    control.complete_action(payment.gateway_reference or "")
    headers, body = _hook(control, WebhookKind.SUCCEEDED, payment, event_id="evt_race")
    statuses: list[WebhookStatus] = []

    async def deliver() -> None:
        statuses.append((await service.handle_webhook(GW, headers, body)).status)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(deliver)
    assert sorted(s.value for s in statuses) == ["applied"] + ["duplicate"] * 4
    history = await service.payment_history(payment.id)
    assert sum(isinstance(e, ev.PaymentCompleted) for e in history) == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the SQL store runs on asyncio
async def test_dedup_is_durable_across_services_sharing_a_store(
    tmp_path: Path, anyio_backend: str
) -> None:
    url = f"sqlite:///{tmp_path / 'hooks.db'}"
    gateway = _gateway()
    control = gateway.control()
    first = _service(gateway, store=open_store(url, migrate=True))
    try:
        payment = await _waiting(first, control)
        control.complete_action(payment.gateway_reference or "")
        headers, body = _hook(control, WebhookKind.SUCCEEDED, payment, event_id="evt_durable")
        assert (await first.handle_webhook(GW, headers, body)).status is WebhookStatus.APPLIED
    finally:
        await first.aclose()
    second = _service(gateway, store=open_store(url, migrate=True))  # a restart, or a peer
    try:
        result = await second.handle_webhook(GW, headers, body)
        assert result.status is WebhookStatus.DUPLICATE
        assert (await second.get_payment(payment.id)).state is S.COMPLETED
    finally:
        await second.aclose()


class _DownStore(MemoryStore):
    down = False

    async def find_idempotency(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            raise StoreUnavailable("store down")
        return await super().find_idempotency(*args, **kwargs)


async def test_store_down_raises_so_the_gateway_redelivers() -> None:
    gateway = _gateway()
    control = gateway.control()
    store = _DownStore()
    service = _service(gateway, store=store)
    payment = await _waiting(service, control)
    control.complete_action(payment.gateway_reference or "")
    headers, body = _hook(control, WebhookKind.SUCCEEDED, payment, event_id="evt_down")
    store.down = True
    with pytest.raises(StoreUnavailable):
        await service.handle_webhook(GW, headers, body)
    store.down = False
    assert (await service.handle_webhook(GW, headers, body)).status is WebhookStatus.APPLIED


# -- planning, over every state and kind ---------------------------------------------------------

T0 = datetime(2024, 5, 1, tzinfo=UTC)
REF = "sim_ref_1"


def _history(state: PaymentState, capture_mode: str = "automatic") -> Payment:
    """A payment of 5000 USD in ``state``, built from events, with one attempt at GW."""
    pid = "pay_plan"
    amount = Money(5000, USD)
    steps: list[Any] = [
        lambda v: ev.PaymentInitiated(
            payment_id=pid,
            version=v,
            occurred_at=T0,
            merchant_id="m",
            amount=amount,
            capture_mode=capture_mode,
        ),
        lambda v: ev.PaymentProcessingStarted(
            payment_id=pid, version=v, occurred_at=T0, attempt_no=1, gateway=GW,
            idempotency_key=f"{pid}-1",
        ),
    ]  # fmt: skip
    action = lambda v: ev.PaymentRequiresAction(  # noqa: E731
        payment_id=pid, version=v, occurred_at=T0, attempt_no=1, gateway_reference=REF
    )
    authorized = lambda v: ev.PaymentAuthorized(  # noqa: E731
        payment_id=pid, version=v, occurred_at=T0, attempt_no=1, amount=amount,
        gateway_reference=REF,
    )  # fmt: skip
    completed = lambda v: ev.PaymentCompleted(  # noqa: E731
        payment_id=pid, version=v, occurred_at=T0, amount=amount, idempotency_key=f"{pid}-1",
        gateway_reference=REF,
    )  # fmt: skip

    def refund(minor: int, no: int) -> Any:
        return lambda v: ev.RefundSucceeded(
            payment_id=pid, version=v, occurred_at=T0, refund_no=no, amount=Money(minor, USD),
            idempotency_key=f"{pid}-refund-{no}", gateway_reference=f"re_{no}",
        )  # fmt: skip

    extra: dict[PaymentState, list[Any]] = {
        S.PROCESSING: [],
        S.REQUIRES_ACTION: [action],
        S.AUTHORIZED: [authorized],
        S.COMPLETED: [authorized, completed],
        S.PARTIALLY_REFUNDED: [authorized, completed, refund(1000, 1)],
        S.REFUNDED: [authorized, completed, refund(5000, 1)],
        S.FAILED: [
            lambda v: ev.PaymentAttemptFailed(
                payment_id=pid,
                version=v,
                occurred_at=T0,
                attempt_no=1,
                outcome=ev.Outcome.DECLINED,
                decline_code="card_declined",
            ),
            lambda v: ev.PaymentFailed(payment_id=pid, version=v, occurred_at=T0, code="x"),
        ],
        S.CANCELLED: [
            authorized,
            lambda v: ev.PaymentCancelled(payment_id=pid, version=v, occurred_at=T0, voided=True),
        ],
    }
    events = [make(n) for n, make in enumerate([*steps, *extra[state]], start=1)]
    payment = replay(events)
    assert payment is not None and payment.state is state
    return payment


def _with_pending_refund(payment: Payment, minor: int) -> Payment:
    return apply(
        payment,
        ev.RefundRequested(
            payment_id=payment.id, version=payment.version + 1, occurred_at=T0,
            refund_no=len(payment.refunds) + 1, amount=Money(minor, USD),
            idempotency_key=f"{payment.id}-refund-x",
        ),
    )  # fmt: skip


STATES = [s for s in PaymentState if s is not S.INITIATED]

updates = st.builds(
    WebhookUpdate,
    event_id=st.just("evt_p"),
    kind=st.sampled_from(WebhookKind),
    gateway_reference=st.sampled_from([REF, None, "other_ref"]),
    payment_id=st.just("pay_plan"),
    amount=st.sampled_from([None, Money(5000, USD), Money(1000, USD), Money(5000, "EUR")]),
    decline_code=st.sampled_from([None, "card_declined"]),
    refund_reference=st.sampled_from([None, "re_1", "re_9"]),
)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # planning is synchronous
@given(
    state=st.sampled_from(STATES),
    manual=st.booleans(),
    refund_pending=st.booleans(),
    update=updates,
)
@settings(max_examples=400, deadline=None)
@example(  # found by CI: a second partial refund made at the gateway keeps the state
    state=S.PARTIALLY_REFUNDED,
    manual=False,
    refund_pending=False,
    update=WebhookUpdate(
        "evt_p", WebhookKind.REFUND_SUCCEEDED, REF, "pay_plan", Money(1000, USD), None, "re_9"
    ),
)
def test_a_plan_never_breaks_the_state_machine_and_applies_once(
    anyio_backend: str,
    state: PaymentState,
    manual: bool,
    refund_pending: bool,
    update: WebhookUpdate,
) -> None:
    payment = _history(state, "manual" if manual else "automatic")
    if refund_pending and state in (S.COMPLETED, S.PARTIALLY_REFUNDED):
        payment = _with_pending_refund(payment, 1000)
    plan = plan_webhook(payment, GW, update, T0)
    if plan.status is not WebhookStatus.APPLIED:
        assert plan.events == () and plan.reason
        return
    new = payment
    for event in plan.events:  # raises if the plan broke the table or the money invariant
        new = apply(new, event)
    # An applied plan moves the payment: its state, its pending operation, or (a refund made
    # at the gateway, while partially refunded) the money refunded.
    assert (
        new.state is not payment.state
        or new.pending != payment.pending
        or new.refunded != payment.refunded
    )
    expected = {
        WebhookKind.AUTHORIZED: {S.AUTHORIZED},
        WebhookKind.SUCCEEDED: {S.COMPLETED},
        WebhookKind.FAILED: {S.FAILED},
        WebhookKind.CANCELED: {S.CANCELLED},
        WebhookKind.REQUIRES_ACTION: {S.REQUIRES_ACTION},
        WebhookKind.REFUND_SUCCEEDED: {S.PARTIALLY_REFUNDED, S.REFUNDED},
        WebhookKind.REFUND_FAILED: {payment.state},
    }[update.kind]
    assert new.state in expected
    if update.amount is not None and update.kind is not WebhookKind.REFUND_FAILED:
        assert update.amount.currency == USD
    # The same update again (another event id, no dedup record): a state already reached.
    again = plan_webhook(new, GW, update, T0)
    assert again.status is not WebhookStatus.APPLIED, again


def test_updates_about_another_attempt_or_reference_are_rejected() -> None:
    payment = _history(S.REQUIRES_ACTION)
    update = WebhookUpdate("e", WebhookKind.SUCCEEDED, "other_ref", payment.id, None)
    assert plan_webhook(payment, GW, update, T0).status is WebhookStatus.REJECTED
    assert plan_webhook(payment, "another-gw", update, T0).status is WebhookStatus.REJECTED


def test_money_reported_on_an_attempt_we_failed_over_from_is_rejected() -> None:
    """Attempt 1 at GW was NOT_SENT, attempt 2 at another gateway authorized the payment: a
    capture reported by GW is a would-be double charge, never applied."""
    pid, amount = "pay_plan", Money(5000, USD)
    events = [
        ev.PaymentInitiated(
            payment_id=pid, version=1, occurred_at=T0, merchant_id="m", amount=amount,
            capture_mode="manual",
        ),
        ev.PaymentProcessingStarted(
            payment_id=pid, version=2, occurred_at=T0, attempt_no=1, gateway=GW,
            idempotency_key=f"{pid}-1",
        ),
        ev.PaymentAttemptFailed(
            payment_id=pid, version=3, occurred_at=T0, attempt_no=1, outcome=ev.Outcome.NOT_SENT
        ),
        ev.PaymentProcessingStarted(
            payment_id=pid, version=4, occurred_at=T0, attempt_no=2, gateway="other",
            idempotency_key=f"{pid}-2",
        ),
        ev.PaymentAuthorized(
            payment_id=pid, version=5, occurred_at=T0, attempt_no=2, amount=amount,
            gateway_reference="other_ref",
        ),
    ]  # fmt: skip
    payment = replay(events)
    assert payment is not None and payment.state is S.AUTHORIZED
    for reference in (None, "late_ref"):
        update = WebhookUpdate("e", WebhookKind.SUCCEEDED, reference, pid, amount)
        plan = plan_webhook(payment, GW, update, T0)
        assert plan.status is WebhookStatus.REJECTED, (reference, plan)
    ours = WebhookUpdate("e", WebhookKind.SUCCEEDED, "other_ref", pid, amount)
    assert plan_webhook(payment, "other", ours, T0).status is WebhookStatus.APPLIED
