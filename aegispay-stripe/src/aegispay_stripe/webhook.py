"""Stripe events -> :class:`aegispay.webhooks.WebhookUpdate`.

Verification happens first (:mod:`aegispay_stripe.signature`); this module only reads a verified
body. The PaymentIntent id is the ``gateway_reference`` (the adapter returns the same id from
``authorize``); our payment id comes back in ``metadata.aegispay_payment_id``.

=========================================== ==============================================
Stripe event                                AegisPay kind
=========================================== ==============================================
payment_intent.amount_capturable_updated    AUTHORIZED (amount: ``amount_capturable``)
payment_intent.succeeded                    SUCCEEDED (amount: ``amount_received``)
payment_intent.payment_failed               FAILED (``last_payment_error.decline_code``)
payment_intent.canceled                     CANCELED
payment_intent.requires_action              REQUIRES_ACTION
charge.refunded                             REFUND_SUCCEEDED (the newest refund on the charge)
refund.updated / refund.failed              REFUND_SUCCEEDED / REFUND_FAILED by refund status
anything else                               IGNORED
=========================================== ==============================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aegispay.errors import InvalidMoney
from aegispay.money import Money
from aegispay.webhooks import WebhookKind, WebhookSignatureError, WebhookUpdate

from .amounts import from_stripe_amount

__all__ = ["EVENT_KINDS", "PAYMENT_ID_KEY", "MalformedWebhook", "parse_event"]

PAYMENT_ID_KEY = "aegispay_payment_id"

EVENT_KINDS: Mapping[str, WebhookKind] = {
    "payment_intent.amount_capturable_updated": WebhookKind.AUTHORIZED,
    "payment_intent.succeeded": WebhookKind.SUCCEEDED,
    "payment_intent.payment_failed": WebhookKind.FAILED,
    "payment_intent.canceled": WebhookKind.CANCELED,
    "payment_intent.requires_action": WebhookKind.REQUIRES_ACTION,
    "charge.refunded": WebhookKind.REFUND_SUCCEEDED,
    "refund.updated": WebhookKind.REFUND_SUCCEEDED,  # refined by the refund's status below
    "refund.failed": WebhookKind.REFUND_FAILED,
}


class MalformedWebhook(WebhookSignatureError):
    """A correctly signed body that is not a Stripe event we can read. Rejected like a bad
    signature (HTTP 400): Stripe retries it, and nothing is applied."""


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _money(obj: Mapping[str, Any], field: str) -> Money | None:
    value, currency = obj.get(field), obj.get("currency")
    if value is None or currency is None:
        return None
    try:
        return from_stripe_amount(value, currency, field)
    except InvalidMoney as exc:
        raise MalformedWebhook(f"Stripe event: {exc}") from None


def _payment_id(obj: Mapping[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    return _str(metadata.get(PAYMENT_ID_KEY)) if isinstance(metadata, Mapping) else None


def _intent_update(event_id: str, kind: WebhookKind, intent: Mapping[str, Any]) -> WebhookUpdate:
    field = {
        WebhookKind.AUTHORIZED: "amount_capturable",
        WebhookKind.SUCCEEDED: "amount_received",
    }.get(kind, "amount")
    decline: str | None = None
    if kind is WebhookKind.FAILED:
        error = intent.get("last_payment_error")
        if isinstance(error, Mapping):
            decline = _str(error.get("decline_code")) or _str(error.get("code"))
        decline = decline or "card_declined"
    return WebhookUpdate(
        event_id=event_id,
        kind=kind,
        gateway_reference=_str(intent.get("id")),
        payment_id=_payment_id(intent),
        amount=_money(intent, field),
        decline_code=decline,
    )


def _newest_refund(charge: Mapping[str, Any]) -> Mapping[str, Any] | None:
    refunds = charge.get("refunds")
    data = refunds.get("data") if isinstance(refunds, Mapping) else None
    if not isinstance(data, list) or not data:
        return None  # API versions from 2022-11-15 leave charge.refunds out
    candidates = [r for r in data if isinstance(r, Mapping)]
    return max(candidates, key=lambda r: r.get("created") or 0, default=None)


def _refund_update(
    event_id: str, event_type: str, refund: Mapping[str, Any], payment_id: str | None
) -> WebhookUpdate:
    status = refund.get("status")
    if event_type == "refund.failed" or status in ("failed", "canceled"):
        kind = WebhookKind.REFUND_FAILED
    elif status == "succeeded":
        kind = WebhookKind.REFUND_SUCCEEDED
    else:
        kind = WebhookKind.IGNORED  # pending / requires_action: the final word comes later
    return WebhookUpdate(
        event_id=event_id,
        kind=kind,
        gateway_reference=_str(refund.get("payment_intent")),
        payment_id=_payment_id(refund) or payment_id,
        amount=_money(refund, "amount"),
        decline_code=_str(refund.get("failure_reason"))
        if kind is WebhookKind.REFUND_FAILED
        else None,
        refund_reference=_str(refund.get("id")),
    )


def parse_event(raw_body: bytes) -> WebhookUpdate:
    """A verified Stripe event body as one update; raises MalformedWebhook."""
    try:
        event = json.loads(raw_body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedWebhook("Stripe event: the body is not JSON") from None
    if not isinstance(event, Mapping) or event.get("object") != "event":
        raise MalformedWebhook("Stripe event: the body is not an event object")
    event_id, event_type = _str(event.get("id")), _str(event.get("type"))
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if event_id is None or event_type is None or not isinstance(obj, Mapping):
        raise MalformedWebhook("Stripe event: id, type or data.object missing")
    kind = EVENT_KINDS.get(event_type, WebhookKind.IGNORED)
    if kind is WebhookKind.IGNORED:
        return WebhookUpdate(event_id, WebhookKind.IGNORED, _str(obj.get("id")), None, None)
    if event_type.startswith("payment_intent."):
        return _intent_update(event_id, kind, obj)
    if event_type == "charge.refunded":
        refund = _newest_refund(obj)
        if refund is None:
            # Only the charge's running total is known: report the refund without an amount
            # rather than pass the cumulative amount off as this refund's.
            return WebhookUpdate(
                event_id,
                WebhookKind.REFUND_SUCCEEDED,
                _str(obj.get("payment_intent")),
                _payment_id(obj),
                None,
            )
        update = _refund_update(event_id, "refund.updated", refund, _payment_id(obj))
        if update.gateway_reference is None:
            return WebhookUpdate(
                update.event_id,
                update.kind,
                _str(obj.get("payment_intent")),
                update.payment_id,
                update.amount,
                update.decline_code,
                update.refund_reference,
            )
        return update
    return _refund_update(event_id, event_type, obj, None)
