"""The Razorpay adapter: Orders, Payments and Refunds over httpx, mapped to AegisPay outcomes.

How an AegisPay payment maps onto Razorpay:

* **authorize** creates an order (``POST /v1/orders``: amount in subunits, currency,
  ``receipt`` = the attempt's derived key, ``notes`` with our payment id, ``payment_capture``
  from the capture mode). Then either
  - the customer pays in Razorpay Checkout: the result is REQUIRES_ACTION with the order id and
    key id the client needs (``next_action``), settled later by a webhook, a status lookup or
    :meth:`RazorpayGateway.verify_checkout` of the callback; or
  - when the request carries a saved Razorpay card: ``payment_method="cust_...:token_..."``
    (or ``"token_..."`` with ``customer_id="cust_..."`` / ``metadata["razorpay_customer_id"]``),
    the adapter charges it at once (``POST /v1/payments/create/recurring``) and reads the payment's
    status: captured / authorized -> SUCCEEDED, failed -> DECLINED with Razorpay's reason,
    still authenticating -> REQUIRES_ACTION (redirect) or PENDING.
* The **reference** returned for a payment is always the order id (``order_...``): it exists
  from the first call in both flows, and Razorpay's webhooks carry it (``payment.order_id``).
  Capture and refund find the order's payment with ``GET /v1/orders/{id}/payments``.
* **Double charges**: Razorpay has no idempotency header for orders or payments. The adapter
  looks the order up by receipt before creating one (a repeat reuses it, a repeat with a
  different amount is refused), and looks at the order's payments before charging a token (a
  repeat returns the first charge). Razorpay itself accepts one payment per order: a second
  payment on a paid order is refunded automatically. Capture is safe to repeat (Razorpay
  captures only from ``authorized``); refunds carry ``X-Refund-Idempotency``.
* **void**: Razorpay has no void or cancel API. An uncaptured authorization is released by
  Razorpay's automatic refund at the end of the capture window (3 days by default). Void marks
  the payment (or the unpaid order) with an ``aegispay_voided`` note (``PATCH`` of its notes,
  Razorpay's only update) so that no adapter captures it later, and answers SUCCEEDED; a
  captured payment is DECLINED ``already_captured`` (refund it instead). A customer can still
  pay a voided, unpaid Checkout order: with automatic capture Razorpay captures it, and the
  late ``payment.captured`` webhook is refused by the state machine (refund it).
* **capture** must be for the full order amount (Razorpay's rule): a partial capture is
  DECLINED ``partial_capture_not_supported`` without calling Razorpay.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs
import httpx
from aegispay.gateways import (
    AuthorizeRequest,
    CaptureRequest,
    FeeModel,
    GatewayCapabilities,
    GatewayResult,
    Operation,
    Outcome,
    RefundRequest,
    StatusRequest,
    VoidRequest,
)
from aegispay.webhooks import WebhookUpdate

from . import webhooks
from .amounts import amount_problem
from .config import RazorpayConfig
from .keys import receipt_for, refund_idempotency_key
from .outcomes import error_result, transport_result
from .signatures import verify_checkout_signature

__all__ = ["RazorpayGateway"]

_MAX_NOTES = 14  # Razorpay allows 15 notes (256 characters each); one is kept for VOID_NOTE
_NOTE_LENGTH = 256
VOID_NOTE = "aegispay_voided"
_OUR_NOTES = ("aegispay_payment_id", "aegispay_key", "aegispay_flow", VOID_NOTE)
# Payment statuses in the order the adapter prefers them when an order has several payments.
_RANK: Mapping[str, int] = MappingProxyType(
    {"captured": 0, "refunded": 0, "authorized": 1, "created": 2, "failed": 3}
)


class _Stop(Exception):
    """Internal: a call got an answer that ends the operation with ``result``."""

    def __init__(self, result: GatewayResult) -> None:
        super().__init__(result.message)
        self.result = result


def _unknown(message: str) -> GatewayResult:
    return GatewayResult(Outcome.UNKNOWN, message=message)


def _declined(code: str, message: str, *, elsewhere: bool = False) -> GatewayResult:
    return GatewayResult(
        Outcome.DECLINED, decline_code=code, message=message, retryable_elsewhere=elsewhere
    )


def _items(collection: Any) -> list[dict[str, Any]]:
    items = collection.get("items") if isinstance(collection, dict) else None
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _notes(entity: Mapping[str, Any]) -> Mapping[str, Any]:
    notes = entity.get("notes")
    return notes if isinstance(notes, Mapping) else {}  # Razorpay sends [] for "no notes"


def _best_payment(payments: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The payment that decides an order's fate: captured beats authorized beats pending beats
    failed; the newest wins a tie."""
    if not payments:
        return None
    ordered = sorted(payments, key=lambda p: -int(p.get("created_at") or 0))
    return min(ordered, key=lambda p: _RANK.get(str(p.get("status")), 4))


