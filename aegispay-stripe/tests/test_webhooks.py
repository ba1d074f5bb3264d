"""Stripe-Signature verification and event parsing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aegispay.money import Money
from aegispay.webhooks import WebhookKind, WebhookSignatureError
from hypothesis import given
from hypothesis import strategies as st

from aegispay_stripe.config import StripeConfig
from aegispay_stripe.gateway import StripeGateway
from aegispay_stripe.signature import sign_payload, signature_header, verify_signature
from aegispay_stripe.webhook import MalformedWebhook, parse_event

SECRET = "whsec_test_secret_0123456789"
OLD_SECRET = "whsec_old_secret_9876543210"
NOW = 1_700_000_000
BODY = b'{"id": "evt_1", "object": "event"}'


def header_for(body: bytes = BODY, *, t: int = NOW, secrets: tuple[str, ...] = (SECRET,)) -> str:
    return signature_header(list(secrets), t, body)


def verify(header: str | None, body: bytes = BODY, now: float = NOW) -> int:
    return verify_signature(header, body, [SECRET], now=now)


def test_a_valid_signature_returns_its_timestamp() -> None:
    assert verify(header_for()) == NOW


def test_any_of_several_v1_entries_may_match() -> None:
    header = header_for(secrets=(OLD_SECRET, SECRET))
    assert header.count("v1=") == 2
    assert verify(header) == NOW
    rolled = verify_signature(
        header_for(secrets=(OLD_SECRET,)), BODY, [SECRET, OLD_SECRET], now=NOW
    )
    assert rolled == NOW


def test_signature_is_the_documented_hmac() -> None:
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign_payload(SECRET, NOW, BODY) == expected
    assert header_for() == f"t={NOW},v1={expected}"


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (None, "missing Stripe-Signature"),
        ("", "missing Stripe-Signature"),
        (f"v1={sign_payload(SECRET, NOW, BODY)}", "no timestamp"),
        (f"t={NOW}", "no v1 signature in the header"),
        (f"t={NOW},v0={sign_payload(SECRET, NOW, BODY)}", "no v1 signature in the header"),
        (f"t=soon,v1={sign_payload(SECRET, NOW, BODY)}", "not an integer"),
        (f"t={NOW},v1=00", "no v1 signature matches"),
        (f"t={NOW + 1},v1={sign_payload(SECRET, NOW, BODY)}", "no v1 signature matches"),
        (header_for(secrets=("whsec_wrong",)), "no v1 signature matches"),
    ],
)
def test_bad_headers_name_the_problem(header: str | None, problem: str) -> None:
    with pytest.raises(WebhookSignatureError, match=problem) as caught:
        verify(header)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("age", "ok"),
    [(0, True), (300, True), (-300, True), (301, False), (-301, False), (86_400, False)],
)
def test_timestamp_tolerance_is_300_seconds_either_way(age: int, ok: bool) -> None:
    header = header_for(t=NOW - age)
    if ok:
        assert verify(header) == NOW - age
    else:
        with pytest.raises(WebhookSignatureError, match="tolerance"):
            verify(header)


def test_no_secret_configured_refuses_everything() -> None:
    with pytest.raises(WebhookSignatureError, match="no webhook secret"):
        verify_signature(header_for(), BODY, [], now=NOW)


@given(st.binary(min_size=1, max_size=200), st.data())
def test_any_change_to_the_body_is_detected(body: bytes, data: st.DataObject) -> None:
    header = header_for(body)
    index = data.draw(st.integers(0, len(body) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    assert verify(header, body) == NOW
    with pytest.raises(WebhookSignatureError):
        verify(header, tampered)


# -- events -------------------------------------------------------------------------------------


def event(event_type: str, obj: dict[str, Any], event_id: str = "evt_1") -> bytes:
    return json.dumps(
        {"id": event_id, "object": "event", "type": event_type, "data": {"object": obj}}
    ).encode()


def pi(**fields: Any) -> dict[str, Any]:
    base = {
        "id": "pi_1",
        "object": "payment_intent",
        "amount": 10_050,
        "amount_capturable": 0,
        "amount_received": 0,
        "currency": "kwd",
        "metadata": {"aegispay_payment_id": "pay_1"},
    }
    return {**base, **fields}


@pytest.mark.parametrize(
    ("event_type", "obj", "kind", "amount", "decline"),
    [
        (
            "payment_intent.amount_capturable_updated",
            pi(amount_capturable=10_050),
            WebhookKind.AUTHORIZED,
            Money(10_050, "KWD"),
            None,
        ),
        (
            "payment_intent.succeeded",
            pi(amount_received=6_000),
            WebhookKind.SUCCEEDED,
            Money(6_000, "KWD"),
            None,
        ),
        (
            "payment_intent.payment_failed",
            pi(last_payment_error={"code": "card_declined", "decline_code": "stolen_card"}),
            WebhookKind.FAILED,
            Money(10_050, "KWD"),
            "stolen_card",
        ),
        ("payment_intent.canceled", pi(), WebhookKind.CANCELED, Money(10_050, "KWD"), None),
        (
            "payment_intent.requires_action",
            pi(),
            WebhookKind.REQUIRES_ACTION,
            Money(10_050, "KWD"),
            None,
        ),
    ],
)
def test_payment_intent_events(
    event_type: str, obj: dict[str, Any], kind: WebhookKind, amount: Money, decline: str | None
) -> None:
    update = parse_event(event(event_type, obj))
    assert update.event_id == "evt_1"
    assert update.kind is kind
    assert update.gateway_reference == "pi_1"
    assert update.payment_id == "pay_1"
    assert update.amount == amount
    assert update.decline_code == decline


def test_charge_refunded_reports_the_newest_refund() -> None:
    charge = {
        "id": "ch_1",
        "object": "charge",
        "payment_intent": "pi_1",
        "amount_refunded": 3000,
        "currency": "jpy",
        "metadata": {"aegispay_payment_id": "pay_1"},
        "refunds": {
            "data": [
                {
                    "id": "re_old",
                    "amount": 1000,
                    "currency": "jpy",
                    "status": "succeeded",
                    "created": 1,
                    "payment_intent": "pi_1",
                },
                {
                    "id": "re_new",
                    "amount": 2000,
                    "currency": "jpy",
                    "status": "succeeded",
                    "created": 2,
                    "payment_intent": "pi_1",
                },
            ]
        },
    }
    update = parse_event(event("charge.refunded", charge))
    assert update.kind is WebhookKind.REFUND_SUCCEEDED
    assert (update.refund_reference, update.amount) == ("re_new", Money(2000, "JPY"))
    assert (update.gateway_reference, update.payment_id) == ("pi_1", "pay_1")
    del charge["refunds"]  # newer API versions leave the list out
    bare = parse_event(event("charge.refunded", charge))
    assert (bare.kind, bare.amount, bare.gateway_reference) == (
        WebhookKind.REFUND_SUCCEEDED,
        None,
        "pi_1",
    )


@pytest.mark.parametrize(
    ("event_type", "status", "kind"),
    [
        ("refund.updated", "succeeded", WebhookKind.REFUND_SUCCEEDED),
        ("refund.updated", "failed", WebhookKind.REFUND_FAILED),
        ("refund.updated", "canceled", WebhookKind.REFUND_FAILED),
        ("refund.updated", "pending", WebhookKind.IGNORED),
        ("refund.failed", "failed", WebhookKind.REFUND_FAILED),
    ],
)
def test_refund_events(event_type: str, status: str, kind: WebhookKind) -> None:
    refund = {
        "id": "re_1",
        "object": "refund",
        "amount": 500,
        "currency": "usd",
        "status": status,
        "payment_intent": "pi_1",
        "failure_reason": "expired_or_canceled_card",
        "metadata": {"aegispay_payment_id": "pay_1"},
    }
    update = parse_event(event(event_type, refund))
    assert update.kind is kind
    assert (update.refund_reference, update.gateway_reference) == ("re_1", "pi_1")
    assert update.amount == Money(500, "USD")
    if kind is WebhookKind.REFUND_FAILED:
        assert update.decline_code == "expired_or_canceled_card"


def test_other_events_are_ignored() -> None:
    update = parse_event(event("customer.created", {"id": "cus_1", "object": "customer"}))
    assert (update.kind, update.event_id) == (WebhookKind.IGNORED, "evt_1")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"object": "event"}',
        json.dumps({"id": "e", "object": "event", "type": "x", "data": {}}).encode(),
        event("payment_intent.succeeded", pi(amount_received="12")),
        event("payment_intent.succeeded", pi(currency="xyz", amount_received=1)),
    ],
)
def test_malformed_events_are_rejected(body: bytes) -> None:
    with pytest.raises(MalformedWebhook):
        parse_event(body)


# -- the adapter's parse_webhook -----------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[StripeGateway]:
    config = StripeConfig(
        secret_key="sk_test_x", webhook_secret=SECRET, previous_webhook_secrets=(OLD_SECRET,)
    )
    yield StripeGateway(config, clock=lambda: NOW)


@pytest.mark.anyio
async def test_parse_webhook_verifies_then_parses(receiver: StripeGateway) -> None:
    body = event("payment_intent.succeeded", pi(amount_received=10_050))
    headers = {"stripe-signature": header_for(body, secrets=(OLD_SECRET,))}
    update = await receiver.parse_webhook(headers, body)
    assert update.kind is WebhookKind.SUCCEEDED
    with pytest.raises(WebhookSignatureError):
        await receiver.parse_webhook(headers, body.replace(b"10050", b"10060"))
    with pytest.raises(WebhookSignatureError, match="missing"):
        await receiver.parse_webhook({"Stripe-Signature": headers["stripe-signature"]}, body)


def test_a_webhook_secret_must_look_like_one() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        StripeConfig(secret_key="sk_test_x", webhook_secret="plain")
