"""A loopback fake of PayPal's REST API (OAuth2, Orders v2, Payments v2, webhook verification).

It reproduces what the adapter relies on, as documented: the client-credentials token (and 401
for a missing, unknown or expired one), order creation with intent CAPTURE or AUTHORIZE and an
approval link, the payer's approval (``complete_action`` or ``GET /checkoutnow?token=ID``),
capturing or authorizing the approved order, capture / void of an authorization, refunds, the
GET of every object, PayPal's error body ``{name, message, debug_id, details[{issue,
description}]}``, and ``PayPal-Request-Id`` idempotency: the same id and request again answers
with the latest state of what the first one made; the same id with another request is refused
(422 PAYPAL_REQUEST_ID_PREVIOUSLY_USED); an id whose first request is still running is refused
with 422 PREVIOUS_REQUEST_IN_PROGRESS (``mark_in_progress``).

Webhooks are signed over PayPal's message ``<transmission id>|<time>|<webhook id>|<crc32 of
the body>``. PayPal signs it with an RSA certificate; this fake signs it with HMAC-SHA256 and
its own key (``webhook_secret``) and checks it in its verify-webhook-signature endpoint, which
is where the adapter sends every delivery - so the adapter's side is exactly the real one.

Run one for manual tests: ``python -m aegispay_paypal.fake --port 8765``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs
from aegispay.fake_server import (
    FakeRequest,
    FakeResponse,
    LoopbackFake,
    LoopbackServer,
    json_response,
)
from aegispay.money import Money
from aegispay.webhooks import WebhookKind

from .amounts import PAYPAL_CURRENCIES, paypal_exponent, to_paypal

__all__ = ["FakePayPal", "main"]


class _Refusal(Exception):
    """Internal: answer with PayPal's error body."""

    def __init__(self, status: int, name: str, issue: str | None, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.name = name
        self.issue = issue
        self.description = description

    def response(self) -> FakeResponse:
        body: dict[str, Any] = {
            "name": self.name,
            "message": _MESSAGES.get(self.name, self.description),
            "debug_id": secrets.token_hex(7),
        }
        if self.issue:
            body["details"] = [{"issue": self.issue, "description": self.description}]
        return json_response(self.status, body)


_MESSAGES = {
    "UNPROCESSABLE_ENTITY": "The requested action could not be performed, semantically "
    "incorrect, or failed business validation.",
    "INVALID_REQUEST": "Request is not well-formed, syntactically incorrect, or violates schema.",
    "RESOURCE_NOT_FOUND": "The specified resource does not exist.",
    "AUTHENTICATION_FAILURE": "Authentication failed due to invalid authentication credentials "
    "or a missing Authorization header.",
}


def _unprocessable(issue: str, description: str) -> _Refusal:
    return _Refusal(422, "UNPROCESSABLE_ENTITY", issue, description)


def _invalid(issue: str, description: str) -> _Refusal:
    return _Refusal(400, "INVALID_REQUEST", issue, description)


def _not_found(what: str) -> _Refusal:
    return _Refusal(404, "RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID", f"{what} does not exist.")


def _new_id(length: int = 17) -> str:
    return secrets.token_hex(length).upper()[:length]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _minor(amount: Any, field: str = "amount") -> tuple[str, int]:
    """Validate a PayPal amount object: (currency, value in PayPal's own decimals)."""
    if not isinstance(amount, Mapping):
        raise _invalid("MISSING_REQUIRED_PARAMETER", f"{field} is required.")
    currency, value = amount.get("currency_code"), amount.get("value")
    if not isinstance(currency, str) or not isinstance(value, str):
        raise _invalid("MISSING_REQUIRED_PARAMETER", f"{field}.currency_code and value required.")
    if currency not in PAYPAL_CURRENCIES:
        raise _unprocessable("CURRENCY_NOT_SUPPORTED", f"Currency {currency} is not supported.")
    if not re.fullmatch(r"\d{1,10}(\.\d{1,3})?", value):
        raise _invalid("INVALID_PARAMETER_SYNTAX", f"{field}.value does not match the pattern.")
    exponent = paypal_exponent(currency)
    try:
        number = Decimal(value)
    except InvalidOperation:  # pragma: no cover - the pattern above rules it out
        raise _invalid("INVALID_PARAMETER_SYNTAX", f"{field}.value is not a number.") from None
    scaled = number * 10**exponent
    if scaled != scaled.to_integral_value():
        raise _unprocessable(
            "DECIMAL_PRECISION", f"{currency} does not support {value}: too many decimals."
        )
    if scaled <= 0:
        raise _unprocessable("CANNOT_BE_ZERO_OR_NEGATIVE", f"{field} must be greater than zero.")
    return currency, int(scaled)


def _amount(currency: str, value: int) -> dict[str, str]:
    exponent = paypal_exponent(currency)
    if exponent == 0:
        return {"currency_code": currency, "value": str(value)}
    units, fraction = divmod(value, 10**exponent)
    return {"currency_code": currency, "value": f"{units}.{fraction:0{exponent}d}"}


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def raw_member(text: str, name: str) -> str | None:
    """The exact source text of top-level member ``name`` of the JSON object ``text``, from
    just after its ``:`` to just before the next ``,`` or ``}`` (surrounding whitespace
    included): the signature is checked over the event's bytes exactly as the client sent them,
    so even an added space is a different body."""
    decoder = json.JSONDecoder()
    try:
        i = _skip(text, 0)
        if text[i : i + 1] != "{":
            return None
        i = _skip(text, i + 1)
        while text[i : i + 1] == '"':
            key, i = decoder.raw_decode(text, i)
            i = _skip(text, i)
            if text[i : i + 1] != ":":
                return None
            start = i + 1
            _, i = decoder.raw_decode(text, _skip(text, start))
            i = _skip(text, i)
            if key == name:
                return text[start:i]
            if text[i : i + 1] != ",":
                return None
            i = _skip(text, i + 1)
    except ValueError:
        return None
    return None


def signature(key: str, transmission_id: str, when: str, webhook_id: str, body: bytes) -> str:
    """The fake's signature of a delivery (HMAC-SHA256 standing in for PayPal's RSA)."""
    message = f"{transmission_id}|{when}|{webhook_id}|{zlib.crc32(body)}".encode()
    return base64.b64encode(hmac.new(key.encode(), message, hashlib.sha256).digest()).decode()


def _respond(status: int, render: Callable[[], FakeResponse]) -> FakeResponse:
    rendered = render()
    return FakeResponse(status, rendered.body, rendered.headers)


# -- state ----------------------------------------------------------------------------------------


@attrs.define
class _Order:
    id: str
    intent: str
    status: str
    currency: str
    value: int
    custom_id: str | None
    invoice_id: str | None
    description: str | None
    experience: bool
    create_time: str
    authorization_id: str | None = None
    capture_ids: list[str] = attrs.field(factory=list)


@attrs.define
class _Authorization:
    id: str
    order_id: str
    status: str
    currency: str
    value: int
    custom_id: str | None
    invoice_id: str | None
    create_time: str
    captured: int = 0


@attrs.define
class _Capture:
    id: str
    order_id: str
    authorization_id: str | None
    status: str
    currency: str
    value: int
    custom_id: str | None
    invoice_id: str | None
    final_capture: bool
    create_time: str
    refunded: int = 0
    refund_ids: list[str] = attrs.field(factory=list)


@attrs.define
class _Refund:
    id: str
    capture_id: str
    order_id: str
    status: str
    currency: str
    value: int
    custom_id: str | None
    invoice_id: str | None
    note_to_payer: str | None
    create_time: str


@attrs.define
class _Idempotent:
    fingerprint: str
    status: int
    render: Callable[[], FakeResponse] | None  # None: the fixed response below
    response: FakeResponse | None


class FakePayPal(LoopbackFake):
    """A running fake PayPal (start it, or use it as a context manager).

    Implements the conformance suite's ``FakeGatewayControl``; the PayPal-specific knobs are
    ``expire_tokens``, ``mark_in_progress`` / ``finish_in_progress`` and the counters.
    """

    def __init__(
        self,
        *,
        client_id: str = "fake-client-id",
        client_secret: str = "fake-client-secret",
        webhook_id: str = "WH-FAKE-0000000000",
        webhook_secret: str = "fake-paypal-signing-key",
        token_ttl_s: int = 32_400,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.client_id = client_id
        self.webhook_id = webhook_id
        self._client_secret = client_secret
        self.webhook_secret = webhook_secret
        self._token_ttl_s = token_ttl_s
        self._lock = threading.Lock()
        self._server = LoopbackServer(self._handle, host=host, port=port)
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._orders: dict[str, _Order] = {}
        self._authorizations: dict[str, _Authorization] = {}
        self._captures: dict[str, _Capture] = {}
        self._refunds: dict[str, _Refund] = {}
        self._requests: dict[str, _Idempotent] = {}
        self._in_progress: set[str] = set()
        self._invoices: set[str] = set()
        self._declines: list[str] = []
        self._actions_required = 0
        self._charges = 0
        self.token_requests = 0

    def __repr__(self) -> str:
        return f"FakePayPal(base_url={self.base_url!r})"

    # -- lifecycle -------------------------------------------------------------------------------

    # -- control (FakeGatewayControl) ------------------------------------------------------------

    def decline_next(self, code: str = "INSTRUMENT_DECLINED") -> None:
        """The next money movement from an order (capture or authorize of the approved order,
        or a vaulted order's creation) is refused by the payer's bank with issue ``code``."""
        with self._lock:
            self._declines.append(code)

    def require_action_next(self) -> None:
        """The next vaulted order needs the payer (PAYER_ACTION_REQUIRED). Orders without a
        vault id always need the payer's approval."""
        with self._lock:
            self._actions_required += 1

    def complete_action(self, gateway_reference: str) -> None:
        """The payer approves order ``gateway_reference`` at PayPal."""
        with self._lock:
            order = self._orders.get(gateway_reference)
            if order is None:
                raise KeyError(f"no order {gateway_reference!r}")
            if order.status not in ("CREATED", "PAYER_ACTION_REQUIRED"):
                raise ValueError(f"order {gateway_reference} is {order.status}, not approvable")
            order.status = "APPROVED"

    def charges(self) -> int:
        """Money movements really made: captures (of an order, or of an authorization). An
        authorization only holds the money and is not counted."""
        with self._lock:
            return self._charges

    def expire_tokens(self) -> None:
        """Every issued token stops working now (the next call gets 401)."""
        with self._lock:
            self._tokens.clear()

    def mark_in_progress(self, request_id: str) -> None:
        """Act as if a request with this PayPal-Request-Id is still being processed."""
        with self._lock:
            self._in_progress.add(request_id)

    def finish_in_progress(self, request_id: str) -> None:
        with self._lock:
            self._in_progress.discard(request_id)

    def amount_of(self, gateway_reference: str) -> tuple[int, str]:
        """Order ``gateway_reference``'s amount as (ISO minor units, currency)."""
        with self._lock:
            order = self._order(gateway_reference)
            value = _amount(order.currency, order.value)["value"]
            return Money.of(value, order.currency).minor, order.currency

    def order(self, order_id: str) -> dict[str, Any]:
        """The order as ``GET /v2/checkout/orders/{id}`` shows it."""
        with self._lock:
            return self._render_order(self._order(order_id))

    def signed_webhook(
        self,
        kind: WebhookKind,
        gateway_reference: str,
        *,
        amount_minor: int,
        currency: str,
        event_id: str | None = None,
        age_s: int = 0,
        secret: str | None = None,
    ) -> tuple[dict[str, str], bytes]:
        """A delivery for order ``gateway_reference``: headers and the raw body as sent."""
        money = to_paypal(Money(amount_minor, currency))
        with self._lock:
            event = self._event(kind, gateway_reference, money)
        event["id"] = event_id or f"WH-{_new_id(8)}-{_new_id(17)}"
        body = json.dumps(event, separators=(",", ":")).encode()
        when = (datetime.now(UTC) - timedelta(seconds=age_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
        transmission_id = secrets.token_hex(16)
        key = self.webhook_secret if secret is None else secret
        headers = {
            "paypal-transmission-id": transmission_id,
            "paypal-transmission-time": when,
            "paypal-transmission-sig": signature(key, transmission_id, when, self.webhook_id, body),
            "paypal-cert-url": f"{self.base_url}/v1/notifications/certs/CERT-FAKE",
            "paypal-auth-algo": "HMACSHA256",
            "content-type": "application/json",
        }
        return headers, body

    # -- request handling (server thread) --------------------------------------------------------

    def _handle(self, request: FakeRequest) -> FakeResponse:
        with self._lock:
            try:
                return self._route(request)
            except _Refusal as refusal:
                return refusal.response()

    def _route(self, request: FakeRequest) -> FakeResponse:
        method, parts = request.method, [p for p in request.path.split("/") if p]
        if method == "POST" and parts == ["v1", "oauth2", "token"]:
            return self._issue_token(request)
        if method == "GET" and parts == ["checkoutnow"]:
            return self._payer_approves(request)
        self._authenticate(request)
        if method == "GET":
            return self._get(parts, request.query)
        if method != "POST":
            raise _Refusal(405, "METHOD_NOT_SUPPORTED", None, "Method not supported.")
        if parts == ["v1", "notifications", "verify-webhook-signature"]:
            return self._verify_webhook(request)
        operation = self._operation(parts)
        if operation is None:
            raise _not_found("The resource")
        request_id = request.headers.get("paypal-request-id")
        if request_id is None:
            return _respond(*operation(request))
        return self._idempotent(request_id, operation, request)

    def _operation(
        self, parts: list[str]
    ) -> Callable[[FakeRequest], tuple[int, Callable[[], FakeResponse]]] | None:
        match parts:
            case ["v2", "checkout", "orders"]:
                return self._create_order
            case ["v2", "checkout", "orders", order_id, "capture" | "authorize" as action]:
                return lambda r: self._complete_order(order_id, action, r)
            case ["v2", "payments", "authorizations", auth_id, "capture"]:
                return lambda r: self._capture_authorization(auth_id, r)
            case ["v2", "payments", "authorizations", auth_id, "void"]:
                return lambda r: self._void(auth_id, r)
            case ["v2", "payments", "captures", capture_id, "refund"]:
                return lambda r: self._refund(capture_id, r)
        return None

    def _idempotent(
        self,
        request_id: str,
        operation: Callable[[FakeRequest], tuple[int, Callable[[], FakeResponse]]],
        request: FakeRequest,
    ) -> FakeResponse:
        fingerprint = hashlib.sha256(
            request.method.encode() + b" " + request.path.encode() + b"\n" + request.body
        ).hexdigest()
        if request_id in self._in_progress:
            raise _unprocessable(
                "PREVIOUS_REQUEST_IN_PROGRESS",
                "A previous request on this resource is currently in progress.",
            )
        known = self._requests.get(request_id)
        if known is not None:
            if not hmac.compare_digest(known.fingerprint, fingerprint):
                raise _unprocessable(
                    "PAYPAL_REQUEST_ID_PREVIOUSLY_USED",
                    "The PayPal-Request-Id has already been used for another request.",
                )
            if known.render is not None:  # the latest state of what the first request made
                return _respond(known.status, known.render)
            assert known.response is not None
            return known.response
        try:
            status, render = operation(request)
        except _Refusal as refusal:
            response = refusal.response()
            if refusal.status < 500 and refusal.status != 401:
                self._requests[request_id] = _Idempotent(
                    fingerprint, refusal.status, None, response
                )
            return response
        self._requests[request_id] = _Idempotent(fingerprint, status, render, None)
        return _respond(status, render)

    # -- auth ------------------------------------------------------------------------------------

    def _issue_token(self, request: FakeRequest) -> FakeResponse:
        self.token_requests += 1
        expected = base64.b64encode(f"{self.client_id}:{self._client_secret}".encode()).decode()
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Basic {expected}".encode()):
            return json_response(
                401,
                {"error": "invalid_client", "error_description": "Client Authentication failed"},
            )
        form = dict(pair.split("=", 1) for pair in request.body.decode().split("&") if "=" in pair)
        if form.get("grant_type") != "client_credentials":
            return json_response(
                400,
                {"error": "unsupported_grant_type", "error_description": "Grant Type is NULL"},
            )
        token = "A21AA" + secrets.token_urlsafe(40)
        self._tokens[token] = time.monotonic() + self._token_ttl_s
        return json_response(
            200,
            {
                "scope": "https://uri.paypal.com/services/payments/payment",
                "access_token": token,
                "token_type": "Bearer",
                "app_id": "APP-FAKE",
                "expires_in": self._token_ttl_s,
                "nonce": f"{_now()}{secrets.token_hex(8)}",
            },
        )

    def _authenticate(self, request: FakeRequest) -> None:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise _Refusal(401, "AUTHENTICATION_FAILURE", None, "missing bearer token")
        expiry = self._tokens.get(header[len("Bearer ") :])
        if expiry is None or time.monotonic() >= expiry:
            raise _Refusal(401, "AUTHENTICATION_FAILURE", "INVALID_TOKEN", "token expired")

    # -- reads -----------------------------------------------------------------------------------

    def _get(self, parts: list[str], query: Mapping[str, str]) -> FakeResponse:
        match parts:
            case ["v1", "reporting", "transactions"]:
                return self._search(query)
            case ["v2", "checkout", "orders", order_id]:
                return json_response(200, self._render_order(self._order(order_id)))
            case ["v2", "payments", "authorizations", auth_id]:
                return json_response(200, self._render_authorization(self._authorization(auth_id)))
            case ["v2", "payments", "captures", capture_id]:
                return json_response(200, self._render_capture(self._capture(capture_id)))
            case ["v2", "payments", "refunds", refund_id]:
                refund = self._refunds.get(refund_id)
                if refund is None:
                    raise _not_found(f"Refund {refund_id}")
                return json_response(200, self._render_refund(refund))
        raise _not_found("The resource")

    def _search(self, query: Mapping[str, str]) -> FakeResponse:
        """``GET /v1/reporting/transactions``: captures (and, with
        ``balance_affecting_records_only=N``, authorizations) between start_date and end_date.
        PayPal lists a transaction up to three hours after it happened; the fake at once."""
        try:
            start = datetime.fromisoformat(query["start_date"])
            end = datetime.fromisoformat(query["end_date"])
        except (KeyError, ValueError):
            raise _invalid("INVALID_REQUEST", "start_date and end_date are required.") from None
        if end - start > timedelta(days=31):
            raise _invalid("INVALID_REQUEST", "Date range is greater than 31 days")
        rows: list[dict[str, Any]] = []
        items: list[_Capture | _Authorization] = list(self._captures.values())
        if query.get("balance_affecting_records_only", "Y") == "N":
            items += list(self._authorizations.values())
        for item in items:
            when = datetime.fromisoformat(item.create_time)
            if not start <= when <= end:
                continue
            info = {
                "transaction_id": item.id,
                "paypal_reference_id": item.order_id,
                "paypal_reference_id_type": "ODR",
                "transaction_event_code": "T0006" if isinstance(item, _Capture) else "T1200",
                "transaction_initiation_date": item.create_time,
                "transaction_amount": _amount(item.currency, item.value),
                "transaction_status": "S",
                "invoice_id": item.invoice_id,
                "custom_field": item.custom_id,
            }
            rows.append({"transaction_info": {k: v for k, v in info.items() if v is not None}})
        size = int(query.get("page_size", "100"))
        page = int(query.get("page", "1"))
        total_pages = max(1, -(-len(rows) // size))
        return json_response(
            200,
            {
                "transaction_details": rows[(page - 1) * size : page * size],
                "account_number": "FAKEACCOUNT01",
                "start_date": query["start_date"],
                "end_date": query["end_date"],
                "last_refreshed_datetime": _now(),
                "page": page,
                "total_items": len(rows),
                "total_pages": total_pages,
            },
        )

    def _order(self, order_id: str) -> _Order:
        order = self._orders.get(order_id)
        if order is None:
            raise _not_found(f"Order {order_id}")
        return order

    def _authorization(self, auth_id: str) -> _Authorization:
        authorization = self._authorizations.get(auth_id)
        if authorization is None:
            raise _not_found(f"Authorization {auth_id}")
        return authorization

    def _capture(self, capture_id: str) -> _Capture:
        capture = self._captures.get(capture_id)
        if capture is None:
            raise _not_found(f"Capture {capture_id}")
        return capture

    # -- rendering -------------------------------------------------------------------------------

    def _link(self, path: str, rel: str, method: str = "GET") -> dict[str, str]:
        return {"href": f"{self.base_url}{path}", "rel": rel, "method": method}

    def _render_authorization(self, a: _Authorization) -> dict[str, Any]:
        path = f"/v2/payments/authorizations/{a.id}"
        return {
            "id": a.id,
            "status": a.status,
            "amount": _amount(a.currency, a.value),
            "custom_id": a.custom_id,
            "invoice_id": a.invoice_id,
            "supplementary_data": {"related_ids": {"order_id": a.order_id}},
            "create_time": a.create_time,
            "update_time": _now(),
            "links": [
                self._link(path, "self"),
                self._link(f"{path}/capture", "capture", "POST"),
                self._link(f"{path}/void", "void", "POST"),
                self._link(f"/v2/checkout/orders/{a.order_id}", "up"),
            ],
        }

    def _render_capture(self, c: _Capture) -> dict[str, Any]:
        related = {"order_id": c.order_id}
        if c.authorization_id:
            related["authorization_id"] = c.authorization_id
        path = f"/v2/payments/captures/{c.id}"
        up = (
            f"/v2/payments/authorizations/{c.authorization_id}"
            if c.authorization_id
            else f"/v2/checkout/orders/{c.order_id}"
        )
        return {
            "id": c.id,
            "status": c.status,
            "amount": _amount(c.currency, c.value),
            "custom_id": c.custom_id,
            "invoice_id": c.invoice_id,
            "final_capture": c.final_capture,
            "supplementary_data": {"related_ids": related},
            "create_time": c.create_time,
            "update_time": _now(),
            "links": [
                self._link(path, "self"),
                self._link(f"{path}/refund", "refund", "POST"),
                self._link(up, "up"),
            ],
        }

    def _render_refund(self, r: _Refund) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": r.id,
            "status": r.status,
            "amount": _amount(r.currency, r.value),
            "custom_id": r.custom_id,
            "invoice_id": r.invoice_id,
            "create_time": r.create_time,
            "update_time": _now(),
            "links": [
                self._link(f"/v2/payments/refunds/{r.id}", "self"),
                self._link(f"/v2/payments/captures/{r.capture_id}", "up"),
            ],
        }
        if r.note_to_payer:
            body["note_to_payer"] = r.note_to_payer
        return body

    def _render_order(self, o: _Order) -> dict[str, Any]:
        unit: dict[str, Any] = {
            "reference_id": "default",
            "amount": _amount(o.currency, o.value),
        }
        for key in ("custom_id", "invoice_id", "description"):
            if getattr(o, key):
                unit[key] = getattr(o, key)
        payments: dict[str, list[dict[str, Any]]] = {}
        if o.authorization_id:
            payments["authorizations"] = [
                self._render_authorization(self._authorizations[o.authorization_id])
            ]
        if o.capture_ids:
            captures = [self._captures[i] for i in o.capture_ids]
            payments["captures"] = [self._render_capture(c) for c in captures]
            refunds = [self._refunds[r] for c in captures for r in c.refund_ids]
            if refunds:
                payments["refunds"] = [self._render_refund(r) for r in refunds]
        if payments:
            unit["payments"] = payments
        path = f"/v2/checkout/orders/{o.id}"
        links = [self._link(path, "self")]
        if o.status in ("CREATED", "PAYER_ACTION_REQUIRED"):
            rel = "payer-action" if o.status == "PAYER_ACTION_REQUIRED" else "approve"
            links.append(self._link(f"/checkoutnow?token={o.id}", rel))
        if o.status == "APPROVED":
            action = "capture" if o.intent == "CAPTURE" else "authorize"
            links.append(self._link(f"{path}/{action}", action, "POST"))
        body: dict[str, Any] = {
            "id": o.id,
            "intent": o.intent,
            "status": o.status,
            "purchase_units": [unit],
            "create_time": o.create_time,
            "links": links,
        }
        if o.status in ("APPROVED", "COMPLETED"):
            body["payer"] = {"payer_id": "FAKEPAYER01", "email_address": "payer@example.com"}
        return body

    # -- operations ------------------------------------------------------------------------------

    def _json(self, request: FakeRequest) -> dict[str, Any]:
        if not request.body:
            return {}
        try:
            body = json.loads(request.body)
        except ValueError:
            raise _invalid(
                "MALFORMED_REQUEST_JSON", "The request JSON is not well formed."
            ) from None
        if not isinstance(body, dict):
            raise _invalid("MALFORMED_REQUEST_JSON", "The request body must be a JSON object.")
        return body

    def _order_response(self, order: _Order) -> Callable[[], FakeResponse]:
        return lambda: json_response(200, self._render_order(order))

    def _create_order(self, request: FakeRequest) -> tuple[int, Callable[[], FakeResponse]]:
        body = self._json(request)
        intent = body.get("intent")
        if intent not in ("CAPTURE", "AUTHORIZE"):
            raise _invalid("INVALID_PARAMETER_VALUE", "intent must be CAPTURE or AUTHORIZE.")
        units = body.get("purchase_units")
        if not isinstance(units, list) or len(units) != 1 or not isinstance(units[0], dict):
            raise _invalid("INVALID_ARRAY_MAX_ITEMS", "The fake takes exactly one purchase unit.")
        unit = units[0]
        currency, value = _minor(unit.get("amount"), "purchase_units[0].amount")
        texts = {k: unit.get(k) for k in ("custom_id", "invoice_id", "description")}
        for key, text in texts.items():
            if text is not None and (not isinstance(text, str) or len(text) > 127):
                raise _invalid("INVALID_STRING_LENGTH", f"purchase_units[0].{key} is too long.")
        invoice = texts["invoice_id"]
        if invoice is not None and invoice in self._invoices:
            raise _unprocessable("DUPLICATE_INVOICE_ID", "Duplicate Invoice ID detected.")
        source = body.get("payment_source") or {}
        wallet = source.get("paypal") if isinstance(source, dict) else None
        vault_id = wallet.get("vault_id") if isinstance(wallet, dict) else None
        experience = isinstance(wallet, dict) and "experience_context" in wallet
        order = _Order(
            id=_new_id(),
            intent=intent,
            status="PAYER_ACTION_REQUIRED" if experience else "CREATED",
            currency=currency,
            value=value,
            custom_id=texts["custom_id"],
            invoice_id=invoice,
            description=texts["description"],
            experience=experience,
            create_time=_now(),
        )
        if vault_id is not None:
            if self._actions_required:
                self._actions_required -= 1
                order.status = "PAYER_ACTION_REQUIRED"
            else:
                order.status = "APPROVED"
                self._move_money(order)  # a decline raises before anything is stored
        self._orders[order.id] = order
        if invoice is not None:
            self._invoices.add(invoice)
        return 201, self._order_response(order)

    def _move_money(self, order: _Order, *, may_decline: bool = True) -> None:
        """Capture or authorize an APPROVED order (the payer's bank may decline)."""
        if self._declines and may_decline:
            code = self._declines.pop(0)
            raise _unprocessable(
                code,
                "The instrument presented was either declined by the processor or bank, "
                "or it can't be used for this payment.",
            )
        if order.intent == "CAPTURE":
            capture = _Capture(
                id=_new_id(),
                order_id=order.id,
                authorization_id=None,
                status="COMPLETED",
                currency=order.currency,
                value=order.value,
                custom_id=order.custom_id,
                invoice_id=order.invoice_id,
                final_capture=True,
                create_time=_now(),
            )
            self._captures[capture.id] = capture
            order.capture_ids.append(capture.id)
            self._charges += 1
        else:
            authorization = _Authorization(
                id=_new_id(),
                order_id=order.id,
                status="CREATED",
                currency=order.currency,
                value=order.value,
                custom_id=order.custom_id,
                invoice_id=order.invoice_id,
                create_time=_now(),
            )
            self._authorizations[authorization.id] = authorization
            order.authorization_id = authorization.id
        order.status = "COMPLETED"

    def _payer_approves(self, request: FakeRequest) -> FakeResponse:
        order_id = request.query.get("token", "")
        order = self._orders.get(order_id)
        if order is None or order.status not in ("CREATED", "PAYER_ACTION_REQUIRED"):
            return FakeResponse(404, b"no order awaiting approval", {"content-type": "text/plain"})
        order.status = "APPROVED"
        return FakeResponse(200, b"approved (fake PayPal)", {"content-type": "text/plain"})

    def _complete_order(
        self, order_id: str, action: str, request: FakeRequest
    ) -> tuple[int, Callable[[], FakeResponse]]:
        self._json(request)
        order = self._order(order_id)
        if (action == "capture") != (order.intent == "CAPTURE"):
            raise _unprocessable(
                "ACTION_DOES_NOT_MATCH_INTENT", f"Order intent is {order.intent}; cannot {action}."
            )
        if order.status == "COMPLETED":
            issue = "ORDER_ALREADY_CAPTURED" if action == "capture" else "ORDER_ALREADY_AUTHORIZED"
            raise _unprocessable(issue, f"Order already {order.status.lower()}.")
        if order.status in ("CREATED", "PAYER_ACTION_REQUIRED"):
            raise _unprocessable(
                "ORDER_NOT_APPROVED", "Payer has not yet approved the Order for payment."
            )
        if order.status != "APPROVED":
            raise _unprocessable("ORDER_CANNOT_BE_SAVED", f"Order is {order.status}.")
        self._move_money(order)
        return 201, self._order_response(order)

    def _capture_authorization(
        self, auth_id: str, request: FakeRequest
    ) -> tuple[int, Callable[[], FakeResponse]]:
        body = self._json(request)
        authorization = self._authorization(auth_id)
        if authorization.status == "VOIDED":
            raise _unprocessable(
                "AUTHORIZATION_VOIDED", "A voided authorization cannot be captured."
            )
        if authorization.status == "CAPTURED":
            raise _unprocessable(
                "AUTHORIZATION_ALREADY_CAPTURED", "Authorization has already been captured."
            )
        remaining = authorization.value - authorization.captured
        value = remaining
        if "amount" in body:
            currency, value = _minor(body["amount"])
            if currency != authorization.currency:
                raise _unprocessable("CURRENCY_MISMATCH", "Currency does not match.")
            if value > remaining:
                raise _unprocessable(
                    "MAX_CAPTURE_AMOUNT_EXCEEDED", "Capture amount exceeds the authorized amount."
                )
        final = body.get("final_capture", False) is True
        invoice = body.get("invoice_id") if isinstance(body.get("invoice_id"), str) else None
        if invoice is not None and invoice in self._invoices:
            raise _unprocessable("DUPLICATE_INVOICE_ID", "Duplicate Invoice ID detected.")
        capture = _Capture(
            id=_new_id(),
            order_id=authorization.order_id,
            authorization_id=auth_id,
            status="COMPLETED",
            currency=authorization.currency,
            value=value,
            custom_id=authorization.custom_id,
            invoice_id=invoice,
            final_capture=final,
            create_time=_now(),
        )
        self._captures[capture.id] = capture
        self._orders[authorization.order_id].capture_ids.append(capture.id)
        if invoice is not None:
            self._invoices.add(invoice)
        authorization.captured += value
        self._charges += 1
        full = authorization.captured >= authorization.value
        authorization.status = "CAPTURED" if final or full else "PARTIALLY_CAPTURED"
        return 201, lambda: json_response(201, self._render_capture(capture))

    def _void(self, auth_id: str, request: FakeRequest) -> tuple[int, Callable[[], FakeResponse]]:
        authorization = self._authorization(auth_id)
        if authorization.status == "VOIDED":
            raise _unprocessable(
                "PREVIOUSLY_VOIDED", "Authorization has been previously voided and hence "
                "cannot be voided again."
            )  # fmt: skip
        if authorization.status == "CAPTURED":
            raise _unprocessable(
                "PREVIOUSLY_CAPTURED", "Authorization has been previously captured and hence "
                "cannot be voided."
            )  # fmt: skip
        authorization.status = "VOIDED"
        order = self._orders[authorization.order_id]
        if not order.capture_ids:
            order.status = "VOIDED"
        if "return=representation" in request.headers.get("prefer", ""):
            return 200, lambda: json_response(200, self._render_authorization(authorization))
        return 204, lambda: FakeResponse(204)

    def _refund(
        self, capture_id: str, request: FakeRequest
    ) -> tuple[int, Callable[[], FakeResponse]]:
        body = self._json(request)
        capture = self._capture(capture_id)
        if capture.status == "REFUNDED":
            raise _unprocessable(
                "CAPTURE_FULLY_REFUNDED", "The capture has already been fully refunded."
            )
        if capture.status not in ("COMPLETED", "PARTIALLY_REFUNDED"):
            raise _unprocessable("INVALID_RESOURCE_ID", f"Capture is {capture.status}.")
        remaining = capture.value - capture.refunded
        value = remaining
        if "amount" in body:
            currency, value = _minor(body["amount"])
            if currency != capture.currency:
                raise _unprocessable("REFUND_CURRENCY_MISMATCH", "Currency does not match.")
            if value > remaining:
                raise _unprocessable(
                    "REFUND_AMOUNT_EXCEEDED", "The refund amount must be less than or equal "
                    "to the capture amount that has not yet been refunded."
                )  # fmt: skip
        texts = {k: body.get(k) for k in ("invoice_id", "custom_id", "note_to_payer")}
        refund = _Refund(
            id=_new_id(),
            capture_id=capture_id,
            order_id=capture.order_id,
            status="COMPLETED",
            currency=capture.currency,
            value=value,
            custom_id=texts["custom_id"] if isinstance(texts["custom_id"], str) else None,
            invoice_id=texts["invoice_id"] if isinstance(texts["invoice_id"], str) else None,
            note_to_payer=texts["note_to_payer"]
            if isinstance(texts["note_to_payer"], str)
            else None,
            create_time=_now(),
        )
        self._refunds[refund.id] = refund
        capture.refund_ids.append(refund.id)
        capture.refunded += value
        capture.status = "REFUNDED" if capture.refunded >= capture.value else "PARTIALLY_REFUNDED"
        return 201, lambda: json_response(201, self._render_refund(refund))

    # -- webhooks --------------------------------------------------------------------------------

    def _verify_webhook(self, request: FakeRequest) -> FakeResponse:
        try:
            text = request.body.decode("utf-8")
            body = json.loads(text)
        except (UnicodeDecodeError, ValueError):
            raise _invalid(
                "MALFORMED_REQUEST_JSON", "The request JSON is not well formed."
            ) from None
        fields = ("auth_algo", "cert_url", "transmission_id", "transmission_sig",
                  "transmission_time", "webhook_id")  # fmt: skip
        if not isinstance(body, dict) or not all(isinstance(body.get(f), str) for f in fields):
            raise _invalid("MISSING_REQUIRED_PARAMETER", "A required field is missing.")
        raw_event = raw_member(text, "webhook_event")
        if raw_event is None:
            raise _invalid("MISSING_REQUIRED_PARAMETER", "webhook_event is required.")
        expected = signature(
            self.webhook_secret,
            body["transmission_id"],
            body["transmission_time"],
            self.webhook_id,
            raw_event.encode("utf-8"),
        )
        ok = body["webhook_id"] == self.webhook_id and hmac.compare_digest(
            expected.encode(), body["transmission_sig"].encode()
        )
        return json_response(200, {"verification_status": "SUCCESS" if ok else "FAILURE"})

    def _event(self, kind: WebhookKind, order_id: str, money: dict[str, str]) -> dict[str, Any]:
        order = self._orders.get(order_id)
        if kind is WebhookKind.SUCCEEDED and order is not None and order.status == "APPROVED":
            # PayPal reports a capture only once it exists: make it, so the fake's records
            # agree with the event it sends (as if the merchant had captured the order).
            self._move_money(order, may_decline=False)
        custom_id = order.custom_id if order is not None else None
        base = {"create_time": _now(), "event_version": "1.0", "resource_version": "2.0"}
        if kind in (WebhookKind.REQUIRES_ACTION, WebhookKind.IGNORED) and order is not None:
            rendered = self._render_order(order)
        else:
            rendered = {"id": order_id, "intent": "CAPTURE", "status": "APPROVED",
                        "purchase_units": [{"amount": money, "custom_id": custom_id}]}  # fmt: skip
        if kind is WebhookKind.REQUIRES_ACTION:
            return {**base, "event_type": "CHECKOUT.ORDER.APPROVED",
                    "resource_type": "checkout-order", "resource": rendered}  # fmt: skip
        if kind is WebhookKind.IGNORED:
            return {**base, "event_type": "CHECKOUT.ORDER.SAVED",
                    "resource_type": "checkout-order", "resource": rendered}  # fmt: skip
        related = {"order_id": order_id}
        payment: dict[str, Any] = {
            "amount": money,
            "custom_id": custom_id,
            "supplementary_data": {"related_ids": related},
            "create_time": _now(),
        }
        if kind in (WebhookKind.AUTHORIZED, WebhookKind.CANCELED):
            auth_id = order.authorization_id if order is not None else None
            payment.update(
                id=auth_id or _new_id(),
                status="CREATED" if kind is WebhookKind.AUTHORIZED else "VOIDED",
            )
            event_type = (
                "PAYMENT.AUTHORIZATION.CREATED"
                if kind is WebhookKind.AUTHORIZED
                else "PAYMENT.AUTHORIZATION.VOIDED"
            )
            return {**base, "event_type": event_type, "resource_type": "authorization",
                    "resource": payment}  # fmt: skip
        capture_id = order.capture_ids[-1] if order is not None and order.capture_ids else None
        if kind is WebhookKind.REFUND_SUCCEEDED:
            capture = self._captures.get(capture_id) if capture_id else None
            refund_id = capture.refund_ids[-1] if capture and capture.refund_ids else None
            resource = {
                "id": refund_id or _new_id(),
                "status": "COMPLETED",
                "amount": money,
                "custom_id": custom_id,
                "create_time": _now(),
                "links": [self._link(f"/v2/payments/captures/{capture_id or _new_id()}", "up")],
            }
            return {**base, "event_type": "PAYMENT.CAPTURE.REFUNDED", "resource_type": "refund",
                    "resource": resource}  # fmt: skip
        if kind is WebhookKind.SUCCEEDED:
            payment.update(id=capture_id or _new_id(), status="COMPLETED", final_capture=True)
            return {**base, "event_type": "PAYMENT.CAPTURE.COMPLETED", "resource_type": "capture",
                    "resource": payment}  # fmt: skip
        if kind is WebhookKind.FAILED:
            payment.update(
                id=capture_id or _new_id(),
                status="DECLINED",
                status_details={"reason": "DECLINED_BY_RISK_FRAUD_FILTERS"},
            )
            return {**base, "event_type": "PAYMENT.CAPTURE.DENIED", "resource_type": "capture",
                    "resource": payment}  # fmt: skip
        raise ValueError(f"the fake has no PayPal event for {kind}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A loopback fake PayPal REST API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--client-id", default="fake-client-id")
    parser.add_argument("--client-secret", default="fake-client-secret")
    parser.add_argument("--webhook-id", default="WH-FAKE-0000000000")
    args = parser.parse_args(argv)
    fake = FakePayPal(
        client_id=args.client_id,
        client_secret=args.client_secret,
        webhook_id=args.webhook_id,
        host=args.host,
        port=args.port,
    )
    fake.start()
    print(f"fake PayPal listening on {fake.base_url} (client id {args.client_id})", flush=True)
    fake.serve_forever()


if __name__ == "__main__":
    main()
