"""PayPal's answers mapped onto the core outcome taxonomy (pure functions, no I/O).

The AegisPay reference of a PayPal payment is the **order id**: it is what the customer approves,
it is echoed by every capture / authorization webhook (``supplementary_data.related_ids``), and
the authorization, captures and refunds hanging off it are read from ``GET /v2/checkout/orders``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from aegispay.gateways import GatewayResult, Outcome

__all__ = [
    "GATEWAY_SPECIFIC_ISSUES",
    "IN_PROGRESS_ISSUES",
    "REQUIRES_ACTION_ISSUES",
    "PayPalError",
    "approval_url",
    "authorization_of",
    "captures_of",
    "error_result",
    "next_action_of",
    "order_result",
    "parse_error",
    "payment_result",
    "refunds_of",
    "retry_after",
]

# Issues that mean "the payer has to come back to PayPal", not "no".
REQUIRES_ACTION_ISSUES = frozenset({"PAYER_ACTION_REQUIRED", "ORDER_NOT_APPROVED"})

# A request with the same PayPal-Request-Id is still being processed: it may yet succeed.
IN_PROGRESS_ISSUES = frozenset({"PREVIOUS_REQUEST_IN_PROGRESS", "RESOURCE_CONFLICT"})

# Refusals about this PayPal account, not the payer's bank: routing may try another gateway.
GATEWAY_SPECIFIC_ISSUES = frozenset(
    {
        "CURRENCY_NOT_SUPPORTED",
        "PAYEE_ACCOUNT_RESTRICTED",
        "PAYEE_ACCOUNT_LOCKED_OR_CLOSED",
        "PAYEE_ACCOUNT_INVALID",
        "PAYEE_NOT_ENABLED_FOR_CARD_PROCESSING",
        "PERMISSION_DENIED",
        "NOT_AUTHORIZED",
        "AUTHENTICATION_FAILURE",
    }
)


@attrs.frozen
class PayPalError:
    """PayPal's error body: ``{"name", "message", "debug_id", "details": [{"issue", ...}]}``.

    ``code`` is the first detail's ``issue`` (INSTRUMENT_DECLINED...), else ``name``.
    """

    name: str
    message: str
    issue: str | None
    description: str
    debug_id: str | None

    @property
    def code(self) -> str:
        return self.issue or self.name

    def summary(self) -> str:
        text = self.description or self.message
        debug = f" (debug_id {self.debug_id})" if self.debug_id else ""
        return f"{self.code}: {text}{debug}".strip()


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_error(status: int, body: Any) -> PayPalError:
    """Read PayPal's error body; anything else (an HTML page, an OAuth error) still gives a name."""
    if not isinstance(body, Mapping):
        return PayPalError(f"HTTP_{status}", "", None, "", None)
    if "error" in body and "name" not in body:  # OAuth: {"error": "invalid_client", ...}
        error = body["error"]
        name = error if isinstance(error, str) else f"HTTP_{status}"
        return PayPalError(name, _text(body.get("error_description")), None, "", None)
    details = body.get("details")
    first: Mapping[str, Any] = {}
    if isinstance(details, Sequence) and details and isinstance(details[0], Mapping):
        first = details[0]
    issue = first.get("issue")
    return PayPalError(
        name=_text(body.get("name")) or f"HTTP_{status}",
        message=_text(body.get("message")),
        issue=issue if isinstance(issue, str) and issue else None,
        description=_text(first.get("description")),
        debug_id=_text(body.get("debug_id")) or None,
    )


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds (only the delta-seconds form: PayPal sends no dates)."""
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def error_result(
    status: int,
    body: Any,
    headers: Mapping[str, str],
    reference: str | None = None,
    next_action: Mapping[str, str] | None = None,
) -> GatewayResult:
    """A non-2xx answer to a call that was sent.

    429 was not processed (NOT_SENT, with Retry-After). 5xx may have been (UNKNOWN), and so may
    a 409 or PREVIOUS_REQUEST_IN_PROGRESS: a request with the same PayPal-Request-Id is still
    running. 401 means the call was
    refused before processing. Any other 4xx is PayPal's "no", with its issue as the code.
    """
    error = parse_error(status, body)
    if status == 429:
        return GatewayResult(
            Outcome.NOT_SENT,
            reference,
            message=f"rate limited by PayPal: {error.summary()}",
            retry_after_s=retry_after(headers),
        )
    if status >= 500 or status == 409 or error.code in IN_PROGRESS_ISSUES:
        return GatewayResult(
            Outcome.UNKNOWN, reference, message=f"PayPal HTTP {status}: {error.summary()}"
        )
    if status == 401:
        return GatewayResult(
            Outcome.NOT_SENT, reference, message=f"PayPal refused our credentials: {error.code}"
        )
    if error.issue in REQUIRES_ACTION_ISSUES:
        return GatewayResult(
            Outcome.REQUIRES_ACTION, reference, message=error.summary(), next_action=next_action
        )
    return GatewayResult(
        Outcome.DECLINED,
        reference,
        decline_code=error.code,
        message=error.summary(),
        retryable_elsewhere=error.code in GATEWAY_SPECIFIC_ISSUES,
    )


# -- orders -------------------------------------------------------------------------------------


def _units(order: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    units = order.get("purchase_units")
    if isinstance(units, Sequence):
        return [u for u in units if isinstance(u, Mapping)]
    return []


def _payments(order: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    found: list[Mapping[str, Any]] = []
    for unit in _units(order):
        payments = unit.get("payments")
        if isinstance(payments, Mapping):
            items = payments.get(kind)
            if isinstance(items, Sequence):
                found.extend(i for i in items if isinstance(i, Mapping))
    return found


def captures_of(order: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return _payments(order, "captures")


def refunds_of(order: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return _payments(order, "refunds")


def authorization_of(order: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The order's authorization (AegisPay creates one purchase unit, so at most one)."""
    authorizations = _payments(order, "authorizations")
    return authorizations[0] if authorizations else None


