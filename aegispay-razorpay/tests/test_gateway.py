"""The adapter against the fake Razorpay: both flows, faults on every step, void, refunds."""

from __future__ import annotations

import json

import pytest
from aegispay.fake_server import Fault
from aegispay.gateways import (
    AuthorizeRequest,
    CaptureRequest,
    Gateway,
    Operation,
    Outcome,
    RefundRequest,
    StatusRequest,
    VoidRequest,
)
from aegispay.money import Money
from aegispay.webhooks import WebhookReceiver

from aegispay_razorpay.fake import FakeRazorpay
from aegispay_razorpay.gateway import RazorpayGateway

from .conftest import CUSTOMER, TOKEN, make_config

pytestmark = pytest.mark.anyio
SAVED_CARD = f"{CUSTOMER}:{TOKEN}"
INR_500 = Money(50_000, "INR")


def authorize_request(
    key: str = "pay_t1-1",
    amount: Money = INR_500,
    *,
    capture: bool = True,
    method: str | None = SAVED_CARD,
) -> AuthorizeRequest:
    return AuthorizeRequest(
        payment_id=key.split("-")[0],
        attempt_no=1,
        idempotency_key=key,
        amount=amount,
        capture=capture,
        payment_method=method,
        description="order 7",
        metadata={"order": "7", "email": "a@example.com", "contact": "+919000090000"},
    )


def status_request(request: AuthorizeRequest, reference: str | None = None) -> StatusRequest:
    return StatusRequest(
        request.payment_id, Operation.AUTHORIZE, request.idempotency_key, reference
    )


def posts(fake: FakeRazorpay, prefix: str) -> list[str]:
    return [r.path for r in fake.received() if r.method == "POST" and r.path.startswith(prefix)]


async def test_it_is_a_gateway_and_a_webhook_receiver(razorpay_gateway: RazorpayGateway) -> None:
    assert isinstance(razorpay_gateway, Gateway)
    assert isinstance(razorpay_gateway, WebhookReceiver)
    caps = razorpay_gateway.capabilities
    assert caps.manual_capture and caps.partial_refund and not caps.partial_capture
    assert "JPY" in caps.currencies and "KWD" in caps.currencies  # type: ignore[operator]


async def test_secrets_stay_out_of_reprs(
    razorpay_gateway: RazorpayGateway, razorpay_fake: FakeRazorpay
) -> None:
    for shown in (repr(razorpay_gateway), repr(razorpay_gateway.config), repr(razorpay_fake)):
        assert razorpay_fake.key_secret not in shown
        assert razorpay_fake.webhook_secret not in shown


async def test_checkout_flow_requires_action_with_what_the_client_needs(
    razorpay_gateway: RazorpayGateway, razorpay_fake: FakeRazorpay
) -> None:
    request = authorize_request(method=None)
    result = await razorpay_gateway.authorize(request)
    assert result.outcome is Outcome.REQUIRES_ACTION, result
    order_id = result.reference
    assert order_id is not None and order_id.startswith("order_")
    assert result.next_action == {
        "type": "razorpay_checkout",
        "order_id": order_id,
        "key_id": razorpay_fake.key_id,
        "amount": "50000",
        "currency": "INR",
    }
    order = razorpay_fake.order(order_id)
    assert order["receipt"] == request.idempotency_key
    assert order["notes"]["aegispay_payment_id"] == request.payment_id
    assert order["notes"]["order"] == "7"  # merchant metadata travels as notes
    # A repeat finds the order: no second one.
    again = await razorpay_gateway.authorize(request)
    assert again.reference == order_id and len(posts(razorpay_fake, "/v1/orders")) == 1

    declined = razorpay_fake.pay_checkout(order_id, decline="card_declined")
    assert declined["error_reason"] == "card_declined"
    still = await razorpay_gateway.get_status(status_request(request))
    assert still.outcome is Outcome.REQUIRES_ACTION, "a failed attempt leaves the order payable"

    callback = razorpay_fake.pay_checkout(order_id)
    assert razorpay_gateway.verify_checkout(
        order_id, callback["razorpay_payment_id"], callback["razorpay_signature"]
    )
    assert not razorpay_gateway.verify_checkout(
        "order_SomeoneElse", callback["razorpay_payment_id"], callback["razorpay_signature"]
    )
    done = await razorpay_gateway.get_status(status_request(request, order_id))
    assert (done.outcome, done.reference, done.captured) == (Outcome.SUCCEEDED, order_id, True)
    assert razorpay_fake.charges() == 1


