"""A loopback fake of Razorpay's Orders / Payments / Refunds API, for tests and local runs.

It reproduces what the adapter relies on, as Razorpay documents it:

* HTTP Basic auth with the key id and secret (401 with Razorpay's error body otherwise);
* ``POST /v1/orders`` (amount in subunits, at least 100; currency among those enabled;
  three-decimal amounts ending in 0; receipt at most 40 characters; at most 15 notes),
  ``GET /v1/orders?receipt=``, ``GET /v1/orders/{id}``, ``GET /v1/orders/{id}/payments``,
  ``PATCH /v1/orders/{id}`` (notes);
* ``POST /v1/payments/create/recurring`` (charge a saved token on an order),
  ``GET /v1/payments/{id}``, ``PATCH /v1/payments/{id}`` (notes),
  ``POST /v1/payments/{id}/capture`` (full amount, from ``authorized`` only),
  ``POST /v1/payments/{id}/refund`` with ``X-Refund-Idempotency`` (replay of the first answer,
  400 for a different body under the same key, 409 while the key is in flight),
  ``GET /v1/payments/{id}/refunds``, ``GET /v1/refunds/{id}``;
* statuses: orders created -> attempted -> paid; payments created -> authorized -> captured
  (-> refunded when fully refunded) or failed; refunds processed;
* error bodies ``{"error": {"code", "description", "field", "source", "step", "reason",
  "metadata"}}``;
* webhooks signed as Razorpay signs them (``X-Razorpay-Signature`` = hex HMAC-SHA256 of the raw
  body with the webhook secret, ``X-Razorpay-Event-Id``), recorded for every state change and
  POSTed to ``webhook_url`` when one is given.

Razorpay Checkout (the customer's side) is simulated by :meth:`FakeRazorpay.pay_checkout` or
``POST /_fake/checkout/{order_id}``, which answer the signed callback Checkout gives the client.
Transport faults come from :class:`aegispay.fake_server.LoopbackServer`.

Run it: ``python -m aegispay_razorpay.fake --port 8766`` (prints the base URL and the keys).

What it does not model: customers and token registration (any ``cust_...`` / ``token_...`` is
accepted), payment methods other than a card, settlements, disputes, rate limits of its own.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Self

import httpx
from aegispay.fake_server import (
    FakeRequest,
    FakeResponse,
    LoopbackFake,
    LoopbackServer,
    json_response,
)
from aegispay.money import currency_exponent, known_currencies
from aegispay.webhooks import WebhookKind

from .amounts import SUPPORTED_CURRENCIES
from .fake_entities import (
    KIND_EVENTS,
    REFUND_KEY_CHARS,
    Refusal,
    check_notes,
    collection,
    new_id,
    not_found,
    payment_entity,
    public,
    refund_entity,
)
from .signatures import checkout_signature, webhook_signature

__all__ = ["FakeRazorpay", "main"]


class FakeRazorpay(LoopbackFake):
    """A running fake Razorpay account (start it with ``with FakeRazorpay() as fake:``).

    Implements :class:`aegispay.gateway_conformance.FakeGatewayControl`. Thread-safe: the HTTP
    handler runs on the server thread, the control methods on the caller's.
    """

    def __init__(
        self,
        *,
        key_id: str = "rzp_test_fake",
        key_secret: str = "fake_key_secret_0123456789",
        webhook_secret: str = "fake_webhook_secret_0123456789",
        currencies: frozenset[str] = SUPPORTED_CURRENCIES,
        webhook_url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key_id = key_id
        self._key_secret = key_secret
        self.webhook_secret = webhook_secret
        self._currencies = frozenset(currencies)
        self._clock = clock
        self._auth = "Basic " + base64.b64encode(f"{key_id}:{key_secret}".encode()).decode()
        self._lock = threading.Lock()
        self._orders: dict[str, dict[str, Any]] = {}
        self._payments: dict[str, dict[str, Any]] = {}
        self._refunds: dict[str, dict[str, Any]] = {}
        # X-Refund-Idempotency key -> (fingerprint, status, body) of the first answer.
        self._refund_keys: dict[str, tuple[str, int, dict[str, Any]]] = {}
        self._in_flight: set[str] = set()
        self._declines: deque[str] = deque()
        self._actions_needed = 0
        self._events: list[tuple[dict[str, str], bytes]] = []
        self._webhook_url = webhook_url
        self._outbox: queue.Queue[tuple[dict[str, str], bytes] | None] | None = None
        self._sender: threading.Thread | None = None
        self._server = LoopbackServer(self._handle, host=host, port=port)

    def __repr__(self) -> str:
        return f"FakeRazorpay(key_id={self.key_id!r})"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        super().start()
        if self._webhook_url is not None and self._sender is None:
            self._outbox = queue.Queue()
            self._sender = threading.Thread(
                target=self._deliver, name="fake-razorpay-webhooks", daemon=True
            )
            self._sender.start()
        return self

    def close(self) -> None:
        """Stop serving and delivering; leaves no thread or socket behind (idempotent)."""
        super().close()
        sender, outbox = self._sender, self._outbox
        self._sender = None
        if sender is not None and outbox is not None:
            outbox.put(None)
            sender.join()

    @property
    def key_secret(self) -> str:
        return self._key_secret

    # -- FakeGatewayControl ----------------------------------------------------------------------

    def decline_next(self, code: str = "card_declined") -> None:
        """The next payment attempt (token charge or Checkout) is declined by the bank."""
        with self._lock:
            self._declines.append(code)

    def require_action_next(self) -> None:
        """The next token charge needs the customer to authenticate (a redirect)."""
        with self._lock:
            self._actions_needed += 1

    def complete_action(self, gateway_reference: str) -> None:
        """The customer finishes: the order's authenticating payment is authorized (captured
        if the order auto-captures); an order nobody has paid yet is paid through Checkout."""
        with self._lock:
            order = self._order_for(gateway_reference)
            pending = [
                self._payments[p]
                for p in order["_payments"]
                if self._payments[p]["status"] == "created"
            ]
            if pending:
                self._authorize(order, pending[-1])
                return
        self.pay_checkout(order["id"])

    def charges(self) -> int:
        """Payments whose money was captured (refunds do not undo a charge)."""
        with self._lock:
            return sum(1 for p in self._payments.values() if p["captured"])

    def amount_of(self, gateway_reference: str) -> tuple[int, str]:
        """(amount in subunits, currency) Razorpay holds for the order."""
        with self._lock:
            order = self._order_for(gateway_reference)
            return order["amount"], order["currency"]

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
        """A webhook as Razorpay sends it. Razorpay signs no timestamp: ``age_s`` only
        back-dates ``created_at`` in the body."""
        name = KIND_EVENTS.get(kind)
        if name is None:
            raise ValueError(f"Razorpay sends no webhook for {kind.name}")
        now = int(self._clock()) - age_s
        with self._lock:
            order = self._orders.get(gateway_reference)
            payments = [self._payments[p] for p in order["_payments"]] if order else []
            live = [p for p in payments if p["status"] != "failed"] or payments
            payment = dict(public(live[-1])) if live else None
        if payment is None:
            payment = payment_entity(gateway_reference, amount_minor, currency, now)
        payment.update(amount=amount_minor, currency=currency)
        payload: dict[str, Any] = {"payment": {"entity": payment}}
        contains = ["payment"]
        if kind is WebhookKind.AUTHORIZED:
            payment.update(status="authorized", captured=False)
        elif kind is WebhookKind.SUCCEEDED:
            payment.update(status="captured", captured=True)
        elif kind is WebhookKind.FAILED:
            payment.update(status="failed", error_reason="card_declined")
        if kind in (WebhookKind.REFUND_SUCCEEDED, WebhookKind.REFUND_FAILED):
            refund = refund_entity(payment["id"], amount_minor, currency, now)
            refund["status"] = "processed" if kind is WebhookKind.REFUND_SUCCEEDED else "failed"
            payload = {"refund": {"entity": refund}, **payload}
            contains = ["refund", "payment"]
        return self._signed(name, contains, payload, now, event_id, secret)

    # -- more control ----------------------------------------------------------------------------

    def pay_checkout(self, order_id: str, *, decline: str | None = None) -> dict[str, str]:
        """The customer pays ``order_id`` in Razorpay Checkout; returns what Checkout hands the
        client (``razorpay_payment_id``, ``razorpay_order_id``, ``razorpay_signature``), or
        the error if the bank declines (``decline`` or :meth:`decline_next`)."""
        with self._lock:
            order = self._order_for(order_id)
            if order["status"] == "paid":
                raise ValueError(f"order {order_id} is already paid")
            code = decline or (self._declines.popleft() if self._declines else None)
            payment = self._new_payment(order, method="card", notes={})
            if code is not None:
                self._fail(order, payment, code)
                return {"error_reason": code, "razorpay_payment_id": payment["id"]}
            self._authorize(order, payment)
            return self._callback(order, payment)

    def simulate_in_flight(self, refund_idempotency_key: str) -> None:
        """Requests with this X-Refund-Idempotency key get 409 until :meth:`finish_in_flight`
        (Razorpay's answer while the first request with a key is still processing)."""
        with self._lock:
            self._in_flight.add(refund_idempotency_key)

    def finish_in_flight(self, refund_idempotency_key: str) -> None:
        with self._lock:
            self._in_flight.discard(refund_idempotency_key)

    def events(self) -> list[tuple[dict[str, str], bytes]]:
        """Every webhook generated so far (headers, raw body), oldest first."""
        with self._lock:
            return list(self._events)

    def payment(self, payment_id: str) -> dict[str, Any]:
        with self._lock:
            return dict(public(self._payments[payment_id]))

    def order_ids(self, receipt: str | None = None) -> list[str]:
        """Ids of the orders held (with that receipt), oldest first."""
        with self._lock:
            orders = sorted(self._orders.values(), key=lambda o: o["created_at"])
            return [o["id"] for o in orders if receipt is None or o["receipt"] == receipt]

    def order(self, order_id: str) -> dict[str, Any]:
        with self._lock:
            return dict(public(self._orders[order_id]))

    # -- HTTP handler (server thread) ------------------------------------------------------------

    def _handle(self, request: FakeRequest) -> FakeResponse:
        if request.path.startswith("/_fake/"):
            return self._handle_control(request)
        if request.headers.get("authorization") != self._auth:
            return json_response(
                401,
                Refusal(
                    401, "The api key provided is invalid", source="NA", step="NA", reason="NA"
                ).body,
            )
        try:
            body = self._body(request)
            with self._lock:
                status, answer = self._route(request, body)
        except Refusal as refusal:
            return json_response(refusal.status, refusal.body)
        return json_response(status, answer)

    def _handle_control(self, request: FakeRequest) -> FakeResponse:
        parts = request.path.strip("/").split("/")
        if request.method == "POST" and len(parts) == 3 and parts[1] == "checkout":
            body = json.loads(request.body) if request.body else {}
            try:
                answer = self.pay_checkout(parts[2], decline=body.get("decline"))
            except (KeyError, ValueError) as exc:
                return json_response(400, {"error": {"description": str(exc)}})
            return json_response(200, answer)
        return json_response(404, {"error": {"description": "unknown fake control path"}})

    @staticmethod
    def _body(request: FakeRequest) -> dict[str, Any]:
        if not request.body:
            return {}
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            raise Refusal(400, "The request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise Refusal(400, "The request body must be a JSON object")
        return body

    def _route(self, request: FakeRequest, body: dict[str, Any]) -> tuple[int, Any]:
        method = request.method
        parts = request.path.strip("/").split("/")
        if parts[:1] != ["v1"]:
            raise Refusal(404, "The requested URL was not found on the server.", reason="NA")
        route = parts[1:]
        if route == ["orders"]:
            if method == "POST":
                return 200, self._create_order(body)
            if method == "GET":
                return 200, self._list_orders(request.query)
        elif len(route) == 2 and route[0] == "orders":
            order = self._order_for(route[1])
            if method == "GET":
                return 200, public(order)
            if method == "PATCH":
                order["notes"] = check_notes(body.get("notes"))
                return 200, public(order)
        elif len(route) == 3 and route[0] == "orders" and route[2] == "payments":
            order = self._order_for(route[1])
            return 200, collection([self._payments[p] for p in order["_payments"]])
        elif route == ["payments", "create", "recurring"] and method == "POST":
            return self._charge_token(body)
        elif len(route) == 2 and route[0] == "payments":
            payment = self._payment_for(route[1])
            if method == "GET":
                return 200, public(payment)
            if method == "PATCH":
                payment["notes"] = check_notes(body.get("notes"))
                return 200, public(payment)
        elif len(route) == 3 and route[0] == "payments":
            payment = self._payment_for(route[1])
            if route[2] == "capture" and method == "POST":
                return 200, self._capture(payment, body)
            if route[2] == "refund" and method == "POST":
                return self._refund(payment, body, request.headers)
            if route[2] == "refunds" and method == "GET":
                refunds = [r for r in self._refunds.values() if r["payment_id"] == payment["id"]]
                return 200, collection(refunds)
        elif len(route) == 2 and route[0] == "refunds" and method == "GET":
            refund = self._refunds.get(route[1])
            if refund is None:
                raise not_found()
            return 200, public(refund)
        raise Refusal(404, "The requested URL was not found on the server.", reason="NA")

    # -- orders ----------------------------------------------------------------------------------

    def _check_amount(self, amount: object, currency: object) -> tuple[int, str]:
        if not isinstance(currency, str) or currency not in known_currencies():
            raise Refusal(400, "The currency is invalid.", field="currency")
        if currency not in self._currencies:
            raise Refusal(400, f"Currency {currency} is not supported", field="currency")
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise Refusal(400, "The amount must be an integer.", field="amount")
        if amount < 100:
            raise Refusal(400, "Order amount less than minimum amount allowed", field="amount")
        if currency_exponent(currency) == 3 and amount % 10:
            raise Refusal(
                400,
                "The last decimal of a three-decimal currency amount must be 0",
                field="amount",
            )
        return amount, currency

    def _create_order(self, body: dict[str, Any]) -> dict[str, Any]:
        amount, currency = self._check_amount(body.get("amount"), body.get("currency"))
        receipt = body.get("receipt")
        if receipt is not None and (not isinstance(receipt, str) or len(receipt) > 40):
            raise Refusal(
                400, "The receipt may not be greater than 40 characters.", field="receipt"
            )
        capture = body.get("payment_capture", True)
        if capture not in (True, False, 0, 1):
            raise Refusal(400, "payment_capture must be a boolean", field="payment_capture")
        order_id = new_id("order")
        order: dict[str, Any] = {
            "id": order_id,
            "entity": "order",
            "amount": amount,
            "amount_paid": 0,
            "amount_due": amount,
            "currency": currency,
            "receipt": receipt,
            "offer_id": None,
            "status": "created",
            "attempts": 0,
            "notes": check_notes(body.get("notes")),
            "created_at": int(self._clock()),
            "_capture": bool(capture),
            "_payments": [],
        }
        self._orders[order_id] = order
        return public(order)

    def _list_orders(self, query: Mapping[str, str]) -> dict[str, Any]:
        orders = sorted(self._orders.values(), key=lambda o: o["created_at"], reverse=True)
        if "receipt" in query:
            orders = [o for o in orders if o["receipt"] == query["receipt"]]
        try:
            count, skip = int(query.get("count", "10")), int(query.get("skip", "0"))
        except ValueError:
            raise Refusal(400, "count and skip must be integers", field="count") from None
        if not 1 <= count <= 100:
            raise Refusal(400, "The count must be between 1 and 100.", field="count")
        return collection(orders[skip : skip + count])

    def _order_for(self, reference: str) -> dict[str, Any]:
        order = self._orders.get(reference)
        if order is None and reference in self._payments:
            order = self._orders.get(self._payments[reference]["order_id"] or "")
        if order is None:
            raise not_found()
        return order

    # -- payments --------------------------------------------------------------------------------

    def _payment_for(self, payment_id: str) -> dict[str, Any]:
        payment = self._payments.get(payment_id)
        if payment is None:
            raise not_found()
        return payment

    def _new_payment(
        self, order: dict[str, Any], *, method: str, notes: dict[str, str]
    ) -> dict[str, Any]:
        payment = payment_entity(
            order["id"], order["amount"], order["currency"], int(self._clock())
        )
        payment.update(method=method, notes=notes)
        self._payments[payment["id"]] = payment
        order["_payments"].append(payment["id"])
        order["attempts"] += 1
        order["status"] = "attempted" if order["status"] == "created" else order["status"]
        return payment

    def _charge_token(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        order = self._order_for(str(body.get("order_id")))
        amount, currency = self._check_amount(body.get("amount"), body.get("currency"))
        if (amount, currency) != (order["amount"], order["currency"]):
            raise Refusal(400, "The amount and currency must match the order's", field="amount")
        for field, prefix in (("customer_id", "cust_"), ("token", "token_")):
            value = body.get(field)
            if not isinstance(value, str) or not value.startswith(prefix):
                raise Refusal(400, f"The {field} is invalid.", field=field)
        if str(body.get("recurring")) != "1":
            raise Refusal(400, "recurring must be 1", field="recurring")
        if order["status"] == "paid":
            raise Refusal(400, "Order has already been paid", field="order_id")
        payment = self._new_payment(order, method="card", notes=check_notes(body.get("notes")))
        if self._declines:
            code = self._declines.popleft()
            self._fail(order, payment, code)
            raise Refusal(
                400,
                "Your payment has been declined by the bank",
                source="bank",
                step="payment_authorization",
                reason=code,
                metadata={"payment_id": payment["id"], "order_id": order["id"]},
            )
        if self._actions_needed:
            self._actions_needed -= 1
            answer = self._callback(order, payment)
            answer["next"] = [
                {
                    "action": "redirect",
                    "url": f"{self.base_url}/v1/payments/{payment['id']}/authenticate",
                }
            ]
            return 200, answer
        self._authorize(order, payment)
        return 200, self._callback(order, payment)

    def _callback(self, order: Mapping[str, Any], payment: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "razorpay_payment_id": payment["id"],
            "razorpay_order_id": order["id"],
            "razorpay_signature": checkout_signature(self._key_secret, order["id"], payment["id"]),
        }

    def _fail(self, order: dict[str, Any], payment: dict[str, Any], code: str) -> None:
        payment.update(
            status="failed",
            error_code="BAD_REQUEST_ERROR",
            error_description="Your payment has been declined by the bank",
            error_source="bank",
            error_step="payment_authorization",
            error_reason=code,
        )
        self._emit("payment.failed", {"payment": payment})

    def _authorize(self, order: dict[str, Any], payment: dict[str, Any]) -> None:
        payment["status"] = "authorized"
        self._emit("payment.authorized", {"payment": payment})
        if order["_capture"]:
            self._capture_payment(order, payment)

    def _capture_payment(self, order: dict[str, Any], payment: dict[str, Any]) -> None:
        payment.update(status="captured", captured=True)
        order.update(status="paid", amount_paid=order["amount"], amount_due=0)
        self._emit("payment.captured", {"payment": payment})
        self._emit("order.paid", {"payment": payment, "order": order})

    def _capture(self, payment: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        if payment["status"] in ("captured", "refunded"):
            raise Refusal(400, "This payment has already been captured", field="id")
        if payment["status"] != "authorized":
            raise Refusal(
                400,
                "Only payments which have been authorized and not yet captured can be captured",
                field="id",
            )
        amount, currency = body.get("amount"), body.get("currency")
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise Refusal(400, "The amount must be an integer.", field="amount")
        if currency != payment["currency"]:
            raise Refusal(400, "The currency should be the payment's currency", field="currency")
        if amount != payment["amount"]:
            raise Refusal(
                400, "Capture amount must be equal to the amount authorized", field="amount"
            )
        self._capture_payment(self._orders[payment["order_id"]], payment)
        return public(payment)

    # -- refunds ---------------------------------------------------------------------------------

    def _refund(
        self, payment: dict[str, Any], body: dict[str, Any], headers: Mapping[str, str]
    ) -> tuple[int, dict[str, Any]]:
        key = headers.get("x-refund-idempotency")
        fingerprint = hashlib.sha256(
            json.dumps([payment["id"], body], sort_keys=True).encode()
        ).hexdigest()
        if key is not None:
            if len(key) < 10 or not set(key) <= REFUND_KEY_CHARS:
                raise Refusal(
                    400,
                    "The idempotency key must be at least 10 characters of letters, digits, "
                    "hyphens and underscores",
                    field="X-Refund-Idempotency",
                )
            if key in self._in_flight:
                raise Refusal(409, "A request with this idempotency key is in progress")
            seen = self._refund_keys.get(key)
            if seen is not None:
                if seen[0] != fingerprint:
                    raise Refusal(
                        400,
                        "Different request with the same idempotency key has already "
                        "been processed.",
                        source="NA",
                        step="NA",
                        reason="NA",
                    )
                return seen[1], seen[2]
        try:
            answer = 200, self._make_refund(payment, body)
        except Refusal as refusal:
            answer = refusal.status, refusal.body
        if key is not None:  # the first answer is kept, failures included
            self._refund_keys[key] = (fingerprint, answer[0], answer[1])
        return answer

    def _make_refund(self, payment: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        if not payment["captured"]:
            raise Refusal(400, "The payment has not been captured", field="id")
        left = payment["amount"] - payment["amount_refunded"]
        if left == 0:
            raise Refusal(400, "The payment has been fully refunded already", field="id")
        amount = body.get("amount", left)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
            raise Refusal(400, "The amount must be a positive integer.", field="amount")
        if amount > left:
            raise Refusal(
                400, "The refund amount provided is greater than amount captured", field="amount"
            )
        speed = body.get("speed", "normal")
        if speed not in ("normal", "optimum"):
            raise Refusal(400, "The speed is invalid.", field="speed")
        refund = refund_entity(payment["id"], amount, payment["currency"], int(self._clock()))
        refund.update(
            notes=check_notes(body.get("notes")),
            receipt=body.get("receipt"),
            speed_requested=speed,
        )
        self._refunds[refund["id"]] = refund
        payment["amount_refunded"] += amount
        full = payment["amount_refunded"] == payment["amount"]
        payment.update(refund_status="full" if full else "partial")
        if full:
            payment["status"] = "refunded"
        self._emit("refund.created", {"refund": refund, "payment": payment})
        self._emit("refund.processed", {"refund": refund, "payment": payment})
        return public(refund)

    # -- webhooks --------------------------------------------------------------------------------

    def _emit(self, name: str, entities: Mapping[str, Mapping[str, Any]]) -> None:
        """Record (and deliver) the webhook for a state change; caller holds the lock."""
        payload = {kind: {"entity": dict(public(entity))} for kind, entity in entities.items()}
        now = int(self._clock())
        event = self._signed(name, list(entities), payload, now, None, None)
        self._events.append(event)
        if self._outbox is not None:
            self._outbox.put(event)

    def _signed(
        self,
        name: str,
        contains: list[str],
        payload: Mapping[str, Any],
        created_at: int,
        event_id: str | None,
        secret: str | None,
    ) -> tuple[dict[str, str], bytes]:
        body = json.dumps(
            {
                "entity": "event",
                "account_id": "acc_FakeRazorpay01",
                "event": name,
                "contains": contains,
                "payload": payload,
                "created_at": created_at,
            },
            separators=(",", ":"),
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Razorpay-Signature": webhook_signature(secret or self.webhook_secret, body),
            "X-Razorpay-Event-Id": event_id or new_id("evt"),
        }
        return headers, body

    def _deliver(self) -> None:
        """Sender thread: POST each event to webhook_url, as Razorpay does (one try each)."""
        assert self._outbox is not None and self._webhook_url is not None
        with httpx.Client(timeout=5.0) as client:
            while True:
                event = self._outbox.get()
                if event is None:
                    return
                headers, body = event
                try:
                    client.post(self._webhook_url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    print(f"fake razorpay: webhook delivery failed: {exc!r}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aegispay_razorpay.fake", description="Run a fake Razorpay on 127.0.0.1."
    )
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--key-id", default="rzp_test_fake")
    parser.add_argument("--key-secret", default="fake_key_secret_0123456789")
    parser.add_argument("--webhook-secret", default="fake_webhook_secret_0123456789")
    parser.add_argument("--webhook-url", default=None, help="POST every webhook event here")
    args = parser.parse_args(argv)
    fake = FakeRazorpay(
        key_id=args.key_id,
        key_secret=args.key_secret,
        webhook_secret=args.webhook_secret,
        webhook_url=args.webhook_url,
        host=args.host,
        port=args.port,
    )
    fake.start()
    print(f"fake Razorpay on {fake.base_url} (key_id {args.key_id}); Ctrl-C stops it", flush=True)
    print(f"a customer pays: curl -X POST {fake.base_url}/_fake/checkout/ORDER_ID", flush=True)
    try:
        fake._server.serve_forever()
    finally:
        fake.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
