"""The Stripe gateway adapter: PaymentIntents and Refunds over httpx, asynchronously.

=============  ================================================================================
authorize      ``POST /v1/payment_intents`` (confirm=true, capture_method automatic|manual)
capture        ``POST /v1/payment_intents/{id}/capture`` (amount_to_capture: full or partial)
void           ``POST /v1/payment_intents/{id}/cancel``
refund         ``POST /v1/refunds`` (payment_intent, amount: full or partial)
get_status     ``GET /v1/payment_intents/{id}``; without an id, search by our idempotency key
               in metadata; refunds: ``GET /v1/refunds?payment_intent=...``
=============  ================================================================================

Every POST carries ``Idempotency-Key`` (the attempt's derived key, the same on every retry), so
Stripe replays the first answer instead of charging again. The key is also stored in the
objects' metadata, with our payment id, so a lost answer can be found again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio.lowlevel
import attrs
import httpx
from aegispay.errors import InvalidMoney
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
from aegispay.money import Money
from aegispay.webhooks import WebhookUpdate

from . import mapping
from .amounts import STRIPE_CURRENCIES, to_stripe_amount
from .config import REFUND_REASONS, StripeConfig
from .form import encode_form
from .signature import verify_signature
from .webhook import PAYMENT_ID_KEY, parse_event

__all__ = ["IDEMPOTENCY_KEY_META", "StripeGateway", "stripe_idempotency_key"]

IDEMPOTENCY_KEY_META = "aegispay_idempotency_key"
_MAX_KEY = 255  # Stripe's limit on Idempotency-Key
_USER_AGENT = "aegispay-stripe/0.1"


def stripe_idempotency_key(key: str) -> str:
    """The Idempotency-Key sent for our ``key``: the key itself, or a stable digest of it when
    it is longer than Stripe accepts (the same key always maps to the same header)."""
    if len(key) <= _MAX_KEY and key.isascii():
        return key
    return "aegispay-" + hashlib.sha256(key.encode("utf-8")).hexdigest()


@attrs.frozen
class _Answer:
    """One HTTP exchange: a JSON body, or the GatewayResult it already maps to."""

    status: int = 0
    body: Any = None
    failure: GatewayResult | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)


class StripeGateway:
    """A Stripe account as an AegisPay gateway (and webhook receiver).

    The httpx client is created on first use in the running event loop (a pooled client is
    bound to one loop) and closed by :meth:`aclose`.
    """

    def __init__(
        self,
        config: StripeConfig,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        currencies = frozenset(config.currencies) if config.currencies else STRIPE_CURRENCIES
        self.supported_currencies: frozenset[str] | None = currencies
        self.fees = FeeModel(config.fixed_fee_minor, config.fee_bps)
        self.capabilities = GatewayCapabilities(
            currencies=currencies,
            methods=frozenset(config.payment_method_types),
            manual_capture=True,
            partial_capture=True,
            partial_refund=True,
            idempotent_create=True,
            # A lost authorization is searched for by metadata, and Stripe's search lags by up
            # to a minute: "not found" cannot be answered as NOT_SENT.
            authoritative_status=False,
            webhooks=bool(config.webhook_secret),
            idempotency_retention_s=24 * 3600,  # Stripe keeps keys at least 24 h
        )
        self._clock = clock
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._client_loop: object = None

    def __repr__(self) -> str:
        return f"StripeGateway(name={self.name!r}, base_url={self.config.base_url!r})"

    # -- HTTP ----------------------------------------------------------------------------------

    def _make_client(self) -> httpx.AsyncClient:
        c = self.config
        return httpx.AsyncClient(
            base_url=c.base_url,
            timeout=httpx.Timeout(
                connect=c.connect_timeout_s,
                read=c.read_timeout_s,
                write=c.write_timeout_s,
                pool=c.pool_timeout_s,
            ),
            limits=httpx.Limits(
                max_connections=c.max_connections,
                max_keepalive_connections=c.max_keepalive_connections,
                keepalive_expiry=c.keepalive_expiry_s,
            ),
            transport=self._transport,
            follow_redirects=False,
            trust_env=False,
        )

    async def _client_for_loop(self) -> httpx.AsyncClient:
        loop = anyio.lowlevel.current_token()
        if self._client is None or self._client_loop != loop:
            # A client left over from another event loop cannot be closed from this one; its
            # connections are dropped with it.
            self._client = self._make_client()
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the pooled connections (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _headers(self, idempotency_key: str | None) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self.config.secret_key}",
            "User-Agent": _USER_AGENT,
            "Accept": "application/json",
        }
        if self.config.api_version:
            headers["Stripe-Version"] = self.config.api_version
        if idempotency_key is not None:
            headers["Idempotency-Key"] = stripe_idempotency_key(idempotency_key)
        return headers

    def _scrub(self, text: str) -> str:
        """``text`` with any secret replaced (Stripe echoes parts of bad keys in errors)."""
        for secret in (self.config.secret_key, *self.config.webhook_secrets()):
            if secret:
                text = text.replace(secret, "[redacted]")
        return text

    async def _send(
        self,
        method: str,
        path: str,
        operation: Operation,
        *,
        form: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> _Answer:
        headers = self._headers(idempotency_key)
        content: bytes | None = None
        if form is not None:
            content = encode_form(form).encode("ascii")
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        client = await self._client_for_loop()
        try:
            response = await client.request(
                method, path, content=content, params=params, headers=headers
            )
        except httpx.HTTPError as exc:
            return _Answer(failure=mapping.transport_result(exc))
        request_id = response.headers.get("request-id")
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if 200 <= response.status_code < 300 and isinstance(body, Mapping):
            return _Answer(response.status_code, body, headers=response.headers)
        if 200 <= response.status_code < 300:
            # Processed, but the answer is unreadable: it may well have happened.
            failure = GatewayResult(Outcome.UNKNOWN, message="Stripe answered 2xx without JSON")
        else:
            failure = mapping.error_result(
                response.status_code,
                body,
                operation,
                retry_after=response.headers.get("retry-after"),
                request_id=request_id,
            )
        return _Answer(response.status_code, body, self._clean(failure), response.headers)

    def _clean(self, result: GatewayResult) -> GatewayResult:
        return attrs.evolve(result, message=self._scrub(result.message))

    # -- requests -------------------------------------------------------------------------------

    def _amount(self, money: Money, field: str) -> int | GatewayResult:
        """Stripe's integer, or a DECLINED result for an amount Stripe cannot take exactly
        (nothing is sent; another gateway may take it)."""
        try:
            return to_stripe_amount(money, field)
        except InvalidMoney as exc:
            return GatewayResult(
                Outcome.DECLINED,
                decline_code="amount_not_supported",
                message=str(exc),
                retryable_elsewhere=True,
            )

    def _metadata(
        self, payment_id: str, key: str, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        metadata = dict(extra or {})
        metadata[PAYMENT_ID_KEY] = payment_id
        metadata[IDEMPOTENCY_KEY_META] = stripe_idempotency_key(key)
        return metadata

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        amount = self._amount(request.amount, "amount")
        if isinstance(amount, GatewayResult):
            return amount
        metadata = self._metadata(request.payment_id, request.idempotency_key, request.metadata)
        metadata["aegispay_attempt"] = str(request.attempt_no)
        if request.customer_id:
            metadata["aegispay_customer_id"] = request.customer_id
        if request.reference:
            metadata["aegispay_reference"] = request.reference
        payment_method = request.payment_method or self.config.default_payment_method
        form: dict[str, Any] = {
            "amount": amount,
            "currency": request.amount.currency.lower(),
            "capture_method": "automatic" if request.capture else "manual",
            "payment_method_types": list(self.config.payment_method_types),
            "description": request.description,
            "metadata": metadata,
        }
        if payment_method:
            # Confirm at once; without a payment method the client collects one (Stripe.js)
            # and the outcome is REQUIRES_ACTION with the client secret.
            form["payment_method"] = payment_method
            form["confirm"] = True
            form["return_url"] = self.config.return_url
        answer = await self._send(
            "POST",
            "/v1/payment_intents",
            Operation.AUTHORIZE,
            form=form,
            idempotency_key=request.idempotency_key,
        )
        if answer.failure is not None:
            return answer.failure
        return self._clean(mapping.intent_result(answer.body))

    @staticmethod
    def _missing_reference(operation: str) -> GatewayResult:
        return GatewayResult(
            Outcome.DECLINED,
            decline_code="no_such_authorization",
            message=f"{operation}: no Stripe PaymentIntent id for this payment",
        )

    async def capture(self, request: CaptureRequest) -> GatewayResult:
        if not request.gateway_reference:
            return self._missing_reference("capture")
        amount = self._amount(request.amount, "amount")
        if isinstance(amount, GatewayResult):
            return attrs.evolve(amount, retryable_elsewhere=False)
        answer = await self._send(
            "POST",
            f"/v1/payment_intents/{request.gateway_reference}/capture",
            Operation.CAPTURE,
            form={"amount_to_capture": amount},
            idempotency_key=request.idempotency_key,
        )
        if answer.failure is not None:
            return answer.failure
        return mapping.capture_result(answer.body)

    async def void(self, request: VoidRequest) -> GatewayResult:
        if not request.gateway_reference:
            return self._missing_reference("void")
        answer = await self._send(
            "POST",
            f"/v1/payment_intents/{request.gateway_reference}/cancel",
            Operation.VOID,
            form={},
            idempotency_key=request.idempotency_key,
        )
        if answer.failure is not None:
            return answer.failure
        return mapping.void_result(answer.body)

    async def refund(self, request: RefundRequest) -> GatewayResult:
        if not request.gateway_reference:
            return self._missing_reference("refund")
        amount = self._amount(request.amount, "amount")
        if isinstance(amount, GatewayResult):
            return attrs.evolve(amount, retryable_elsewhere=False)
        metadata = self._metadata(request.payment_id, request.idempotency_key)
        reason = request.reason if request.reason in REFUND_REASONS else None
        if request.reason and reason is None:
            metadata["aegispay_reason"] = request.reason[:500]  # Stripe's value limit
        answer = await self._send(
            "POST",
            "/v1/refunds",
            Operation.REFUND,
            form={
                "payment_intent": request.gateway_reference,
                "amount": amount,
                "reason": reason,
                "metadata": metadata,
            },
            idempotency_key=request.idempotency_key,
        )
        if answer.failure is not None:
            return answer.failure
        return mapping.refund_result(answer.body)

    # -- status lookups ---------------------------------------------------------------------------

    async def get_status(self, request: StatusRequest) -> GatewayResult:
        if request.operation is Operation.REFUND:
            return await self._refund_status(request)
        reference = request.gateway_reference
        if not reference:
            if request.operation in (Operation.CAPTURE, Operation.VOID):
                return self._missing_reference(request.operation.value)
            return await self._search_authorization(request)
        answer = await self._send("GET", f"/v1/payment_intents/{reference}", Operation.STATUS)
        if answer.failure is not None:
            return self._lookup_failure(answer)
        return self._clean(mapping.lookup_result(request.operation, answer.body))

    @staticmethod
    def _lookup_failure(answer: _Answer) -> GatewayResult:
        """A failed lookup never answers NOT_SENT (the engine would fail over): a refused or
        rate-limited lookup says nothing about the original request."""
        failure = answer.failure
        assert failure is not None
        if failure.outcome in (Outcome.NOT_SENT, Outcome.DECLINED):
            return GatewayResult(
                Outcome.UNKNOWN,
                reference=failure.reference,
                message=f"status lookup failed: {failure.message}",
                retry_after_s=failure.retry_after_s,
            )
        return failure

    async def _search_authorization(self, request: StatusRequest) -> GatewayResult:
        key = stripe_idempotency_key(request.idempotency_key)
        query = f"metadata['{IDEMPOTENCY_KEY_META}']:'{_quote_search(key)}'"
        answer = await self._send(
            "GET",
            "/v1/payment_intents/search",
            Operation.STATUS,
            params={"query": query, "limit": "10"},
        )
        if answer.failure is not None:
            return self._lookup_failure(answer)
        data = answer.body.get("data")
        intents = [i for i in data if isinstance(i, Mapping)] if isinstance(data, list) else []
        mine = [
            i
            for i in intents
            if isinstance(i.get("metadata"), Mapping)
            and i["metadata"].get(IDEMPOTENCY_KEY_META) == key
        ]
        if not mine:
            return GatewayResult(
                Outcome.UNKNOWN,
                message="no PaymentIntent found for this key yet (Stripe's search can lag by "
                "up to a minute); retry the authorization with the same key to settle it",
            )
        return self._clean(mapping.intent_result(mine[0]))

    async def _refund_status(self, request: StatusRequest) -> GatewayResult:
        if not request.gateway_reference:
            return self._missing_reference("refund")
        key = stripe_idempotency_key(request.idempotency_key)
        params = {"payment_intent": request.gateway_reference, "limit": "100"}
        while True:
            answer = await self._send("GET", "/v1/refunds", Operation.STATUS, params=params)
            if answer.failure is not None:
                return self._lookup_failure(answer)
            data = answer.body.get("data")
            refunds = [r for r in data if isinstance(r, Mapping)] if isinstance(data, list) else []
            for refund in refunds:
                metadata = refund.get("metadata")
                if isinstance(metadata, Mapping) and metadata.get(IDEMPOTENCY_KEY_META) == key:
                    return mapping.refund_result(refund)
            last = refunds[-1].get("id") if refunds else None
            if not answer.body.get("has_more") or not isinstance(last, str):
                break
            params = {**params, "starting_after": last}
        # Listing a PaymentIntent's refunds is consistent: no refund with our key means
        # Stripe never executed that refund request.
        return GatewayResult(Outcome.NOT_SENT, message="Stripe has no refund with this key")

    # -- webhooks ---------------------------------------------------------------------------------

    async def parse_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> WebhookUpdate:
        """Verify ``Stripe-Signature`` on the raw body, then read the event."""
        verify_signature(
            headers.get("stripe-signature"),
            raw_body,
            self.config.webhook_secrets(),
            now=self._clock(),
            tolerance_s=self.config.webhook_tolerance_s,
        )
        return parse_event(raw_body)


def _quote_search(value: str) -> str:
    """A value inside a single-quoted Stripe search string."""
    return value.replace("\\", "\\\\").replace("'", "\\'")
