"""What a gateway adapter is: the requests it receives, the result it returns, its description.

Every gateway plugin (simulated, aegispay-stripe, aegispay-razorpay, aegispay-paypal, in-house)
implements :class:`Gateway` and reports each call as one :class:`Outcome`. The outcome taxonomy
decides what the engine may do next, and getting it wrong is how double charges happen:

* NOT_SENT - the request provably never reached the gateway: safe to retry or fail over.
* UNKNOWN  - it may have been processed: never retried elsewhere; resolved by ``get_status`` with
  the same idempotency key.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

from .money import Money


class Outcome(enum.Enum):
    SUCCEEDED = "succeeded"
    PENDING = "pending"
    REQUIRES_ACTION = "requires_action"
    DECLINED = "declined"
    NOT_SENT = "not_sent"
    UNKNOWN = "unknown"


class Operation(enum.Enum):
    AUTHORIZE = "authorize"
    CAPTURE = "capture"
    VOID = "void"
    REFUND = "refund"
    STATUS = "status"


@attrs.frozen
class GatewayResult:
    """What one gateway call did.

    ``reference`` is the gateway's own id for the payment (PaymentIntent id, order id...).
    ``captured`` says whether an authorize (or a status lookup of one) also captured the funds.
    ``retry_after_s`` carries a rate-limit answer's Retry-After (the outcome is then NOT_SENT).
    ``retryable_elsewhere`` marks a DECLINED that is specific to this gateway (e.g. currency not
    enabled on the account), so routing may try the next gateway; a bank's decline is not.
    """

    outcome: Outcome
    reference: str | None = None
    captured: bool = False
    decline_code: str | None = None
    message: str = ""
    next_action: Mapping[str, str] | None = None
    retryable_elsewhere: bool = False
    # Seconds the gateway asked us to wait (HTTP 429 Retry-After); set with outcome NOT_SENT.
    retry_after_s: float | None = None


@attrs.frozen
class AuthorizeRequest:
    payment_id: str
    attempt_no: int
    idempotency_key: str
    amount: Money
    capture: bool
    customer_id: str | None = None
    payment_method: str | None = None
    reference: str | None = None
    description: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    payment_method_type: str | None = None  # the method's family ("card", "upi"...), if given


@attrs.frozen
class CaptureRequest:
    payment_id: str
    idempotency_key: str
    gateway_reference: str | None
    amount: Money


@attrs.frozen
class VoidRequest:
    payment_id: str
    idempotency_key: str
    gateway_reference: str | None


@attrs.frozen
class RefundRequest:
    payment_id: str
    idempotency_key: str
    gateway_reference: str | None
    amount: Money
    reason: str | None = None


@attrs.frozen
class StatusRequest:
    """Look up what happened to a call made with ``idempotency_key`` (same key as the call)."""

    payment_id: str
    operation: Operation
    idempotency_key: str
    gateway_reference: str | None = None


@attrs.frozen
class FeeModel:
    """A fixed fee in minor units plus a percentage in basis points (290 = 2.9 %)."""

    fixed_minor: int = 0
    basis_points: int = 0

    def fee_for(self, amount: Money) -> Money:
        return Money(self.fixed_minor, amount.currency) + amount.percentage(self.basis_points)


@runtime_checkable
class Gateway(Protocol):
    """A payment gateway adapter. Every method is async and returns a GatewayResult.

    Adapters must not raise for gateway answers; they map them to outcomes. An exception escaping
    an adapter is treated as UNKNOWN (it may have been sent), except :class:`GatewayNotSent`.
    Every mutating call carries ``idempotency_key``: send it to the gateway so a repeated call
    cannot charge twice.
    """

    name: str
    supported_currencies: frozenset[str] | None  # None: every currency
    fees: FeeModel

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult: ...
    async def capture(self, request: CaptureRequest) -> GatewayResult: ...
    async def void(self, request: VoidRequest) -> GatewayResult: ...
    async def refund(self, request: RefundRequest) -> GatewayResult: ...
    async def get_status(self, request: StatusRequest) -> GatewayResult:
        """What happened to the call made with ``request.idempotency_key``.

        Return NOT_SENT only when the gateway itself answers that it has no record of that
        request (the engine may then route the payment elsewhere). When the lookup cannot be
        made or answered, return UNKNOWN (or raise): never guess.
        """
        ...


class GatewayNotSent(Exception):
    """Raise from an adapter when the request provably never left (DNS, connect refused, TLS)."""


def supports_currency(gateway: Gateway, currency: str) -> bool:
    currencies = gateway.supported_currencies
    return currencies is None or currency in currencies


@attrs.frozen
class GatewayCapabilities:
    """What a gateway can do, so callers (and the conformance suite) only ask for what exists.

    ``currencies`` None means every currency; ``methods`` are payment method families
    ("card", "upi", "paypal"...). ``idempotent_create`` says the gateway dedupes a repeated
    create by our idempotency key; ``authoritative_status`` says ``get_status`` can answer
    NOT_SENT ("no record of that key") rather than only UNKNOWN.
    """

    currencies: frozenset[str] | None = None
    methods: frozenset[str] = frozenset({"card"})
    manual_capture: bool = False
    partial_capture: bool = False
    partial_refund: bool = False
    idempotent_create: bool = False
    authoritative_status: bool = False
    webhooks: bool = False
    # How long the gateway remembers an idempotency key (None: not declared). A create is
    # repeated with the same key only well inside it (aegispay.retry, reconcile).
    idempotency_retention_s: float | None = None


def explicit_capabilities(gateway: Gateway | None) -> GatewayCapabilities | None:
    """The capabilities ``gateway`` declares, or None: what may restrict it (routing, partial
    operations). A gateway that declares nothing is not second-guessed."""
    declared = getattr(gateway, "capabilities", None)
    return declared if isinstance(declared, GatewayCapabilities) else None


def capabilities_of(gateway: Gateway) -> GatewayCapabilities:
    """The gateway's ``capabilities`` attribute, or a conservative default built from what every
    Gateway declares (its currencies) that claims nothing optional."""
    declared = getattr(gateway, "capabilities", None)
    if isinstance(declared, GatewayCapabilities):
        return declared
    if declared is not None:
        raise TypeError(
            f"gateway {getattr(gateway, 'name', gateway)!r}: capabilities must be a "
            f"GatewayCapabilities, not {type(declared).__name__}"
        )
    return GatewayCapabilities(currencies=getattr(gateway, "supported_currencies", None))


class GatewayWrapper:
    """A gateway put around another (fault injection, a simulation's saved instruments): the
    same name, currencies and fees, every call passed to ``inner`` unless a subclass overrides
    it, and anything else (``capabilities`` - declared or not, ``aclose``, ``parse_webhook``...)
    read from ``inner``. Install wrappers with ``PaymentService.wrap_gateways``."""

    def __init__(self, inner: Gateway) -> None:
        self.inner = inner
        self.name = inner.name
        self.supported_currencies = inner.supported_currencies
        self.fees = inner.fees

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the wrapper does not define itself.
        if name == "inner":  # not set yet (a half-built copy): no endless recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        return await self.inner.authorize(request)

    async def capture(self, request: CaptureRequest) -> GatewayResult:
        return await self.inner.capture(request)

    async def void(self, request: VoidRequest) -> GatewayResult:
        return await self.inner.void(request)

    async def refund(self, request: RefundRequest) -> GatewayResult:
        return await self.inner.refund(request)

    async def get_status(self, request: StatusRequest) -> GatewayResult:
        return await self.inner.get_status(request)
