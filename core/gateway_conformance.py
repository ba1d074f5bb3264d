"""A conformance suite every gateway adapter package runs against its own fake.

A package subclasses :class:`GatewayConformance` in its tests and provides two fixtures:

* ``conformance_fake`` - a running fake, fresh per test, implementing :class:`FakeGatewayControl`;
* ``conformance_gateway`` - its adapter configured against ``conformance_fake.base_url`` with a
  read timeout of at most one second.

::

    from aegispay.gateway_conformance import GatewayConformance

    class TestConformance(GatewayConformance):
        currencies = ("USD", "JPY", "KWD")

        @pytest.fixture
        def conformance_fake(self):
            with FakeStripe() as fake:
                yield fake

        @pytest.fixture
        def conformance_gateway(self, conformance_fake):
            return StripeGateway(api_key="sk_test_x", base_url=conformance_fake.base_url, ...)

Class attributes switch off what a gateway does not have (``charge_path_prefix`` aims the
transport faults at the POST that charges, when the adapter POSTs something else first); what
its capabilities (:func:`aegispay.gateways.capabilities_of`) do not claim is skipped with the
reason shown.
The suite needs ``pytest`` and runs each async test on asyncio and trio (override the
``anyio_backend`` fixture to narrow that).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import pytest

from .fake_server import Fault
from .gateways import (
    AuthorizeRequest,
    CaptureRequest,
    Gateway,
    GatewayCapabilities,
    GatewayNotSent,
    GatewayResult,
    Operation,
    Outcome,
    RefundRequest,
    StatusRequest,
    VoidRequest,
    capabilities_of,
)
from .money import Money
from .webhooks import WebhookKind, WebhookReceiver, WebhookSignatureError


@runtime_checkable
class FakeGatewayControl(Protocol):
    """What the suite needs from a package's fake gateway (see :mod:`aegispay.fake_server`)."""

    base_url: str
    webhook_secret: str

    def inject(
        self,
        fault: Fault,
        *,
        count: int = 1,
        method: str | None = None,
        path_prefix: str = "",
        latency_s: float = 0.0,
        retry_after_s: int = 1,
    ) -> None:
        """Apply a transport fault to the next matching request(s)."""
        ...

    def decline_next(self, code: str = "card_declined") -> None:
        """The next authorize is declined by the bank with ``code``."""
        ...

    def require_action_next(self) -> None:
        """The next authorize needs the customer (3DS, Razorpay Checkout, PayPal approval)."""
        ...

    def complete_action(self, gateway_reference: str) -> None:
        """The customer finishes the action the payment ``gateway_reference`` waits for."""
        ...

    def charges(self) -> int:
        """Money movements really made (authorizations captured): for double-charge checks."""
        ...

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
        """Headers and raw body exactly as the gateway sends them. ``secret`` None signs with
        the right secret; ``age_s`` back-dates the signed timestamp."""
        ...


def _key() -> str:
    return uuid.uuid4().hex[:16]


