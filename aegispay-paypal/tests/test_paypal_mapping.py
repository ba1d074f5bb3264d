"""PayPal answers mapped onto the outcome taxonomy: the table the adapter relies on."""

from __future__ import annotations

from typing import Any

import pytest
from aegispay.gateways import Outcome

from aegispay_paypal.mapping import error_result, order_result, parse_error, payment_result


def paypal_error(name: str, issue: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "message": "m", "debug_id": "dbg1"}
    if issue:
        body["details"] = [{"issue": issue, "description": f"{issue} happened"}]
    return body


@pytest.mark.parametrize(
    ("status", "body", "outcome", "code", "elsewhere"),
    [
        (422, paypal_error("UNPROCESSABLE_ENTITY", "INSTRUMENT_DECLINED"), Outcome.DECLINED,
         "INSTRUMENT_DECLINED", False),
        (422, paypal_error("UNPROCESSABLE_ENTITY", "CURRENCY_NOT_SUPPORTED"), Outcome.DECLINED,
         "CURRENCY_NOT_SUPPORTED", True),
        (422, paypal_error("UNPROCESSABLE_ENTITY", "PAYEE_ACCOUNT_RESTRICTED"), Outcome.DECLINED,
         "PAYEE_ACCOUNT_RESTRICTED", True),
        (422, paypal_error("UNPROCESSABLE_ENTITY", "PAYPAL_REQUEST_ID_PREVIOUSLY_USED"),
         Outcome.DECLINED, "PAYPAL_REQUEST_ID_PREVIOUSLY_USED", False),
        (422, paypal_error("UNPROCESSABLE_ENTITY", "ORDER_NOT_APPROVED"), Outcome.REQUIRES_ACTION,
         None, False),
        (422, paypal_error("UNPROCESSABLE_ENTITY", "PAYER_ACTION_REQUIRED"),
         Outcome.REQUIRES_ACTION, None, False),
        (422, paypal_error("UNPROCESSABLE_ENTITY", "PREVIOUS_REQUEST_IN_PROGRESS"),
         Outcome.UNKNOWN, None, False),
        (409, paypal_error("RESOURCE_CONFLICT"), Outcome.UNKNOWN, None, False),
        (404, paypal_error("RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID"), Outcome.DECLINED,
         "INVALID_RESOURCE_ID", False),
        (400, paypal_error("INVALID_REQUEST"), Outcome.DECLINED, "INVALID_REQUEST", False),
        (401, {"error": "invalid_token"}, Outcome.NOT_SENT, None, False),
        (500, paypal_error("INTERNAL_SERVER_ERROR"), Outcome.UNKNOWN, None, False),
        (503, "<html>busy</html>", Outcome.UNKNOWN, None, False),
        (502, None, Outcome.UNKNOWN, None, False),
    ],
)  # fmt: skip
def test_error_table(
    status: int, body: Any, outcome: Outcome, code: str | None, elsewhere: bool
) -> None:
    result = error_result(status, body, {}, "ORDER1")
    assert result.outcome is outcome, result
    assert result.decline_code == code
    assert result.retryable_elsewhere is elsewhere
    assert result.reference == "ORDER1"


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), ("0.5", 0.5), ("soon", None)])
def test_rate_limit_is_not_sent_with_retry_after(header: str, seconds: float | None) -> None:
    result = error_result(429, paypal_error("RATE_LIMIT_REACHED"), {"retry-after": header})
    assert result.outcome is Outcome.NOT_SENT
    assert result.retry_after_s == seconds


def test_error_summary_keeps_the_debug_id_for_paypal_support() -> None:
    error = parse_error(422, paypal_error("UNPROCESSABLE_ENTITY", "INSTRUMENT_DECLINED"))
    assert error.code == "INSTRUMENT_DECLINED"
    assert "dbg1" in error.summary()


def order(status: str, intent: str = "CAPTURE", **payments: Any) -> dict[str, Any]:
    return {
        "id": "ORDER1",
        "intent": intent,
        "status": status,
        "purchase_units": [{"payments": payments}],
        "links": [{"rel": "approve", "href": "https://paypal.test/checkoutnow?token=ORDER1"}],
    }


@pytest.mark.parametrize(
    ("body", "outcome", "captured", "code"),
    [
        (order("CREATED"), Outcome.REQUIRES_ACTION, False, None),
        (order("PAYER_ACTION_REQUIRED"), Outcome.REQUIRES_ACTION, False, None),
        (order("SAVED"), Outcome.PENDING, False, None),
        (order("VOIDED"), Outcome.DECLINED, False, "ORDER_VOIDED"),
        (order("COMPLETED", captures=[{"status": "COMPLETED"}]), Outcome.SUCCEEDED, True, None),
        (order("COMPLETED", captures=[{"status": "PENDING"}]), Outcome.PENDING, False, None),
        # A COMPLETED order can hold a declined capture.
        (order("COMPLETED", captures=[{"status": "DECLINED",
                                       "processor_response": {"response_code": "5120"}}]),
         Outcome.DECLINED, False, "5120"),
        (order("COMPLETED", captures=[{"status": "FAILED"}]), Outcome.DECLINED, False,
         "CAPTURE_FAILED"),
        (order("COMPLETED", "AUTHORIZE", authorizations=[{"status": "CREATED"}]),
         Outcome.SUCCEEDED, False, None),
        (order("COMPLETED", "AUTHORIZE", authorizations=[{"status": "DENIED"}]),
         Outcome.DECLINED, False, "AUTHORIZATION_DENIED"),
        (order("COMPLETED", "AUTHORIZE", authorizations=[{"status": "PENDING"}]),
         Outcome.PENDING, False, None),
        (order("SOMETHING_NEW"), Outcome.UNKNOWN, False, None),
    ],
)  # fmt: skip
def test_order_table(
    body: dict[str, Any], outcome: Outcome, captured: bool, code: str | None
) -> None:
    result = order_result(body)
    assert (result.outcome, result.captured, result.decline_code) == (outcome, captured, code)
    assert result.reference == "ORDER1"


def test_requires_action_carries_the_approval_link_and_order_id() -> None:
    result = order_result(order("CREATED"))
    assert result.next_action == {
        "type": "paypal_approval",
        "order_id": "ORDER1",
        "approval_url": "https://paypal.test/checkoutnow?token=ORDER1",
    }


@pytest.mark.parametrize(
    ("status", "outcome"),
    [("COMPLETED", Outcome.SUCCEEDED), ("PENDING", Outcome.PENDING),
     ("FAILED", Outcome.DECLINED), ("CANCELLED", Outcome.DECLINED), ("ODD", Outcome.UNKNOWN)],
)  # fmt: skip
def test_refund_statuses_and_reference(status: str, outcome: Outcome) -> None:
    result = payment_result("refund", {"id": "REF1", "status": status}, "ORDER1")
    assert result.outcome is outcome
    if outcome is not Outcome.UNKNOWN:
        assert result.reference == "REF1"
