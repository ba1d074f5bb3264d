"""The adapter against the fake Stripe over real HTTP: what goes on the wire, what comes back."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from aegispay.fake_server import Fault
from aegispay.gateways import (
    AuthorizeRequest,
    CaptureRequest,
    Operation,
    Outcome,
    RefundRequest,
    StatusRequest,
    VoidRequest,
)
from aegispay.money import Money

from aegispay_stripe.fake import FakeStripe
from aegispay_stripe.gateway import IDEMPOTENCY_KEY_META, StripeGateway, stripe_idempotency_key

from .conftest import make_config

pytestmark = pytest.mark.anyio


def authorize(
    amount: Money, *, capture: bool = True, key: str = "pay_1-1", **extra: object
) -> AuthorizeRequest:
    return AuthorizeRequest(
        payment_id=key.rsplit("-", 1)[0],
        attempt_no=1,
        idempotency_key=key,
        amount=amount,
        capture=capture,
        **extra,  # type: ignore[arg-type]
    )


def last_post(fake: FakeStripe) -> tuple[dict[str, str], dict[str, str]]:
    request = [r for r in fake.received() if r.method == "POST"][-1]
    return dict(request.headers), dict(parse_qsl(request.body.decode()))


async def test_authorize_sends_a_form_encoded_payment_intent(
    stripe_gateway: StripeGateway, stripe_fake: FakeStripe
) -> None:
    result = await stripe_gateway.authorize(
        authorize(
            Money(1999, "USD"),
            capture=False,
            customer_id="cus_42",
            reference="order-7",
            description="two books",
            metadata={"order": "7"},
        )
    )
    assert result.outcome is Outcome.SUCCEEDED and result.captured is False
    assert result.reference is not None and result.reference.startswith("pi_")
    headers, form = last_post(stripe_fake)
    assert headers["authorization"] == f"Bearer {stripe_fake.secret_key}"
    assert headers["idempotency-key"] == "pay_1-1"
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert form["amount"] == "1999"
    assert form["currency"] == "usd"
    assert form["capture_method"] == "manual"
    assert form["confirm"] == "true"
    assert form["payment_method"] == "pm_card_visa"
    assert form["payment_method_types[0]"] == "card"
    assert form["metadata[order]"] == "7"
    assert form["metadata[aegispay_payment_id]"] == "pay_1"
    assert form["metadata[aegispay_customer_id]"] == "cus_42"
    assert form["metadata[aegispay_reference]"] == "order-7"
    assert form["metadata[aegispay_idempotency_key]"] == "pay_1-1"
    assert "return_url" not in form  # None values are left out, never sent as "None"
    assert stripe_fake.intent(result.reference)["status"] == "requires_capture"


@pytest.mark.parametrize(
    ("amount", "wire"),
    [
        (Money(1999, "USD"), "1999"),
        (Money(500, "JPY"), "500"),
        (Money(5120, "KWD"), "5120"),
        (Money(7, "ISK"), "700"),  # ISK: zero decimals in ISO, two at Stripe
        (Money(300, "MGA"), "3"),  # MGA: two decimals in ISO, zero at Stripe
    ],
)
async def test_amounts_on_the_wire(
    stripe_gateway: StripeGateway, stripe_fake: FakeStripe, amount: Money, wire: str
) -> None:
    result = await stripe_gateway.authorize(authorize(amount))
    assert result.outcome is Outcome.SUCCEEDED, result
    _, form = last_post(stripe_fake)
    assert form["amount"] == wire
    assert result.reference is not None
    assert stripe_fake.amount_of(result.reference) == (amount.minor, amount.currency)


@pytest.mark.parametrize("amount", [Money(5125, "KWD"), Money(150, "MGA")])
async def test_an_amount_stripe_cannot_take_exactly_is_refused_before_sending(
    stripe_gateway: StripeGateway, stripe_fake: FakeStripe, amount: Money
) -> None:
    result = await stripe_gateway.authorize(authorize(amount))
    assert result.outcome is Outcome.DECLINED
    assert result.decline_code == "amount_not_supported"
    assert result.retryable_elsewhere is True  # another gateway may take it
    assert amount.currency in result.message
    assert stripe_fake.received() == []


async def test_bank_decline_keeps_the_decline_code_and_the_reference(
    stripe_gateway: StripeGateway, stripe_fake: FakeStripe
) -> None:
    result = await stripe_gateway.authorize(
        authorize(Money(1000, "EUR"), payment_method="pm_card_chargeDeclinedInsufficientFunds")
    )
    assert result.outcome is Outcome.DECLINED
    assert result.decline_code == "insufficient_funds"
    assert result.retryable_elsewhere is False
    assert result.reference is not None
    assert "card_error" in result.message and "request req_" in result.message
    # A decline is saved under the key: the same request replays the same decline.
    again = await stripe_gateway.authorize(
        authorize(Money(1000, "EUR"), payment_method="pm_card_chargeDeclinedInsufficientFunds")
    )
    assert (again.outcome, again.decline_code, again.reference) == (
        result.outcome,
        result.decline_code,
        result.reference,
    )
    assert len(stripe_fake.events("payment_intent.created")) == 1  # replayed, not re-run
    assert stripe_fake.intent(result.reference)["status"] == "requires_payment_method"
    assert stripe_fake.charges() == 0


async def test_three_d_secure_redirect_gives_the_client_what_it_needs(
    stripe_fake: FakeStripe,
) -> None:
    adapter = StripeGateway(make_config(stripe_fake, return_url="https://shop.example/back"))
    try:
        result = await adapter.authorize(
            authorize(Money(2500, "GBP"), payment_method="pm_card_authenticationRequired")
        )
        assert result.outcome is Outcome.REQUIRES_ACTION
        assert result.next_action is not None and result.reference is not None
        assert result.next_action["type"] == "redirect_to_url"
        assert result.next_action["url"].endswith(f"/3ds/{result.reference}")
        assert result.next_action["client_secret"].startswith(f"{result.reference}_secret_")
        _, form = last_post(stripe_fake)
        assert form["return_url"] == "https://shop.example/back"
        stripe_fake.complete_action(result.reference)
        status = await adapter.get_status(
            StatusRequest("pay_1", Operation.AUTHORIZE, "pay_1-1", result.reference)
        )
        assert (status.outcome, status.captured) == (Outcome.SUCCEEDED, True)
    finally:
        await adapter.aclose()


async def test_without_a_payment_method_the_client_collects_one(
    stripe_fake: FakeStripe,
) -> None:
    adapter = StripeGateway(make_config(stripe_fake, default_payment_method=None))
    try:
        result = await adapter.authorize(authorize(Money(1000, "USD")))
        assert result.outcome is Outcome.REQUIRES_ACTION
        assert result.next_action is not None
        assert result.next_action["type"] == "collect_payment_method"
        assert "client_secret" in result.next_action
        _, form = last_post(stripe_fake)
        assert "confirm" not in form and "payment_method" not in form
    finally:
        await adapter.aclose()


async def test_a_failed_3ds_then_lookup_is_declined(
    stripe_gateway: StripeGateway, stripe_fake: FakeStripe
) -> None:
    stripe_fake.require_action_next()
    result = await stripe_gateway.authorize(authorize(Money(1000, "USD")))
    assert result.outcome is Outcome.REQUIRES_ACTION and result.reference
    stripe_fake.fail_action(result.reference)
    status = await stripe_gateway.get_status(
        StatusRequest("pay_1", Operation.AUTHORIZE, "pay_1-1", result.reference)
    )
    assert status.outcome is Outcome.DECLINED
    assert status.decline_code == "authentication_failure"


async def test_a_key_in_use_elsewhere_is_unknown(
    stripe_gateway: StripeGateway, stripe_fake: FakeStripe
) -> None:
    with stripe_fake.hold_key("pay_1-1"):
        result = await stripe_gateway.authorize(authorize(Money(1000, "USD")))
    assert result.outcome is Outcome.UNKNOWN  # the other request may still charge
    assert stripe_fake.charges() == 0


async def test_a_wrong_api_key_is_refused_and_never_echoed(stripe_fake: FakeStripe) -> None:
    wrong = "sk_test_wrong_key_0123456789abcdef"
    adapter = StripeGateway(make_config(stripe_fake, secret_key=wrong))
    try:
        result = await adapter.authorize(authorize(Money(1000, "USD")))
    finally:
        await adapter.aclose()
    assert result.outcome is Outcome.DECLINED
    assert result.retryable_elsewhere is True  # this account, not the payment, is the problem
    assert result.decline_code == "api_key_invalid"
    assert wrong not in result.message and wrong not in repr(adapter)
    assert stripe_fake.secret_key not in repr(adapter.config)


async def test_rate_limit_carries_retry_after(
    stripe_gateway: StripeGateway, stripe_fake: FakeStripe
) -> None:
    stripe_fake.inject(Fault.RATE_LIMITED, retry_after_s=3)
    result = await stripe_gateway.authorize(authorize(Money(1000, "USD")))
    assert (result.outcome, result.retry_after_s) == (Outcome.NOT_SENT, 3.0)


async def test_latency_within_the_timeout_is_fine(
    stripe_gateway: StripeGateway, stripe_fake: FakeStripe
) -> None:
    stripe_fake.inject(Fault.LATENCY, latency_s=0.05)
    result = await stripe_gateway.authorize(authorize(Money(1000, "USD")))
    assert result.outcome is Outcome.SUCCEEDED


async def test_a_long_idempotency_key_is_digested_stably(
    stripe_gateway: StripeGateway, stripe_fake: FakeStripe
) -> None:
    key = "pay_long-" + "x" * 300
    result = await stripe_gateway.authorize(authorize(Money(1000, "USD"), key=key))
    headers, form = last_post(stripe_fake)
    sent = headers["idempotency-key"]
    assert len(sent) <= 255 and sent == stripe_idempotency_key(key)
    assert form[f"metadata[{IDEMPOTENCY_KEY_META}]"] == sent
    found = await stripe_gateway.get_status(StatusRequest("p", Operation.AUTHORIZE, key))
    assert found.reference == result.reference


async def test_partial_capture_then_refunds_with_lookups(
    stripe_gateway: StripeGateway, stripe_fake: FakeStripe
) -> None:
    auth = await stripe_gateway.authorize(authorize(Money(10_000, "USD"), capture=False))
    reference = auth.reference
    assert reference is not None
    capture_key = "pay_1-capture"
    not_yet = await stripe_gateway.get_status(
        StatusRequest("pay_1", Operation.CAPTURE, capture_key, reference)
    )
    assert not_yet.outcome is Outcome.NOT_SENT  # retrieval is consistent: not captured
    captured = await stripe_gateway.capture(
        CaptureRequest("pay_1", capture_key, reference, Money(6000, "USD"))
    )
    assert (captured.outcome, captured.captured) == (Outcome.SUCCEEDED, True)
    _, form = last_post(stripe_fake)
    assert form == {"amount_to_capture": "6000"}
    assert stripe_fake.intent(reference)["amount_received"] == 6000
    done = await stripe_gateway.get_status(
        StatusRequest("pay_1", Operation.CAPTURE, capture_key, reference)
    )
    assert done.outcome is Outcome.SUCCEEDED

    refund = RefundRequest("pay_1", "pay_1-refund-1", reference, Money(1000, "USD"), "customer")
    missing = await stripe_gateway.get_status(
        StatusRequest("pay_1", Operation.REFUND, refund.idempotency_key, reference)
    )
    assert missing.outcome is Outcome.NOT_SENT
    refunded = await stripe_gateway.refund(refund)
    assert refunded.outcome is Outcome.SUCCEEDED
    assert refunded.reference is not None and refunded.reference.startswith("re_")
    _, form = last_post(stripe_fake)
    assert "reason" not in form  # not one of Stripe's reasons: kept in metadata instead
    assert form["metadata[aegispay_reason]"] == "customer"
    found = await stripe_gateway.get_status(
        StatusRequest("pay_1", Operation.REFUND, refund.idempotency_key, reference)
    )
    assert (found.outcome, found.reference) == (Outcome.SUCCEEDED, refunded.reference)

    too_much = await stripe_gateway.refund(
        RefundRequest("pay_1", "pay_1-refund-2", reference, Money(5001, "USD"))
    )
    assert (too_much.outcome, too_much.decline_code) == (Outcome.DECLINED, "amount_too_large")
    assert too_much.retryable_elsewhere is False


async def test_refund_lookup_follows_pagination(
    stripe_gateway: StripeGateway, stripe_fake: FakeStripe
) -> None:
    auth = await stripe_gateway.authorize(authorize(Money(50_000, "USD")))
    assert auth.reference is not None
    for n in range(105):  # more than one page of 100
        result = await stripe_gateway.refund(
            RefundRequest("pay_1", f"pay_1-refund-{n}", auth.reference, Money(100, "USD"))
        )
        assert result.outcome is Outcome.SUCCEEDED
    oldest = await stripe_gateway.get_status(
        StatusRequest("pay_1", Operation.REFUND, "pay_1-refund-0", auth.reference)
    )
    assert oldest.outcome is Outcome.SUCCEEDED
    pages = [r for r in stripe_fake.received() if r.method == "GET" and r.path == "/v1/refunds"]
    assert len(pages) == 2 and pages[1].query["starting_after"].startswith("re_")


async def test_a_pending_refund_is_pending_until_it_settles(
    stripe_gateway: StripeGateway, stripe_fake: FakeStripe
) -> None:
    auth = await stripe_gateway.authorize(authorize(Money(1000, "USD")))
    assert auth.reference is not None
    stripe_fake.refund_pending_next()
    request = RefundRequest("pay_1", "pay_1-refund-1", auth.reference, Money(1000, "USD"))
    pending = await stripe_gateway.refund(request)
    assert pending.outcome is Outcome.PENDING and pending.reference is not None
    stripe_fake.settle_refund(pending.reference, succeeded=False)
    lookup = StatusRequest("pay_1", Operation.REFUND, request.idempotency_key, auth.reference)
    failed = await stripe_gateway.get_status(lookup)
    assert failed.outcome is Outcome.DECLINED
    assert failed.decline_code == "lost_or_stolen_card"


async def test_void_then_lookups(stripe_gateway: StripeGateway, stripe_fake: FakeStripe) -> None:
    auth = await stripe_gateway.authorize(authorize(Money(1000, "USD"), capture=False))
    assert auth.reference is not None
    lookup = StatusRequest("pay_1", Operation.VOID, "pay_1-void", auth.reference)
    assert (await stripe_gateway.get_status(lookup)).outcome is Outcome.NOT_SENT
    voided = await stripe_gateway.void(VoidRequest("pay_1", "pay_1-void", auth.reference))
    assert voided.outcome is Outcome.SUCCEEDED
    assert (await stripe_gateway.get_status(lookup)).outcome is Outcome.SUCCEEDED
    status = await stripe_gateway.get_status(
        StatusRequest("pay_1", Operation.AUTHORIZE, "pay_1-1", auth.reference)
    )
    assert (status.outcome, status.decline_code) == (Outcome.DECLINED, "payment_intent_canceled")


async def test_operations_without_a_reference_send_nothing(
    stripe_gateway: StripeGateway, stripe_fake: FakeStripe
) -> None:
    amount = Money(100, "USD")
    results = [
        await stripe_gateway.capture(CaptureRequest("p", "k1", None, amount)),
        await stripe_gateway.void(VoidRequest("p", "k2", None)),
        await stripe_gateway.refund(RefundRequest("p", "k3", None, amount)),
    ]
    assert {r.decline_code for r in results} == {"no_such_authorization"}
    assert stripe_fake.received() == []


async def test_unknown_payment_intent_is_declined_not_retried_elsewhere(
    stripe_gateway: StripeGateway,
) -> None:
    result = await stripe_gateway.capture(
        CaptureRequest("p", "k", "pi_doesnotexist", Money(100, "USD"))
    )
    assert (result.outcome, result.decline_code) == (Outcome.DECLINED, "resource_missing")
    assert result.retryable_elsewhere is False


async def test_a_failed_lookup_is_never_not_sent(
    stripe_gateway: StripeGateway, stripe_fake: FakeStripe
) -> None:
    stripe_fake.inject(Fault.RATE_LIMITED, method="GET")
    result = await stripe_gateway.get_status(StatusRequest("p", Operation.AUTHORIZE, "k"))
    assert result.outcome is Outcome.UNKNOWN  # NOT_SENT would let the engine fail over
    missing = await stripe_gateway.get_status(
        StatusRequest("p", Operation.AUTHORIZE, "k", "pi_doesnotexist")
    )
    assert missing.outcome is Outcome.UNKNOWN


async def test_the_pool_is_reused_and_closed(
    stripe_gateway: StripeGateway, stripe_fake: FakeStripe
) -> None:
    await stripe_gateway.authorize(authorize(Money(100, "USD"), key="pay_0-1"))
    client = stripe_gateway._client
    assert client is not None
    for n in range(1, 4):
        await stripe_gateway.authorize(authorize(Money(100, "USD"), key=f"pay_{n}-1"))
        assert stripe_gateway._client is client  # one pool per event loop, not per call
    await stripe_gateway.aclose()
    assert client.is_closed
    await stripe_gateway.aclose()  # idempotent
    assert (await stripe_gateway.authorize(authorize(Money(100, "USD")))).reference


def test_capabilities_and_repr(stripe_fake: FakeStripe) -> None:
    adapter = StripeGateway(make_config(stripe_fake, currencies=("USD", "JPY")))
    caps = adapter.capabilities
    assert caps.currencies == frozenset({"USD", "JPY"}) == adapter.supported_currencies
    assert caps.manual_capture and caps.partial_capture and caps.partial_refund
    assert caps.idempotent_create and caps.webhooks
    assert caps.authoritative_status is False
    text = repr(adapter) + repr(adapter.config)
    assert stripe_fake.secret_key not in text and stripe_fake.webhook_secret not in text
