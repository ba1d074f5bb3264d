"""The outcome mapping table: every Stripe answer class -> one AegisPay outcome."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from aegispay.gateways import Operation, Outcome

from aegispay_stripe import mapping


def err(etype: str, **fields: Any) -> dict[str, Any]:
    return {"error": {"type": etype, "message": "m", **fields}}


AUTH = Operation.AUTHORIZE


@pytest.mark.parametrize(
    ("status", "body", "operation", "outcome", "code", "elsewhere"),
    [
        # bank declines: never failed over, the decline code kept
        (
            402,
            err("card_error", code="card_declined", decline_code="insufficient_funds"),
            AUTH,
            Outcome.DECLINED,
            "insufficient_funds",
            False,
        ),
        (
            402,
            err("card_error", code="expired_card"),
            AUTH,
            Outcome.DECLINED,
            "expired_card",
            False,
        ),
        (402, err("card_error"), AUTH, Outcome.DECLINED, "card_declined", False),
        # refused unexecuted by this gateway: another gateway may take the payment
        (
            400,
            err("invalid_request_error", code="amount_too_small"),
            AUTH,
            Outcome.DECLINED,
            "amount_too_small",
            True,
        ),
        (401, err("invalid_request_error"), AUTH, Outcome.DECLINED, "authentication_error", True),
        (403, err("invalid_request_error"), AUTH, Outcome.DECLINED, "permission_error", True),
        # ...but a refused capture or refund is just refused
        (
            400,
            err("invalid_request_error", code="amount_too_large"),
            Operation.REFUND,
            Outcome.DECLINED,
            "amount_too_large",
            False,
        ),
        (
            404,
            err("invalid_request_error", code="resource_missing"),
            Operation.CAPTURE,
            Outcome.DECLINED,
            "resource_missing",
            False,
        ),
        # same key, other parameters: nothing executed, and not a gateway-specific refusal
        (400, err("idempotency_error"), AUTH, Outcome.DECLINED, "idempotency_error", False),
        # may have happened
        (
            409,
            err("idempotency_error", code="idempotency_key_in_use"),
            AUTH,
            Outcome.UNKNOWN,
            None,
            False,
        ),
        (500, err("api_error"), AUTH, Outcome.UNKNOWN, None, False),
        (502, None, AUTH, Outcome.UNKNOWN, None, False),
        (503, "<html>", Operation.REFUND, Outcome.UNKNOWN, None, False),
        (424, err("api_error"), AUTH, Outcome.UNKNOWN, None, False),
        # rate limited: refused unexecuted
        (
            429,
            err("invalid_request_error", code="rate_limit"),
            AUTH,
            Outcome.NOT_SENT,
            "rate_limit",
            False,
        ),
        (
            429,
            err("invalid_request_error", code="lock_timeout"),
            Operation.CAPTURE,
            Outcome.NOT_SENT,
            "lock_timeout",
            False,
        ),
        # something unexpected but refused
        (418, None, AUTH, Outcome.DECLINED, "http_418", True),
    ],
)
def test_error_table(
    status: int,
    body: Any,
    operation: Operation,
    outcome: Outcome,
    code: str | None,
    elsewhere: bool,
) -> None:
    result = mapping.error_result(status, body, operation, request_id="req_1")
    assert result.outcome is outcome
    if outcome is Outcome.DECLINED or outcome is Outcome.NOT_SENT:
        assert result.decline_code == code
    assert result.retryable_elsewhere is elsewhere
    assert "req_1" in result.message


def test_card_error_keeps_the_payment_intent_id() -> None:
    body = err("card_error", decline_code="do_not_honor", payment_intent={"id": "pi_1"})
    result = mapping.error_result(402, body, AUTH)
    assert (result.reference, result.decline_code) == ("pi_1", "do_not_honor")


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("0.5", 0.5),
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("-3", 0.0),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 40.0),
    ],
)
def test_retry_after(header: str | None, seconds: float | None) -> None:
    assert mapping.retry_after_seconds(header, now=60.0) == seconds
    result = mapping.error_result(429, None, AUTH, retry_after=header)
    assert result.outcome is Outcome.NOT_SENT
    assert result.retry_after_s == mapping.retry_after_seconds(header)


request = httpx.Request("POST", "https://api.stripe.com/v1/payment_intents")


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (httpx.ConnectError("refused", request=request), Outcome.NOT_SENT),
        (httpx.ConnectTimeout("slow", request=request), Outcome.NOT_SENT),
        (httpx.PoolTimeout("pool", request=request), Outcome.NOT_SENT),
        (httpx.UnsupportedProtocol("ftp", request=request), Outcome.NOT_SENT),
        (httpx.ReadTimeout("slow", request=request), Outcome.UNKNOWN),
        (httpx.WriteTimeout("slow", request=request), Outcome.UNKNOWN),
        (httpx.ReadError("reset", request=request), Outcome.UNKNOWN),
        (httpx.WriteError("reset", request=request), Outcome.UNKNOWN),
        (httpx.RemoteProtocolError("closed", request=request), Outcome.UNKNOWN),
    ],
)
def test_transport_table(exc: httpx.HTTPError, outcome: Outcome) -> None:
    assert mapping.transport_result(exc).outcome is outcome


def intent(status: str, **fields: Any) -> dict[str, Any]:
    return {"id": "pi_1", "status": status, "client_secret": "pi_1_secret_x", **fields}


@pytest.mark.parametrize(
    ("pi", "outcome", "captured", "code"),
    [
        (intent("requires_capture"), Outcome.SUCCEEDED, False, None),
        (intent("succeeded"), Outcome.SUCCEEDED, True, None),
        (intent("processing"), Outcome.PENDING, False, None),
        (
            intent("requires_action", next_action={"type": "use_stripe_sdk"}),
            Outcome.REQUIRES_ACTION,
            False,
            None,
        ),
        (intent("requires_payment_method"), Outcome.REQUIRES_ACTION, False, None),
        (intent("requires_confirmation"), Outcome.REQUIRES_ACTION, False, None),
        (
            intent(
                "requires_payment_method",
                last_payment_error={"code": "card_declined", "decline_code": "fraudulent"},
            ),
            Outcome.DECLINED,
            False,
            "fraudulent",
        ),
        (
            intent("canceled", cancellation_reason="abandoned"),
            Outcome.DECLINED,
            False,
            "payment_intent_canceled",
        ),
        (intent("mystery"), Outcome.UNKNOWN, False, None),
    ],
)
def test_intent_status_table(
    pi: dict[str, Any], outcome: Outcome, captured: bool, code: str | None
) -> None:
    result = mapping.intent_result(pi)
    assert (result.outcome, result.captured, result.decline_code) == (outcome, captured, code)
    assert result.reference == "pi_1"
    if outcome is Outcome.REQUIRES_ACTION:
        assert result.next_action is not None
        assert result.next_action["client_secret"] == "pi_1_secret_x"


def test_redirect_url_is_passed_to_the_client() -> None:
    pi = intent(
        "requires_action",
        next_action={"type": "redirect_to_url", "redirect_to_url": {"url": "https://acs/x"}},
    )
    action = mapping.intent_result(pi).next_action
    assert action == {
        "type": "redirect_to_url",
        "url": "https://acs/x",
        "client_secret": "pi_1_secret_x",
        "payment_intent": "pi_1",
    }


@pytest.mark.parametrize(
    ("operation", "status", "outcome"),
    [
        (Operation.CAPTURE, "succeeded", Outcome.SUCCEEDED),
        (Operation.CAPTURE, "requires_capture", Outcome.NOT_SENT),
        (Operation.CAPTURE, "canceled", Outcome.DECLINED),
        (Operation.CAPTURE, "processing", Outcome.PENDING),
        (Operation.CAPTURE, "requires_action", Outcome.UNKNOWN),
        (Operation.VOID, "canceled", Outcome.SUCCEEDED),
        (Operation.VOID, "requires_capture", Outcome.NOT_SENT),
        (Operation.VOID, "succeeded", Outcome.DECLINED),
        (Operation.VOID, "processing", Outcome.UNKNOWN),
        (Operation.AUTHORIZE, "succeeded", Outcome.SUCCEEDED),
        (Operation.STATUS, "requires_capture", Outcome.SUCCEEDED),
    ],
)
def test_lookup_table(operation: Operation, status: str, outcome: Outcome) -> None:
    assert mapping.lookup_result(operation, intent(status)).outcome is outcome


def test_authorization_lookups_never_answer_not_sent() -> None:
    statuses = [
        "requires_payment_method",
        "requires_confirmation",
        "requires_action",
        "processing",
        "requires_capture",
        "canceled",
        "succeeded",
        "other",
    ]
    for status in statuses:
        assert mapping.lookup_result(AUTH, intent(status)).outcome is not Outcome.NOT_SENT


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("succeeded", Outcome.SUCCEEDED),
        ("pending", Outcome.PENDING),
        ("requires_action", Outcome.PENDING),
        ("failed", Outcome.DECLINED),
        ("canceled", Outcome.DECLINED),
        ("odd", Outcome.UNKNOWN),
    ],
)
def test_refund_table(status: str, outcome: Outcome) -> None:
    result = mapping.refund_result({"id": "re_1", "status": status})
    assert (result.outcome, result.reference) == (outcome, "re_1")


def test_capture_and_cancel_answers() -> None:
    assert mapping.capture_result(intent("succeeded")).captured is True
    assert mapping.capture_result(intent("requires_capture")).outcome is Outcome.UNKNOWN
    assert mapping.void_result(intent("canceled")).outcome is Outcome.SUCCEEDED
    assert mapping.void_result(intent("succeeded")).outcome is Outcome.UNKNOWN
