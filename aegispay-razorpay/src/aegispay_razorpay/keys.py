"""What our idempotency keys become on Razorpay's side.

Razorpay has no general idempotency header. It has:

* ``receipt`` on orders: the merchant's own reference, at most 40 characters, searchable with
  ``GET /v1/orders?receipt=...`` but *not* unique. The adapter uses the attempt's derived key as
  the receipt and looks the order up before creating one, so a repeated authorize finds the
  order it already made instead of making another.
* ``X-Refund-Idempotency`` on refunds: at least 10 characters of letters, digits, ``-`` and
  ``_``; Razorpay replays the first answer, rejects a different body under the same key, and
  answers 409 while the first request is still processing.

Keys that do not fit are replaced by a digest of themselves, so the mapping stays deterministic:
the same key always becomes the same receipt / header value.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["MAX_RECEIPT", "receipt_for", "refund_idempotency_key"]

MAX_RECEIPT = 40
_MAX_REFUND_KEY = 36  # Razorpay documents 4-36 for payouts; refunds only give the minimum
_REFUND_KEY = re.compile(r"[A-Za-z0-9_-]{10,36}")
_RECEIPT = re.compile(r"[\x21-\x7e]{1,40}")  # printable ASCII, no spaces


def _digest(key: str, prefix: str, length: int) -> str:
    return prefix + hashlib.sha256(key.encode()).hexdigest()[: length - len(prefix)]


def receipt_for(idempotency_key: str) -> str:
    """The order ``receipt`` for an authorize made with ``idempotency_key``."""
    if _RECEIPT.fullmatch(idempotency_key):
        return idempotency_key
    return _digest(idempotency_key, "k_", MAX_RECEIPT)


def refund_idempotency_key(idempotency_key: str) -> str:
    """The ``X-Refund-Idempotency`` value for a refund made with ``idempotency_key``."""
    if _REFUND_KEY.fullmatch(idempotency_key):
        return idempotency_key
    return _digest(idempotency_key, "k_", _MAX_REFUND_KEY)
