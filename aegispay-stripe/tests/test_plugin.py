"""The installed plugin: entry point, configuration, and a whole payment through a service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib.metadata import entry_points
from typing import Any

import pytest
from aegispay import PaymentRequest, PaymentState, build_service
from aegispay.errors import ConfigError
from aegispay.gateways import Gateway
from aegispay.money import Money
from aegispay.service import PaymentService
from aegispay.settings import PluginConfig, settings_from_dict
from aegispay.webhooks import WebhookKind, WebhookSignatureError

from aegispay_stripe import plugin
from aegispay_stripe.fake import FakeStripe
from aegispay_stripe.gateway import StripeGateway


def registered(sections: dict[str, Any]) -> list[Gateway]:
    gateways: list[Gateway] = []
    plugin.aegispay_register_gateways(register=gateways.append, config=PluginConfig(sections))
    return gateways


def test_the_entry_point_names_the_plugin_module() -> None:
    (found,) = [e for e in entry_points(group="aegispay") if e.name == "stripe"]
    assert found.value == "aegispay_stripe.plugin"
    assert found.load() is plugin


def test_unconfigured_registers_nothing() -> None:
    assert registered({}) == []
    assert registered({"other": {"x": 1}}) == []


def test_configured_registers_one_gateway() -> None:
    (gateway,) = registered(
        {"stripe": {"secret_key": "sk_test_1", "name": "stripe-eu", "currencies": ["EUR"]}}
    )
    assert isinstance(gateway, StripeGateway)
    assert gateway.name == "stripe-eu"
    assert gateway.supported_currencies == frozenset({"EUR"})


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({}, "secret_key"),
        ({"secret_key": "pk_live_oops_public_key"}, "secret_key"),
        ({"secret_key": "sk_test_1", "read_timeout_s": 0}, "read_timeout_s"),
        ({"secret_key": "sk_test_1", "base_url": "http://api.example.com"}, "base_url"),
        ({"secret_key": "sk_test_1", "currencies": ["XTS"]}, "currencies"),
        ({"secret_key": "sk_test_1", "colour": "blue"}, "colour"),
    ],
)
def test_bad_configuration_names_the_key_and_hides_secrets(
    section: dict[str, Any], named: str
) -> None:
    section = {"webhook_secret": "whsec_do_not_show_me", **section}
    with pytest.raises(ConfigError) as caught:
        registered({"stripe": section})
    message = str(caught.value)
    assert named in message and "plugins.stripe" in message
    assert "whsec_do_not_show_me" not in message and "pk_live_oops_public_key" not in message


# -- a whole payment through a service, over HTTP to the fake -----------------------------------


@pytest.fixture
async def service(stripe_fake: FakeStripe) -> AsyncIterator[PaymentService]:
    settings = settings_from_dict(
        {
            "store": "memory://",
            "plugins": {
                "deny": ["simulated_gateways"],
                "stripe": {
                    "secret_key": stripe_fake.secret_key,
                    "webhook_secret": stripe_fake.webhook_secret,
                    "base_url": stripe_fake.base_url,
                    "read_timeout_s": 2.0,
                    "default_payment_method": "pm_card_visa",
                },
            },
        }
    )
    built = build_service(settings)
    gateway = built.gateways["stripe"]
    assert isinstance(gateway, StripeGateway)
    try:
        async with built:
            yield built
    finally:
        await gateway.aclose()


@pytest.mark.anyio
async def test_pay_capture_refund_through_the_service(
    service: PaymentService, stripe_fake: FakeStripe
) -> None:
    paid = await service.pay(
        PaymentRequest(Money.of("19.99", "USD"), reference="order-1"), idempotency_key="order-1"
    )
    assert paid.state is PaymentState.COMPLETED
    assert stripe_fake.charges() == 1
    refunded = await service.refund(paid.id, Money.of("5.00", "USD"))
    assert refunded.state is PaymentState.PARTIALLY_REFUNDED
    (refund,) = stripe_fake.events("refund.created")
    assert refund["data"]["object"]["amount"] == 500
    assert refund["data"]["object"]["metadata"]["aegispay_payment_id"] == paid.id

    held = await service.pay(
        PaymentRequest(Money(5000, "JPY"), capture_mode="manual"), idempotency_key="order-2"
    )
    assert held.state is PaymentState.AUTHORIZED
    done = await service.capture(held.id, Money(3000, "JPY"))
    assert done.state is PaymentState.COMPLETED
    reference = done.attempts[-1].gateway_reference
    assert reference is not None
    assert stripe_fake.intent(reference)["amount_received"] == 3000


@pytest.mark.anyio
async def test_a_3ds_payment_completes_by_webhook(
    service: PaymentService, stripe_fake: FakeStripe
) -> None:
    stripe_fake.require_action_next()
    payment = await service.pay(PaymentRequest(Money(2500, "EUR")), idempotency_key="order-3")
    assert payment.state is PaymentState.REQUIRES_ACTION
    reference = payment.attempts[-1].gateway_reference
    assert reference is not None
    stripe_fake.complete_action(reference)
    headers, body = stripe_fake.deliveries("payment_intent.succeeded")[-1]
    result = await service.handle_webhook("stripe", headers, body)
    assert result.status.value == "applied", result
    assert (await service.get_payment(payment.id)).state is PaymentState.COMPLETED
    again = await service.handle_webhook("stripe", headers, body)
    assert again.status.value == "duplicate"
    forged = body.replace(b"2500", b"2600")
    with pytest.raises(WebhookSignatureError):
        await service.handle_webhook("stripe", headers, forged)
    assert WebhookKind.SUCCEEDED is result.kind