async def test_token_charge_sends_basic_auth_json_and_notes(
    razorpay_gateway: RazorpayGateway, razorpay_fake: FakeRazorpay
) -> None:
    result = await razorpay_gateway.authorize(authorize_request())
    assert (result.outcome, result.captured) == (Outcome.SUCCEEDED, True)
    charge = next(r for r in razorpay_fake.received() if r.path.endswith("/create/recurring"))
    assert charge.headers["authorization"].startswith("Basic ")
    body = json.loads(charge.body)
    assert body["token"] == TOKEN and body["customer_id"] == CUSTOMER
    assert body["recurring"] == "1" and body["amount"] == 50_000
    assert body["email"] == "a@example.com" and body["description"] == "order 7"
    assert body["notes"]["aegispay_payment_id"] == "pay_t1"


async def test_a_token_without_its_customer_is_refused_before_any_call(
    razorpay_gateway: RazorpayGateway, razorpay_fake: FakeRazorpay
) -> None:
    result = await razorpay_gateway.authorize(authorize_request(method=TOKEN))
    assert (result.outcome, result.decline_code) == (Outcome.DECLINED, "customer_required")
    assert razorpay_fake.received() == []


@pytest.mark.parametrize(
    ("amount", "currencies"),
    [(Money(12_345, "KWD"), None), (Money(1_000, "XOF"), None), (Money(1_000, "USD"), ("INR",))],
)
async def test_amounts_razorpay_cannot_take_fail_over_without_a_call(
    razorpay_fake: FakeRazorpay, amount: Money, currencies: tuple[str, ...] | None
) -> None:
    gateway = RazorpayGateway(make_config(razorpay_fake, currencies=currencies))
    try:
        result = await gateway.authorize(authorize_request(amount=amount))
    finally:
        await gateway.aclose()
    assert result.outcome is Outcome.DECLINED and result.retryable_elsewhere, result
    assert razorpay_fake.received() == []


async def test_a_currency_the_account_lacks_is_declined_retryable_elsewhere() -> None:
    with FakeRazorpay(currencies=frozenset({"INR"})) as fake:
        gateway = RazorpayGateway(make_config(fake))
        try:
            result = await gateway.authorize(authorize_request(amount=Money(1_000, "USD")))
        finally:
            await gateway.aclose()
    assert result.outcome is Outcome.DECLINED and result.retryable_elsewhere, result


async def test_wrong_keys_are_declined_for_this_gateway_only(razorpay_fake: FakeRazorpay) -> None:
    gateway = RazorpayGateway(make_config(razorpay_fake, key_secret="not_the_secret_at_all"))
    try:
        result = await gateway.authorize(authorize_request())
    finally:
        await gateway.aclose()
    assert (result.outcome, result.decline_code) == (Outcome.DECLINED, "authentication_failed")
    assert result.retryable_elsewhere
    assert "not_the_secret_at_all" not in result.message


@pytest.mark.parametrize("fault", [Fault.ERROR_500, Fault.DROP_BEFORE_PROCESSING])
async def test_order_not_created_is_unknown_then_not_sent(
    razorpay_gateway: RazorpayGateway, razorpay_fake: FakeRazorpay, fault: Fault
) -> None:
    request = authorize_request()
    razorpay_fake.inject(fault, method="POST", path_prefix="/v1/orders")
    assert (await razorpay_gateway.authorize(request)).outcome is Outcome.UNKNOWN
    assert (await razorpay_gateway.get_status(status_request(request))).outcome is Outcome.NOT_SENT


@pytest.mark.parametrize("fault", [Fault.DROP_AFTER_PROCESSING, Fault.TIMEOUT_AFTER_PROCESSING])
async def test_order_created_but_unanswered_is_reused_by_the_retry(
    razorpay_gateway: RazorpayGateway, razorpay_fake: FakeRazorpay, fault: Fault
) -> None:
    request = authorize_request()
    razorpay_fake.inject(fault, method="POST", path_prefix="/v1/orders")
    assert (await razorpay_gateway.authorize(request)).outcome is Outcome.UNKNOWN
    found = await razorpay_gateway.get_status(status_request(request))
    # The order exists, the charge was never made: nothing moved, the attempt may go elsewhere.
    assert found.outcome is Outcome.NOT_SENT and found.reference, found
    again = await razorpay_gateway.authorize(request)
    assert (again.outcome, again.reference) == (Outcome.SUCCEEDED, found.reference)
    assert len(posts(razorpay_fake, "/v1/orders")) == 1
    assert razorpay_fake.charges() == 1


