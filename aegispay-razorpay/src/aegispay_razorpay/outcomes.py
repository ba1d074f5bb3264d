"""How Razorpay's answers (and the lack of one) map to AegisPay outcomes.

Pure functions, so the whole table is unit-tested without a server:

==============================================  ===============================================
what happened                                   outcome
==============================================  ===============================================
connect refused / DNS / TLS / pool full          NOT_SENT (the request never left)
read timeout, reset or EOF after sending         UNKNOWN (it may have been processed)
HTTP 429                                         NOT_SENT, ``retry_after_s`` from Retry-After
HTTP 5xx, 409 (same key still processing)        UNKNOWN
HTTP 401 / 403 (keys wrong or not permitted)     DECLINED ``authentication_failed``, retryable
                                                 elsewhere (this gateway's problem, not the
                                                 payment's)
HTTP 400 for a currency the account lacks        DECLINED, retryable elsewhere
HTTP 400 from the bank / customer / gateway      DECLINED with Razorpay's ``error.reason``
other HTTP 4xx with a Razorpay error body        DECLINED with ``reason`` (or ``code``)
a 4xx that is not a Razorpay error body          UNKNOWN (something in between answered; never
                                                 guess that nothing happened)
==============================================  ===============================================

Razorpay's error body: ``{"error": {"code", "description", "field", "source", "step",
"reason", "metadata"}}`` with ``code`` BAD_REQUEST_ERROR, GATEWAY_ERROR or SERVER_ERROR.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs
import httpx
from aegispay.gateways import GatewayResult, Outcome

__all__ = [
    "RazorpayError",
    "error_result",
    "parse_error",
    "retry_after_seconds",
    "transport_result",
]

# Reasons Razorpay leaves as "NA"/null carry nothing; fall back to the code.
_EMPTY = frozenset({"", "na", "null", "none"})
# A decline that another gateway could well accept: a currency or method this account lacks.
_ACCOUNT_FIELDS = frozenset({"currency", "method"})


@attrs.frozen
class RazorpayError:
    """The ``error`` object of a Razorpay error response (every field may be missing)."""

    code: str | None = None
    description: str = ""
    field: str | None = None
    source: str | None = None
    step: str | None = None
    reason: str | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def decline_code(self) -> str:
        for candidate in (self.reason, self.code):
            if candidate and candidate.strip().lower() not in _EMPTY:
                return candidate.strip().lower()
        return "declined"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def parse_error(body: bytes) -> RazorpayError | None:
    """The Razorpay error in ``body``, or None when it is not one."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None
    metadata = error.get("metadata")
    return RazorpayError(
        code=_text(error.get("code")),
        description=_text(error.get("description")) or "",
        field=_text(error.get("field")),
        source=_text(error.get("source")),
        step=_text(error.get("step")),
        reason=_text(error.get("reason")),
        metadata=metadata if isinstance(metadata, dict) else {},
    )


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds (delta-seconds form; an HTTP date is not worth guessing at)."""
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _is_idempotency_mismatch(error: RazorpayError) -> bool:
    return "idempotency" in error.description.lower() and "different" in error.description.lower()


def error_result(status: int, body: bytes, headers: Mapping[str, str]) -> GatewayResult:
    """The outcome of a non-2xx answer (``headers`` with lower-cased names)."""
    if status == 429:
        return GatewayResult(
            Outcome.NOT_SENT,
            message="rate limited by Razorpay (HTTP 429)",
            retry_after_s=retry_after_seconds(headers),
        )
    if status >= 500:
        return GatewayResult(Outcome.UNKNOWN, message=f"Razorpay answered HTTP {status}")
    if status == 409:
        # Razorpay: "a request received while a prior one with the same key is still being
        # processed gets 409": the first one may yet succeed.
        return GatewayResult(
            Outcome.UNKNOWN, message="Razorpay is still processing a request with this key (409)"
        )
    error = parse_error(body)
    if error is None:
        return GatewayResult(
            Outcome.UNKNOWN, message=f"HTTP {status} without a Razorpay error body"
        )
    message = f"Razorpay {error.code or 'error'}: {error.description}".strip()
    if status in (401, 403):
        return GatewayResult(
            Outcome.DECLINED,
            decline_code="authentication_failed",
            message=message,
            retryable_elsewhere=True,
        )
    if _is_idempotency_mismatch(error):
        return GatewayResult(
            Outcome.DECLINED, decline_code="idempotency_key_reused", message=message
        )
    retryable = error.field in _ACCOUNT_FIELDS or "currency" in error.description.lower()
    return GatewayResult(
        Outcome.DECLINED,
        decline_code=error.decline_code,
        message=message,
        retryable_elsewhere=retryable,
    )


# Exceptions raised before a single byte of the request could have reached Razorpay.
_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.InvalidURL,
)


def transport_result(exc: Exception) -> GatewayResult:
    """The outcome of a request that got no HTTP answer."""
    kind = type(exc).__name__
    if isinstance(exc, _NOT_SENT):
        return GatewayResult(Outcome.NOT_SENT, message=f"request not sent to Razorpay ({kind})")
    # ReadTimeout, WriteTimeout, ReadError, WriteError, RemoteProtocolError, anything else:
    # part or all of the request may have reached Razorpay.
    return GatewayResult(Outcome.UNKNOWN, message=f"no answer from Razorpay ({kind})")
