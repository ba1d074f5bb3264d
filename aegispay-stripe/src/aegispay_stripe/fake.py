"""A loopback fake of Stripe's PaymentIntents and Refunds API, for tests and local runs.

It reproduces what the adapter relies on, as Stripe documents it:

* form-encoded requests with bracket nesting, ``Authorization: Bearer sk_...`` (401 otherwise);
* PaymentIntent statuses: requires_payment_method -> (requires_action) -> requires_capture |
  succeeded, cancel from any uncaptured status, partial capture (the rest is released);
* amounts in Stripe's units, zero-decimal currencies, three-decimal amounts ending in 0;
* refunds, full and partial, never beyond the captured amount;
* errors as ``{"error": {"type", "code", "decline_code", "message", "param", ...}}`` with
  Stripe's HTTP statuses (400, 401, 402, 404, 409);
* idempotency: the first answer (success or card decline) is replayed byte for byte with
  ``Idempotent-Replayed: true``; the same key with other parameters is an ``idempotency_error``;
  a key in use by a running request answers 409 (:meth:`FakeStripe.hold_key` reproduces it);
* search by metadata and refund listing; events for every change, signed like Stripe's webhooks.

Test payment methods: ``pm_card_chargeDeclined`` (generic_decline),
``pm_card_chargeDeclinedInsufficientFunds`` (insufficient_funds),
``pm_card_authenticationRequired`` (3D Secure); any other ``pm_...`` succeeds.

Transport faults (500, 429, drops, timeouts, latency) come from
:class:`aegispay.fake_server.LoopbackServer` through :meth:`FakeStripe.inject`.

Run it: ``python -m aegispay_stripe.fake --port 12111`` (prints the base URL and the keys).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
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

from .amounts import STRIPE_CURRENCIES, THREE_DECIMAL, from_stripe_amount, to_stripe_amount
from .form import decode_form
from .signature import signature_header

__all__ = ["FakeStripe", "StripeError"]

API_VERSION = "2024-06-20"
_MAX_AMOUNT = 99_999_999  # Stripe's eight-digit limit on amount
_REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
_CANCELABLE = (
    "requires_payment_method",
    "requires_confirmation",
    "requires_action",
    "requires_capture",
    "processing",
)
_TEST_METHODS = {
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_chargeDeclinedExpiredCard": "expired_card",
}
_ACTION_METHODS = frozenset({"pm_card_authenticationRequired", "pm_card_threeDSecure2Required"})
_SEARCH_CLAUSE = re.compile(r"""^metadata\[(['"])(?P<key>.+?)\1\]:(['"])(?P<value>.*)\3$""")
_PI_PATH = re.compile(r"^/v1/payment_intents/(?P<id>pi_[A-Za-z0-9]+)(?:/(?P<verb>\w+))?$")
_REFUND_PATH = re.compile(r"^/v1/refunds/(?P<id>re_[A-Za-z0-9]+)$")


class StripeError(Exception):
    """Internal: an error answer in Stripe's format."""

    def __init__(
        self,
        status: int,
        etype: str,
        message: str,
        *,
        code: str | None = None,
        decline_code: str | None = None,
        param: str | None = None,
        payment_intent: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        error: dict[str, Any] = {"type": etype, "message": message}
        if code:
            error["code"] = code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if decline_code:
            error["decline_code"] = decline_code
        if param:
            error["param"] = param
        if payment_intent is not None:
            error["payment_intent"] = copy.deepcopy(dict(payment_intent))
        self.body = {"error": error}


def _invalid(
    message: str, *, code: str = "parameter_invalid", param: str | None = None
) -> StripeError:
    return StripeError(400, "invalid_request_error", message, code=code, param=param)


@attrs.define
class _Stored:
    fingerprint: str
    response: FakeResponse


@attrs.define
class _State:
    intents: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    refunds: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    events: list[dict[str, Any]] = attrs.field(factory=list)
    idempotency: dict[str, _Stored] = attrs.field(factory=dict)
    in_flight: set[str] = attrs.field(factory=set)
    declines: deque[str] = attrs.field(factory=deque)
    actions: int = 0
    pending_refunds: int = 0


class FakeStripe(LoopbackFake):
    """A running fake Stripe account. Use as a context manager, or ``start()`` / ``close()``."""

    def __init__(
        self,
        *,
        secret_key: str = "sk_test_aegispay_fake",
        webhook_secret: str = "whsec_aegispay_fake_0123456789abcdef",
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secret_key = secret_key
        self.webhook_secret = webhook_secret
        self._clock = clock
        self._lock = threading.Lock()
        self._state = _State()
        self._ids = itertools.count(1)
        self._server = LoopbackServer(self._handle, host=host, port=port)

    def __repr__(self) -> str:
        return "FakeStripe()"  # never the keys

    # -- lifecycle ---------------------------------------------------------------------------------

    # -- controls (FakeGatewayControl and more) ----------------------------------------------------

    def decline_next(self, code: str = "card_declined") -> None:
        """The next confirmation is declined by the issuer with ``decline_code`` ``code``."""
        with self._lock:
            self._state.declines.append(code)

    def require_action_next(self) -> None:
        """The next confirmation needs 3D Secure (status requires_action)."""
        with self._lock:
            self._state.actions += 1

    def refund_pending_next(self) -> None:
        """The next refund is created ``pending`` (settle it with :meth:`settle_refund`)."""
        with self._lock:
            self._state.pending_refunds += 1

    def complete_action(self, gateway_reference: str) -> None:
        """The customer passes 3D Secure for PaymentIntent ``gateway_reference``."""
        with self._lock:
            intent = self._intent(gateway_reference)
            if intent["status"] != "requires_action":
                raise ValueError(f"{gateway_reference} is {intent['status']}, not requires_action")
            intent["next_action"] = None
            self._authorized(intent)

    def fail_action(self, gateway_reference: str, code: str = "authentication_failure") -> None:
        """The customer fails 3D Secure: back to requires_payment_method with the error."""
        with self._lock:
            intent = self._intent(gateway_reference)
            intent.update(
                status="requires_payment_method",
                next_action=None,
                last_payment_error={
                    "type": "card_error",
                    "code": "payment_intent_authentication_failure",
                    "decline_code": code,
                    "message": "The customer failed authentication.",
                },
            )
            self._event("payment_intent.payment_failed", intent)

    def settle_refund(self, refund_id: str, *, succeeded: bool = True) -> None:
        """A pending refund succeeds or fails (a ``refund.updated`` event follows)."""
        with self._lock:
            refund = self._state.refunds[refund_id]
            if refund["status"] != "pending":
                raise ValueError(f"{refund_id} is {refund['status']}, not pending")
            intent = self._state.intents[refund["payment_intent"]]
            if succeeded:
                refund["status"] = "succeeded"
            else:
                refund.update(status="failed", failure_reason="lost_or_stolen_card")
                intent["amount_refunded"] -= refund["amount"]
            self._event("refund.updated", refund)

    @contextlib.contextmanager
    def hold_key(self, idempotency_key: str) -> Iterator[None]:
        """While inside, a request with this key answers 409, as Stripe does while another
        request with the same key is still executing."""
        with self._lock:
            self._state.in_flight.add(idempotency_key)
        try:
            yield
        finally:
            with self._lock:
                self._state.in_flight.discard(idempotency_key)

    def charges(self) -> int:
        """PaymentIntents whose funds were really captured."""
        with self._lock:
            return sum(1 for i in self._state.intents.values() if i["status"] == "succeeded")

    def intent(self, gateway_reference: str) -> dict[str, Any]:
        """A copy of a PaymentIntent as the fake holds it."""
        with self._lock:
            return copy.deepcopy(self._intent(gateway_reference))

    def amount_of(self, gateway_reference: str) -> tuple[int, str]:
        """The PaymentIntent's amount as AegisPay minor units and ISO code."""
        intent = self.intent(gateway_reference)
        money = from_stripe_amount(intent["amount"], intent["currency"])
        return money.minor, money.currency

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                copy.deepcopy(e)
                for e in self._state.events
                if event_type is None or e["type"] == event_type
            ]

    def deliveries(
        self, event_type: str | None = None, *, age_s: int = 0
    ) -> list[tuple[dict[str, str], bytes]]:
        """Every event so far as a signed webhook delivery (headers, raw body)."""
        return [self.sign(e, age_s=age_s) for e in self.events(event_type)]

    def sign(
        self, event: Mapping[str, Any], *, age_s: int = 0, secret: str | None = None
    ) -> tuple[dict[str, str], bytes]:
        """``event`` as Stripe delivers it: JSON body plus ``Stripe-Signature``."""
        body = json.dumps(event, indent=2).encode("utf-8")  # Stripe pretty-prints events
        timestamp = int(self._clock()) - age_s
        header = signature_header([secret or self.webhook_secret], timestamp, body)
        return (
            {
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": header,
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            },
            body,
        )

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
        """A webhook of ``kind`` about ``gateway_reference`` for ``amount_minor`` (AegisPay
        minor units of ``currency``), signed as Stripe signs it."""
        amount = to_stripe_amount(Money(amount_minor, currency))
        with self._lock:
            known = self._state.intents.get(gateway_reference)
            intent = (
                copy.deepcopy(known)
                if known
                else self._new_intent_object(
                    gateway_reference, amount, currency.lower(), "automatic", {}
                )
            )
        intent.update(currency=currency.lower(), amount=amount)
        event_type, obj = self._webhook_object(kind, intent, amount)
        event = self._event_object(event_type, obj, event_id)
        return self.sign(event, age_s=age_s, secret=secret)

    def _webhook_object(
        self, kind: WebhookKind, intent: dict[str, Any], amount: int
    ) -> tuple[str, dict[str, Any]]:
        if kind is WebhookKind.AUTHORIZED:
            intent.update(status="requires_capture", amount_capturable=amount)
            return "payment_intent.amount_capturable_updated", intent
        if kind is WebhookKind.SUCCEEDED:
            intent.update(status="succeeded", amount_received=amount, amount_capturable=0)
            return "payment_intent.succeeded", intent
        if kind is WebhookKind.FAILED:
            intent.update(
                status="requires_payment_method",
                last_payment_error={
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": "generic_decline",
                },
            )
            return "payment_intent.payment_failed", intent
        if kind is WebhookKind.CANCELED:
            intent.update(status="canceled", cancellation_reason="requested_by_customer")
            return "payment_intent.canceled", intent
        if kind is WebhookKind.REQUIRES_ACTION:
            intent.update(status="requires_action", next_action={"type": "use_stripe_sdk"})
            return "payment_intent.requires_action", intent
        refund = self._refund_object(intent, amount, None, {})
        if kind is WebhookKind.REFUND_SUCCEEDED:
            return "charge.refunded", self._charge_object(intent, amount, [refund])
        if kind is WebhookKind.REFUND_FAILED:
            refund.update(status="failed", failure_reason="expired_or_canceled_card")
            return "refund.failed", refund
        return "customer.created", {"id": self._id("cus"), "object": "customer"}

    # -- objects -------------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}{secrets.token_hex(6)}"

    def _now(self) -> int:
        return int(self._clock())

    def _new_intent_object(
        self,
        intent_id: str,
        amount: int,
        currency: str,
        capture_method: str,
        metadata: Mapping[str, Any],
    ) -> dict[str, Any]:
        return {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": 0,
            "amount_refunded": 0,  # the fake's own bookkeeping (Stripe keeps it on the charge)
            "currency": currency,
            "capture_method": capture_method,
            "confirmation_method": "automatic",
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(8)}",
            "created": self._now(),
            "description": None,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": dict(metadata),
            "next_action": None,
            "payment_method": None,
            "payment_method_types": ["card"],
            "status": "requires_payment_method",
            "cancellation_reason": None,
            "canceled_at": None,
        }

    def _refund_object(
        self,
        intent: Mapping[str, Any],
        amount: int,
        reason: str | None,
        metadata: Mapping[str, Any],
    ) -> dict[str, Any]:
        return {
            "id": self._id("re"),
            "object": "refund",
            "amount": amount,
            "currency": intent["currency"],
            "charge": intent.get("latest_charge"),
            "payment_intent": intent["id"],
            "status": "succeeded",
            "reason": reason,
            "failure_reason": None,
            "metadata": dict(metadata),
            "created": self._now(),
        }

    def _charge_object(
        self, intent: Mapping[str, Any], refunded: int, refunds: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "id": intent.get("latest_charge") or self._id("ch"),
            "object": "charge",
            "amount": intent["amount"],
            "amount_captured": intent.get("amount_received", 0),
            "amount_refunded": refunded,
            "currency": intent["currency"],
            "payment_intent": intent["id"],
            "metadata": dict(intent.get("metadata") or {}),
            "refunded": refunded >= intent.get("amount_received", 0),
            "refunds": {"object": "list", "data": refunds, "has_more": False},
        }

    def _event_object(
        self, event_type: str, obj: Mapping[str, Any], event_id: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": event_id or self._id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": self._now(),
            "data": {"object": copy.deepcopy(dict(obj))},
            "livemode": False,
            "pending_webhooks": 1,
            "type": event_type,
        }

    def _event(self, event_type: str, obj: Mapping[str, Any]) -> None:
        self._state.events.append(self._event_object(event_type, obj))

    def _intent(self, intent_id: str) -> dict[str, Any]:
        intent = self._state.intents.get(intent_id)
        if intent is None:
            raise StripeError(
                404,
                "invalid_request_error",
                f"No such payment_intent: '{intent_id}'",
                code="resource_missing",
                param="intent",
            )
        return intent

    def _authorized(self, intent: dict[str, Any]) -> None:
        """Funds held: captured at once (automatic) or kept for a manual capture."""
        intent["latest_charge"] = intent["latest_charge"] or self._id("ch")
        if intent["capture_method"] == "manual":
            intent.update(status="requires_capture", amount_capturable=intent["amount"])
            self._event("payment_intent.amount_capturable_updated", intent)
        else:
            intent.update(status="succeeded", amount_received=intent["amount"])
            self._event("payment_intent.succeeded", intent)

    # -- HTTP ----------------------------------------------------------------------------------

    def _handle(self, request: FakeRequest) -> FakeResponse:
        request_id = self._id("req")
        with self._lock:
            response = self._handle_locked(request, request_id)
        headers = {"request-id": request_id, "stripe-version": API_VERSION, **response.headers}
        return FakeResponse(response.status, response.body, headers)

    def _handle_locked(self, request: FakeRequest, request_id: str) -> FakeResponse:
        try:
            self._authenticate(request)
            params = self._params(request)
        except StripeError as exc:
            return json_response(exc.status, exc.body)
        key = request.headers.get("idempotency-key")
        if request.method != "POST" or not key:
            return self._route(request, params)
        if len(key) > 255:
            error = _invalid(
                "Idempotency-Key must be at most 255 characters", code="parameter_invalid"
            )
            return json_response(error.status, error.body)
        if key in self._state.in_flight:
            error = StripeError(
                409,
                "idempotency_error",
                "There is currently another in-progress request using this Idempotency-Key "
                "(that probably means you submitted twice, and the other request is still going "
                "through): please retry that request later.",
                code="idempotency_key_in_use",
            )
            return json_response(error.status, error.body)
        fingerprint = json.dumps([request.method, request.path, params], sort_keys=True)
        stored = self._state.idempotency.get(key)
        if stored is not None:
            if stored.fingerprint != fingerprint:
                error = StripeError(
                    400,
                    "idempotency_error",
                    "Keys for idempotent requests can only be used with the same parameters "
                    "they were first used with. Try using a key other than "
                    f"'{key}' if you meant to execute a different request.",
                )
                return json_response(error.status, error.body)
            replay = stored.response
            return FakeResponse(
                replay.status,
                replay.body,
                {**replay.headers, "idempotent-replayed": "true"},
            )
        response = self._route(request, params)
        # Stripe saves a result once the endpoint started executing: successes and card
        # declines. Validation errors are not saved, so a corrected retry may use the key.
        if 200 <= response.status < 300 or response.status == 402:
            saved = FakeResponse(
                response.status,
                response.body,
                {**response.headers, "idempotency-key": key, "original-request": request_id},
            )
            self._state.idempotency[key] = _Stored(fingerprint, saved)
            return saved
        return response

    def _authenticate(self, request: FakeRequest) -> None:
        authorization = request.headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise StripeError(
                401,
                "invalid_request_error",
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth.",
            )
        if not secrets.compare_digest(token.encode(), self.secret_key.encode()):
            shown = f"{token[:8]}****{token[-4:]}" if len(token) > 12 else "****"
            raise StripeError(
                401,
                "invalid_request_error",
                f"Invalid API Key provided: {shown}",
                code="api_key_invalid",
            )

    @staticmethod
    def _params(request: FakeRequest) -> dict[str, Any]:
        if request.method == "GET":
            return dict(request.query)
        content_type = request.headers.get("content-type", "")
        if request.body and not content_type.startswith("application/x-www-form-urlencoded"):
            raise _invalid(
                "Stripe's API takes application/x-www-form-urlencoded bodies",
                code="parameter_invalid",
            )
        try:
            return decode_form(request.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _invalid(f"Invalid request body: {exc}") from None

    def _route(self, request: FakeRequest, params: dict[str, Any]) -> FakeResponse:
        try:
            return json_response(200, self._dispatch(request, params))
        except StripeError as exc:
            return json_response(exc.status, exc.body)

    def _dispatch(self, request: FakeRequest, params: dict[str, Any]) -> dict[str, Any]:
        method, path = request.method, request.path.rstrip("/")
        if path == "/v1/payment_intents" and method == "POST":
            return self._create_intent(params)
        if path == "/v1/payment_intents/search" and method == "GET":
            return self._search(params)
        if path == "/v1/refunds" and method == "POST":
            return self._create_refund(params)
        if path == "/v1/refunds" and method == "GET":
            return self._list_refunds(params)
        match = _PI_PATH.match(path)
        if match is not None:
            intent = self._intent(match["id"])
            verb = match["verb"]
            if verb is None and method == "GET":
                return copy.deepcopy(intent)
            if method == "POST" and verb == "confirm":
                return self._confirm(intent, params)
            if method == "POST" and verb == "capture":
                return self._capture(intent, params)
            if method == "POST" and verb == "cancel":
                return self._cancel(intent, params)
        match = _REFUND_PATH.match(path)
        if match is not None and method == "GET":
            refund = self._state.refunds.get(match["id"])
            if refund is None:
                raise StripeError(
                    404,
                    "invalid_request_error",
                    f"No such refund: '{match['id']}'",
                    code="resource_missing",
                    param="id",
                )
            return copy.deepcopy(refund)
        raise StripeError(
            404,
            "invalid_request_error",
            f"Unrecognized request URL ({method}: {request.path}).",
        )

    # -- endpoints -------------------------------------------------------------------------------

    @staticmethod
    def _amount(params: Mapping[str, Any], field: str, currency: str) -> int:
        raw = params.get(field)
        if not isinstance(raw, str) or not raw.isdigit():
            raise _invalid(f"Invalid integer: {raw}", code="parameter_invalid_integer", param=field)
        value = int(raw)
        if value < 1:
            raise _invalid("This value must be greater than or equal to 1.", param=field)
        if value > _MAX_AMOUNT:
            raise _invalid(
                "Amount must be no more than 99,999,999", code="amount_too_large", param=field
            )
        if currency.upper() in THREE_DECIMAL and value % 10:
            raise _invalid(
                f"Invalid amount: {currency.upper()} amounts must end in 0 "
                "(round to the nearest ten)",
                code="invalid_charge_amount",
                param=field,
            )
        return value

    def _create_intent(self, params: dict[str, Any]) -> dict[str, Any]:
        currency = params.get("currency")
        if not isinstance(currency, str) or currency.upper() not in STRIPE_CURRENCIES:
            raise _invalid(
                f"Invalid currency: {currency}", code="parameter_invalid", param="currency"
            )
        if currency != currency.lower():
            raise _invalid("Currency must be lower case", param="currency")
        amount = self._amount(params, "amount", currency)
        capture_method = params.get("capture_method", "automatic")
        if capture_method not in ("automatic", "automatic_async", "manual"):
            raise _invalid(f"Invalid capture_method: {capture_method}", param="capture_method")
        metadata = params.get("metadata", {})
        if not isinstance(metadata, dict) or len(metadata) > 50:
            raise _invalid("metadata: a table of at most 50 keys", param="metadata")
        methods = params.get("payment_method_types", ["card"])
        if not isinstance(methods, list) or methods != ["card"]:
            raise _invalid(
                f"The payment method type {methods!r} is not enabled on this fake",
                code="payment_method_type_not_enabled"
                if isinstance(methods, list)
                else "parameter_invalid",
                param="payment_method_types",
            )
        intent = self._new_intent_object(self._id("pi"), amount, currency, capture_method, metadata)
        intent["description"] = params.get("description")
        intent["payment_method_types"] = methods
        confirm = params.get("confirm", "false") == "true"
        if params.get("payment_method"):
            intent["payment_method"] = params["payment_method"]
            intent["status"] = "requires_confirmation"
        self._state.intents[intent["id"]] = intent
        self._event("payment_intent.created", intent)
        if confirm:
            return self._confirm(intent, params)
        return copy.deepcopy(intent)

    def _confirm(self, intent: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        if params.get("payment_method"):
            intent["payment_method"] = params["payment_method"]
        if intent["status"] not in ("requires_payment_method", "requires_confirmation"):
            raise StripeError(
                400,
                "invalid_request_error",
                f"This PaymentIntent's status is {intent['status']}; it cannot be confirmed.",
                code="payment_intent_unexpected_state",
                payment_intent=intent,
            )
        method = intent["payment_method"]
        if not method:
            raise _invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                code="payment_intent_unexpected_state",
                param="payment_method",
            )
        if not str(method).startswith("pm_"):
            raise _invalid(
                f"No such PaymentMethod: '{method}'",
                code="resource_missing",
                param="payment_method",
            )
        decline = _TEST_METHODS.get(method)
        if decline is None and self._state.declines:
            decline = self._state.declines.popleft()
        if decline is not None:
            intent.update(
                status="requires_payment_method",
                last_payment_error={
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": decline,
                    "message": "Your card was declined.",
                },
            )
            self._event("payment_intent.payment_failed", intent)
            raise StripeError(
                402,
                "card_error",
                "Your card was declined.",
                code="card_declined",
                decline_code=decline,
                payment_intent=intent,
            )
        intent["last_payment_error"] = None
        if method in _ACTION_METHODS or self._state.actions:
            if method not in _ACTION_METHODS:
                self._state.actions -= 1
            return_url = params.get("return_url")
            if isinstance(return_url, str) and return_url:
                next_action: dict[str, Any] = {
                    "type": "redirect_to_url",
                    "redirect_to_url": {
                        "url": f"{self.base_url}/3ds/{intent['id']}",
                        "return_url": return_url,
                    },
                }
            else:
                next_action = {
                    "type": "use_stripe_sdk",
                    "use_stripe_sdk": {"type": "three_d_secure_redirect"},
                }
            intent.update(status="requires_action", next_action=next_action)
            self._event("payment_intent.requires_action", intent)
            return copy.deepcopy(intent)
        self._authorized(intent)
        return copy.deepcopy(intent)

    def _capture(self, intent: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        if intent["status"] != "requires_capture":
            raise StripeError(
                400,
                "invalid_request_error",
                f"This PaymentIntent could not be captured because it has a status of "
                f"{intent['status']}. Only a PaymentIntent with one of the following statuses "
                "may be captured: requires_capture.",
                code="payment_intent_unexpected_state",
                payment_intent=intent,
            )
        amount = intent["amount_capturable"]
        if "amount_to_capture" in params:
            amount = self._amount(params, "amount_to_capture", intent["currency"])
            if amount > intent["amount_capturable"]:
                raise _invalid(
                    "The amount to capture must be less than or equal to the amount capturable.",
                    code="amount_too_large",
                    param="amount_to_capture",
                )
        # One capture per PaymentIntent: what is not captured is released.
        intent.update(status="succeeded", amount_received=amount, amount_capturable=0)
        self._event("payment_intent.succeeded", intent)
        return copy.deepcopy(intent)

    def _cancel(self, intent: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        if intent["status"] not in _CANCELABLE:
            raise StripeError(
                400,
                "invalid_request_error",
                f"You cannot cancel this PaymentIntent because it has a status of "
                f"{intent['status']}.",
                code="payment_intent_unexpected_state",
                payment_intent=intent,
            )
        reason = params.get("cancellation_reason")
        if reason not in (None, "duplicate", "fraudulent", "requested_by_customer", "abandoned"):
            raise _invalid(f"Invalid cancellation_reason: {reason}", param="cancellation_reason")
        intent.update(
            status="canceled",
            cancellation_reason=reason,
            canceled_at=self._now(),
            amount_capturable=0,
            next_action=None,
        )
        self._event("payment_intent.canceled", intent)
        return copy.deepcopy(intent)

    def _create_refund(self, params: dict[str, Any]) -> dict[str, Any]:
        intent_id = params.get("payment_intent")
        if not isinstance(intent_id, str) or not intent_id:
            raise _invalid(
                "One of the following params should be provided for this request: "
                "payment_intent or charge.",
                code="parameter_missing",
            )
        intent = self._intent(intent_id)
        if intent["status"] != "succeeded":
            raise StripeError(
                400,
                "invalid_request_error",
                f"This PaymentIntent has a status of {intent['status']} and has no successful "
                "charge to refund.",
                code="charge_not_refundable"
                if intent["status"] != "requires_capture"
                else "charge_not_captured",
                param="payment_intent",
            )
        remaining = intent["amount_received"] - intent["amount_refunded"]
        if remaining <= 0:
            raise _invalid(
                f"Charge {intent['latest_charge']} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = remaining
        if "amount" in params:
            amount = self._amount(params, "amount", intent["currency"])
            if amount > remaining:
                raise _invalid(
                    f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                    f"({remaining})",
                    code="amount_too_large",
                    param="amount",
                )
        reason = params.get("reason")
        if reason is not None and reason not in _REFUND_REASONS:
            raise _invalid(
                f"Invalid reason: must be one of {', '.join(_REFUND_REASONS)}", param="reason"
            )
        metadata = params.get("metadata", {})
        if not isinstance(metadata, dict):
            raise _invalid("metadata must be a table", param="metadata")
        refund = self._refund_object(intent, amount, reason, metadata)
        if self._state.pending_refunds:
            self._state.pending_refunds -= 1
            refund["status"] = "pending"
        self._state.refunds[refund["id"]] = refund
        intent["amount_refunded"] += amount
        self._event("refund.created", refund)
        refunds = [r for r in self._state.refunds.values() if r["payment_intent"] == intent_id]
        refunds.sort(key=lambda r: r["created"], reverse=True)
        charge = self._charge_object(
            intent, intent["amount_refunded"], [refund, *[r for r in refunds if r is not refund]]
        )
        self._event("charge.refunded", charge)
        return copy.deepcopy(refund)

    def _list_refunds(self, params: Mapping[str, Any]) -> dict[str, Any]:
        intent_id = params.get("payment_intent")
        items = [
            r
            for r in self._state.refunds.values()
            if intent_id is None or r["payment_intent"] == intent_id
        ]
        items.reverse()  # newest first, as Stripe lists
        limit_text = params.get("limit", "10")
        if (
            not isinstance(limit_text, str)
            or not limit_text.isdigit()
            or not 1 <= int(limit_text) <= 100
        ):
            raise _invalid("limit must be between 1 and 100", param="limit")
        after = params.get("starting_after")
        if after:
            ids = [r["id"] for r in items]
            if after not in ids:
                raise StripeError(
                    404,
                    "invalid_request_error",
                    f"No such refund: '{after}'",
                    code="resource_missing",
                    param="starting_after",
                )
            items = items[ids.index(after) + 1 :]
        limit = int(limit_text)
        return {
            "object": "list",
            "url": "/v1/refunds",
            "data": copy.deepcopy(items[:limit]),
            "has_more": len(items) > limit,
        }

    def _search(self, params: Mapping[str, Any]) -> dict[str, Any]:
        query = params.get("query")
        if not isinstance(query, str) or not query.strip():
            raise _invalid("query is required", code="parameter_missing", param="query")
        wanted: dict[str, str] = {}
        for clause in re.split(r"\s+AND\s+", query.strip()):
            match = _SEARCH_CLAUSE.match(clause.strip())
            if match is None:
                raise _invalid(
                    f"This fake searches metadata only; cannot parse {clause!r}", param="query"
                )
            value = match["value"].replace("\\'", "'").replace('\\"', '"').replace("\\\\", "\\")
            wanted[match["key"]] = value
        found = [
            copy.deepcopy(i)
            for i in self._state.intents.values()
            if all(i["metadata"].get(k) == v for k, v in wanted.items())
        ]
        found.reverse()
        return {
            "object": "search_result",
            "url": "/v1/payment_intents/search",
            "data": found[:100],
            "has_more": False,
            "next_page": None,
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m aegispay_stripe.fake", description="Run a loopback fake Stripe API."
    )
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--secret-key", default="sk_test_aegispay_fake")
    parser.add_argument("--webhook-secret", default="whsec_aegispay_fake_0123456789abcdef")
    args = parser.parse_args(argv)
    fake = FakeStripe(
        secret_key=args.secret_key,
        webhook_secret=args.webhook_secret,
        host=args.host,
        port=args.port,
    )
    fake.start()
    # Test keys of a local fake, printed so a user can paste them into aegispay.toml.
    print(f"fake Stripe listening on {fake.base_url}", flush=True)
    print(
        f'[plugins.stripe]\nbase_url = "{fake.base_url}"\nsecret_key = "{args.secret_key}"\n'
        f'webhook_secret = "{args.webhook_secret}"\ndefault_payment_method = "pm_card_visa"',
        flush=True,
    )
    fake.serve_forever()


if __name__ == "__main__":
    main()