class RazorpayGateway:
    """One Razorpay account. Implements ``Gateway`` and ``WebhookReceiver``.

    The httpx client (one connection pool) is created on first use; ``await gateway.aclose()``
    releases it. ``transport`` replaces the network (tests).
    """

    def __init__(
        self, config: RazorpayConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self.name = config.name
        self.supported_currencies: frozenset[str] | None = config.supported_currencies
        self.fees = FeeModel(config.fixed_fee_minor, config.fee_bps)
        self.capabilities = GatewayCapabilities(
            currencies=config.supported_currencies,
            methods=frozenset({"card", "upi", "netbanking", "wallet", "emi"}),
            manual_capture=True,
            partial_capture=False,  # Razorpay captures the full order amount only
            partial_refund=True,
            # Not by a header: by receipt look-up before create and one payment per order.
            idempotent_create=True,
            authoritative_status=True,  # "no order with this receipt" is Razorpay's answer
            webhooks=config.webhook_secret is not None,
        )
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:  # never the secrets
        return f"RazorpayGateway(name={self.name!r}, base_url={self.config.base_url!r})"

    # -- HTTP ------------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            c = self.config
            self._client = httpx.AsyncClient(
                base_url=c.base_url,
                auth=httpx.BasicAuth(c.key_id, c.key_secret),
                timeout=httpx.Timeout(c.read_timeout_s, connect=c.connect_timeout_s),
                limits=httpx.Limits(
                    max_connections=c.max_connections,
                    max_keepalive_connections=c.max_keepalive_connections,
                ),
                headers={"accept": "application/json", "user-agent": "aegispay-razorpay/0.1"},
                transport=self._transport,
                follow_redirects=False,
            )
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The JSON object of a 2xx answer; anything else raises _Stop with its outcome."""
        try:
            response = await self._http().request(
                method, path, json=body, params=params, headers=headers
            )
        except httpx.HTTPError as exc:
            raise _Stop(transport_result(exc)) from None
        if not 200 <= response.status_code < 300:
            lowered = {k.lower(): v for k, v in response.headers.items()}
            raise _Stop(error_result(response.status_code, response.content, lowered))
        try:
            data = json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            raise _Stop(_unknown(f"Razorpay answered HTTP {response.status_code} without JSON"))
        return data

    # -- look-ups --------------------------------------------------------------------------------

    async def _order_by_receipt(self, receipt: str) -> dict[str, Any] | None:
        found = await self._call("GET", "/v1/orders", params={"receipt": receipt, "count": "100"})
        orders = [o for o in _items(found) if o.get("receipt") == receipt]
        if not orders:
            return None
        # Receipts are not unique at Razorpay; the oldest order is the one our first call made.
        return min(orders, key=lambda o: int(o.get("created_at") or 0))

    async def _order_payments(self, order_id: str) -> list[dict[str, Any]]:
        return _items(await self._call("GET", f"/v1/orders/{order_id}/payments"))

    async def _payment_for(self, reference: str | None) -> dict[str, Any] | None:
        """The payment behind ``reference`` (an order id, or a payment id)."""
        if not reference:
            return None
        if reference.startswith("pay_"):
            return await self._call("GET", f"/v1/payments/{reference}")
        return _best_payment(await self._order_payments(reference))

    # -- helpers ---------------------------------------------------------------------------------

    def _notes_for(self, request: AuthorizeRequest, flow: str) -> dict[str, str]:
        notes = {
            "aegispay_payment_id": request.payment_id,
            "aegispay_key": request.idempotency_key[:_NOTE_LENGTH],
            "aegispay_flow": flow,
        }
        for key in sorted(request.metadata):
            if len(notes) >= _MAX_NOTES:
                break
            if key not in _OUR_NOTES:
                notes[key[:_NOTE_LENGTH]] = str(request.metadata[key])[:_NOTE_LENGTH]
        return notes

    @staticmethod
    def _saved_method(request: AuthorizeRequest) -> tuple[str | None, str | None]:
        """(token, Razorpay customer) of a saved card, or (None, None) for Checkout.

        ``payment_method`` is ``"cust_...:token_..."`` (both ids in one string), or
        ``"token_..."`` with the customer in ``customer_id`` (when it is a Razorpay ``cust_``
        id) or ``metadata["razorpay_customer_id"]``.
        """
        method = request.payment_method or ""
        customer, _, token = method.rpartition(":")
        if not token.startswith("token_"):
            return None, None
        if not customer:
            customer = request.metadata.get("razorpay_customer_id") or request.customer_id or ""
        return token, customer if customer.startswith("cust_") else None

    def _checkout_action(self, order: Mapping[str, Any]) -> GatewayResult:
        order_id = str(order["id"])
        return GatewayResult(
            Outcome.REQUIRES_ACTION,
            reference=order_id,
            message="the customer pays in Razorpay Checkout",
            next_action={
                "type": "razorpay_checkout",
                "order_id": order_id,
                "key_id": self.config.key_id,
                "amount": str(order.get("amount")),
                "currency": str(order.get("currency")),
            },
        )

    def _payment_result(
        self, order_id: str, payment: Mapping[str, Any], next_url: str | None = None
    ) -> GatewayResult:
        """What one Razorpay payment's status means for the authorize of its order."""
        status = payment.get("status")
        if status in ("captured", "refunded"):
            return GatewayResult(Outcome.SUCCEEDED, reference=order_id, captured=True)
        if status == "authorized":
            return GatewayResult(Outcome.SUCCEEDED, reference=order_id, captured=False)
        if status == "failed":
            code = str(payment.get("error_reason") or payment.get("error_code") or "failed")
            return GatewayResult(
                Outcome.DECLINED,
                reference=order_id,
                decline_code=code.lower(),
                message=str(payment.get("error_description") or "payment failed"),
            )
        if status == "created" and next_url:
            return GatewayResult(
                Outcome.REQUIRES_ACTION,
                reference=order_id,
                message="the customer must authenticate the payment",
                next_action={
                    "type": "redirect_to_url",
                    "url": next_url,
                    "order_id": order_id,
                    "payment_id": str(payment.get("id")),
                },
            )
        # created: the bank has not answered yet; a webhook or a status lookup settles it.
        return GatewayResult(
            Outcome.PENDING, reference=order_id, message=f"payment is {status or 'pending'}"
        )

    @staticmethod
    def _mismatch(order: Mapping[str, Any], request: AuthorizeRequest) -> str | None:
        if order.get("amount") != request.amount.minor or order.get("currency") != (
            request.amount.currency
        ):
            return (
                f"order {order.get('id')} for this key is for {order.get('amount')} "
                f"{order.get('currency')} (subunits), not {request.amount.minor} "
                f"{request.amount.currency}"
            )
        return None

    # -- Gateway ---------------------------------------------------------------------------------

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        problem = amount_problem(request.amount, self.config.supported_currencies)
        if problem is not None:  # another gateway may well take it
            return _declined("amount_not_supported", problem, elsewhere=True)
        token, customer = self._saved_method(request)
        if token is not None and customer is None:
            return _declined(
                "customer_required",
                "a Razorpay token needs its Razorpay customer: payment_method "
                "'cust_...:token_...', customer_id 'cust_...' or metadata razorpay_customer_id",
            )
        receipt = receipt_for(request.idempotency_key)
        charged = False  # set once Razorpay has accepted the charge: money may have moved
        try:
            order = await self._order_by_receipt(receipt)
            if order is not None:
                mismatch = self._mismatch(order, request)
                if mismatch is not None:
                    return _declined("idempotency_key_reused", mismatch)
                payment = _best_payment(await self._order_payments(str(order["id"])))
                # A repeat returns what the first call did; a customer's failed Checkout
                # attempt leaves the order payable, a failed token charge is final.
                if payment is not None and (token is not None or payment["status"] != "failed"):
                    return self._payment_result(str(order["id"]), payment)
            else:
                flow = "recurring" if token is not None else "checkout"
                order = await self._create_order(request, receipt, flow)
            order_id = str(order["id"])
            if token is None:
                return self._checkout_action(order)
            charge = await self._call(
                "POST",
                "/v1/payments/create/recurring",
                body=self._recurring_body(request, order_id, token, customer),
            )
            charged = True
            payment_id = charge["razorpay_payment_id"]
            next_url = next(
                (
                    str(step.get("url"))
                    for step in charge.get("next") or []
                    if isinstance(step, dict) and step.get("action") == "redirect"
                ),
                None,
            )
            payment = await self._call("GET", f"/v1/payments/{payment_id}")
            return self._payment_result(order_id, payment, next_url)
        except _Stop as stop:
            if charged and stop.result.outcome is not Outcome.UNKNOWN:
                # The charge was accepted; failing to read its status must not look like
                # "not sent" or "declined".
                return _unknown(f"charge made, status not read: {stop.result.message}")
            return stop.result
        except (KeyError, TypeError, ValueError) as exc:  # an answer of an unexpected shape
            return _unknown(f"unexpected Razorpay answer ({type(exc).__name__})")

    async def _create_order(
        self, request: AuthorizeRequest, receipt: str, flow: str
    ) -> dict[str, Any]:
        body = {
            "amount": request.amount.minor,
            "currency": request.amount.currency,
            "receipt": receipt,
            "payment_capture": request.capture,
            "notes": self._notes_for(request, flow),
        }
        try:
            return await self._call("POST", "/v1/orders", body=body)
        except _Stop as stop:
            refused = stop.result
            if (
                refused.outcome is Outcome.DECLINED
                and not refused.retryable_elsewhere
                and refused.decline_code != "idempotency_key_reused"  # our mistake: stop
            ):
                # Razorpay refused the order itself (a minimum amount, say): no customer's bank
                # said no and no money can have moved, so another gateway may take it.
                refused = attrs.evolve(refused, retryable_elsewhere=True)
            raise _Stop(refused) from None

    def _recurring_body(
        self, request: AuthorizeRequest, order_id: str, token: str, customer: str | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "amount": request.amount.minor,
            "currency": request.amount.currency,
            "order_id": order_id,
            "customer_id": customer,
            "token": token,
            "recurring": "1",
            "notes": self._notes_for(request, "recurring"),
        }
        for field in ("email", "contact"):  # Razorpay asks for both on recurring payments
            if request.metadata.get(field):
                body[field] = request.metadata[field]
        if request.description:
            body["description"] = request.description[:255]
        return body

    async def capture(self, request: CaptureRequest) -> GatewayResult:
        reference = request.gateway_reference
        try:
            payment = await self._payment_for(reference)
            if payment is None:
                return _declined("no_such_authorization", f"no Razorpay payment for {reference}")
            status, amount = payment.get("status"), payment.get("amount")
            if amount != request.amount.minor or payment.get("currency") != (
                request.amount.currency
            ):
                return _declined(
                    "partial_capture_not_supported",
                    f"Razorpay captures the full amount only ({amount} "
                    f"{payment.get('currency')} subunits), not {request.amount}",
                )
            if status in ("captured", "refunded"):  # a repeat of a capture that happened
                return GatewayResult(Outcome.SUCCEEDED, reference=reference, captured=True)
            order_id = payment.get("order_id")
            order = await self._call("GET", f"/v1/orders/{order_id}") if order_id else {}
            if VOID_NOTE in _notes(payment) or VOID_NOTE in _notes(order):
                return _declined("voided", "the authorization was voided through AegisPay")
            if status != "authorized":
                return _declined("not_authorized", f"the Razorpay payment is {status}")
            captured = await self._call(
                "POST",
                f"/v1/payments/{payment['id']}/capture",
                body={"amount": request.amount.minor, "currency": request.amount.currency},
            )
            if captured.get("status") in ("captured", "refunded"):
                return GatewayResult(Outcome.SUCCEEDED, reference=reference, captured=True)
            return _unknown(f"capture answered status {captured.get('status')!r}")
        except _Stop as stop:
            if stop.result.outcome is Outcome.DECLINED:
                return await self._settle_capture_decline(reference, stop.result)
            return stop.result
        except (KeyError, TypeError, ValueError) as exc:
            return _unknown(f"unexpected Razorpay answer ({type(exc).__name__})")

    async def _settle_capture_decline(
        self, reference: str | None, declined: GatewayResult
    ) -> GatewayResult:
        """Razorpay refuses to capture a captured payment: if a concurrent or earlier call
        captured it, that is this capture's success, not a decline."""
        try:
            payment = await self._payment_for(reference)
        except _Stop:
            return declined
        if payment is not None and payment.get("status") in ("captured", "refunded"):
            return GatewayResult(Outcome.SUCCEEDED, reference=reference, captured=True)
        return declined

    async def void(self, request: VoidRequest) -> GatewayResult:
        reference = request.gateway_reference
        try:
            payment = await self._payment_for(reference)
            status = payment.get("status") if payment is not None else None
            if status in ("captured", "refunded"):
                return _declined("already_captured", "captured payments are refunded, not voided")
            # Razorpay has no void: mark the payment (or the unpaid order) so that no adapter
            # captures it later, and let Razorpay's automatic refund release the hold.
            if payment is not None and status != "failed":
                target = f"/v1/payments/{payment['id']}"
                notes = dict(_notes(payment))
            elif reference and reference.startswith("order_"):
                target = f"/v1/orders/{reference}"
                notes = dict(_notes(await self._call("GET", target)))
            else:
                return _declined("no_such_authorization", f"no Razorpay payment for {reference}")
            if VOID_NOTE not in notes:
                notes[VOID_NOTE] = request.idempotency_key[:_NOTE_LENGTH]
                await self._call("PATCH", target, body={"notes": notes})
        except _Stop as stop:
            return stop.result
        except (KeyError, TypeError, ValueError) as exc:
            return _unknown(f"unexpected Razorpay answer ({type(exc).__name__})")
        return self._voided(reference, status)

    @staticmethod
    def _voided(reference: str | None, status: object) -> GatewayResult:
        return GatewayResult(
            Outcome.SUCCEEDED,
            reference=reference,
            message=(
                "marked void; Razorpay has no void API and releases the authorization by its "
                "automatic refund when the capture window ends"
                if status == "authorized"
                else "marked void; nothing is held at Razorpay (orders cannot be cancelled)"
            ),
        )

    async def refund(self, request: RefundRequest) -> GatewayResult:
        problem = amount_problem(request.amount, self.config.supported_currencies)
        if problem is not None:
            return _declined("amount_not_supported", problem)
        try:
            payment = await self._payment_for(request.gateway_reference)
            if payment is None or payment.get("status") not in ("captured", "refunded"):
                return _declined("not_captured", "only captured Razorpay payments are refunded")
            refund = await self._call(
                "POST",
                f"/v1/payments/{payment['id']}/refund",
                body={
                    "amount": request.amount.minor,
                    "speed": self.config.refund_speed,
                    "receipt": receipt_for(request.idempotency_key),
                    "notes": {
                        "aegispay_payment_id": request.payment_id,
                        "aegispay_key": request.idempotency_key[:_NOTE_LENGTH],
                        **({"reason": request.reason[:_NOTE_LENGTH]} if request.reason else {}),
                    },
                },
                headers={"x-refund-idempotency": refund_idempotency_key(request.idempotency_key)},
            )
            return self._refund_result(refund)
        except _Stop as stop:
            return stop.result
        except (KeyError, TypeError, ValueError) as exc:
            return _unknown(f"unexpected Razorpay answer ({type(exc).__name__})")

    @staticmethod
    def _refund_result(refund: Mapping[str, Any]) -> GatewayResult:
        refund_id = str(refund["id"])
        status = refund.get("status")
        if status == "processed":
            return GatewayResult(Outcome.SUCCEEDED, reference=refund_id)
        if status == "failed":
            return GatewayResult(
                Outcome.DECLINED, reference=refund_id, decline_code="refund_failed"
            )
        return GatewayResult(Outcome.PENDING, reference=refund_id, message=f"refund {status}")

    async def get_status(self, request: StatusRequest) -> GatewayResult:
        try:
            if request.operation is Operation.AUTHORIZE:
                return await self._authorize_status(request)
            if request.operation is Operation.CAPTURE:
                payment = await self._payment_for(request.gateway_reference)
                if payment is not None and payment.get("status") in ("captured", "refunded"):
                    return GatewayResult(
                        Outcome.SUCCEEDED, reference=request.gateway_reference, captured=True
                    )
                return GatewayResult(Outcome.NOT_SENT, message="the payment is not captured")
            if request.operation is Operation.VOID:
                return await self._void_status(request)
            if request.operation is Operation.REFUND:
                return await self._refund_status(request)
        except _Stop as stop:
            # A look-up that failed (refused, rate limited, unanswered) says nothing about the
            # original call: never "not sent", never "declined".
            return _unknown(f"status lookup failed: {stop.result.message}")
        except (KeyError, TypeError, ValueError) as exc:
            return _unknown(f"unexpected Razorpay answer ({type(exc).__name__})")
        return _unknown(f"no status lookup for {request.operation.value}")

    async def _authorize_status(self, request: StatusRequest) -> GatewayResult:
        reference = request.gateway_reference
        if reference and reference.startswith("order_"):
            order: dict[str, Any] | None = await self._call("GET", f"/v1/orders/{reference}")
        else:
            order = await self._order_by_receipt(receipt_for(request.idempotency_key))
        if order is None:
            return GatewayResult(
                Outcome.NOT_SENT, message="Razorpay has no order for this idempotency key"
            )
        order_id = str(order["id"])
        payment = _best_payment(await self._order_payments(order_id))
        if _notes(order).get("aegispay_flow") == "recurring":
            if payment is None:
                return GatewayResult(
                    Outcome.NOT_SENT,
                    reference=order_id,
                    message="the order exists but Razorpay has no charge on it",
                )
            return self._payment_result(order_id, payment)
        if payment is not None and payment.get("status") != "failed":
            return self._payment_result(order_id, payment)
        return self._checkout_action(order)

    async def _void_status(self, request: StatusRequest) -> GatewayResult:
        reference = request.gateway_reference
        payment = await self._payment_for(reference)
        if payment is not None and payment.get("status") != "failed":
            if VOID_NOTE in _notes(payment):
                return self._voided(reference, payment.get("status"))
            return GatewayResult(Outcome.NOT_SENT, message="the payment is not marked void")
        if reference and reference.startswith("order_"):
            order = await self._call("GET", f"/v1/orders/{reference}")
            if VOID_NOTE in _notes(order):
                return self._voided(reference, None)
        return GatewayResult(Outcome.NOT_SENT, message="nothing is marked void")

    async def _refund_status(self, request: StatusRequest) -> GatewayResult:
        payment = await self._payment_for(request.gateway_reference)
        if payment is None:
            return GatewayResult(Outcome.NOT_SENT, message="no Razorpay payment to refund")
        path = f"/v1/payments/{payment['id']}/refunds"
        refunds = _items(await self._call("GET", path, params={"count": "100"}))
        key = request.idempotency_key[:_NOTE_LENGTH]
        for refund in refunds:
            if _notes(refund).get("aegispay_key") == key:
                return self._refund_result(refund)
        return GatewayResult(Outcome.NOT_SENT, message="Razorpay has no refund for this key")

    # -- WebhookReceiver and Checkout ------------------------------------------------------------

    async def parse_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> WebhookUpdate:
        return webhooks.parse_webhook(self.config.webhook_secret, headers, raw_body)

    def verify_checkout(self, order_id: str, payment_id: str, signature: str) -> bool:
        """Check Razorpay Checkout's callback: ``signature`` must be HMAC-SHA256 of
        ``order_id|payment_id`` with the key secret. Pass the order id *stored* for the payment
        (its gateway reference), never the one the client sent."""
        return verify_checkout_signature(self.config.key_secret, order_id, payment_id, signature)