class GatewayConformance:
    """Pytest base class: the behaviour every gateway adapter must show against its fake."""

    # -- what a subclass may set -----------------------------------------------------------------
    supports_webhooks: ClassVar[bool] = True
    webhook_timestamps: ClassVar[bool] = True  # False when signatures carry no timestamp
    # A two-, a zero- and a three-decimal currency; only those the capabilities list are used.
    currencies: ClassVar[tuple[str, ...]] = ("USD", "JPY", "KWD")
    # The payment method sent on authorize (None: the gateway's default test method).
    payment_method: ClassVar[str | None] = None
    # Decline codes the fake can produce that the adapter must pass through unchanged.
    decline_codes: ClassVar[tuple[str, ...]] = ("card_declined",)
    # Transport-fault tests need real HTTP; an in-process gateway sets this False.
    transport_faults: ClassVar[bool] = True
    # A sizeable amount in minor units, divisible by 4 so halves and quarters are exact.
    amount_minor: ClassVar[int] = 10_000
    # Where the transport-fault tests (rate limit, 5xx, drops, timeouts) aim their fault: the
    # first POST whose path starts with this. "" is the authorize's first POST, right when that
    # POST is the charge (Stripe). Set it when the adapter POSTs something else first, so the
    # fault meets the call that may move money: Razorpay "/v1/payments/create/recurring" (its
    # first POST creates an order), PayPal "/v2/checkout/orders" (its first is the OAuth token).
    charge_path_prefix: ClassVar[str] = ""

    # -- fixtures a subclass must provide ----------------------------------------------------------

    @pytest.fixture
    def conformance_fake(self) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__}: provide a `conformance_fake` fixture (a running fake "
            "implementing FakeGatewayControl, fresh per test)"
        )

    @pytest.fixture
    def conformance_gateway(self, conformance_fake: Any) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__}: provide a `conformance_gateway` fixture (the adapter "
            "configured against conformance_fake.base_url, read timeout <= 1 s)"
        )

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    async def suite_gateway(self, conformance_gateway: Any) -> AsyncIterator[Gateway]:
        """The adapter, closed after the test when it has ``aclose`` (pooled connections)."""
        assert isinstance(conformance_gateway, Gateway), (
            f"{conformance_gateway!r} does not implement aegispay.gateways.Gateway"
        )
        try:
            yield conformance_gateway
        finally:
            aclose = getattr(conformance_gateway, "aclose", None)
            if aclose is not None:
                await aclose()

    @pytest.fixture
    def suite_fake(self, conformance_fake: Any) -> FakeGatewayControl:
        assert isinstance(conformance_fake, FakeGatewayControl), (
            f"{conformance_fake!r} does not implement FakeGatewayControl"
        )
        return conformance_fake

    # -- helpers ---------------------------------------------------------------------------------

    def caps(self, gateway: Gateway) -> GatewayCapabilities:
        return capabilities_of(gateway)

    def usable_currencies(self, gateway: Gateway) -> list[str]:
        listed = self.caps(gateway).currencies
        usable = [c for c in self.currencies if listed is None or c in listed]
        if not usable:
            pytest.skip(f"none of {self.currencies} is in the gateway's currencies")
        return usable

    def money(
        self, gateway: Gateway, minor: int | None = None, currency: str | None = None
    ) -> Money:
        return Money(
            self.amount_minor if minor is None else minor,
            currency or self.usable_currencies(gateway)[0],
        )

    def authorize_request(
        self, amount: Money, *, capture: bool, key: str | None = None, payment_id: str | None = None
    ) -> AuthorizeRequest:
        payment_id = payment_id or f"pay_conf_{_key()}"
        return AuthorizeRequest(
            payment_id=payment_id,
            attempt_no=1,
            idempotency_key=key or f"{payment_id}-1",
            amount=amount,
            capture=capture,
            payment_method=self.payment_method,
            description="aegispay conformance",
            metadata={"suite": "conformance"},
        )

    async def call(self, gateway: Gateway, operation: Operation, request: Any) -> GatewayResult:
        """One adapter call; :class:`GatewayNotSent` is reported as a NOT_SENT result."""
        method = getattr(
            gateway, operation.value if operation is not Operation.STATUS else "get_status"
        )
        try:
            result = await method(request)
        except GatewayNotSent as exc:
            return GatewayResult(Outcome.NOT_SENT, message=str(exc))
        assert isinstance(result, GatewayResult), f"{operation.value} returned {result!r}"
        return result

    async def status(
        self, gateway: Gateway, request: AuthorizeRequest, reference: str | None = None
    ) -> GatewayResult:
        return await self.call(
            gateway,
            Operation.STATUS,
            StatusRequest(
                request.payment_id, Operation.AUTHORIZE, request.idempotency_key, reference
            ),
        )

    async def authorized(
        self, gateway: Gateway, fake: FakeGatewayControl, request: AuthorizeRequest
    ) -> GatewayResult:
        """Authorize, completing a customer action when the gateway always asks for one."""
        result = await self.call(gateway, Operation.AUTHORIZE, request)
        if result.outcome is Outcome.REQUIRES_ACTION:
            assert result.reference, "REQUIRES_ACTION without a gateway reference"
            fake.complete_action(result.reference)
            result = await self.status(gateway, request, result.reference)
        assert result.outcome is Outcome.SUCCEEDED, f"authorize: {result}"
        assert result.reference, "a SUCCEEDED authorize must carry the gateway reference"
        assert result.captured is request.capture, f"captured should be {request.capture}: {result}"
        return result

    def require_manual_capture(self, gateway: Gateway) -> None:
        if not self.caps(gateway).manual_capture:
            pytest.skip("the gateway does not claim manual_capture")

    def require_transport(self) -> None:
        if not self.transport_faults:
            pytest.skip("transport faults do not apply to this gateway (transport_faults=False)")

    def require_webhooks(self, gateway: Gateway) -> WebhookReceiver:
        if not self.supports_webhooks:
            pytest.skip("the gateway receives no webhooks (supports_webhooks=False)")
        assert isinstance(gateway, WebhookReceiver), "supports_webhooks but no parse_webhook"
        assert self.caps(gateway).webhooks, "parse_webhook present but capabilities.webhooks False"
        return gateway

    # -- authorize and idempotency ---------------------------------------------------------------

    @pytest.mark.anyio
    async def test_authorize_and_capture_charges_once(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        request = self.authorize_request(self.money(suite_gateway), capture=True)
        await self.authorized(suite_gateway, suite_fake, request)
        assert suite_fake.charges() == 1

    @pytest.mark.anyio
    async def test_same_key_twice_is_one_charge_with_the_same_reference(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        request = self.authorize_request(self.money(suite_gateway), capture=True)
        first = await self.authorized(suite_gateway, suite_fake, request)
        again = await self.call(suite_gateway, Operation.AUTHORIZE, request)
        assert again.outcome is Outcome.SUCCEEDED, again
        assert again.reference == first.reference
        assert suite_fake.charges() == 1

    @pytest.mark.anyio
    async def test_same_key_different_amount_is_an_error_without_a_charge(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        request = self.authorize_request(self.money(suite_gateway), capture=True)
        await self.authorized(suite_gateway, suite_fake, request)
        changed = self.authorize_request(
            self.money(suite_gateway, self.amount_minor * 2),
            capture=True,
            key=request.idempotency_key,
            payment_id=request.payment_id,
        )
        result = await self.call(suite_gateway, Operation.AUTHORIZE, changed)
        assert result.outcome not in (
            Outcome.SUCCEEDED,
            Outcome.PENDING,
            Outcome.REQUIRES_ACTION,
        ), f"a reused key with a different amount must be refused, got {result}"
        assert suite_fake.charges() == 1

    @pytest.mark.anyio
    async def test_status_lookup_reports_the_authorization(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        request = self.authorize_request(self.money(suite_gateway), capture=True)
        first = await self.authorized(suite_gateway, suite_fake, request)
        for reference in (first.reference, None):
            found = await self.status(suite_gateway, request, reference)
            assert found.outcome is Outcome.SUCCEEDED, (reference, found)
            assert found.reference == first.reference
            assert found.captured is True

    @pytest.mark.anyio
    async def test_status_of_an_unused_key_is_never_success(self, suite_gateway: Gateway) -> None:
        request = self.authorize_request(self.money(suite_gateway), capture=True)
        found = await self.status(suite_gateway, request)
        expected = (
            (Outcome.NOT_SENT,)
            if self.caps(suite_gateway).authoritative_status
            else (Outcome.NOT_SENT, Outcome.UNKNOWN)
        )
        assert found.outcome in expected, found

    # -- outcome mapping -------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_bank_decline_is_declined_with_the_code(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        for code in self.decline_codes:
            suite_fake.decline_next(code)
            request = self.authorize_request(self.money(suite_gateway), capture=True)
            result = await self.call(suite_gateway, Operation.AUTHORIZE, request)
            assert result.outcome is Outcome.DECLINED, result
            assert result.decline_code == code, result
            assert result.retryable_elsewhere is False, "a bank decline must not fail over"
        assert suite_fake.charges() == 0

    @pytest.mark.anyio
    async def test_requires_action_then_completed(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        suite_fake.require_action_next()
        request = self.authorize_request(self.money(suite_gateway), capture=True)
        result = await self.call(suite_gateway, Operation.AUTHORIZE, request)
        assert result.outcome is Outcome.REQUIRES_ACTION, result
        assert result.reference, "REQUIRES_ACTION must carry the gateway reference"
        assert result.next_action, "REQUIRES_ACTION must carry next_action data for the client"
        assert suite_fake.charges() == 0
        suite_fake.complete_action(result.reference)
        done = await self.status(suite_gateway, request, result.reference)
        assert done.outcome is Outcome.SUCCEEDED, done
        assert done.reference == result.reference
        assert suite_fake.charges() == 1

    @pytest.mark.anyio
    async def test_rate_limited_is_not_sent_with_retry_after(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        self.require_transport()
        suite_fake.inject(
            Fault.RATE_LIMITED, method="POST", path_prefix=self.charge_path_prefix, retry_after_s=7
        )
        request = self.authorize_request(self.money(suite_gateway), capture=True)
        result = await self.call(suite_gateway, Operation.AUTHORIZE, request)
        assert result.outcome is Outcome.NOT_SENT, result
        assert result.retry_after_s == 7, result
        assert suite_fake.charges() == 0
        await self.authorized(suite_gateway, suite_fake, request)
        assert suite_fake.charges() == 1

    @pytest.mark.anyio
    async def test_connection_refused_is_not_sent(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        self.require_transport()
        close = getattr(suite_fake, "close", None)
        if close is None:
            pytest.skip("the fake has no close(): cannot refuse connections")
        close()  # nothing listens on the port the gateway is configured with
        request = self.authorize_request(self.money(suite_gateway), capture=True)
        result = await self.call(suite_gateway, Operation.AUTHORIZE, request)
        assert result.outcome is Outcome.NOT_SENT, result

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        "fault",
        [
            Fault.ERROR_500,
            Fault.DROP_BEFORE_PROCESSING,
            Fault.DROP_AFTER_PROCESSING,
            Fault.TIMEOUT_AFTER_PROCESSING,
        ],
    )
    async def test_ambiguous_failure_is_unknown_then_resolved_without_a_second_charge(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl, fault: Fault
    ) -> None:
        self.require_transport()
        processed = fault in (Fault.DROP_AFTER_PROCESSING, Fault.TIMEOUT_AFTER_PROCESSING)
        request = self.authorize_request(self.money(suite_gateway), capture=True)
        # The charge POST (``charge_path_prefix``) meets the fault once; any other POST of the
        # attempt (an order, a token) goes through.
        suite_fake.inject(fault, method="POST", path_prefix=self.charge_path_prefix)
        result = await self.call(suite_gateway, Operation.AUTHORIZE, request)
        assert result.outcome is Outcome.UNKNOWN, f"{fault.name}: {result}"
        assert suite_fake.charges() == (1 if processed else 0)

        found = await self.status(suite_gateway, request)
        if processed:
            assert found.outcome is Outcome.SUCCEEDED, f"status after {fault.name}: {found}"
            assert found.reference
        elif self.caps(suite_gateway).authoritative_status:
            assert found.outcome is Outcome.NOT_SENT, f"status after {fault.name}: {found}"
        else:
            assert found.outcome in (Outcome.NOT_SENT, Outcome.UNKNOWN), found

        again = await self.authorized(suite_gateway, suite_fake, request)
        if processed:
            assert again.reference == found.reference
        assert suite_fake.charges() == 1, "a retry with the same key must not charge again"

    # -- capture, void, refund -------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_manual_capture_full(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        self.require_manual_capture(suite_gateway)
        amount = self.money(suite_gateway)
        request = self.authorize_request(amount, capture=False)
        auth = await self.authorized(suite_gateway, suite_fake, request)
        assert suite_fake.charges() == 0, "an authorization alone moves no money"
        capture = CaptureRequest(
            request.payment_id, f"{request.payment_id}-capture", auth.reference, amount
        )
        for _ in range(2):  # the repeat replays: still one charge
            result = await self.call(suite_gateway, Operation.CAPTURE, capture)
            assert result.outcome is Outcome.SUCCEEDED, result
        assert suite_fake.charges() == 1
        status = await self.status(suite_gateway, request, auth.reference)
        assert status.outcome is Outcome.SUCCEEDED and status.captured, status

    @pytest.mark.anyio
    async def test_manual_capture_partial(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        self.require_manual_capture(suite_gateway)
        if not self.caps(suite_gateway).partial_capture:
            pytest.skip("the gateway does not claim partial_capture")
        request = self.authorize_request(self.money(suite_gateway), capture=False)
        auth = await self.authorized(suite_gateway, suite_fake, request)
        part = self.money(suite_gateway, self.amount_minor // 2)
        capture = CaptureRequest(
            request.payment_id, f"{request.payment_id}-capture", auth.reference, part
        )
        result = await self.call(suite_gateway, Operation.CAPTURE, capture)
        assert result.outcome is Outcome.SUCCEEDED, result
        assert suite_fake.charges() == 1

    @pytest.mark.anyio
    async def test_void_releases_the_authorization(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        self.require_manual_capture(suite_gateway)
        amount = self.money(suite_gateway)
        request = self.authorize_request(amount, capture=False)
        auth = await self.authorized(suite_gateway, suite_fake, request)
        void = VoidRequest(request.payment_id, f"{request.payment_id}-void", auth.reference)
        result = await self.call(suite_gateway, Operation.VOID, void)
        assert result.outcome is Outcome.SUCCEEDED, result
        late = CaptureRequest(
            request.payment_id, f"{request.payment_id}-capture", auth.reference, amount
        )
        refused = await self.call(suite_gateway, Operation.CAPTURE, late)
        assert refused.outcome is not Outcome.SUCCEEDED, f"captured a voided payment: {refused}"
        assert suite_fake.charges() == 0

    @pytest.mark.anyio
    async def test_full_refund_once(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        amount = self.money(suite_gateway)
        request = self.authorize_request(amount, capture=True)
        auth = await self.authorized(suite_gateway, suite_fake, request)
        refund = RefundRequest(
            request.payment_id, f"{request.payment_id}-refund-1", auth.reference, amount
        )
        for _ in range(2):  # the repeat replays the first refund
            result = await self.call(suite_gateway, Operation.REFUND, refund)
            assert result.outcome is Outcome.SUCCEEDED, result
        over = RefundRequest(
            request.payment_id, f"{request.payment_id}-refund-2", auth.reference, amount
        )
        refused = await self.call(suite_gateway, Operation.REFUND, over)
        assert refused.outcome is not Outcome.SUCCEEDED, f"refunded more than captured: {refused}"

    @pytest.mark.anyio
    async def test_partial_refunds_up_to_the_captured_amount(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        if not self.caps(suite_gateway).partial_refund:
            pytest.skip("the gateway does not claim partial_refund")
        request = self.authorize_request(self.money(suite_gateway), capture=True)
        auth = await self.authorized(suite_gateway, suite_fake, request)
        quarter = self.money(suite_gateway, self.amount_minor // 4)
        three_quarters = self.money(suite_gateway, self.amount_minor - self.amount_minor // 4)
        for n, part in enumerate((quarter, three_quarters), start=1):
            refund = RefundRequest(
                request.payment_id, f"{request.payment_id}-refund-{n}", auth.reference, part
            )
            result = await self.call(suite_gateway, Operation.REFUND, refund)
            assert result.outcome is Outcome.SUCCEEDED, (n, result)
        one_more = RefundRequest(
            request.payment_id,
            f"{request.payment_id}-refund-3",
            auth.reference,
            self.money(suite_gateway, 1),
        )
        refused = await self.call(suite_gateway, Operation.REFUND, one_more)
        assert refused.outcome is not Outcome.SUCCEEDED, f"refunded more than captured: {refused}"

    # -- money across currency exponents ---------------------------------------------------------

    @pytest.mark.anyio
    async def test_amounts_in_every_exponent(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        # 10 050 minor units: 100.50 USD, 10050 JPY, 10.050 KWD - each must reach the gateway
        # exactly (the fake rejects a malformed amount), and come back exact in a webhook.
        for currency in self.usable_currencies(suite_gateway):
            amount = Money(10_050, currency)
            request = self.authorize_request(amount, capture=True)
            auth = await self.authorized(suite_gateway, suite_fake, request)
            amount_of = getattr(suite_fake, "amount_of", None)
            if amount_of is not None:
                assert amount_of(auth.reference) == (10_050, currency)
            if self.supports_webhooks and isinstance(suite_gateway, WebhookReceiver):
                assert auth.reference is not None
                headers, body = suite_fake.signed_webhook(
                    WebhookKind.SUCCEEDED, auth.reference, amount_minor=10_050, currency=currency
                )
                update = await suite_gateway.parse_webhook(_lower(headers), body)
                assert update.amount == amount, (currency, update)

    # -- webhooks --------------------------------------------------------------------------------

    async def _captured(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> tuple[str, Money]:
        amount = self.money(suite_gateway)
        auth = await self.authorized(
            suite_gateway, suite_fake, self.authorize_request(amount, capture=True)
        )
        assert auth.reference is not None
        return auth.reference, amount

    @pytest.mark.anyio
    async def test_webhook_valid(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        receiver = self.require_webhooks(suite_gateway)
        reference, amount = await self._captured(suite_gateway, suite_fake)
        event_id = f"evt_conf_{_key()}"
        headers, body = suite_fake.signed_webhook(
            WebhookKind.SUCCEEDED,
            reference,
            amount_minor=amount.minor,
            currency=amount.currency,
            event_id=event_id,
        )
        update = await receiver.parse_webhook(_lower(headers), body)
        assert update.event_id == event_id
        assert update.kind is WebhookKind.SUCCEEDED
        assert update.gateway_reference == reference
        assert update.amount == amount
        again = await receiver.parse_webhook(_lower(headers), body)
        assert again == update, "parsing is deterministic: a redelivery dedupes on event_id"

    @pytest.mark.anyio
    async def test_webhook_tampered_body_is_rejected(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        receiver = self.require_webhooks(suite_gateway)
        reference, amount = await self._captured(suite_gateway, suite_fake)
        headers, body = suite_fake.signed_webhook(
            WebhookKind.SUCCEEDED, reference, amount_minor=amount.minor, currency=amount.currency
        )
        digits = str(amount.minor).encode()
        tampered = (
            body.replace(digits, str(amount.minor + 1).encode(), 1)
            if digits in body
            else body + b" "
        )
        assert tampered != body
        with pytest.raises(WebhookSignatureError):
            await receiver.parse_webhook(_lower(headers), tampered)

    @pytest.mark.anyio
    async def test_webhook_wrong_secret_is_rejected_without_leaking(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        receiver = self.require_webhooks(suite_gateway)
        reference, amount = await self._captured(suite_gateway, suite_fake)
        wrong = "whsec_conformance_wrong_secret_0123456789"
        headers, body = suite_fake.signed_webhook(
            WebhookKind.SUCCEEDED,
            reference,
            amount_minor=amount.minor,
            currency=amount.currency,
            secret=wrong,
        )
        with pytest.raises(WebhookSignatureError) as caught:
            await receiver.parse_webhook(_lower(headers), body)
        message = str(caught.value)
        assert message, "the error must name the problem"
        assert suite_fake.webhook_secret not in message and wrong not in message
        assert suite_fake.webhook_secret not in repr(suite_gateway), (
            "the secret leaked into the repr"
        )

    @pytest.mark.anyio
    async def test_webhook_missing_signature_is_rejected(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        receiver = self.require_webhooks(suite_gateway)
        reference, amount = await self._captured(suite_gateway, suite_fake)
        _, body = suite_fake.signed_webhook(
            WebhookKind.SUCCEEDED, reference, amount_minor=amount.minor, currency=amount.currency
        )
        with pytest.raises(WebhookSignatureError):
            await receiver.parse_webhook({"content-type": "application/json"}, body)

    @pytest.mark.anyio
    async def test_webhook_expired_timestamp_is_rejected(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        receiver = self.require_webhooks(suite_gateway)
        if not self.webhook_timestamps:
            pytest.skip("the gateway's signatures carry no timestamp (webhook_timestamps=False)")
        reference, amount = await self._captured(suite_gateway, suite_fake)
        headers, body = suite_fake.signed_webhook(
            WebhookKind.SUCCEEDED,
            reference,
            amount_minor=amount.minor,
            currency=amount.currency,
            age_s=3600,
        )
        with pytest.raises(WebhookSignatureError):
            await receiver.parse_webhook(_lower(headers), body)

    @pytest.mark.anyio
    async def test_webhook_replayed_event_is_applied_once(
        self, suite_gateway: Gateway, suite_fake: FakeGatewayControl
    ) -> None:
        """Through a service: a payment waiting on the customer is completed by the webhook
        once; the same event again is a duplicate, another event of the same kind a no-op."""
        self.require_webhooks(suite_gateway)
        from .requests import PaymentRequest
        from .states import PaymentState
        from .testing import make_test_service
        from .webhooks import WebhookStatus

        service = make_test_service(gateways=[suite_gateway], builtins=("priority_routing",))
        try:
            amount = self.money(suite_gateway)
            suite_fake.require_action_next()
            payment = await service.pay(PaymentRequest(amount, payment_method=self.payment_method))
            assert payment.state is PaymentState.REQUIRES_ACTION, payment
            reference = payment.gateway_reference
            assert reference is not None
            suite_fake.complete_action(reference)
            headers, body = suite_fake.signed_webhook(
                WebhookKind.SUCCEEDED,
                reference,
                amount_minor=amount.minor,
                currency=amount.currency,
                event_id=f"evt_conf_{_key()}",
            )
            first = await service.handle_webhook(suite_gateway.name, headers, body)
            assert first.status is WebhookStatus.APPLIED, first
            assert first.payment_id == payment.id
            done = await service.get_payment(payment.id)
            assert done.state is PaymentState.COMPLETED, done
            again = await service.handle_webhook(suite_gateway.name, headers, body)
            assert again.status is WebhookStatus.DUPLICATE, again
            other_headers, other_body = suite_fake.signed_webhook(
                WebhookKind.SUCCEEDED,
                reference,
                amount_minor=amount.minor,
                currency=amount.currency,
            )
            other = await service.handle_webhook(suite_gateway.name, other_headers, other_body)
            assert other.status is WebhookStatus.IGNORED, other
            assert (await service.get_payment(payment.id)).version == done.version
            assert suite_fake.charges() == 1
        finally:
            await service.aclose()


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}
