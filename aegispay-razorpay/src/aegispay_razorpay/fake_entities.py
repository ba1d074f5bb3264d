"""The fake Razorpay's wire shapes: ids, entities, error bodies and validation helpers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from aegispay.webhooks import WebhookKind

__all__ = [
    "KIND_EVENTS",
    "REFUND_KEY_CHARS",
    "Refusal",
    "check_notes",
    "collection",
    "new_id",
    "not_found",
    "payment_entity",
    "public",
    "refund_entity",
]

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KIND_EVENTS: Mapping[WebhookKind, str] = MappingProxyType(
    {
        WebhookKind.AUTHORIZED: "payment.authorized",
        WebhookKind.SUCCEEDED: "payment.captured",
        WebhookKind.FAILED: "payment.failed",
        WebhookKind.REFUND_SUCCEEDED: "refund.processed",
        WebhookKind.REFUND_FAILED: "refund.failed",
        WebhookKind.IGNORED: "payment.dispute.created",
    }
)
REFUND_KEY_CHARS = frozenset(_ALPHABET + "-_")
_MAX_NOTES = 15
_NOTE_LENGTH = 256


def new_id(prefix: str) -> str:
    """A Razorpay-shaped id: prefix, underscore, 14 base-62 characters."""
    raw = int.from_bytes(os.urandom(11), "big")
    chars = []
    for _ in range(14):
        raw, digit = divmod(raw, 62)
        chars.append(_ALPHABET[digit])
    return f"{prefix}_{''.join(chars)}"


class Refusal(Exception):
    """Raised by the fake's handlers: answer ``status`` with Razorpay's error body."""

    def __init__(
        self,
        status: int,
        description: str,
        *,
        field: str | None = None,
        source: str = "business",
        step: str = "payment_initiation",
        reason: str = "input_validation_failed",
        code: str = "BAD_REQUEST_ERROR",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.body: dict[str, Any] = {
            "error": {
                "code": code,
                "description": description,
                "field": field,
                "source": source,
                "step": step,
                "reason": reason,
                "metadata": dict(metadata or {}),
            }
        }


def not_found() -> Refusal:
    """Razorpay answers an unknown entity id with 400, not 404."""
    return Refusal(400, "The id provided does not exist", field="id", reason="NA", step="NA")


def check_notes(value: object) -> dict[str, str]:
    """``notes`` as Razorpay accepts them: an object of at most 15 values of 256 characters."""
    if value is None or value == []:
        return {}
    if not isinstance(value, dict):
        raise Refusal(400, "The notes must be an object", field="notes")
    if len(value) > _MAX_NOTES:
        raise Refusal(400, "Number of notes should not exceed 15", field="notes")
    for key, note in value.items():
        if not isinstance(note, str | int | float) or len(str(note)) > _NOTE_LENGTH:
            raise Refusal(400, f"notes.{key} may not be greater than 256 characters")
    return {str(k): str(v) for k, v in value.items()}


def payment_entity(order_id: str | None, amount: int, currency: str, now: int) -> dict[str, Any]:
    """A new card payment entity (status ``created``), with Razorpay's fields."""
    return {
        "id": new_id("pay"),
        "entity": "payment",
        "amount": amount,
        "currency": currency,
        "status": "created",
        "order_id": order_id,
        "invoice_id": None,
        "international": currency != "INR",
        "method": "card",
        "amount_refunded": 0,
        "refund_status": None,
        "captured": False,
        "description": None,
        "email": "customer@example.com",
        "contact": "+919000090000",
        "notes": {},
        "fee": None,
        "tax": None,
        "error_code": None,
        "error_description": None,
        "error_source": None,
        "error_step": None,
        "error_reason": None,
        "created_at": now,
    }


def refund_entity(payment_id: str, amount: int, currency: str, now: int) -> dict[str, Any]:
    """A processed normal-speed refund entity, with Razorpay's fields."""
    return {
        "id": new_id("rfnd"),
        "entity": "refund",
        "amount": amount,
        "currency": currency,
        "payment_id": payment_id,
        "notes": {},
        "receipt": None,
        "acquirer_data": {"arn": None},
        "created_at": now,
        "batch_id": None,
        "status": "processed",
        "speed_processed": "normal",
        "speed_requested": "normal",
    }


def public(entity: Mapping[str, Any]) -> dict[str, Any]:
    """An entity as the API shows it (without the fake's bookkeeping fields); empty notes are
    ``[]``, as Razorpay sends them."""
    shown = {k: v for k, v in entity.items() if not k.startswith("_")}
    if shown.get("notes") == {}:
        shown["notes"] = []
    return shown


def collection(entities: list[dict[str, Any]]) -> dict[str, Any]:
    items = [public(e) for e in entities]
    return {"entity": "collection", "count": len(items), "items": items}
