"""Stripe answers -> AegisPay outcomes. Pure functions: the whole table is unit-tested.

The rules that keep money safe:

* a transport failure before the request left (connect refused, DNS, TLS, pool exhausted) is
  NOT_SENT; any failure after it may have left (read timeout, reset, truncated answer) is UNKNOWN;
* 5xx, 409 (a concurrent request with the same idempotency key is running) and 424 are UNKNOWN:
  Stripe may have executed it, and only a lookup or a retry with the same key can tell;
* 429 is NOT_SENT with the Retry-After seconds: Stripe refuses rate-limited requests unexecuted;
* ``card_error`` is a bank decline (DECLINED with Stripe's ``decline_code``, never failed over);
* other 4xx refusals were not executed; on authorize they are specific to this gateway
  (``retryable_elsewhere``) because no money moved and another gateway may accept the payment.
* Status lookups never answer NOT_SENT for an authorization: Stripe's search is eventually
  consistent, so "not found" is not proof that the request never arrived.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

import httpx
from aegispay.gateways import GatewayResult, Operation, Outcome

__all__ = [
    "capture_result",
    "error_result",
    "intent_result",
    "lookup_result",
    "refund_result",
    "retry_after_seconds",
    "transport_result",
    "void_result",
]

# httpx errors raised before any byte of the request can have reached Stripe.
_NEVER_SENT = (
    httpx.ConnectError,  # refused, DNS failure, TLS handshake failure
    httpx.ConnectTimeout,
    httpx.PoolTimeout,  # no connection from our own pool
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
)


def transport_result(exc: httpx.HTTPError) -> GatewayResult:
    """A request that got no HTTP answer."""
    kind = type(exc).__name__
    if isinstance(exc, _NEVER_SENT):
        return GatewayResult(Outcome.NOT_SENT, message=f"not sent to Stripe ({kind})")
    return GatewayResult(
        Outcome.UNKNOWN, message=f"no answer from Stripe after sending ({kind}); look it up"
    )


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None when absent or invalid."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None  # NaN / infinity
    return max(0.0, seconds)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _with_request_id(message: str, request_id: str | None) -> str:
    return f"{message} [request {request_id}]" if request_id else message


def error_result(
    status: int,
    body: Any,
    operation: Operation,
    *,
    retry_after: str | None = None,
    request_id: str | None = None,
) -> GatewayResult:
    """A Stripe error answer (HTTP 4xx/5xx with ``{"error": {...}}``, or anything else)."""
    error = body.get("error") if isinstance(body, Mapping) else None
    error = error if isinstance(error, Mapping) else {}
    etype = _str(error.get("type")) or "unknown_error"
    code = _str(error.get("code"))
    decline = _str(error.get("decline_code"))
    text = _str(error.get("message")) or f"HTTP {status}"
    message = _with_request_id(f"{etype}: {text}", request_id)
    intent = error.get("payment_intent")
    reference = _str(intent.get("id")) if isinstance(intent, Mapping) else None
    if status == 429:
        return GatewayResult(
            Outcome.NOT_SENT,
            decline_code=code or "rate_limit",
            message=message,
            retry_after_s=retry_after_seconds(retry_after),
        )
    if status >= 500 or status in (409, 424):
        # 409: the same idempotency key is being executed right now; 424: an upstream of
        # Stripe failed. Either way it may still happen.
        return GatewayResult(Outcome.UNKNOWN, reference=reference, message=message)
    if etype == "card_error":
        return GatewayResult(
            Outcome.DECLINED,
            reference=reference,
            decline_code=decline or code or "card_declined",
            message=message,
        )
    if etype == "idempotency_error":
        # Same key, different parameters: Stripe executed nothing for this request.
        return GatewayResult(
            Outcome.DECLINED, decline_code=code or "idempotency_error", message=message
        )
    fallback = {401: "authentication_error", 403: "permission_error", 404: "resource_missing"}
    return GatewayResult(
        Outcome.DECLINED,
        reference=reference,
        decline_code=code or fallback.get(status, f"http_{status}"),
        message=message,
        retryable_elsewhere=operation is Operation.AUTHORIZE,
    )


def _next_action(intent: Mapping[str, Any], kind: str | None = None) -> dict[str, str]:
    """What the client needs to finish the payment: always the client secret, plus the
    redirect URL when Stripe gives one."""
    action: dict[str, str] = {}
    raw = intent.get("next_action")
    if isinstance(raw, Mapping):
        action["type"] = _str(raw.get("type")) or "use_stripe_sdk"
        redirect = raw.get("redirect_to_url")
        if isinstance(redirect, Mapping) and _str(redirect.get("url")):
            action["url"] = str(redirect["url"])
    action.setdefault("type", kind or "use_stripe_sdk")
    secret = _str(intent.get("client_secret"))
    if secret:
        action["client_secret"] = secret
    reference = _str(intent.get("id"))
    if reference:
        action["payment_intent"] = reference
    return action


def _last_error_code(intent: Mapping[str, Any]) -> str | None:
    error = intent.get("last_payment_error")
    if not isinstance(error, Mapping):
        return None
    return _str(error.get("decline_code")) or _str(error.get("code")) or "card_declined"


def intent_result(intent: Mapping[str, Any]) -> GatewayResult:
    """A PaymentIntent as the outcome of an authorization (create, confirm or lookup)."""
    reference = _str(intent.get("id"))
    status = intent.get("status")
    if status == "requires_capture":
        return GatewayResult(Outcome.SUCCEEDED, reference=reference, captured=False)
    if status == "succeeded":
        return GatewayResult(Outcome.SUCCEEDED, reference=reference, captured=True)
    if status == "processing":
        return GatewayResult(
            Outcome.PENDING, reference=reference, message="processing at Stripe; await a webhook"
        )
    if status == "requires_action":
        return GatewayResult(
            Outcome.REQUIRES_ACTION,
            reference=reference,
            next_action=_next_action(intent),
            message="the customer must authenticate (3D Secure or a redirect)",
        )
    if status == "requires_payment_method":
        code = _last_error_code(intent)
        if code is not None:
            return GatewayResult(
                Outcome.DECLINED, reference=reference, decline_code=code, message="declined"
            )
        return GatewayResult(
            Outcome.REQUIRES_ACTION,
            reference=reference,
            next_action=_next_action(intent, "collect_payment_method"),
            message="the client must collect a payment method (Stripe.js / Elements)",
        )
    if status == "requires_confirmation":
        return GatewayResult(
            Outcome.REQUIRES_ACTION,
            reference=reference,
            next_action=_next_action(intent, "confirm_payment"),
            message="the client must confirm the PaymentIntent",
        )
    if status == "canceled":
        reason = _str(intent.get("cancellation_reason"))
        return GatewayResult(
            Outcome.DECLINED,
            reference=reference,
            decline_code="payment_intent_canceled",
            message=f"canceled ({reason})" if reason else "canceled",
        )
    return GatewayResult(
        Outcome.UNKNOWN, reference=reference, message=f"unexpected PaymentIntent status {status!r}"
    )


def capture_result(intent: Mapping[str, Any]) -> GatewayResult:
    """The PaymentIntent a successful capture call returned."""
    reference = _str(intent.get("id"))
    status = intent.get("status")
    if status == "succeeded":
        return GatewayResult(Outcome.SUCCEEDED, reference=reference, captured=True)
    if status == "processing":
        return GatewayResult(Outcome.PENDING, reference=reference, message="capture processing")
    return GatewayResult(
        Outcome.UNKNOWN, reference=reference, message=f"capture answered status {status!r}"
    )


def void_result(intent: Mapping[str, Any]) -> GatewayResult:
    """The PaymentIntent a successful cancel call returned."""
    reference = _str(intent.get("id"))
    if intent.get("status") == "canceled":
        return GatewayResult(Outcome.SUCCEEDED, reference=reference)
    return GatewayResult(
        Outcome.UNKNOWN,
        reference=reference,
        message=f"cancel answered status {intent.get('status')!r}",
    )


def refund_result(refund: Mapping[str, Any]) -> GatewayResult:
    """A Refund object (create or lookup). The reference is the refund's id (re_...)."""
    reference = _str(refund.get("id"))
    status = refund.get("status")
    if status == "succeeded":
        return GatewayResult(Outcome.SUCCEEDED, reference=reference)
    if status in ("pending", "requires_action"):
        return GatewayResult(
            Outcome.PENDING, reference=reference, message=f"refund {status}; await a webhook"
        )
    if status in ("failed", "canceled"):
        code = _str(refund.get("failure_reason")) or f"refund_{status}"
        return GatewayResult(
            Outcome.DECLINED, reference=reference, decline_code=code, message=f"refund {status}"
        )
    return GatewayResult(
        Outcome.UNKNOWN, reference=reference, message=f"unexpected refund status {status!r}"
    )