async def test_a_charge_whose_status_cannot_be_read_is_unknown_never_not_sent(
    razorpay_gateway: RazorpayGateway, razorpay_fake: FakeRazorpay
) -> None:
    request = authorize_request()
    razorpay_fake.inject(Fault.RATE_LIMITED, method="GET", path_prefix="/v1/payments/")
    result = await razorpay_gateway.authorize(request)
    assert result.outcome is Outcome.UNKNOWN, result
    assert razorpay_fake.charges() == 1
    found = await razorpay_gateway.get_status(status_request(request))
    assert (found.outcome, found.captured) == (Outcome.SUCCEEDED, True)


async def test_a_failed_lookup_is_unknown_not_not_sent(
    razorpay_gateway: RazorpayGateway, razorpay_fake: FakeRazorpay
) -> None:
    razorpay_fake.inject(Fault.RATE_LIMITED, method="GET", retry_after_s=3)
    found = await razorpay_gateway.get_status(status_request(authorize_request()))
    assert found.outcome is Outcome.UNKNOWN, found


async def test_rate_limit_on_the_first_look_up_is_not_sent(
    razorpay_gateway: RazorpayGateway, razorpay_fake: FakeRazorpay
) -> None:
    razorpay_fake.inject(Fault.RATE_LIMITED, method="GET", retry_after_s=3)
    result = await razorpay_gateway.authorize(authorize_request())
    assert (result.outcome, result.retry_after_s) == (Outcome.NOT_SENT, 3)


async def test_capture_is_full_only_and_refused_after_void(
    razorpay_gateway: RazorpayGateway, razorpay_fake: FakeRazorpay
) -> None:
    request = authorize_request(capture=False)
    auth = await razorpay_gateway.authorize(request)
    assert (auth.outcome, auth.captured) == (Outcome.SUCCEEDED, False)
    partial = CaptureRequest("pay_t1", "pay_t1-capture-1", auth.reference, Money(20_000, "INR"))
    refused = await razorpay_gateway.capture(partial)
    assert refused.decline_code == "partial_capture_not_supported"
    assert posts(razorpay_fake, "/v1/payments/") == ["/v1/payments/create/recurring"]

    void = VoidRequest("pay_t1", "pay_t1-void-2", auth.reference)
    assert (await razorpay_gateway.void(void)).outcome is Outcome.SUCCEEDED
    assert (await razorpay_gateway.void(void)).outcome is Outcome.SUCCEEDED  # idempotent
    voided = await razorpay_gateway.get_status(
        StatusRequest("pay_t1", Operation.VOID, "pay_t1-void-2", auth.reference)
    )
    assert voided.outcome is Outcome.SUCCEEDED
    full = CaptureRequest("pay_t1", "pay_t1-capture-3", auth.reference, Money(50_000, "INR"))
    late = await razorpay_gateway.capture(full)
    assert (late.outcome, late.decline_code) == (Outcome.DECLINED, "voided")
    assert razorpay_fake.charges() == 0


async def test_void_of_a_captured_payment_is_declined(
    razorpay_gateway: RazorpayGateway,
) -> None:
    auth = await razorpay_gateway.authorize(authorize_request())
    result = await razorpay_gateway.void(VoidRequest("pay_t1", "pay_t1-void-2", auth.reference))
    assert (result.outcome, result.decline_code) == (Outcome.DECLINED, "already_captured")


async def test_void_of_an_unpaid_checkout_order_stops_a_later_capture(
    razorpay_gateway: RazorpayGateway, razorpay_fake: FakeRazorpay
) -> None:
    auth = await razorpay_gateway.authorize(authorize_request(capture=False, method=None))
    assert auth.reference is not None
    result = await razorpay_gateway.void(VoidRequest("pay_t1", "pay_t1-void-2", auth.reference))
    assert result.outcome is Outcome.SUCCEEDED
    assert "aegispay_voided" in razorpay_fake.order(auth.reference)["notes"]
    razorpay_fake.pay_checkout(auth.reference)  # the customer pays anyway
    late = await razorpay_gateway.capture(
        CaptureRequest("pay_t1", "pay_t1-capture-3", auth.reference, Money(50_000, "INR"))
    )
    assert late.decline_code == "voided" and razorpay_fake.charges() == 0


