"""The payment aggregate and the one function that evolves it: ``apply(payment, event)``.

The engine never mutates a payment: it decides which events happen, and the new payment is the
fold of those events. Replaying the stored events therefore rebuilds exactly the projection,
and the state machine and money invariant are checked on every step of that fold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from functools import cache
from typing import Any

import attrs

from . import events as ev
from .errors import InvalidTransition, OperationNotAllowed
from .gateways import Outcome
from .money import Money
from .states import PaymentState

S = PaymentState


@attrs.frozen
class Attempt:
    """One try at one gateway. ``outcome`` is None while the call is in flight."""

    number: int
    gateway: str
    idempotency_key: str
    outcome: Outcome | None = None
    gateway_reference: str | None = None
    decline_code: str | None = None
    message: str = ""


@attrs.frozen
class PendingOperation:
    """A capture, refund or void whose intent is recorded and whose outcome is not yet known.

    ``kind`` is "capture", "refund" or "void"; ``number`` is the refund number for refunds.
    """

    kind: str
    idempotency_key: str
    amount: Money | None = None
    number: int = 0
    reason: str | None = None


@attrs.frozen
class Refund:
    number: int
    amount: Money
    idempotency_key: str
    succeeded: bool
    gateway_reference: str | None = None
    reason: str | None = None


# Not slotted on purpose: a dict-backed frozen class can be copied with one dict update in
# ``_evolve`` (it runs for every event, so it is on the hot path), while users still get a
# frozen value that raises on assignment.
@attrs.frozen(slots=False)
class Payment:
    id: str
    merchant_id: str
    amount: Money
    state: PaymentState
    version: int
    created_at: datetime
    updated_at: datetime
    capture_mode: str = "automatic"
    customer_id: str | None = None
    payment_method: str | None = None
    reference: str | None = None
    description: str | None = None
    country: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    authorized: Money | None = None
    captured: Money | None = None
    refunded: Money | None = None
    attempts: tuple[Attempt, ...] = ()
    refunds: tuple[Refund, ...] = ()
    review: bool = False
    failure_code: str | None = None
    failure_message: str | None = None
    next_action: Mapping[str, str] | None = None
    pending: PendingOperation | None = None
    payment_method_type: str | None = None  # the method's family: routing reads it

    @property
    def current_attempt(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def gateway(self) -> str | None:
        attempt = self.current_attempt
        return attempt.gateway if attempt else None

    @property
    def gateway_reference(self) -> str | None:
        for attempt in reversed(self.attempts):
            if attempt.gateway_reference:
                return attempt.gateway_reference
        return None

    @property
    def authorized_amount(self) -> Money:
        return self.authorized or Money(0, self.amount.currency)

    @property
    def captured_amount(self) -> Money:
        return self.captured or Money(0, self.amount.currency)

    @property
    def refunded_amount(self) -> Money:
        return self.refunded or Money(0, self.amount.currency)

    @property
    def refundable_amount(self) -> Money:
        return self.captured_amount - self.refunded_amount

    @property
    def unresolved_attempt(self) -> Attempt | None:
        """The in-flight or UNKNOWN attempt that only a status lookup may settle."""
        attempt = self.current_attempt
        if (
            attempt is not None
            and self.state in (S.PROCESSING, S.REQUIRES_ACTION)
            and (
                attempt.outcome in (None, Outcome.UNKNOWN, Outcome.REQUIRES_ACTION, Outcome.PENDING)
            )
        ):
            return attempt
        return None


_FIELDS = tuple(a.name for a in attrs.fields(Payment))


def _evolve(
    payment: Payment, event: ev.Event, state: PaymentState | None, **changes: Any
) -> Payment:
    """A copy of ``payment`` after ``event``. ``state`` is the transition the event makes
    (checked against the table, self-transitions included), or None for an event that records
    a fact without changing the state (a failed attempt, a refused refund...)."""
    if state is None:
        state = payment.state
    elif state not in payment.state._next:  # type: ignore[attr-defined]
        raise InvalidTransition(payment.id, payment.state, state, event.type_name)
    new = object.__new__(Payment)
    values = new.__dict__
    values.update(payment.__dict__)
    values.update(changes)
    values["state"] = state
    values["version"] = event.version
    values["updated_at"] = event.occurred_at
    return new


def _replace_attempt(
    payment: Payment,
    number: int,
    outcome: Outcome,
    gateway_reference: str | None = None,
    decline_code: str | None = None,
    message: str = "",
) -> tuple[Attempt, ...]:
    """The attempts with attempt ``number`` settled (usually the last one)."""
    attempts = payment.attempts
    for i in range(len(attempts) - 1, -1, -1):
        old = attempts[i]
        if old.number == number:
            new = Attempt(
                number,
                old.gateway,
                old.idempotency_key,
                outcome,
                gateway_reference or old.gateway_reference,
                decline_code,
                message,
            )
            return (*attempts[:i], new, *attempts[i + 1 :])
    raise OperationNotAllowed(payment.id, f"event names unknown attempt {number}")


def check_invariant(payment: Payment) -> None:
    """0 <= refunded <= captured <= authorized <= amount, in the payment's currency."""
    # Plain ints: this runs on every event, and None means zero.
    currency = payment.amount.currency
    for amount in (payment.authorized, payment.captured, payment.refunded):
        if amount is not None and amount.currency != currency:
            raise OperationNotAllowed(
                payment.id, f"amount in {amount.currency} on a {currency} payment"
            )
    refunded = payment.refunded.minor if payment.refunded else 0
    captured = payment.captured.minor if payment.captured else 0
    authorized = payment.authorized.minor if payment.authorized else 0
    if not 0 <= refunded <= captured <= authorized <= payment.amount.minor:
        raise OperationNotAllowed(
            payment.id,
            f"money invariant broken: refunded {refunded} <= captured {captured} <= "
            f"authorized {authorized} <= amount {payment.amount.minor} does not hold",
        )