def lookup_result(operation: Operation, intent: Mapping[str, Any]) -> GatewayResult:
    """What a PaymentIntent says about an earlier capture or void (retrieval is consistent, so
    "not done" is an authoritative NOT_SENT for those) or authorization."""
    reference = _str(intent.get("id"))
    status = intent.get("status")
    if operation is Operation.CAPTURE:
        if status in ("succeeded", "processing"):
            return capture_result(intent)
        if status == "requires_capture":
            return GatewayResult(
                Outcome.NOT_SENT, reference=reference, message="Stripe has not captured it"
            )
        if status == "canceled":
            return GatewayResult(
                Outcome.DECLINED, reference=reference, decline_code="payment_intent_canceled"
            )
    elif operation is Operation.VOID:
        if status == "canceled":
            return GatewayResult(Outcome.SUCCEEDED, reference=reference)
        if status == "succeeded":
            return GatewayResult(
                Outcome.DECLINED, reference=reference, decline_code="already_captured"
            )
        if status in ("requires_capture", "requires_payment_method", "requires_confirmation"):
            return GatewayResult(
                Outcome.NOT_SENT, reference=reference, message="Stripe has not canceled it"
            )
    else:
        return intent_result(intent)
    return GatewayResult(
        Outcome.UNKNOWN,
        reference=reference,
        message=f"PaymentIntent status {status!r} does not settle the {operation.value}",
    )
