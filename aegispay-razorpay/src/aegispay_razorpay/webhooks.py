"""Razorpay webhooks: verify ``X-Razorpay-Signature`` on the raw body, parse the event.

A Razorpay webhook body::

    {"entity": "event", "account_id": "acc_...", "event": "payment.captured",
     "contains": ["payment"], "created_at": 1700000000,
     "payload": {"payment": {"entity": {"id": "pay_...", "order_id": "order_...",
                                         "amount": 50000, "currency": "INR", ...}}}}

Refund events carry ``payload.refund.entity`` (and ``payload.payment.entity``); ``order.paid``
carries ``payload.order.entity`` and ``payload.payment.entity``. The dedup key is the
``X-Razorpay-Event-Id`` header (Razorpay retries a delivery with the same id). Razorpay's
signature has no timestamp, so there is no age check: replays are stopped by that dedup.

``gateway_reference`` is the *order* id, the same reference the adapter returns from
``authorize``; a payment made without an order (not something this adapter creates) falls back
to its payment id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from aegispay.errors import InvalidMoney
from aegispay.money import Money
from aegispay.webhooks import WebhookKind, WebhookSignatureError, WebhookUpdate

from .amounts import from_razorpay
from .signatures import verify_webhook_signature

__all__ = ["EVENT_ID_HEADER", "EVENT_KINDS", "SIGNATURE_HEADER", "parse_webhook"]

SIGNATURE_HEADER = "x-razorpay-signature"
EVENT_ID_HEADER = "x-razorpay-event-id"

EVENT_KINDS: Mapping[str, WebhookKind] = MappingProxyType(
    {
        "payment.authorized": WebhookKind.AUTHORIZED,
        "payment.captured": WebhookKind.SUCCEEDED,
        "order.paid": WebhookKind.SUCCEEDED,
        "payment.failed": WebhookKind.FAILED,
        "refund.processed": WebhookKind.REFUND_SUCCEEDED,
        "refund.failed": WebhookKind.REFUND_FAILED,
    }
)
_REFUND_EVENTS = frozenset({"refund.processed", "refund.failed"})


def _entity(payload: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    wrapper = payload.get(name)
    entity = wrapper.get("entity") if isinstance(wrapper, Mapping) else None
    return entity if isinstance(entity, Mapping) else {}


def _notes(entity: Mapping[str, Any]) -> Mapping[str, Any]:
    notes = entity.get("notes")
    return notes if isinstance(notes, Mapping) else {}  # Razorpay sends [] for "no notes"


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _money(entity: Mapping[str, Any]) -> Money | None:
    if "amount" not in entity:
        return None
    try:
        return from_razorpay(entity.get("amount"), entity.get("currency"))
    except InvalidMoney:
        return None  # an amount we cannot read is left out, never guessed


def parse_webhook(
    webhook_secret: str | None, headers: Mapping[str, str], raw_body: bytes
) -> WebhookUpdate:
    """Verify and parse one webhook delivery; raises WebhookSignatureError."""
    if not webhook_secret:
        raise WebhookSignatureError(
            "razorpay: no webhook_secret is configured, so webhooks cannot be verified"
        )
    lowered = {name.lower(): value for name, value in headers.items()}
    signature = lowered.get(SIGNATURE_HEADER)
    if not signature:
        raise WebhookSignatureError("razorpay: missing X-Razorpay-Signature header")
    if not verify_webhook_signature(webhook_secret, raw_body, signature):
        raise WebhookSignatureError(
            "razorpay: X-Razorpay-Signature does not match the body "
            "(tampered body or wrong webhook secret)"
        )
    try:
        event = json.loads(raw_body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookSignatureError("razorpay: signed body is not JSON") from None
    if not isinstance(event, Mapping):
        raise WebhookSignatureError("razorpay: signed body is not a JSON object")
    # Razorpay always sends the event id; a digest of the signed body is the fallback dedup key
    # (a byte-identical redelivery is still recognised).
    event_id = lowered.get(EVENT_ID_HEADER) or "sha256:" + hashlib.sha256(raw_body).hexdigest()
    name = event.get("event")
    payload = event.get("payload")
    payload = payload if isinstance(payload, Mapping) else {}
    kind = EVENT_KINDS.get(name if isinstance(name, str) else "", WebhookKind.IGNORED)
    payment = _entity(payload, "payment")
    order = _entity(payload, "order")
    refund = _entity(payload, "refund")
    reference = (
        _str(payment.get("order_id"))
        or _str(order.get("id"))
        or _str(payment.get("id"))
        or _str(refund.get("payment_id"))
    )
    payment_id = (
        _str(_notes(payment).get("aegispay_payment_id"))
        or _str(_notes(order).get("aegispay_payment_id"))
        or _str(_notes(refund).get("aegispay_payment_id"))
    )
    is_refund = name in _REFUND_EVENTS
    amount = _money(refund) if is_refund else (_money(payment) or _money(order))
    decline_code: str | None = None
    if kind is WebhookKind.FAILED:
        decline_code = (
            _str(payment.get("error_reason")) or _str(payment.get("error_code")) or "failed"
        ).lower()
    return WebhookUpdate(
        event_id=event_id,
        kind=kind,
        gateway_reference=reference,
        payment_id=payment_id,
        amount=amount,
        decline_code=decline_code,
        refund_reference=_str(refund.get("id")) if is_refund else None,
    )
