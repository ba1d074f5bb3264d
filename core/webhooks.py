"""Gateway webhooks: the value a gateway adapter parses a webhook into, and how it is applied.

A gateway adapter that receives webhooks implements :class:`WebhookReceiver` besides
:class:`~aegispay.gateways.Gateway`: it verifies the signature on the raw bytes and turns the
gateway's event into one :class:`WebhookUpdate`. :func:`handle_webhook` (called by
``PaymentService.handle_webhook`` and the ASGI app) then dedupes on ``(gateway, event_id)`` and
applies the update through the payment state machine.

A refund's webhook settles the refund AegisPay asked for and is waiting on; one that AegisPay
never asked for (issued in the gateway's dashboard) is recorded as a refund of its own, so the
payment says what the customer got back - once, by its gateway reference, and only when it
cannot be a refund already recorded.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from . import events as ev
from .errors import AegisPayError, PluginError
from .gateways import Outcome
from .locks.base import Lease
from .money import Money
from .payment import Attempt, Payment
from .payment import apply as apply_event
from .states import PaymentState
from .store.base import COMPLETED, Change, IdempotencyClaimed, IdempotencyRecord

if TYPE_CHECKING:
    from .service import PaymentService

log = logging.getLogger("aegispay.webhooks")
S = PaymentState


class WebhookKind(enum.Enum):
    AUTHORIZED = "authorized"
    SUCCEEDED = "succeeded"  # captured / paid
    FAILED = "failed"
    CANCELED = "canceled"
    REQUIRES_ACTION = "requires_action"
    REFUND_SUCCEEDED = "refund_succeeded"
    REFUND_FAILED = "refund_failed"
    IGNORED = "ignored"  # an event type we do not act on


@attrs.frozen
class WebhookUpdate:
    """One gateway event, verified and parsed.

    ``event_id`` is the gateway's event id (dedup key); ``gateway_reference`` is the gateway's
    payment object id, the same the adapter returns as ``GatewayResult.reference``;
    ``payment_id`` is the AegisPay payment id when the gateway echoes our metadata.
    """

    event_id: str
    kind: WebhookKind
    gateway_reference: str | None
    payment_id: str | None
    amount: Money | None
    decline_code: str | None = None
    refund_reference: str | None = None


class WebhookSignatureError(AegisPayError):
    """A webhook failed verification: missing header, bad signature, tampered body, or a
    timestamp outside the tolerance. The message names the problem and never carries a secret."""


@runtime_checkable
class WebhookReceiver(Protocol):
    """Implemented by a gateway adapter that receives webhooks.

    ``headers`` arrive with lower-cased names. Verify on ``raw_body`` exactly as received (never
    re-serialised JSON), compare with :func:`hmac.compare_digest`, and raise
    :class:`WebhookSignatureError` when verification fails.
    """

    async def parse_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> WebhookUpdate: ...


# -- applying an update ------------------------------------------------------------------------

#: How long a webhook's event id is remembered: gateways redeliver for up to three days (Stripe),
#: so a week leaves a margin for a redelivery after an outage.
DEDUP_TTL = timedelta(days=7)
_MAX_KEY = 200  # the idempotency table's key column holds 255 characters


class WebhookStatus(enum.Enum):
    APPLIED = "applied"  # the update changed the payment (committed with its dedup record)
    DUPLICATE = "duplicate"  # this gateway's event id was applied before
    IGNORED = "ignored"  # nothing to do: an event type we don't act on, a state already
    # reached (or passed), or no payment of ours
    REJECTED = "rejected"  # contradicts the payment (impossible transition, amount, attempt)


@attrs.frozen
class WebhookResult:
    status: WebhookStatus
    gateway: str
    event_id: str
    kind: WebhookKind | None = None
    payment_id: str | None = None
    state: PaymentState | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, str | None]:
        return {
            "status": self.status.value,
            "gateway": self.gateway,
            "event_id": self.event_id,
            "kind": self.kind.value if self.kind else None,
            "payment_id": self.payment_id,
            "state": self.state.value if self.state else None,
            "reason": self.reason,
        }


class UnknownWebhookGateway(AegisPayError, LookupError):
    """No registered gateway of that name receives webhooks (HTTP 404)."""

    def __init__(self, gateway: str, why: str) -> None:
        self.gateway = gateway
        super().__init__(f"webhook for gateway {gateway!r}: {why}")


@attrs.frozen
class WebhookPlan:
    """What an update means for one payment: the events to commit (APPLIED), or why none.

    ``sync`` (with no events): the update says something happened at the gateway that its
    fields do not carry - the customer acted on a payment waiting for them (PayPal's
    ``CHECKOUT.ORDER.APPROVED``) - so the payment is synced now (a status lookup, which may
    complete it) instead of at the next reconcile.
    """

    status: WebhookStatus
    events: tuple[ev.Event, ...] = ()
    reason: str = ""
    sync: bool = False


def _ignored(reason: str) -> WebhookPlan:
    return WebhookPlan(WebhookStatus.IGNORED, (), reason)


def _rejected(reason: str) -> WebhookPlan:
    return WebhookPlan(WebhookStatus.REJECTED, (), reason)


_OPEN = (S.PROCESSING, S.REQUIRES_ACTION)
_CAPTURED = (S.COMPLETED, S.PARTIALLY_REFUNDED, S.REFUNDED)


def _matching_attempt(payment: Payment, gateway: str, reference: str | None) -> Attempt | None:
    """The payment's attempt at ``gateway`` the update is about: the one with its reference, or
    the current attempt when that one has no reference yet (its answer was lost)."""
    current = payment.current_attempt
    for attempt in reversed(payment.attempts):
        if attempt.gateway != gateway:
            continue
        if reference is None or attempt.gateway_reference == reference:
            return attempt
        if attempt.gateway_reference is None and attempt is current:
            return attempt
    return None


def plan_webhook(
    payment: Payment, gateway: str, update: WebhookUpdate, now: datetime
) -> WebhookPlan:
    """Decide, without side effects, what ``update`` does to ``payment``.

    A state the payment already reached (or passed) is a no-op; a transition the state machine
    forbids, an amount that differs from the payment's, or an update about an attempt that is
    not the open one is REJECTED - never applied.
    """
    if update.kind is WebhookKind.IGNORED:
        return _ignored("an event type AegisPay does not act on")
    attempt = _matching_attempt(payment, gateway, update.gateway_reference)
    if attempt is None:
        return _rejected(
            f"payment has no attempt at {gateway} with reference {update.gateway_reference!r}"
        )
    if attempt is not payment.current_attempt and attempt.outcome is not Outcome.SUCCEEDED:
        # An attempt we failed over from (NOT_SENT, or declined as gateway-specific): the
        # gateway reporting money on it is what a double charge looks like. Never applied.
        outcome = attempt.outcome.name if attempt.outcome else "in flight"
        return _rejected(
            f"{update.kind.name} is about attempt {attempt.number} ({outcome}), which is not "
            "the payment's current attempt"
        )
    if update.amount is not None and update.amount.currency != payment.amount.currency:
        return _rejected(
            f"amount in {update.amount.currency} for a {payment.amount.currency} payment"
        )
    if update.kind in (WebhookKind.REFUND_SUCCEEDED, WebhookKind.REFUND_FAILED):
        return _plan_refund(payment, update, now)
    state = payment.state
    if state in _OPEN and attempt is not payment.unresolved_attempt:
        return _rejected(
            f"{update.kind.name} is about attempt {attempt.number}, not the open attempt"
        )
    planner = _PLANNERS[update.kind]
    return planner(payment, attempt, update, now)


def _common(payment: Payment, now: datetime, offset: int = 0) -> dict[str, Any]:
    return {"payment_id": payment.id, "version": payment.version + offset + 1, "occurred_at": now}


def _whole_amount(payment: Payment, update: WebhookUpdate) -> str | None:
    """Why the update's amount cannot be the payment's whole amount (None: it can)."""
    if update.amount is not None and update.amount != payment.amount:
        return f"amount {update.amount} differs from the payment's {payment.amount}"
    return None


def _authorized(
    payment: Payment, attempt: Attempt, update: WebhookUpdate, now: datetime
) -> WebhookPlan:
    state = payment.state
    if state in _OPEN:
        problem = _whole_amount(payment, update)
        if problem:
            return _rejected(problem)
        event = ev.PaymentAuthorized(
            **_common(payment, now),
            attempt_no=attempt.number,
            amount=payment.amount,
            gateway_reference=update.gateway_reference or attempt.gateway_reference,
        )
        return WebhookPlan(WebhookStatus.APPLIED, (event,))
    if state is S.AUTHORIZED or state in _CAPTURED:
        return _ignored(f"already {state.name}")
    if state is S.CANCELLED and payment.authorized is not None:
        return _ignored("authorized, then cancelled")
    return _rejected(f"the gateway reports an authorization of a {state.name} payment")


def _succeeded(
    payment: Payment, attempt: Attempt, update: WebhookUpdate, now: datetime
) -> WebhookPlan:
    state = payment.state
    reference = update.gateway_reference or attempt.gateway_reference
    if state in _OPEN:
        problem = _whole_amount(payment, update)
        if problem:
            return _rejected(problem)
        authorized = ev.PaymentAuthorized(
            **_common(payment, now),
            attempt_no=attempt.number,
            amount=payment.amount,
            gateway_reference=reference,
        )
        completed = ev.PaymentCompleted(
            **_common(payment, now, 1),
            amount=payment.amount,
            idempotency_key=attempt.idempotency_key,
            gateway_reference=reference,
        )
        return WebhookPlan(WebhookStatus.APPLIED, (authorized, completed))
    if state is S.AUTHORIZED:
        pending = payment.pending
        if pending is not None and pending.kind != "capture":
            return _rejected(f"captured at the gateway while a {pending.kind} is pending")
        amount = update.amount or (pending.amount if pending else None) or payment.authorized_amount
        if amount > payment.authorized_amount or not amount:
            return _rejected(
                f"capture of {amount} does not fit the {payment.authorized_amount} authorized"
            )
        if pending is not None and pending.amount is not None and amount != pending.amount:
            return _rejected(f"captured {amount}, but a capture of {pending.amount} is pending")
        key = pending.idempotency_key if pending else f"{payment.id}-capture-{payment.version + 1}"
        event = ev.PaymentCompleted(
            **_common(payment, now), amount=amount, idempotency_key=key, gateway_reference=reference
        )
        return WebhookPlan(WebhookStatus.APPLIED, (event,))
    if state in _CAPTURED:
        return _ignored(f"already {state.name}")
    return _rejected(f"the gateway reports a capture of a {state.name} payment")


def _failed(
    payment: Payment, attempt: Attempt, update: WebhookUpdate, now: datetime
) -> WebhookPlan:
    state = payment.state
    if state in _OPEN:
        code = update.decline_code or "declined"
        attempt_failed = ev.PaymentAttemptFailed(
            **_common(payment, now),
            attempt_no=attempt.number,
            outcome=Outcome.DECLINED,
            decline_code=update.decline_code,
            message="reported by webhook",
        )
        failed = ev.PaymentFailed(
            **_common(payment, now, 1), code=code, message="reported by webhook"
        )
        return WebhookPlan(WebhookStatus.APPLIED, (attempt_failed, failed))
    if state in (S.FAILED, S.CANCELLED):
        return _ignored(f"already {state.name}")
    return _rejected(f"the gateway reports a failure of a {state.name} payment")


def _requires_action(
    payment: Payment, attempt: Attempt, update: WebhookUpdate, now: datetime
) -> WebhookPlan:
    if payment.state is S.PROCESSING:
        event = ev.PaymentRequiresAction(
            **_common(payment, now),
            attempt_no=attempt.number,
            gateway_reference=update.gateway_reference or attempt.gateway_reference,
            next_action={},
        )
        return WebhookPlan(WebhookStatus.APPLIED, (event,))
    if payment.state is S.REQUIRES_ACTION:
        # Already waiting on the customer, so the event is news about that wait (PayPal: the
        # payer approved; money moves only when we capture the order). plan_webhook has
        # checked that it is about the open attempt. Look the payment up now.
        return WebhookPlan(
            WebhookStatus.IGNORED, (), "already REQUIRES_ACTION: synced with the gateway", True
        )
    return _ignored(f"already {payment.state.name}")


def _canceled(
    payment: Payment, attempt: Attempt, update: WebhookUpdate, now: datetime
) -> WebhookPlan:
    state = payment.state
    pending = payment.pending
    if state in (S.REQUIRES_ACTION, S.AUTHORIZED):
        if pending is not None and pending.kind != "void":
            return _rejected(f"cancelled at the gateway while a {pending.kind} is pending")
        reason = (pending.reason if pending else None) or "cancelled at the gateway"
        event = ev.PaymentCancelled(**_common(payment, now), reason=reason, voided=True)
        return WebhookPlan(WebhookStatus.APPLIED, (event,))
    if state in (S.CANCELLED, S.FAILED):
        return _ignored(f"already {state.name}")
    return _rejected(f"{state.name} -> CANCELLED is not allowed; left to reconciliation")


def _plan_refund(payment: Payment, update: WebhookUpdate, now: datetime) -> WebhookPlan:
    recorded = next(
        (
            r
            for r in payment.refunds
            if update.refund_reference is not None
            and r.gateway_reference == update.refund_reference
        ),
        None,
    )
    succeeded = update.kind is WebhookKind.REFUND_SUCCEEDED
    if recorded is not None:
        if succeeded == recorded.succeeded:
            return _ignored(f"refund {recorded.number} already recorded")
        return _rejected(
            f"refund {recorded.number} is recorded as "
            f"{'succeeded' if recorded.succeeded else 'failed'}; the gateway now reports "
            f"{'success' if succeeded else 'failure'}"
        )
    pending = payment.pending
    if pending is None and succeeded:
        return _refund_made_at_the_gateway(payment, update, now)
    if pending is None or pending.kind != "refund":
        return _ignored("no refund of this payment awaits an outcome")
    assert pending.amount is not None
    if update.amount is not None and update.amount != pending.amount:
        return _ignored(
            f"refund of {update.amount} does not match the pending refund of {pending.amount}"
        )
    common = _common(payment, now)
    event: ev.Event
    if succeeded:
        event = ev.RefundSucceeded(
            **common,
            refund_no=pending.number,
            amount=pending.amount,
            idempotency_key=pending.idempotency_key,
            gateway_reference=update.refund_reference,
            reason=pending.reason,
        )
    else:
        event = ev.RefundFailed(
            **common,
            refund_no=pending.number,
            amount=pending.amount,
            idempotency_key=pending.idempotency_key,
            code=update.decline_code or "refund_failed",
            message="reported by webhook",
        )
    return WebhookPlan(WebhookStatus.APPLIED, (event,))


def _refund_made_at_the_gateway(
    payment: Payment, update: WebhookUpdate, now: datetime
) -> WebhookPlan:
    """A refund AegisPay did not ask for (made in the gateway's dashboard, or by its support):
    recorded as a refund of its own - requested and succeeded in one change - so the payment's
    refunded amount and state say what the customer got back. Only when it cannot be one
    already recorded: it must carry its reference, and every recorded refund must have one."""
    reference, amount = update.refund_reference, update.amount
    if reference is None or amount is None:
        return _ignored(
            "a refund AegisPay did not ask for, reported without its reference or amount"
        )
    if any(r.succeeded and r.gateway_reference is None for r in payment.refunds):
        return _ignored(
            "a recorded refund has no gateway reference: this report may be that refund"
        )
    if payment.state not in (S.COMPLETED, S.PARTIALLY_REFUNDED):
        return _rejected(f"a refund reported on a {payment.state.value} payment")
    refundable = payment.refundable_amount
    if not 0 < amount.minor <= refundable.minor:
        return _rejected(f"a refund of {amount} reported where {refundable} is refundable")
    number, key = len(payment.refunds) + 1, f"{payment.id}-refund-at-gateway-{reference}"
    reason = "made at the gateway (reported by webhook)"
    requested = ev.RefundRequested(
        **_common(payment, now), refund_no=number, amount=amount, idempotency_key=key,
        reason=reason,
    )  # fmt: skip
    refunded = ev.RefundSucceeded(
        **_common(payment, now, offset=1), refund_no=number, amount=amount,
        idempotency_key=key, gateway_reference=reference, reason=reason,
    )  # fmt: skip
    return WebhookPlan(WebhookStatus.APPLIED, (requested, refunded))


_Planner = Callable[[Payment, Attempt, WebhookUpdate, datetime], WebhookPlan]
_PLANNERS: Mapping[WebhookKind, _Planner] = {
    WebhookKind.AUTHORIZED: _authorized,
    WebhookKind.SUCCEEDED: _succeeded,
    WebhookKind.FAILED: _failed,
    WebhookKind.REQUIRES_ACTION: _requires_action,
    WebhookKind.CANCELED: _canceled,
}


def dedup_scope(gateway: str) -> str:
    """The idempotency-record scope that remembers ``gateway``'s applied event ids."""
    return f"webhook:{gateway}"


def _dedup_key(event_id: str) -> str:
    if len(event_id) <= _MAX_KEY:
        return event_id
    return "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()


def _fingerprint(update: WebhookUpdate) -> str:
    parts = (
        update.kind.value,
        update.gateway_reference or "",
        update.payment_id or "",
        f"{update.amount.minor} {update.amount.currency}" if update.amount else "",
        update.decline_code or "",
        update.refund_reference or "",
    )
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


async def _find_payment(
    service: PaymentService, gateway: str, update: WebhookUpdate
) -> Payment | None:
    """Our payment the update is about: by the payment id the gateway echoed, else by the
    gateway reference among the open payments (a settled payment is only found by its id)."""
    if update.payment_id is not None:
        return await service.store.load(update.payment_id)
    if update.gateway_reference is None:
        return None
    for payment_id in await service.store.unsettled_payment_ids(service.clock() + DEDUP_TTL):
        payment = await service.store.load(payment_id)
        if payment is not None and any(
            a.gateway == gateway and a.gateway_reference == update.gateway_reference
            for a in payment.attempts
        ):
            return payment
    return None


def _synced(
    payment: Payment,
    synced: Payment,
    result: Callable[[WebhookStatus, Payment | None, str], WebhookResult],
) -> WebhookResult:
    """The result of a webhook that synced ``payment`` (``service._sync``, as
    ``sync_payment`` does) into ``synced``: APPLIED when the sync changed it (it committed its
    own events: the gateway's answer), IGNORED when the gateway still waits on the customer.

    No dedup record is written: a redelivery finds the payment settled (a no-op) or still
    waiting (one more lookup). A store error propagates, so the gateway delivers again; a
    gateway that cannot answer is an UNKNOWN lookup, which leaves the payment to the janitor.
    """
    if synced.version == payment.version:
        return result(WebhookStatus.IGNORED, synced, "synced: the gateway still waits")
    log.info(
        "webhook for payment %s: synced with the gateway: %s -> %s",
        payment.id, payment.state.name, synced.state.name,
    )  # fmt: skip
    return result(WebhookStatus.APPLIED, synced, f"synced with the gateway: {synced.state.name}")


async def handle_webhook(
    service: PaymentService, gateway_name: str, headers: Mapping[str, str], raw_body: bytes
) -> WebhookResult:
    """Verify, parse and apply one webhook delivery (what ``PaymentService.handle_webhook`` does).

    Raises :class:`UnknownWebhookGateway` (no such gateway, or it receives no webhooks),
    :class:`WebhookSignatureError` (verification failed), and store or lock errors (nothing was
    applied: the gateway should redeliver). A result is returned only once everything it
    reports is durable: an APPLIED update is committed together with its dedup record
    (an idempotency record in scope ``webhook:<gateway>``, key = the event id), so a
    redelivery - even to another worker, even after a crash - is a DUPLICATE.
    """
    gateway = service.gateways.get(gateway_name)
    if gateway is None:
        raise UnknownWebhookGateway(gateway_name, "no such gateway")
    if not isinstance(gateway, WebhookReceiver):
        raise UnknownWebhookGateway(gateway_name, "the gateway does not receive webhooks")
    lowered = {name.lower(): value for name, value in headers.items()}
    update = await gateway.parse_webhook(lowered, raw_body)
    if not isinstance(update, WebhookUpdate):
        raise PluginError(
            f"gateway {gateway_name!r}: parse_webhook returned {type(update).__name__}, "
            "not a WebhookUpdate"
        )

    def result(status: WebhookStatus, payment: Payment | None, reason: str) -> WebhookResult:
        return WebhookResult(
            status,
            gateway_name,
            update.event_id,
            update.kind,
            payment.id if payment else update.payment_id,
            payment.state if payment else None,
            reason,
        )

    if update.kind is WebhookKind.IGNORED:
        return result(WebhookStatus.IGNORED, None, "an event type AegisPay does not act on")
    scope, key = dedup_scope(gateway_name), _dedup_key(update.event_id)
    if await service.store.find_idempotency(scope, key, service.clock()) is not None:
        return result(WebhookStatus.DUPLICATE, None, "event already applied")
    found = await _find_payment(service, gateway_name, update)
    if found is None:
        return result(WebhookStatus.IGNORED, None, "no payment of ours matches")

    outcome: list[WebhookResult] = []

    async def apply_locked(payment: Payment, lease: Lease) -> Payment:
        now = service.clock()
        if await service.store.find_idempotency(scope, key, now) is not None:
            outcome.append(result(WebhookStatus.DUPLICATE, payment, "event already applied"))
            return payment
        plan = plan_webhook(payment, gateway_name, update, now)
        if plan.sync:
            synced = await service._sync(payment, lease)
            outcome.append(_synced(payment, synced, result))
            return synced
        if plan.status is not WebhookStatus.APPLIED:
            if plan.status is WebhookStatus.REJECTED:
                log.warning(
                    "webhook %s %s (%s) rejected for payment %s in %s: %s",
                    gateway_name, update.event_id, update.kind.name, payment.id,
                    payment.state.name, plan.reason,
                )  # fmt: skip
            outcome.append(result(plan.status, payment, plan.reason))
            return payment
        new = payment
        for event in plan.events:
            new = apply_event(new, event)
        record = IdempotencyRecord(
            scope=scope,
            key=key,
            fingerprint=_fingerprint(update),
            payment_id=payment.id,
            response=new,
            created_at=now,
            expires_at=now + DEDUP_TTL,
            state=COMPLETED,
            recovery_point="finished",
        )
        try:
            await service.store.commit(
                Change(new, payment.version, plan.events, lease.token, idempotency=record)
            )
        except IdempotencyClaimed:
            outcome.append(result(WebhookStatus.DUPLICATE, payment, "event already applied"))
            return payment
        log.info(
            "webhook %s %s (%s) applied to payment %s: %s -> %s",
            gateway_name, update.event_id, update.kind.name, payment.id,
            payment.state.name, new.state.name,
        )  # fmt: skip
        if new.state is S.AUTHORIZED and new.capture_mode == "automatic":
            # Authorized without capture on an automatic-capture payment: capture it, as a
            # status lookup would. The authorization is already durable; a capture whose
            # answer is lost stays pending for reconciliation.
            try:
                new = await service._capture(new, lease, None)
            except Exception as error:  # the update is committed: report it applied anyway
                log.warning(
                    "payment %s: capture after webhook: %s", payment.id, error,
                    exc_info=not isinstance(error, AegisPayError),
                )  # fmt: skip
                new = await service.store.load(payment.id) or new
        outcome.append(result(WebhookStatus.APPLIED, new, ""))
        return new

    await service._locked("webhook", found.id, apply_locked)
    return outcome[0]
