"""End to end, as a user runs it: keys in configuration, the plugin registers the gateway, a
service takes, captures and refunds payments against the fake and applies its webhooks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aegispay.money import Money
from aegispay.requests import PaymentRequest
from aegispay.settings import load_settings
from aegispay.states import PaymentState
from aegispay.testing import make_test_service
from aegispay.webhooks import WebhookStatus

from aegispay_razorpay import plugin
from aegispay_razorpay.fake import FakeRazorpay

from .conftest import CUSTOMER, TOKEN

pytestmark = pytest.mark.anyio


@pytest.fixture
async def service(razorpay_fake: FakeRazorpay) -> AsyncIterator[Any]:
    env = {
        "AEGISPAY_PLUGINS__RAZORPAY__KEY_ID": razorpay_fake.key_id,
        "AEGISPAY_PLUGINS__RAZORPAY__KEY_SECRET": razorpay_fake.key_secret,
        "AEGISPAY_PLUGINS__RAZORPAY__WEBHOOK_SECRET": razorpay_fake.webhook_secret,
        "AEGISPAY_PLUGINS__RAZORPAY__BASE_URL": razorpay_fake.base_url,
        "AEGISPAY_PLUGINS__RAZORPAY__READ_TIMEOUT_S": "2",
    }
    built = make_test_service(
        plugins=[plugin],
        gateways=[],
        builtins=("validation", "priority_routing"),
        settings=load_settings(path=None, env=env),
    )
    try:
        assert list(built.gateways) == ["razorpay"]
        yield built
    finally:
        await built.aclose()
        await built.gateways["razorpay"].aclose()


async def deliver(service: Any, fake: FakeRazorpay, since: int) -> list[WebhookStatus]:
    """Hand every webhook the fake produced after ``since`` to the service, as Razorpay POSTs
    them (header names lower-cased by the web server)."""
    statuses = []
    for headers, body in fake.events()[since:]:
        lowered = {name.lower(): value for name, value in headers.items()}
        statuses.append((await service.handle_webhook("razorpay", lowered, body)).status)
    return statuses


async def test_checkout_payment_completed_by_webhooks_then_refunded(
    service: Any, razorpay_fake: FakeRazorpay
) -> None:
    amount = Money.of("500.00", "INR")
    payment = await service.pay(PaymentRequest(amount, reference="order-7"), idempotency_key="o7")
    assert payment.state is PaymentState.REQUIRES_ACTION
    order_id = payment.gateway_reference
    assert payment.next_action["order_id"] == order_id

    razorpay_fake.pay_checkout(order_id)  # the customer pays in Checkout
    statuses = await deliver(service, razorpay_fake, 0)
    assert WebhookStatus.APPLIED in statuses and WebhookStatus.REJECTED not in statuses
    done = await service.get_payment(payment.id)
    assert done.state is PaymentState.COMPLETED and done.captured == amount
    # Razorpay redelivers: nothing is applied twice.
    redelivered = await deliver(service, razorpay_fake, 0)
    assert WebhookStatus.DUPLICATE in redelivered
    assert set(redelivered) <= {WebhookStatus.DUPLICATE, WebhookStatus.IGNORED}
    assert (await service.get_payment(payment.id)).version == done.version

    seen = len(razorpay_fake.events())
    refunded = await service.refund(payment.id, Money.of("125.50", "INR"))
    assert refunded.state is PaymentState.PARTIALLY_REFUNDED
    assert WebhookStatus.REJECTED not in await deliver(service, razorpay_fake, seen)
    assert razorpay_fake.charges() == 1


async def test_saved_card_authorized_captured_and_refunded_in_full(
    service: Any, razorpay_fake: FakeRazorpay
) -> None:
    amount = Money.of("12.340", "KWD")
    request = PaymentRequest(amount, payment_method=f"{CUSTOMER}:{TOKEN}", capture_mode="manual")
    payment = await service.pay(request, idempotency_key="k-1")
    assert payment.state is PaymentState.AUTHORIZED, payment
    assert razorpay_fake.charges() == 0
    again = await service.pay(request, idempotency_key="k-1")
    assert again.id == payment.id
    captured = await service.capture(payment.id)
    assert captured.state is PaymentState.COMPLETED
    assert razorpay_fake.amount_of(payment.gateway_reference) == (12_340, "KWD")
    refunded = await service.refund(payment.id)
    assert refunded.state is PaymentState.REFUNDED
    assert razorpay_fake.charges() == 1
    assert WebhookStatus.REJECTED not in await deliver(service, razorpay_fake, 0)
