"""The ``Stripe-Signature`` webhook header: verify it (the adapter) and produce it (the fake).

Stripe signs ``f"{t}.{raw_body}"`` with HMAC-SHA256 keyed by the endpoint's ``whsec_...`` secret
and sends ``Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...][,v0=...]``. There can be
several ``v1`` entries (one per active secret while a secret is being rolled); any one matching
is enough. Only ``v1`` counts: ``v0`` is a test-mode scheme that must not be trusted.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from aegispay.webhooks import WebhookSignatureError

__all__ = ["DEFAULT_TOLERANCE_S", "sign_payload", "signature_header", "verify_signature"]

DEFAULT_TOLERANCE_S = 300


def sign_payload(secret: str, timestamp: int, raw_body: bytes) -> str:
    """The hex ``v1`` signature of ``raw_body`` sent at ``timestamp``."""
    message = str(timestamp).encode("ascii") + b"." + raw_body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(secrets: Sequence[str], timestamp: int, raw_body: bytes) -> str:
    """A ``Stripe-Signature`` value with one ``v1`` entry per secret, as Stripe sends it."""
    entries = [f"t={timestamp}"]
    entries += [f"v1={sign_payload(secret, timestamp, raw_body)}" for secret in secrets]
    return ",".join(entries)


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        name, eq, value = item.strip().partition("=")
        if not eq:
            continue  # tolerate junk, as Stripe's libraries do; a valid v1 is still required
        if name == "t":
            if not value.isdigit():
                raise WebhookSignatureError("Stripe-Signature: timestamp t is not an integer")
            timestamp = int(value)
        elif name == "v1":
            signatures.append(value)
    if timestamp is None:
        raise WebhookSignatureError("Stripe-Signature: no timestamp (t=) in the header")
    if not signatures:
        raise WebhookSignatureError("Stripe-Signature: no v1 signature in the header")
    return timestamp, signatures


def verify_signature(
    header: str | None,
    raw_body: bytes,
    secrets: Sequence[str],
    *,
    now: float,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> int:
    """Check ``header`` against ``raw_body``; return its timestamp or raise WebhookSignatureError.

    The signature is checked before the timestamp, so a forged header learns nothing about the
    tolerance; the timestamp must be within ``tolerance_s`` of ``now`` either way (a replayed
    old delivery is refused even though its signature is genuine).
    """
    if not header:
        raise WebhookSignatureError("missing Stripe-Signature header")
    if not secrets or not all(secrets):
        raise WebhookSignatureError("no webhook secret configured for this Stripe endpoint")
    timestamp, signatures = _parse(header)
    expected = [sign_payload(secret, timestamp, raw_body) for secret in secrets]
    # Compare every pair in constant time; no early exit that would time which one matched.
    matched = False
    for candidate in signatures:
        for wanted in expected:
            matched |= hmac.compare_digest(candidate.encode("ascii", "replace"), wanted.encode())
    if not matched:
        raise WebhookSignatureError(
            "Stripe-Signature: no v1 signature matches the body (wrong secret, or the body was "
            "altered after signing)"
        )
    age = now - timestamp
    if abs(age) > tolerance_s:
        raise WebhookSignatureError(
            f"Stripe-Signature: timestamp is {int(age)} s from now, outside the {tolerance_s} s "
            "tolerance (a replayed or delayed delivery)"
        )
    return timestamp