def apply(payment: Payment | None, event: ev.Event) -> Payment:
    """The payment after ``event``. Raises InvalidTransition / OperationNotAllowed."""
    if payment is None:
        if not isinstance(event, ev.PaymentInitiated):
            raise OperationNotAllowed(event.payment_id, f"history starts with {event.type_name}")
        if event.version != 1:
            raise OperationNotAllowed(event.payment_id, "PaymentInitiated must be version 1")
        return Payment(
            id=event.payment_id,
            merchant_id=event.merchant_id,
            amount=event.amount,
            state=S.INITIATED,
            version=1,
            created_at=event.occurred_at,
            updated_at=event.occurred_at,
            capture_mode=event.capture_mode,
            customer_id=event.customer_id,
            payment_method=event.payment_method,
            reference=event.reference,
            description=event.description,
            country=event.country,
            metadata=event.metadata,
            payment_method_type=event.payment_method_type,
        )
    if event.version != payment.version + 1:
        raise OperationNotAllowed(
            payment.id, f"event version {event.version} does not follow {payment.version}"
        )
    new = _apply(payment, event)
    # Only events that move money can break the invariant (identity checks: cheap).
    if (
        new.authorized is not payment.authorized
        or new.captured is not payment.captured
        or new.refunded is not payment.refunded
    ):
        check_invariant(new)
    return new


def _processing_started(p: Payment, e: Any) -> Payment:
    attempt = Attempt(e.attempt_no, e.gateway, e.idempotency_key)
    return _evolve(p, e, S.PROCESSING, attempts=(*p.attempts, attempt), next_action=None)


def _authorized(p: Payment, e: Any) -> Payment:
    attempts = _replace_attempt(p, e.attempt_no, Outcome.SUCCEEDED, e.gateway_reference)
    return _evolve(p, e, S.AUTHORIZED, attempts=attempts, authorized=e.amount, next_action=None)


def _completed(p: Payment, e: Any) -> Payment:
    return _evolve(p, e, S.COMPLETED, captured=e.amount, pending=None)


def _attempt_failed(p: Payment, e: Any) -> Payment:
    attempts = _replace_attempt(p, e.attempt_no, e.outcome, None, e.decline_code, e.message)
    return _evolve(p, e, None, attempts=attempts)


def _outcome_unknown(p: Payment, e: Any) -> Payment:
    attempts = _replace_attempt(p, e.attempt_no, Outcome.UNKNOWN, message=e.message)
    return _evolve(p, e, None, attempts=attempts)


