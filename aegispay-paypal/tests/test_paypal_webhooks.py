"""Webhook deliveries: verified through PayPal's verify-webhook-signature API, on the raw bytes."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aegispay.fake_server import Fault
from aegispay.money import Money
from aegispay.webhooks import WebhookKind, WebhookSignatureError
from hypothesis import given
from hypothesis import strategies as st

from aegispay_paypal import PayPalConfig, PayPalGateway, PayPalWebhookUnavailable
from aegispay_paypal.events import HEADER_NAMES, parse_event
from aegispay_paypal.fake import FakePayPal, raw_member


def approved_order(fake: FakePayPal) -> str:
    """An order the payer approved at the fake (the reference webhooks name)."""
    import httpx

    token = httpx.post(
        f"{fake.base_url}/v1/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(fake.client_id, "fake-client-secret"),
    ).json()["access_token"]
    order = httpx.post(
        f"{fake.base_url}/v2/checkout/orders",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "intent": "CAPTURE",
            "purchase_units": [
                {"amount": {"currency_code": "USD", "value": "25.00"}, "custom_id": "pay_42"}
            ],
        },
    ).json()
    fake.complete_action(order["id"])
    return str(order["id"])


@pytest.mark.parametrize(
    ("kind", "event_type"),
    [
        (WebhookKind.SUCCEEDED, "PAYMENT.CAPTURE.COMPLETED"),
        (WebhookKind.FAILED, "PAYMENT.CAPTURE.DENIED"),
        (WebhookKind.REFUND_SUCCEEDED, "PAYMENT.CAPTURE.REFUNDED"),
        (WebhookKind.AUTHORIZED, "PAYMENT.AUTHORIZATION.CREATED"),
        (WebhookKind.CANCELED, "PAYMENT.AUTHORIZATION.VOIDED"),
        (WebhookKind.REQUIRES_ACTION, "CHECKOUT.ORDER.APPROVED"),
        (WebhookKind.IGNORED, "CHECKOUT.ORDER.SAVED"),
    ],
)
@pytest.mark.anyio
async def test_each_event_type_parses_into_its_update(
    gateway: PayPalGateway, fake: FakePayPal, kind: WebhookKind, event_type: str
) -> None:
    order_id = approved_order(fake)
    headers, body = fake.signed_webhook(
        kind, order_id, amount_minor=2500, currency="USD", event_id="WH-1"
    )
    assert json.loads(body)["event_type"] == event_type
    update = await gateway.parse_webhook(headers, body)
    assert (update.event_id, update.kind) == ("WH-1", kind)
    assert update.payment_id == "pay_42"
    if kind is not WebhookKind.IGNORED:
        assert update.amount == Money(2500, "USD")
    if kind is WebhookKind.REFUND_SUCCEEDED:
        assert update.refund_reference  # the refund's id; the payment is found by custom_id
    else:
        assert update.gateway_reference == order_id
    if kind is WebhookKind.FAILED:
        assert update.decline_code == "DECLINED_BY_RISK_FRAUD_FILTERS"


@pytest.mark.anyio
async def test_the_event_goes_to_paypal_byte_for_byte(
    gateway: PayPalGateway, fake: FakePayPal
) -> None:
    headers, body = fake.signed_webhook(
        WebhookKind.SUCCEEDED, approved_order(fake), amount_minor=2500, currency="USD"
    )
    spaced = body.replace(b",", b", ")  # the same JSON, other bytes: PayPal's CRC differs
    with pytest.raises(WebhookSignatureError, match="verification failed"):
        await gateway.parse_webhook(headers, spaced)
    await gateway.parse_webhook(headers, body)
    verify = [r for r in fake.received() if r.path.endswith("verify-webhook-signature")]
    assert len(verify) == 2
    assert verify[1].body.endswith(b'"webhook_event":' + body + b"}")
    sent = json.loads(verify[1].body)
    assert sent["webhook_id"] == fake.webhook_id
    assert sent["transmission_sig"] == headers["paypal-transmission-sig"]


@pytest.mark.parametrize("missing", HEADER_NAMES)
@pytest.mark.anyio
async def test_a_missing_transmission_header_is_named(
    gateway: PayPalGateway, fake: FakePayPal, missing: str
) -> None:
    headers, body = fake.signed_webhook(
        WebhookKind.SUCCEEDED, approved_order(fake), amount_minor=2500, currency="USD"
    )
    del headers[missing]
    with pytest.raises(WebhookSignatureError, match=missing):
        await gateway.parse_webhook(headers, body)


@pytest.mark.parametrize("age_s", [301, -301, 86_400])
@pytest.mark.anyio
async def test_transmission_time_outside_the_tolerance_is_refused(
    gateway: PayPalGateway, fake: FakePayPal, age_s: int
) -> None:
    headers, body = fake.signed_webhook(
        WebhookKind.SUCCEEDED, "ORDER1", amount_minor=2500, currency="USD", age_s=age_s
    )
    with pytest.raises(WebhookSignatureError, match="tolerance"):
        await gateway.parse_webhook(headers, body)
    assert not any(r.path.endswith("verify-webhook-signature") for r in fake.received())


@pytest.mark.anyio
async def test_a_delivery_for_another_webhook_id_fails(
    fake: FakePayPal, config_for: Callable[..., PayPalConfig]
) -> None:
    gateway = PayPalGateway(config_for(fake, webhook_id="WH-SOMEONE-ELSE"))
    headers, body = fake.signed_webhook(
        WebhookKind.SUCCEEDED, "ORDER1", amount_minor=2500, currency="USD"
    )
    try:
        with pytest.raises(WebhookSignatureError):
            await gateway.parse_webhook(headers, body)
    finally:
        await gateway.aclose()


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"\xff\xfe"])
@pytest.mark.anyio
async def test_a_body_that_is_no_json_object_is_refused(
    gateway: PayPalGateway, fake: FakePayPal, body: bytes
) -> None:
    headers, _ = fake.signed_webhook(
        WebhookKind.SUCCEEDED, "ORDER1", amount_minor=2500, currency="USD"
    )
    with pytest.raises(WebhookSignatureError, match="JSON"):
        await gateway.parse_webhook(headers, body)


@pytest.mark.anyio
async def test_paypal_unreachable_means_retry_later_not_forged(
    gateway: PayPalGateway, fake: FakePayPal
) -> None:
    headers, body = fake.signed_webhook(
        WebhookKind.SUCCEEDED, "ORDER1", amount_minor=2500, currency="USD"
    )
    await gateway.connect()
    fake.inject(Fault.ERROR_500, path_prefix="/v1/notifications/")
    with pytest.raises(PayPalWebhookUnavailable):
        await gateway.parse_webhook(headers, body)
    fake.inject(Fault.TIMEOUT_AFTER_PROCESSING, path_prefix="/v1/notifications/")
    with pytest.raises(PayPalWebhookUnavailable):
        await gateway.parse_webhook(headers, body)
    assert (await gateway.parse_webhook(headers, body)).kind is WebhookKind.SUCCEEDED


@pytest.mark.anyio
async def test_without_a_webhook_id_there_are_no_webhooks(
    fake: FakePayPal, config_for: Callable[..., PayPalConfig]
) -> None:
    gateway = PayPalGateway(config_for(fake, webhook_id=None))
    assert gateway.capabilities.webhooks is False
    headers, body = fake.signed_webhook(
        WebhookKind.SUCCEEDED, "ORDER1", amount_minor=2500, currency="USD"
    )
    with pytest.raises(PayPalWebhookUnavailable, match="webhook_id"):
        await gateway.parse_webhook(headers, body)


@pytest.mark.anyio
async def test_the_tolerance_is_judged_by_the_gateways_clock(
    fake: FakePayPal, config_for: Callable[..., PayPalConfig]
) -> None:
    ahead = datetime.now(UTC) + timedelta(hours=1)
    gateway = PayPalGateway(config_for(fake), clock=lambda: ahead)
    headers, body = fake.signed_webhook(
        WebhookKind.SUCCEEDED, "ORDER1", amount_minor=2500, currency="USD"
    )
    try:
        with pytest.raises(WebhookSignatureError, match="tolerance"):
            await gateway.parse_webhook(headers, body)
        headers["paypal-transmission-time"] = "2026-01-01T00:00:00"  # no zone
        with pytest.raises(WebhookSignatureError, match="no zone"):
            await gateway.parse_webhook(headers, body)
    finally:
        await gateway.aclose()


@pytest.mark.parametrize(
    "event",
    [
        {"event_type": "PAYMENT.CAPTURE.COMPLETED", "resource": {}},
        {"id": "WH-1", "resource": {}},
        {"id": "WH-1", "event_type": "PAYMENT.CAPTURE.COMPLETED", "resource": "x"},
    ],
)
def test_a_signed_body_that_is_not_an_event_is_refused(event: dict[str, Any]) -> None:
    with pytest.raises(WebhookSignatureError, match="not an event"):
        parse_event(event)


def test_an_event_with_a_malformed_amount_has_no_amount() -> None:
    update = parse_event(
        {
            "id": "WH-1",
            "event_type": "PAYMENT.CAPTURE.COMPLETED",
            "resource": {"id": "C1", "amount": {"currency_code": "USD", "value": "1.001"}},
        }
    )
    assert update.amount is None  # never rounded into something else


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=4), json_values, st.booleans())
def test_raw_member_returns_the_exact_source_text(
    others: dict[str, Any], value: Any, spaced: bool
) -> None:
    others.pop("webhook_event", None)
    separators = (", ", ": ") if spaced else (",", ":")
    head = json.dumps(others, separators=separators)[:-1]
    raw = json.dumps(value, separators=separators)
    glue = ", " if others and spaced else ("," if others else "")
    text = f'{head}{glue}"webhook_event":{raw} }}'
    assert raw_member(text, "webhook_event") == raw + " "
    assert raw_member(text, "absent") is None
