"""The outcome table: every kind of Razorpay answer (or none) to one AegisPay outcome."""

from __future__ import annotations

import json

import httpx
import pytest
from aegispay.gateways import Outcome

from aegispay_razorpay.outcomes import (
    error_result,
    parse_error,
    retry_after_seconds,
    transport_result,
)


def razorpay_error(**fields: object) -> bytes:
    error = {
        "code": "BAD_REQUEST_ERROR",
        "description": "",
        "field": None,
        "source": "NA",
        "step": "NA",
        "reason": "NA",
        "metadata": {},
    }
    error.update(fields)
    return json.dumps({"error": error}).encode()


BANK_DECLINE = razorpay_error(
    description="Your payment has been declined by the bank",
    source="bank",
    step="payment_authorization",
    reason="insufficient_funds",
    metadata={"payment_id": "pay_X", "order_id": "order_X"},
)


@pytest.mark.parametrize(
    ("status", "body", "headers", "outcome", "code", "elsewhere"),
    [
        (429, b"", {"retry-after": "7"}, Outcome.NOT_SENT, None, False),
        (500, razorpay_error(code="SERVER_ERROR"), {}, Outcome.UNKNOWN, None, False),
        (502, b"<html>bad gateway</html>", {}, Outcome.UNKNOWN, None, False),
        (503, b"", {}, Outcome.UNKNOWN, None, False),
        (409, razorpay_error(description="in progress"), {}, Outcome.UNKNOWN, None, False),
        (400, BANK_DECLINE, {}, Outcome.DECLINED, "insufficient_funds", False),
        (
            401,
            razorpay_error(description="The api key provided is invalid"),
            {},
            Outcome.DECLINED,
            "authentication_failed",
            True,
        ),
        (
            400,
            razorpay_error(description="Currency USD is not supported", field="currency"),
            {},
            Outcome.DECLINED,
            "bad_request_error",
            True,
        ),
        (
            400,
            razorpay_error(
                description="Different request with the same idempotency key has already "
                "been processed."
            ),
            {},
            Outcome.DECLINED,
            "idempotency_key_reused",
            False,
        ),
        (
            400,
            razorpay_error(description="The amount must be an integer.", reason="input_fail"),
            {},
            Outcome.DECLINED,
            "input_fail",
            False,
        ),
        (400, b"not json", {}, Outcome.UNKNOWN, None, False),
        (404, b'{"message": "no such route"}', {}, Outcome.UNKNOWN, None, False),
    ],
)
def test_http_answers(
    status: int,
    body: bytes,
    headers: dict[str, str],
    outcome: Outcome,
    code: str | None,
    elsewhere: bool,
) -> None:
    result = error_result(status, body, headers)
    assert result.outcome is outcome, result
    assert result.decline_code == code
    assert result.retryable_elsewhere is elsewhere
    if status == 429:
        assert result.retry_after_s == 7


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (httpx.ConnectError("refused"), Outcome.NOT_SENT),
        (httpx.ConnectTimeout("slow"), Outcome.NOT_SENT),
        (httpx.PoolTimeout("pool"), Outcome.NOT_SENT),
        (httpx.UnsupportedProtocol("ftp"), Outcome.NOT_SENT),
        (httpx.ReadTimeout("read"), Outcome.UNKNOWN),
        (httpx.WriteTimeout("write"), Outcome.UNKNOWN),
        (httpx.ReadError("reset"), Outcome.UNKNOWN),
        (httpx.WriteError("broken pipe"), Outcome.UNKNOWN),
        (httpx.RemoteProtocolError("server disconnected"), Outcome.UNKNOWN),
    ],
)
def test_transport_failures(exc: Exception, outcome: Outcome) -> None:
    assert transport_result(exc).outcome is outcome


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after": " 0.5 "}) == 0.5
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after_seconds({"retry-after": "-3"}) is None
    assert retry_after_seconds({}) is None


def test_parse_error_reads_every_field_and_tolerates_gaps() -> None:
    error = parse_error(BANK_DECLINE)
    assert error is not None
    assert (error.code, error.source, error.step, error.reason) == (
        "BAD_REQUEST_ERROR",
        "bank",
        "payment_authorization",
        "insufficient_funds",
    )
    assert error.metadata == {"payment_id": "pay_X", "order_id": "order_X"}
    assert parse_error(b'{"error": "text"}') is None
    assert parse_error(b"[1]") is None
    sparse = parse_error(b'{"error": {"reason": "NA", "code": null}}')
    assert sparse is not None and sparse.decline_code == "declined"