def _requires_action(p: Payment, e: Any) -> Payment:
    attempts = _replace_attempt(p, e.attempt_no, Outcome.REQUIRES_ACTION, e.gateway_reference)
    return _evolve(p, e, S.REQUIRES_ACTION, attempts=attempts, next_action=dict(e.next_action))


def _failed(p: Payment, e: Any) -> Payment:
    return _evolve(p, e, S.FAILED, failure_code=e.code, failure_message=e.message, next_action=None)


def _cancelled(p: Payment, e: Any) -> Payment:
    return _evolve(p, e, S.CANCELLED, next_action=None, pending=None)


def _refund_succeeded(p: Payment, e: Any) -> Payment:
    refunded = p.refunded_amount + e.amount
    state = S.REFUNDED if refunded == p.captured_amount else S.PARTIALLY_REFUNDED
    refund = Refund(e.refund_no, e.amount, e.idempotency_key, True, e.gateway_reference, e.reason)
    return _evolve(p, e, state, refunded=refunded, refunds=(*p.refunds, refund), pending=None)


def _refund_failed(p: Payment, e: Any) -> Payment:
    refund = Refund(e.refund_no, e.amount, e.idempotency_key, False)
    return _evolve(p, e, None, refunds=(*p.refunds, refund), pending=None)


def _flagged(p: Payment, e: Any) -> Payment:
    return _evolve(p, e, None, review=True, capture_mode="manual")


def _capture_failed(p: Payment, e: Any) -> Payment:
    return _evolve(p, e, None, pending=None)


def _requested(kind: str) -> Callable[[Payment, Any], Payment]:
    def apply_request(p: Payment, e: Any) -> Payment:
        if p.pending is not None:
            raise OperationNotAllowed(
                p.id, f"a {p.pending.kind} is still awaiting its outcome; no new {kind}"
            )
        pending = PendingOperation(
            kind,
            e.idempotency_key,
            getattr(e, "amount", None),
            getattr(e, "refund_no", 0),
            getattr(e, "reason", None),
        )
        return _evolve(p, e, None, pending=pending)

    return apply_request


def _operation_not_sent(p: Payment, e: Any) -> Payment:
    return _evolve(p, e, None, pending=None)


def _unchanged(p: Payment, e: Any) -> Payment:
    # CaptureFailed, or a plugin's own event type: a recorded fact that changes no field.
    return _evolve(p, e, None)


def _not_first(p: Payment, e: Any) -> Payment:
    raise OperationNotAllowed(p.id, "PaymentInitiated can only be the first event")


_APPLY: dict[type[ev.Event], Callable[[Payment, Any], Payment]] = {
    ev.PaymentProcessingStarted: _processing_started,
    ev.PaymentAuthorized: _authorized,
    ev.PaymentCompleted: _completed,
    ev.PaymentAttemptFailed: _attempt_failed,
    ev.PaymentOutcomeUnknown: _outcome_unknown,
    ev.PaymentRequiresAction: _requires_action,
    ev.PaymentFailed: _failed,
    ev.PaymentCancelled: _cancelled,
    ev.RefundSucceeded: _refund_succeeded,
    ev.RefundFailed: _refund_failed,
    ev.PaymentFlaggedForReview: _flagged,
    ev.CaptureFailed: _capture_failed,
    ev.CaptureRequested: _requested("capture"),
    ev.RefundRequested: _requested("refund"),
    ev.VoidRequested: _requested("void"),
    ev.OperationNotSent: _operation_not_sent,
    ev.PaymentInitiated: _not_first,
}


@cache
def _handler(event_type: type) -> Callable[[Payment, Any], Payment]:
    """The fold step for ``event_type``: its own, or that of the nearest core base class (a
    plugin may subclass a core event), or "no change" for a plugin's own event type."""
    for base in event_type.__mro__:
        if base in _APPLY:
            return _APPLY[base]
    return _unchanged


def _apply(p: Payment, e: ev.Event) -> Payment:
    event_type: type = type(e)  # a class object is hashable, whatever its instances are
    return _handler(event_type)(p, e)


def replay(events: Iterable[ev.Event]) -> Payment | None:
    """Rebuild a payment from its history (None for an empty history)."""
    payment: Payment | None = None
    for event in events:
        payment = apply(payment, event)
    return payment
