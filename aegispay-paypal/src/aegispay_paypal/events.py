"""PayPal webhook events: the headers verification needs, and the event parsed into an update.

PayPal signs a delivery with its certificate over
``<transmission_id>|<transmission_time>|<webhook_id>|<crc32 of the raw body>``; the adapter
lets PayPal check it (``POST /v1/notifications/verify-webhook-signature``) and sends the event
there byte for byte as received, because re-serialised JSON would change the CRC.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs
from aegispay.errors import InvalidMoney
from aegispay.money import Money
from aegispay.webhooks import WebhookKind, WebhookSignatureError, WebhookUpdate

from .amounts import from_paypal

__all__ = ["EVENT_KINDS", "TransmissionHeaders", "parse_event", "verification_body"]

# The event types AegisPay acts on; every other type parses as IGNORED.
EVENT_KINDS: Mapping[str, WebhookKind] = {
    "PAYMENT.AUTHORIZATION.CREATED": WebhookKind.AUTHORIZED,
    "PAYMENT.AUTHORIZATION.VOIDED": WebhookKind.CANCELED,
    "PAYMENT.CAPTURE.COMPLETED": WebhookKind.SUCCEEDED,
    "PAYMENT.CAPTURE.DENIED": WebhookKind.FAILED,
    "PAYMENT.CAPTURE.DECLINED": WebhookKind.FAILED,
    "PAYMENT.CAPTURE.REFUNDED": WebhookKind.REFUND_SUCCEEDED,
    # The payer approved: nothing is authorised until the merchant captures or authorizes the
    # order, which a status lookup of the payment does. The payment still awaits completion.
    "CHECKOUT.ORDER.APPROVED": WebhookKind.REQUIRES_ACTION,
}

HEADER_NAMES = (
    "paypal-transmission-id",
    "paypal-transmission-time",
    "paypal-transmission-sig",
    "paypal-cert-url",
    "paypal-auth-algo",
)


@attrs.frozen
class TransmissionHeaders:
    transmission_id: str
    transmission_time: str
    transmission_sig: str = attrs.field(repr=False)
    cert_url: str
    auth_algo: str

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> TransmissionHeaders:
        missing = [name for name in HEADER_NAMES if not headers.get(name)]
        if missing:
            raise WebhookSignatureError(f"PayPal webhook: missing header(s) {', '.join(missing)}")
        return cls(*(headers[name] for name in HEADER_NAMES))

    def sent_at(self) -> datetime:
        try:
            moment = datetime.fromisoformat(self.transmission_time)
        except ValueError:
            raise WebhookSignatureError(
                "PayPal webhook: paypal-transmission-time is not an ISO 8601 time"
            ) from None
        if moment.tzinfo is None:
            raise WebhookSignatureError("PayPal webhook: paypal-transmission-time has no zone")
        return moment


def verification_body(headers: TransmissionHeaders, webhook_id: str, raw_body: bytes) -> bytes:
    """The verify-webhook-signature request, with the event spliced in as the raw bytes."""
    fields = {
        "auth_algo": headers.auth_algo,
        "cert_url": headers.cert_url,
        "transmission_id": headers.transmission_id,
        "transmission_sig": headers.transmission_sig,
        "transmission_time": headers.transmission_time,
        "webhook_id": webhook_id,
    }
    head = json.dumps(fields, separators=(",", ":"))[:-1].encode()
    return head + b',"webhook_event":' + raw_body + b"}"


def _str(obj: Mapping[str, Any], *path: str) -> str | None:
    value: Any = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value if isinstance(value, str) and value else None


def _amount(obj: object) -> Money | None:
    """The event's amount, or None when it has none PayPal-shaped (never guessed)."""
    if not isinstance(obj, Mapping):
        return None
    try:
        return from_paypal(obj, "resource.amount")
    except InvalidMoney:
        return None


def parse_event(event: Mapping[str, Any]) -> WebhookUpdate:
    """A verified PayPal event as a WebhookUpdate (raises WebhookSignatureError when it is not
    an event at all: a signed body without an id or type cannot be acted on)."""
    event_id, event_type = _str(event, "id"), _str(event, "event_type")
    resource = event.get("resource")
    if event_id is None or event_type is None or not isinstance(resource, Mapping):
        raise WebhookSignatureError(
            "PayPal webhook: body is not an event (id, event_type, resource)"
        )
    kind = EVENT_KINDS.get(event_type, WebhookKind.IGNORED)
    if event_type.startswith("CHECKOUT.ORDER."):
        units = resource.get("purchase_units")
        unit = (
            units[0] if isinstance(units, list) and units and isinstance(units[0], Mapping) else {}
        )
        return WebhookUpdate(
            event_id=event_id,
            kind=kind,
            gateway_reference=_str(resource, "id"),
            payment_id=_str(unit, "custom_id"),
            amount=_amount(unit.get("amount")),
        )
    order_id = _str(resource, "supplementary_data", "related_ids", "order_id")
    if kind is WebhookKind.REFUND_SUCCEEDED:
        return WebhookUpdate(
            event_id=event_id,
            kind=kind,
            gateway_reference=order_id,
            payment_id=_str(resource, "custom_id"),
            amount=_amount(resource.get("amount")),
            refund_reference=_str(resource, "id"),
        )
    decline_code = None
    if kind is WebhookKind.FAILED:
        decline_code = (
            _str(resource, "status_details", "reason")
            or _str(resource, "processor_response", "response_code")
            or "CAPTURE_DENIED"
        )
    return WebhookUpdate(
        event_id=event_id,
        kind=kind,
        gateway_reference=order_id,
        payment_id=_str(resource, "custom_id"),
        amount=_amount(resource.get("amount")),
        decline_code=decline_code,
    )
