"""Webhook and Checkout signatures, and parsing Razorpay events into core updates."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from aegispay.money import Money
from aegispay.webhooks import WebhookKind, WebhookSignatureError
from hypothesis import given
from hypothesis import strategies as st

from aegispay_razorpay.signatures import (
    checkout_signature,
    verify_checkout_signature,
    verify_webhook_signature,
    webhook_signature,
)
from aegispay_razorpay.webhooks import parse_webhook

SECRET = "whsec_razorpay_test_secret"


def delivery(event: dict[str, Any], *, event_id: str | None = "evt_1", secret: str = SECRET):
    body = json.dumps(event).encode()
    headers = {"x-razorpay-signature": webhook_signature(secret, body)}
    if event_id is not None:
        headers["x-razorpay-event-id"] = event_id
    return headers, body


def payment_event(name: str, **payment: Any) -> dict[str, Any]:
    entity = {
        "id": "pay_A",
        "entity": "payment",
        "amount": 10050,
        "currency": "KWD",
        "status": "captured",
        "order_id": "order_A",
        "notes": {"aegispay_payment_id": "pay_ours"},
    }
    entity.update(payment)
    return {"entity": "event", "event": name, "payload": {"payment": {"entity": entity}}}


def test_webhook_signature_is_hex_hmac_sha256_of_the_raw_body() -> None:
    body = b'{"event":"payment.captured"}'
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert webhook_signature(SECRET, body) == expected
    assert verify_webhook_signature(SECRET, body, expected)
    assert not verify_webhook_signature("other", body, expected)
    assert not verify_webhook_signature(SECRET, body, "é" * 64)  # non-ASCII header value


def test_checkout_signature_is_order_pipe_payment() -> None:
    expected = hmac.new(b"key_secret", b"order_A|pay_B", hashlib.sha256).hexdigest()
    assert checkout_signature("key_secret", "order_A", "pay_B") == expected
    assert verify_checkout_signature("key_secret", "order_A", "pay_B", expected)
    # The order id must be ours: the same signature does not verify for another order.
    assert not verify_checkout_signature("key_secret", "order_Z", "pay_B", expected)


@given(body=st.binary(min_size=1, max_size=200), data=st.data())
def test_any_change_to_the_body_is_rejected(body: bytes, data: st.DataObject) -> None:
    signature = webhook_signature(SECRET, body)
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    flipped = bytearray(body)
    flipped[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    assert not verify_webhook_signature(SECRET, bytes(flipped), signature)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("payment.authorized", WebhookKind.AUTHORIZED),
        ("payment.captured", WebhookKind.SUCCEEDED),
        ("order.paid", WebhookKind.SUCCEEDED),
        ("payment.failed", WebhookKind.FAILED),
        ("payment.dispute.created", WebhookKind.IGNORED),
        ("refund.created", WebhookKind.IGNORED),
    ],
)
def test_payment_events(name: str, kind: WebhookKind) -> None:
    headers, body = delivery(payment_event(name, error_reason="insufficient_funds"))
    update = parse_webhook(SECRET, headers, body)
    assert update.kind is kind
    assert update.event_id == "evt_1"
    assert update.gateway_reference == "order_A"  # the order: what authorize returned
    assert update.payment_id == "pay_ours"
    assert update.amount == Money(10050, "KWD")
    assert update.decline_code == ("insufficient_funds" if kind is WebhookKind.FAILED else None)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("refund.processed", WebhookKind.REFUND_SUCCEEDED),
        ("refund.failed", WebhookKind.REFUND_FAILED),
    ],
)
def test_refund_events_carry_the_refund(name: str, kind: WebhookKind) -> None:
    event = payment_event(name)
    event["payload"]["refund"] = {
        "entity": {"id": "rfnd_1", "amount": 2500, "currency": "KWD", "payment_id": "pay_A"}
    }
    update = parse_webhook(SECRET, *delivery(event))
    assert update.kind is kind
    assert update.refund_reference == "rfnd_1"
    assert update.amount == Money(2500, "KWD")  # the refund's amount, not the payment's
    assert update.gateway_reference == "order_A"


def test_headers_in_any_case_and_empty_notes_as_a_list() -> None:
    headers, body = delivery(payment_event("payment.captured", notes=[]))
    update = parse_webhook(SECRET, {k.title(): v for k, v in headers.items()}, body)
    assert update.payment_id is None and update.kind is WebhookKind.SUCCEEDED


def test_missing_event_id_falls_back_to_a_digest_of_the_body() -> None:
    headers, body = delivery(payment_event("payment.captured"), event_id=None)
    first = parse_webhook(SECRET, headers, body)
    assert first.event_id == "sha256:" + hashlib.sha256(body).hexdigest()
    assert parse_webhook(SECRET, headers, body) == first


@pytest.mark.parametrize(
    ("secret", "headers", "body", "problem"),
    [
        (None, {"x-razorpay-signature": "00"}, b"{}", "no webhook_secret"),
        (SECRET, {}, b"{}", "missing X-Razorpay-Signature"),
        (SECRET, {"x-razorpay-signature": "ab" * 32}, b"{}", "does not match"),
        (SECRET, {"x-razorpay-signature": webhook_signature(SECRET, b"[]")}, b"[]", "object"),
        (SECRET, {"x-razorpay-signature": webhook_signature(SECRET, b"{x")}, b"{x", "not JSON"),
    ],
)
def test_rejections_name_the_problem_never_the_secret(
    secret: str | None, headers: dict[str, str], body: bytes, problem: str
) -> None:
    with pytest.raises(WebhookSignatureError, match=problem) as caught:
        parse_webhook(secret, headers, body)
    assert SECRET not in str(caught.value)


def test_an_unreadable_amount_is_left_out_not_guessed() -> None:
    headers, body = delivery(payment_event("payment.captured", amount="100.50"))
    assert parse_webhook(SECRET, headers, body).amount is None