async def test_capture_status_and_repeat(
    razorpay_gateway: RazorpayGateway, razorpay_fake: FakeRazorpay
) -> None:
    auth = await razorpay_gateway.authorize(authorize_request(capture=False))
    capture = CaptureRequest("pay_t1", "pay_t1-capture-2", auth.reference, Money(50_000, "INR"))
    lookup = StatusRequest("pay_t1", Operation.CAPTURE, "pay_t1-capture-2", auth.reference)
    assert (await razorpay_gateway.get_status(lookup)).outcome is Outcome.NOT_SENT
    razorpay_fake.inject(Fault.DROP_AFTER_PROCESSING, method="POST", path_prefix="/v1/payments/")
    assert (await razorpay_gateway.capture(capture)).outcome is Outcome.UNKNOWN
    assert (await razorpay_gateway.get_status(lookup)).outcome is Outcome.SUCCEEDED
    assert (await razorpay_gateway.capture(capture)).outcome is Outcome.SUCCEEDED
    assert razorpay_fake.charges() == 1


async def test_refund_uses_the_idempotency_header_and_replays(
    razorpay_gateway: RazorpayGateway, razorpay_fake: FakeRazorpay
) -> None:
    auth = await razorpay_gateway.authorize(authorize_request())
    key = "pay_t1-refund-1"
    refund = RefundRequest("pay_t1", key, auth.reference, Money(10_000, "INR"), "damaged")
    lookup = StatusRequest("pay_t1", Operation.REFUND, key, auth.reference)
    assert (await razorpay_gateway.get_status(lookup)).outcome is Outcome.NOT_SENT

    razorpay_fake.inject(Fault.TIMEOUT_AFTER_PROCESSING, method="POST", path_prefix="/v1/payments/")
    assert (await razorpay_gateway.refund(refund)).outcome is Outcome.UNKNOWN
    found = await razorpay_gateway.get_status(lookup)
    assert found.outcome is Outcome.SUCCEEDED and found.reference, found
    again = await razorpay_gateway.refund(refund)
    assert (again.outcome, again.reference) == (Outcome.SUCCEEDED, found.reference)
    sent = [r for r in razorpay_fake.received() if r.path.endswith("/refund")]
    assert {r.headers["x-refund-idempotency"] for r in sent} == {key}
    payment = razorpay_fake.payment(sent[0].path.split("/")[3])
    assert payment["amount_refunded"] == 10_000  # refunded once

    changed = RefundRequest("pay_t1", key, auth.reference, Money(20_000, "INR"), "damaged")
    mismatch = await razorpay_gateway.refund(changed)
    assert (mismatch.outcome, mismatch.decline_code) == (Outcome.DECLINED, "idempotency_key_reused")

    razorpay_fake.simulate_in_flight("pay_t1-refund-2")
    busy = RefundRequest("pay_t1", "pay_t1-refund-2", auth.reference, Money(100, "INR"))
    assert (await razorpay_gateway.refund(busy)).outcome is Outcome.UNKNOWN
    razorpay_fake.finish_in_flight("pay_t1-refund-2")
    assert (await razorpay_gateway.refund(busy)).outcome is Outcome.SUCCEEDED


async def test_refund_of_an_uncaptured_payment_is_declined(
    razorpay_gateway: RazorpayGateway,
) -> None:
    auth = await razorpay_gateway.authorize(authorize_request(capture=False))
    result = await razorpay_gateway.refund(
        RefundRequest("pay_t1", "pay_t1-refund-1", auth.reference, Money(100, "INR"))
    )
    assert (result.outcome, result.decline_code) == (Outcome.DECLINED, "not_captured")


async def test_long_keys_become_a_stable_receipt(
    razorpay_gateway: RazorpayGateway, razorpay_fake: FakeRazorpay
) -> None:
    request = authorize_request(key="pay_" + "x" * 60 + "-1")
    first = await razorpay_gateway.authorize(request)
    again = await razorpay_gateway.authorize(request)
    assert first.reference == again.reference
    receipt = razorpay_fake.order(str(first.reference))["receipt"]
    assert len(receipt) <= 40 and receipt != request.idempotency_key
    assert razorpay_fake.charges() == 1


async def test_a_refused_lookup_is_unknown_not_declined(
    razorpay_gateway: RazorpayGateway,
) -> None:
    request = authorize_request()
    found = await razorpay_gateway.get_status(status_request(request, "order_DoesNotExist0"))
    assert found.outcome is Outcome.UNKNOWN, found


async def test_an_order_razorpay_refuses_may_fail_over(razorpay_gateway: RazorpayGateway) -> None:
    # Below Razorpay's minimum order amount: refused before any payment exists, so the
    # refusal is this gateway's, not the customer's bank's.
    result = await razorpay_gateway.authorize(authorize_request(amount=Money(50, "INR")))
    assert result.outcome is Outcome.DECLINED
    assert result.retryable_elsewhere
    assert "minimum" in result.message
