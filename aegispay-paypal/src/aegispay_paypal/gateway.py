"""The PayPal gateway adapter: Orders v2 and Payments v2 over httpx, asynchronously.

The flow: ``authorize`` creates an order (intent CAPTURE, or AUTHORIZE for manual capture) and
answers REQUIRES_ACTION with the order id and the approval link. Once the payer has approved,
a status lookup (``get_status``) captures or authorizes the order - PayPal moves no money before
the merchant does that - and reports the result. Capture, void and refund then act on the
order's authorization and capture, found by reading the order. The reference AegisPay keeps is
the order id throughout.

Every mutating call carries ``PayPal-Request-Id`` (the attempt's idempotency key, or a key
derived from it), so repeating a call cannot create a second order, capture or refund.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import attrs
import httpx
from aegispay.errors import AegisPayError, InvalidMoney
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
from aegispay.webhooks import WebhookSignatureError, WebhookUpdate

from .amounts import PAYPAL_CURRENCIES, to_paypal
from .auth import TokenError, TokenSource
from .config import PayPalConfig
from .events import TransmissionHeaders, parse_event, verification_body
from .mapping import (
    authorization_of,
    captures_of,
    error_result,
    next_action_of,
    order_result,
    parse_error,
    payment_result,
    refunds_of,
)

__all__ = ["PayPalGateway", "PayPalUnavailable", "PayPalWebhookUnavailable"]

# Create requests kept so a status lookup can repeat a create whose answer was lost (PayPal has
# no lookup by PayPal-Request-Id; repeating the request with the same id returns the order).
_REMEMBERED_CREATES = 10_000
_MAX_TEXT = 127
_ALREADY_COMPLETED = frozenset(
    {"ORDER_ALREADY_CAPTURED", "ORDER_ALREADY_AUTHORIZED"}
)  # PayPal's limit for custom_id, invoice_id and description


class PayPalUnavailable(AegisPayError):
    """PayPal could not be reached, or refused our credentials (``connect``)."""


class PayPalWebhookUnavailable(PayPalUnavailable):
    """A webhook could not be verified because PayPal's verification API could not be asked
    (network, 5xx, 429, or no webhook_id configured): answer 5xx so PayPal delivers it again."""


@attrs.frozen
class _Reply:
    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class _NotSent(Exception):
    """Internal: the call provably never reached PayPal (carries the result to return)."""

    def __init__(self, result: GatewayResult) -> None:
        super().__init__(result.message)
        self.result = result


class _Lost(Exception):
    """Internal: the call was sent, and its answer was lost (timeout, reset)."""


def _str_at(obj: Any, *path: str) -> str | None:
    for key in path:
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    return obj if isinstance(obj, str) and obj else None


def _lookup_failed(result: GatewayResult) -> GatewayResult:
    """A status lookup that could not be made says nothing about the payment: UNKNOWN."""
    if result.outcome is Outcome.NOT_SENT:
        return attrs.evolve(result, outcome=Outcome.UNKNOWN, retry_after_s=None)
    return result


class PayPalGateway:
    """AegisPay's ``Gateway`` (and ``WebhookReceiver``) for PayPal. Holds no module state: each
    instance owns its HTTP connection pool and its token; close it with ``aclose()``."""

    def __init__(
        self,
        config: PayPalConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.name = config.name
        self.supported_currencies: frozenset[str] | None = PAYPAL_CURRENCIES
        self.fees = FeeModel(config.fixed_fee_minor, config.fee_bps)
        self.capabilities = GatewayCapabilities(
            currencies=PAYPAL_CURRENCIES,
            methods=frozenset({"paypal"}),
            manual_capture=True,
            partial_capture=True,
            partial_refund=True,
            idempotent_create=True,
            # PayPal has no lookup by PayPal-Request-Id: a lost create is found by repeating it
            # (approval flow, in this process) or in the transaction search, which lags up to
            # three hours, so "not found" is UNKNOWN. Captures, voids and refunds are looked up
            # in the order, which lists all of them (there, "not found" is NOT_SENT).
            authoritative_status=False,
            webhooks=config.webhook_id is not None,
            # PayPal-Request-Id is kept 6 h for orders (45 days for captures and refunds):
            # an order create is repeated with its key only well inside 6 h.
            idempotency_retention_s=6 * 3600,
        )
        self._transport = transport
        self._clock = clock
        self._client: httpx.AsyncClient | None = None
        self._tokens = TokenSource(
            config.client_id, config.client_secret, refresh_margin_s=config.token_refresh_margin_s
        )
        self._creates: OrderedDict[str, bytes] = OrderedDict()

    def __repr__(self) -> str:
        return f"PayPalGateway(name={self.name!r}, base_url={self.config.api_url!r})"

    # -- HTTP ------------------------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            c = self.config
            self._client = httpx.AsyncClient(
                base_url=c.api_url,
                timeout=httpx.Timeout(c.read_timeout_s, connect=c.connect_timeout_s),
                limits=httpx.Limits(
                    max_connections=c.max_connections,
                    max_keepalive_connections=c.max_keepalive_connections,
                    keepalive_expiry=c.keepalive_expiry_s,
                ),
                transport=self._transport,
                headers={"Accept": "application/json"},
            )
        return self._client

    @property
    def token_fetches(self) -> int:
        return self._tokens.fetches

    async def connect(self) -> None:
        """Obtain the bearer token now (checks the credentials before the first payment).

        Raises :class:`PayPalUnavailable` when PayPal refuses the credentials or cannot be
        reached; the message never contains a credential."""
        try:
            await self._tokens.get(self.client)
        except TokenError as exc:
            raise PayPalUnavailable(str(exc)) from None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        request_id: str | None = None,
    ) -> _Reply:
        """One call with a bearer token; a 401 renews the token once and repeats the call
        (same PayPal-Request-Id: a refused call was not processed).

        Raises _NotSent when the call never left (no token, connect error, pool full) and
        _Lost when it may have been processed without our hearing the answer.
        """
        client = self.client
        try:
            token = await self._tokens.get(client)
        except TokenError as exc:
            raise _NotSent(
                GatewayResult(Outcome.NOT_SENT, message=str(exc), retry_after_s=exc.retry_after_s)
            ) from None
        headers = {"Prefer": "return=representation"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if request_id is not None:
            headers["PayPal-Request-Id"] = request_id
        for renewed in (False, True):
            headers["Authorization"] = f"Bearer {token}"
            try:
                response = await client.request(method, path, content=body, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Nothing of the request was written: connect refused, DNS, TLS, no free
                # connection in the pool.
                raise _NotSent(
                    GatewayResult(Outcome.NOT_SENT, message=f"PayPal: {type(exc).__name__}")
                ) from None
            except httpx.HTTPError as exc:
                raise _Lost(f"PayPal: {type(exc).__name__} after sending") from None
            if response.status_code == 401 and not renewed:
                try:
                    token = await self._tokens.refresh(client, token)
                except TokenError as exc:
                    raise _NotSent(
                        GatewayResult(
                            Outcome.NOT_SENT, message=str(exc), retry_after_s=exc.retry_after_s
                        )
                    ) from None
                continue
            break
        try:
            decoded = response.json() if response.content else None
        except ValueError:
            decoded = None
        return _Reply(response.status_code, decoded, response.headers)

    async def _call(
        self, method: str, path: str, *, payload: Any = None, request_id: str | None = None
    ) -> _Reply | GatewayResult:
        """``_send`` with its failures as results: NOT_SENT, or UNKNOWN for a lost answer."""
        body = None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        try:
            return await self._send(method, path, body=body, request_id=request_id)
        except _NotSent as exc:
            return exc.result
        except _Lost as exc:
            return GatewayResult(Outcome.UNKNOWN, message=str(exc))

    async def _read_order(
        self, order_id: str, *, lookup: bool = False
    ) -> Mapping[str, Any] | GatewayResult:
        """GET the order. Failures come back as results: a transport failure or 5xx is
        NOT_SENT for the operation that needed the order (it was not sent). For a status
        ``lookup`` only a 404 is an answer (DECLINED: no such order); any other failure is
        UNKNOWN, since it says nothing about the payment."""
        reply = await self._call("GET", f"/v2/checkout/orders/{order_id}")
        if isinstance(reply, GatewayResult):
            outcome = Outcome.UNKNOWN if lookup else Outcome.NOT_SENT  # a lost GET changed nothing
            return GatewayResult(outcome, order_id, message=reply.message)
        if reply.ok and isinstance(reply.body, Mapping):
            return reply.body
        result = error_result(reply.status, reply.body, reply.headers, order_id)
        if lookup and reply.status != 404:
            return GatewayResult(Outcome.UNKNOWN, order_id, message=result.message)
        if result.outcome is Outcome.UNKNOWN:
            return attrs.evolve(result, outcome=Outcome.NOT_SENT)
        return result

    # -- authorize -------------------------------------------------------------------------------

    def _create_body(self, request: AuthorizeRequest) -> dict[str, Any]:
        unit: dict[str, Any] = {
            "reference_id": "default",
            "amount": to_paypal(request.amount),
            # Echoed in capture and authorization webhooks: how an event finds its payment.
            "custom_id": request.payment_id[:_MAX_TEXT],
            # Unique per attempt, and PayPal may refuse a duplicate invoice id: one more guard
            # against a second order for the same attempt.
            "invoice_id": request.idempotency_key[:_MAX_TEXT],
        }
        description = request.description or request.reference
        if description:
            unit["description"] = description[:_MAX_TEXT]
        body: dict[str, Any] = {
            "intent": "CAPTURE" if request.capture else "AUTHORIZE",
            "purchase_units": [unit],
        }
        c = self.config
        context = {
            key: value
            for key, value in (
                ("return_url", c.return_url),
                ("cancel_url", c.cancel_url),
                ("brand_name", c.brand_name),
            )
            if value
        }
        if request.payment_method:
            # A vaulted PayPal wallet: the order completes without sending the payer away.
            body["payment_source"] = {"paypal": {"vault_id": request.payment_method}}
        elif context:
            context["user_action"] = "PAY_NOW"
            body["payment_source"] = {"paypal": {"experience_context": context}}
        return body

    def _remember_create(self, key: str, body: bytes) -> None:
        self._creates[key] = body
        self._creates.move_to_end(key)
        while len(self._creates) > _REMEMBERED_CREATES:
            self._creates.popitem(last=False)

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        try:
            payload = self._create_body(request)
        except InvalidMoney as exc:
            # Checked before anything is sent: PayPal cannot take this amount, another may.
            return GatewayResult(
                Outcome.DECLINED,
                decline_code="CURRENCY_NOT_SUPPORTED"
                if exc.field == "currency"
                else "DECIMAL_PRECISION",
                message=str(exc),
                retryable_elsewhere=True,
            )
        body = json.dumps(payload, separators=(",", ":")).encode()
        if not request.payment_method:
            # Only a create that moves no money may be repeated by a status lookup.
            self._remember_create(request.idempotency_key, body)
        return await self._create(request.idempotency_key, body)

    async def _create(self, key: str, body: bytes) -> GatewayResult:
        try:
            reply = await self._send("POST", "/v2/checkout/orders", body=body, request_id=key)
        except _NotSent as exc:
            return exc.result
        except _Lost as exc:
            return GatewayResult(Outcome.UNKNOWN, message=str(exc))
        if not reply.ok or not isinstance(reply.body, Mapping):
            return error_result(reply.status, reply.body, reply.headers)
        return await self._settle_order(reply.body, key)

    async def _settle_order(self, order: Mapping[str, Any], key: str) -> GatewayResult:
        """The order's outcome; an APPROVED order is first captured or authorized (with a
        PayPal-Request-Id derived from the attempt's key, so doing it twice does it once)."""
        if order.get("status") != "APPROVED":
            return order_result(order)
        order_id = str(order.get("id"))
        action = "authorize" if order.get("intent") == "AUTHORIZE" else "capture"
        reply = await self._call(
            "POST",
            f"/v2/checkout/orders/{order_id}/{action}",
            payload={},
            request_id=f"{key}-{action}",
        )
        if isinstance(reply, GatewayResult):
            if reply.outcome is Outcome.NOT_SENT:
                # Approved, but not completed yet: the next lookup completes it. Never NOT_SENT
                # for the attempt: the order exists and the payer approved it.
                return GatewayResult(
                    Outcome.PENDING, order_id, message=f"order approved; {reply.message}"
                )
            return attrs.evolve(reply, reference=order_id)
        if reply.ok and isinstance(reply.body, Mapping):
            return order_result(reply.body)
        if parse_error(reply.status, reply.body).code in _ALREADY_COMPLETED:
            # Completed by someone else (the payer's browser through PayPal's JS SDK, another
            # worker): what the order holds now is the answer, not the refusal.
            current = await self._read_order(order_id, lookup=True)
            if isinstance(current, GatewayResult):
                return attrs.evolve(current, outcome=Outcome.UNKNOWN)
            return order_result(current)
        return error_result(
            reply.status, reply.body, reply.headers, order_id, next_action_of(order)
        )

    # -- capture, void, refund -------------------------------------------------------------------

    async def capture(self, request: CaptureRequest) -> GatewayResult:
        order_id = request.gateway_reference
        if not order_id:
            return GatewayResult(Outcome.DECLINED, decline_code="MISSING_ORDER_ID")
        try:
            amount = to_paypal(request.amount)
        except InvalidMoney as exc:
            return GatewayResult(
                Outcome.DECLINED, order_id, decline_code="DECIMAL_PRECISION", message=str(exc)
            )
        order = await self._read_order(order_id)
        if isinstance(order, GatewayResult):
            return order
        authorization = authorization_of(order)
        if authorization is None:
            # An intent-CAPTURE order was captured when it was completed.
            captured = captures_of(order)
            if captured and captured[-1].get("amount") == amount:
                return payment_result("capture", captured[-1], order_id)
            code = "ORDER_ALREADY_CAPTURED" if captured else "ORDER_NOT_AUTHORIZED"
            return GatewayResult(Outcome.DECLINED, order_id, decline_code=code)
        reply = await self._call(
            "POST",
            f"/v2/payments/authorizations/{authorization.get('id')}/capture",
            payload={
                "amount": amount,
                "final_capture": True,
                "invoice_id": request.idempotency_key[:_MAX_TEXT],
            },
            request_id=request.idempotency_key,
        )
        if isinstance(reply, GatewayResult):
            return attrs.evolve(reply, reference=order_id)
        if reply.ok and isinstance(reply.body, Mapping):
            return payment_result("capture", reply.body, order_id)
        return error_result(reply.status, reply.body, reply.headers, order_id)

    async def void(self, request: VoidRequest) -> GatewayResult:
        order_id = request.gateway_reference
        if not order_id:
            return GatewayResult(Outcome.DECLINED, decline_code="MISSING_ORDER_ID")
        order = await self._read_order(order_id)
        if isinstance(order, GatewayResult):
            return order
        authorization = authorization_of(order)
        if authorization is None:
            return GatewayResult(Outcome.DECLINED, order_id, decline_code="ORDER_NOT_AUTHORIZED")
        reply = await self._call(
            "POST",
            f"/v2/payments/authorizations/{authorization.get('id')}/void",
            request_id=request.idempotency_key,
        )
        if isinstance(reply, GatewayResult):
            return attrs.evolve(reply, reference=order_id)
        if reply.ok:  # 204 No Content, or the voided authorization
            return GatewayResult(Outcome.SUCCEEDED, order_id)
        return error_result(reply.status, reply.body, reply.headers, order_id)

    async def refund(self, request: RefundRequest) -> GatewayResult:
        order_id = request.gateway_reference
        if not order_id:
            return GatewayResult(Outcome.DECLINED, decline_code="MISSING_ORDER_ID")
        try:
            amount = to_paypal(request.amount)
        except InvalidMoney as exc:
            return GatewayResult(
                Outcome.DECLINED, order_id, decline_code="DECIMAL_PRECISION", message=str(exc)
            )
        order = await self._read_order(order_id)
        if isinstance(order, GatewayResult):
            return order
        captures = [
            c
            for c in captures_of(order)
            if c.get("status") in ("COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED")
        ]
        if not captures:
            return GatewayResult(Outcome.DECLINED, order_id, decline_code="CAPTURE_NOT_FOUND")
        payload: dict[str, Any] = {
            "amount": amount,
            "invoice_id": request.idempotency_key[:_MAX_TEXT],
            "custom_id": request.payment_id[:_MAX_TEXT],
        }
        if request.reason:
            payload["note_to_payer"] = request.reason[:255]
        reply = await self._call(
            "POST",
            f"/v2/payments/captures/{captures[0].get('id')}/refund",
            payload=payload,
            request_id=request.idempotency_key,
        )
        if isinstance(reply, GatewayResult):
            return reply
        if reply.ok and isinstance(reply.body, Mapping):
            return payment_result("refund", reply.body, None)
        return error_result(reply.status, reply.body, reply.headers)

    # -- status lookup ---------------------------------------------------------------------------

    async def get_status(self, request: StatusRequest) -> GatewayResult:
        """What happened to the call made with ``request.idempotency_key``.

        NOT_SENT only when the order, which lists every authorization, capture and refund made
        on it, shows none made with this key. A lookup that could not be made is UNKNOWN.
        """
        key, order_id = request.idempotency_key, request.gateway_reference
        if request.operation in (Operation.AUTHORIZE, Operation.STATUS):
            if not order_id:
                body = self._creates.get(key)
                if body is not None:
                    # Repeating a create with the same PayPal-Request-Id returns the order it
                    # made, or makes it now if the first never arrived: harmless, as no money
                    # moves before the payer approves.
                    return _lookup_failed(await self._create(key, body))
                found = await self._order_by_invoice(key)
                if isinstance(found, GatewayResult):
                    return found
                order_id = found
            order = await self._read_order(order_id, lookup=True)
            if isinstance(order, GatewayResult):
                return _lookup_failed(order)
            return _lookup_failed(await self._settle_order(order, key))
        if not order_id:
            return GatewayResult(Outcome.UNKNOWN, message="no PayPal order id to look up")
        order = await self._read_order(order_id, lookup=True)
        if isinstance(order, GatewayResult):
            return _lookup_failed(order)
        invoice = key[:_MAX_TEXT]
        if request.operation is Operation.CAPTURE:
            for capture in captures_of(order):
                if capture.get("invoice_id") == invoice:
                    return payment_result("capture", capture, order_id)
            return GatewayResult(
                Outcome.NOT_SENT, order_id, message="PayPal has no capture with this key"
            )
        if request.operation is Operation.REFUND:
            for refund in refunds_of(order):
                if refund.get("invoice_id") == invoice:
                    return payment_result("refund", refund, None)
            return GatewayResult(Outcome.NOT_SENT, message="PayPal has no refund with this key")
        authorization = authorization_of(order)  # VOID
        if authorization is not None and authorization.get("status") == "VOIDED":
            return GatewayResult(Outcome.SUCCEEDED, order_id)
        return GatewayResult(
            Outcome.NOT_SENT, order_id, message="PayPal has no void of this authorization"
        )

    async def _order_by_invoice(self, key: str) -> str | GatewayResult:
        """The order whose payment carries ``invoice_id == key``, from PayPal's transaction
        search (PayPal has no lookup by PayPal-Request-Id). Transactions appear there up to
        three hours late, so "not found" is UNKNOWN, never NOT_SENT."""
        invoice = key[:_MAX_TEXT]
        end = self._clock()
        start = end - timedelta(hours=self.config.status_search_window_h)
        page, pages = 1, 1
        while page <= pages:
            query = urlencode(
                {
                    "start_date": start.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                    "end_date": end.strftime("%Y-%m-%dT%H:%M:%S.999Z"),
                    "fields": "transaction_info",
                    "balance_affecting_records_only": "N",
                    "page_size": "500",
                    "page": str(page),
                }
            )
            reply = await self._call("GET", f"/v1/reporting/transactions?{query}")
            if isinstance(reply, GatewayResult):
                return _lookup_failed(attrs.evolve(reply, outcome=Outcome.UNKNOWN))
            if not reply.ok or not isinstance(reply.body, Mapping):
                code = error_result(reply.status, reply.body, reply.headers).message
                return GatewayResult(
                    Outcome.UNKNOWN, message=f"PayPal transaction search failed: {code}"
                )
            for detail in reply.body.get("transaction_details") or ():
                info = detail.get("transaction_info") if isinstance(detail, Mapping) else None
                if isinstance(info, Mapping) and info.get("invoice_id") == invoice:
                    return await self._order_of_transaction(info)
            total = reply.body.get("total_pages")
            pages = total if isinstance(total, int) else 1
            page += 1
        return GatewayResult(
            Outcome.UNKNOWN,
            message="no PayPal transaction with this key yet (PayPal lists transactions up to "
            "three hours late, and has no lookup by PayPal-Request-Id)",
        )

    async def _order_of_transaction(self, info: Mapping[str, Any]) -> str | GatewayResult:
        reference = info.get("paypal_reference_id")
        if info.get("paypal_reference_id_type") == "ODR" and isinstance(reference, str):
            return reference
        transaction = info.get("transaction_id")
        for kind in ("captures", "authorizations"):
            if not isinstance(transaction, str):
                break
            reply = await self._call("GET", f"/v2/payments/{kind}/{transaction}")
            if isinstance(reply, _Reply) and reply.ok and isinstance(reply.body, Mapping):
                order_id = _str_at(reply.body, "supplementary_data", "related_ids", "order_id")
                if order_id is not None:
                    return order_id
        return GatewayResult(
            Outcome.UNKNOWN, message=f"PayPal transaction {transaction} names no order"
        )

    # -- webhooks --------------------------------------------------------------------------------

    async def parse_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> WebhookUpdate:
        """Verify a delivery through PayPal's verify-webhook-signature API and parse it.

        Raises WebhookSignatureError for a delivery that is not PayPal's (missing headers, a
        transmission time outside ``webhook_tolerance_s``, or PayPal answering FAILURE), and
        PayPalWebhookUnavailable when PayPal could not be asked (PayPal will retry).
        """
        transmission = TransmissionHeaders.from_headers(headers)
        age = (self._clock() - transmission.sent_at()).total_seconds()
        if abs(age) > self.config.webhook_tolerance_s:
            raise WebhookSignatureError(
                f"PayPal webhook: transmission time is {age:.0f}s from now, outside the "
                f"{self.config.webhook_tolerance_s:.0f}s tolerance"
            )
        try:
            event = json.loads(raw_body)
        except (ValueError, UnicodeDecodeError):
            raise WebhookSignatureError("PayPal webhook: body is not JSON") from None
        if not isinstance(event, dict):
            raise WebhookSignatureError("PayPal webhook: body is not a JSON object")
        webhook_id = self.config.webhook_id
        if not webhook_id:
            raise PayPalWebhookUnavailable(
                "PayPal webhook: [plugins.paypal] webhook_id is not configured"
            )
        body = verification_body(transmission, webhook_id, raw_body)
        try:
            reply = await self._send(
                "POST", "/v1/notifications/verify-webhook-signature", body=body
            )
        except (_NotSent, _Lost) as exc:
            raise PayPalWebhookUnavailable(f"PayPal webhook verification: {exc}") from None
        if reply.status == 429 or reply.status >= 500:
            raise PayPalWebhookUnavailable(
                f"PayPal webhook verification answered HTTP {reply.status}"
            )
        status = reply.body.get("verification_status") if isinstance(reply.body, dict) else None
        if not reply.ok or status != "SUCCESS":
            raise WebhookSignatureError(
                f"PayPal webhook: signature verification failed (HTTP {reply.status}, "
                f"{status or 'no verification_status'})"
            )
        return parse_event(event)