def approval_url(order: Mapping[str, Any]) -> str | None:
    links = order.get("links")
    if not isinstance(links, Sequence):
        return None
    for rel in ("payer-action", "approve"):
        for link in links:
            if isinstance(link, Mapping) and link.get("rel") == rel:
                href = link.get("href")
                if isinstance(href, str):
                    return href
    return None


def next_action_of(order: Mapping[str, Any]) -> dict[str, str] | None:
    """What the client needs to send the payer to PayPal: the order id and approval link."""
    order_id, url = order.get("id"), approval_url(order)
    if not isinstance(order_id, str) or url is None:
        return None
    return {"type": "paypal_approval", "order_id": order_id, "approval_url": url}


def _decline_code(payment: Mapping[str, Any], default: str) -> str:
    processor = payment.get("processor_response")
    if isinstance(processor, Mapping) and isinstance(processor.get("response_code"), str):
        return str(processor["response_code"])
    details = payment.get("status_details")
    if isinstance(details, Mapping) and isinstance(details.get("reason"), str):
        return str(details["reason"])
    return default


def payment_result(kind: str, payment: Mapping[str, Any], reference: str | None) -> GatewayResult:
    """One capture, authorization or refund object (``kind``) as a result for ``reference``."""
    status = payment.get("status")
    if kind == "capture":
        if status in ("COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED"):
            return GatewayResult(Outcome.SUCCEEDED, reference, captured=True)
        if status == "PENDING":
            return GatewayResult(Outcome.PENDING, reference, message="capture pending at PayPal")
        if status in ("DECLINED", "FAILED"):
            code = _decline_code(payment, f"CAPTURE_{status}")
            return GatewayResult(Outcome.DECLINED, reference, decline_code=code)
    elif kind == "authorization":
        if status in ("CREATED", "PARTIALLY_CAPTURED", "CAPTURED"):
            return GatewayResult(Outcome.SUCCEEDED, reference, captured=status == "CAPTURED")
        if status == "PENDING":
            return GatewayResult(Outcome.PENDING, reference, message="authorization pending")
        if status in ("DENIED", "EXPIRED", "VOIDED"):
            code = _decline_code(payment, f"AUTHORIZATION_{status}")
            return GatewayResult(Outcome.DECLINED, reference, decline_code=code)
    elif kind == "refund":
        refund_id = payment.get("id") if isinstance(payment.get("id"), str) else None
        if status == "COMPLETED":
            return GatewayResult(Outcome.SUCCEEDED, refund_id)
        if status == "PENDING":
            return GatewayResult(Outcome.PENDING, refund_id, message="refund pending at PayPal")
        if status in ("FAILED", "CANCELLED"):
            code = _decline_code(payment, f"REFUND_{status}")
            return GatewayResult(Outcome.DECLINED, refund_id, decline_code=code)
    return GatewayResult(
        Outcome.UNKNOWN, reference, message=f"unexpected PayPal {kind} status {status!r}"
    )


def order_result(order: Mapping[str, Any]) -> GatewayResult:
    """An order (after create, approval, capture or authorize) as a result; the reference is
    the order id. APPROVED is not mapped here: the adapter completes it first."""
    order_id = order.get("id") if isinstance(order.get("id"), str) else None
    status = order.get("status")
    if status in ("CREATED", "PAYER_ACTION_REQUIRED"):
        return GatewayResult(
            Outcome.REQUIRES_ACTION,
            order_id,
            message="waiting for the payer to approve the order at PayPal",
            next_action=next_action_of(order),
        )
    if status == "SAVED":
        return GatewayResult(Outcome.PENDING, order_id, message="order saved, not completed")
    if status == "VOIDED":
        return GatewayResult(Outcome.DECLINED, order_id, decline_code="ORDER_VOIDED")
    if status == "COMPLETED":
        # A COMPLETED order can still hold a declined capture: the payment object decides.
        captures = captures_of(order)
        if order.get("intent") == "CAPTURE" and captures:
            return payment_result("capture", captures[-1], order_id)
        authorization = authorization_of(order)
        if authorization is not None:
            return payment_result("authorization", authorization, order_id)
        if captures:
            return payment_result("capture", captures[-1], order_id)
    return GatewayResult(
        Outcome.UNKNOWN, order_id, message=f"unexpected PayPal order status {status!r}"
    )
