"""Domain events: immutable facts about one payment, numbered 1, 2, 3... per payment.

A payment's state is nothing but the fold of its events (:func:`aegispay.payment.replay`).
Each event class has an explicit type name used in storage and on the wire; plugins add their
own through the ``aegispay_register_event_types`` hook. ``event_id`` is ``<payment_id>:<version>``:
unique because (payment, version) is unique in every store, and stable across re-deliveries so
consumers can deduplicate on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import ClassVar

import attrs

from .gateways import Outcome
from .money import Money


# Not slotted: attrs builds frozen dict-backed instances through ``__dict__`` directly, which
# is measurably faster to construct, and several events are made for every payment.
@attrs.frozen(kw_only=True, slots=False)
class Event:
    """Base of every event. Subclasses add their data fields and set ``type_name``."""

    type_name: ClassVar[str] = "Event"

    payment_id: str
    version: int
    occurred_at: datetime

    @property
    def event_id(self) -> str:
        return f"{self.payment_id}:{self.version}"


@attrs.frozen(kw_only=True, slots=False)
class PaymentInitiated(Event):
    type_name: ClassVar[str] = "PaymentInitiated"

    merchant_id: str
    amount: Money
    capture_mode: str
    customer_id: str | None = None
    payment_method: str | None = None
    reference: str | None = None
    description: str | None = None
    country: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    payment_method_type: str | None = None  # the method's family (PaymentRequest)


@attrs.frozen(kw_only=True, slots=False)
class PaymentFlaggedForReview(Event):
    """Fraud checks said "review": the payment is authorised only, a person decides capture."""

    type_name: ClassVar[str] = "PaymentFlaggedForReview"

    risk_score: int
    reasons: tuple[str, ...]


@attrs.frozen(kw_only=True, slots=False)
class PaymentProcessingStarted(Event):
    """The intent: attempt ``attempt_no`` goes to ``gateway`` with ``idempotency_key``.

    Committed before the gateway is called, so a crash leaves a record to reconcile.
    """

    type_name: ClassVar[str] = "PaymentProcessingStarted"

    attempt_no: int
    gateway: str
    idempotency_key: str
    route_reason: str = ""


@attrs.frozen(kw_only=True, slots=False)
class PaymentAttemptFailed(Event):
    """An attempt ended DECLINED or NOT_SENT; the payment may fail over or fail."""

    type_name: ClassVar[str] = "PaymentAttemptFailed"

    attempt_no: int
    outcome: Outcome
    decline_code: str | None = None
    message: str = ""


@attrs.frozen(kw_only=True, slots=False)
class PaymentOutcomeUnknown(Event):
    """The gateway may or may not have processed the attempt: resolve by status lookup only."""

    type_name: ClassVar[str] = "PaymentOutcomeUnknown"

    attempt_no: int
    message: str = ""


@attrs.frozen(kw_only=True, slots=False)
class PaymentRequiresAction(Event):
    type_name: ClassVar[str] = "PaymentRequiresAction"

    attempt_no: int
    gateway_reference: str | None = None
    next_action: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True, slots=False)
class PaymentAuthorized(Event):
    type_name: ClassVar[str] = "PaymentAuthorized"

    attempt_no: int
    amount: Money
    gateway_reference: str | None = None


@attrs.frozen(kw_only=True, slots=False)
class PaymentCompleted(Event):
    """Funds captured (all of ``amount`` or part of the authorisation)."""

    type_name: ClassVar[str] = "PaymentCompleted"

    amount: Money
    idempotency_key: str
    gateway_reference: str | None = None


@attrs.frozen(kw_only=True, slots=False)
class PaymentFailed(Event):
    type_name: ClassVar[str] = "PaymentFailed"

    code: str
    message: str = ""


@attrs.frozen(kw_only=True, slots=False)
class PaymentCancelled(Event):
    type_name: ClassVar[str] = "PaymentCancelled"

    reason: str = ""
    voided: bool = False


@attrs.frozen(kw_only=True, slots=False)
class RefundSucceeded(Event):
    type_name: ClassVar[str] = "RefundSucceeded"

    refund_no: int
    amount: Money
    idempotency_key: str
    gateway_reference: str | None = None
    reason: str | None = None


@attrs.frozen(kw_only=True, slots=False)
class RefundFailed(Event):
    type_name: ClassVar[str] = "RefundFailed"

    refund_no: int
    amount: Money
    idempotency_key: str
    code: str
    message: str = ""


@attrs.frozen(kw_only=True, slots=False)
class CaptureFailed(Event):
    type_name: ClassVar[str] = "CaptureFailed"

    amount: Money
    idempotency_key: str
    code: str
    message: str = ""


@attrs.frozen(kw_only=True, slots=False)
class CaptureRequested(Event):
    """The intent to capture ``amount`` with ``idempotency_key``, committed before the call.

    Until a result event settles it, a retry (or ``sync_payment``) repeats exactly this call,
    so a lost answer can never turn into a second capture or a different amount.
    """

    type_name: ClassVar[str] = "CaptureRequested"

    amount: Money
    idempotency_key: str


@attrs.frozen(kw_only=True, slots=False)
class RefundRequested(Event):
    """The intent to refund (see CaptureRequested)."""

    type_name: ClassVar[str] = "RefundRequested"

    refund_no: int
    amount: Money
    idempotency_key: str
    reason: str | None = None


@attrs.frozen(kw_only=True, slots=False)
class VoidRequested(Event):
    """The intent to void the authorisation before cancelling (see CaptureRequested)."""

    type_name: ClassVar[str] = "VoidRequested"

    idempotency_key: str
    reason: str = ""


@attrs.frozen(kw_only=True, slots=False)
class OperationNotSent(Event):
    """The pending capture, refund or void provably never reached the gateway: dropped."""

    type_name: ClassVar[str] = "OperationNotSent"

    operation: str
    idempotency_key: str
    message: str = ""


CORE_EVENT_TYPES: tuple[type[Event], ...] = (
    PaymentInitiated,
    PaymentFlaggedForReview,
    PaymentProcessingStarted,
    PaymentAttemptFailed,
    PaymentOutcomeUnknown,
    PaymentRequiresAction,
    PaymentAuthorized,
    PaymentCompleted,
    PaymentFailed,
    PaymentCancelled,
    RefundSucceeded,
    RefundFailed,
    CaptureFailed,
    CaptureRequested,
    RefundRequested,
    VoidRequested,
    OperationNotSent,
)
