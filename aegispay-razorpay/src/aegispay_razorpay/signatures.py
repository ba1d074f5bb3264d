"""Razorpay's two HMAC-SHA256 signatures, computed and checked in constant time.

* Webhooks: ``X-Razorpay-Signature`` is the hex HMAC-SHA256 of the raw request body, keyed with
  the webhook secret (set per webhook in the Dashboard; not the API key secret). There is no
  timestamp in it, so replays are stopped by deduplicating on ``X-Razorpay-Event-Id``.
* Checkout: after the customer pays in Razorpay Checkout, the client receives
  ``razorpay_payment_id``, ``razorpay_order_id`` and ``razorpay_signature`` = hex
  HMAC-SHA256 of ``"<order_id>|<razorpay_payment_id>"`` keyed with the API key secret. Verify it
  with the order id *you stored*, never the one the client sent back.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = [
    "checkout_signature",
    "verify_checkout_signature",
    "verify_webhook_signature",
    "webhook_signature",
]


def _hex_hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def webhook_signature(webhook_secret: str, raw_body: bytes) -> str:
    """The ``X-Razorpay-Signature`` Razorpay sends with ``raw_body``."""
    return _hex_hmac(webhook_secret, raw_body)


def verify_webhook_signature(webhook_secret: str, raw_body: bytes, signature: str) -> bool:
    """True when ``signature`` is the webhook signature of exactly ``raw_body``."""
    expected = webhook_signature(webhook_secret, raw_body)
    # Both sides as ASCII bytes: compare_digest refuses non-ASCII str, and a header could hold any.
    return hmac.compare_digest(expected.encode(), signature.strip().lower().encode("utf-8"))


def checkout_signature(key_secret: str, order_id: str, payment_id: str) -> str:
    """The ``razorpay_signature`` Checkout returns for a payment on ``order_id``."""
    return _hex_hmac(key_secret, f"{order_id}|{payment_id}".encode())


def verify_checkout_signature(
    key_secret: str, order_id: str, payment_id: str, signature: str
) -> bool:
    """True when ``signature`` proves Razorpay made ``payment_id`` for our ``order_id``."""
    expected = checkout_signature(key_secret, order_id, payment_id)
    return hmac.compare_digest(expected.encode(), signature.strip().lower().encode("utf-8"))
