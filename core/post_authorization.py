"""Operations on an authorised or captured payment: capture, cancel (void) and refund.

Each records its intent (amount and idempotency key) before calling the gateway. If the
answer is lost (UNKNOWN), the intent stays pending and any retry - or ``sync_payment`` -
repeats exactly that call, so the gateway's idempotency makes a second capture or refund
impossible and the amount recorded is always the amount the gateway moved.

A mixin of :class:`aegispay.service.PaymentService`, which provides the locking, committing
and gateway-calling plumbing declared below.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import events as ev
from .errors import (
    GatewayDeclined,
    GatewayUnavailable,
    InvalidInput,
    InvalidTransition,
    OperationNotAllowed,
    OutcomeUnknown,
)
from .gateways import (
    CaptureRequest,
    Gateway,
    Operation,
    Outcome,
    RefundRequest,
    VoidRequest,
    explicit_capabilities,
)
from .locks.base import Lease
from .money import Money
from .payment import Payment
from .states import PaymentState

if TYPE_CHECKING:
    from .gateway_calls import GatewayCaller

S = PaymentState
_CANCELLABLE = frozenset({S.INITIATED, S.AUTHORIZED, S.REQUIRES_ACTION})


class PostAuthorizationOperations:
    clock: Callable[[], datetime]
    _call: GatewayCaller
    _gateways: dict[str, Gateway]

    if TYPE_CHECKING:

        async def _locked(
            self,
            operation: str,
            payment_id: str,
            body: Callable[[Payment, Lease], Awaitable[Payment]],
        ) -> Payment: ...

        async def _commit(
            self, payment: Payment, lease: Lease | None, events: list[ev.Event]
        ) -> Payment: ...

    async def capture(self, payment_id: str, amount: Money | None = None) -> Payment:
        """Capture an AUTHORIZED payment, fully (default) or partially (the rest is released)."""

        async def run(payment: Payment, lease: Lease) -> Payment:
            return await self._capture(payment, lease, amount)

        return await self._locked("capture", payment_id, run)

    async def _capture(self, payment: Payment, lease: Lease, amount: Money | None) -> Payment:
        if self._resumable(payment, "capture", amount):
            return await self._run_pending(payment, lease)
        if payment.state is not S.AUTHORIZED:
            raise InvalidTransition(payment.id, payment.state, S.COMPLETED, "capture")
        amount = self._operation_amount(payment, amount, payment.authorized_amount, "capture")
        self._check_partial(payment, amount, payment.authorized_amount, "capture")
        intent = ev.CaptureRequested(
            payment_id=payment.id,
            version=payment.version + 1,
            occurred_at=self.clock(),
            amount=amount,
            idempotency_key=f"{payment.id}-capture-{payment.version + 1}",
        )
        payment = await self._commit(payment, lease, [intent])
        return await self._run_pending(payment, lease)

    async def cancel(self, payment_id: str, reason: str = "") -> Payment:
        """Cancel before capture: INITIATED needs no gateway; AUTHORIZED / REQUIRES_ACTION are
        voided at the gateway first."""

        async def run(payment: Payment, lease: Lease) -> Payment:
            return await self._cancel(payment, lease, reason)

        return await self._locked("cancel", payment_id, run)

    async def _cancel(self, payment: Payment, lease: Lease, reason: str) -> Payment:
        if self._resumable(payment, "void", None):
            return await self._run_pending(payment, lease)
        if payment.state is S.PROCESSING:
            raise OperationNotAllowed(
                payment.id, "an attempt is in flight; cancel after its outcome is known"
            )
        if payment.state not in _CANCELLABLE:
            raise InvalidTransition(payment.id, payment.state, S.CANCELLED, "cancel")
        now = self.clock()
        if payment.state is S.INITIATED:
            event = ev.PaymentCancelled(
                payment_id=payment.id, version=payment.version + 1, occurred_at=now, reason=reason
            )
            return await self._commit(payment, lease, [event])
        intent = ev.VoidRequested(
            payment_id=payment.id,
            version=payment.version + 1,
            occurred_at=now,
            idempotency_key=f"{payment.id}-void-{payment.version + 1}",
            reason=reason,
        )
        payment = await self._commit(payment, lease, [intent])
        return await self._run_pending(payment, lease)

    async def refund(
        self, payment_id: str, amount: Money | None = None, reason: str | None = None
    ) -> Payment:
        """Refund a captured payment, fully (default: what is left) or partially, many times."""

        async def run(payment: Payment, lease: Lease) -> Payment:
            return await self._refund(payment, lease, amount, reason)

        return await self._locked("refund", payment_id, run)

    async def _refund(
        self, payment: Payment, lease: Lease, amount: Money | None, reason: str | None
    ) -> Payment:
        if self._resumable(payment, "refund", amount):
            return await self._run_pending(payment, lease)
        if payment.state not in (S.COMPLETED, S.PARTIALLY_REFUNDED):
            raise InvalidTransition(payment.id, payment.state, S.REFUNDED, "refund")
        amount = self._operation_amount(payment, amount, payment.refundable_amount, "refund")
        self._check_partial(payment, amount, payment.captured_amount, "refund")
        refund_no = len(payment.refunds) + 1
        intent = ev.RefundRequested(
            payment_id=payment.id,
            version=payment.version + 1,
            occurred_at=self.clock(),
            refund_no=refund_no,
            amount=amount,
            idempotency_key=f"{payment.id}-refund-{refund_no}",
            reason=reason,
        )
        payment = await self._commit(payment, lease, [intent])
        return await self._run_pending(payment, lease)

    def _check_partial(self, payment: Payment, amount: Money, whole: Money, operation: str) -> None:
        """A partial capture or refund only where the payment's gateway declares it can
        (``GatewayCapabilities``); refused before anything is written. A gateway that declares
        no capabilities is not second-guessed."""
        if amount == whole:
            return
        attempt = next(
            (a for a in reversed(payment.attempts) if a.outcome is Outcome.SUCCEEDED), None
        )
        if attempt is None:
            return
        declared = explicit_capabilities(self._gateways.get(attempt.gateway))
        if declared is not None and not getattr(declared, f"partial_{operation}"):
            raise OperationNotAllowed(
                payment.id,
                f"gateway {attempt.gateway!r} does not support a partial {operation} "
                f"({amount} of {whole}); {operation} the whole amount",
            )

    @staticmethod
    def _resumable(payment: Payment, kind: str, amount: Money | None) -> bool:
        """True when ``kind`` is already pending (so the call is a retry of it); raises when
        another operation is pending or the retry asks for a different amount."""
        pending = payment.pending
        if pending is None:
            return False
        if pending.kind != kind:
            raise OperationNotAllowed(
                payment.id,
                f"a {pending.kind} is awaiting its outcome; retry it or sync the payment first",
            )
        if amount is not None and pending.amount is not None and amount != pending.amount:
            raise OperationNotAllowed(
                payment.id,
                f"a {kind} of {pending.amount} is awaiting its outcome; retry it with the same "
                "amount (or none) or sync the payment",
            )
        return True

    async def _run_pending(self, payment: Payment, lease: Lease) -> Payment:
        """Make (or repeat) the pending operation's gateway call and record its outcome."""
        pending = payment.pending
        assert pending is not None
        attempt = next(
            (a for a in reversed(payment.attempts) if a.outcome is Outcome.SUCCEEDED),
            payment.attempts[-1],
        )
        key, reference = pending.idempotency_key, attempt.gateway_reference
        request: Any
        if pending.kind == "capture":
            assert pending.amount is not None
            request = CaptureRequest(payment.id, key, reference, pending.amount)
            operation = Operation.CAPTURE
        elif pending.kind == "refund":
            assert pending.amount is not None
            request = RefundRequest(payment.id, key, reference, pending.amount, pending.reason)
            operation = Operation.REFUND
        else:
            request = VoidRequest(payment.id, key, reference)
            operation = Operation.VOID
        # With retries on, a NOT_SENT or UNKNOWN answer is repeated first, with this same key
        # and amount (aegispay.retry); what comes back is the sequence's answer.
        result = await self._call(attempt.gateway, operation, request, attempt.number)
        outcome = result.outcome
        if outcome in (Outcome.UNKNOWN, Outcome.PENDING, Outcome.REQUIRES_ACTION):
            # Nothing recorded: the intent stays pending and a retry repeats this call.
            raise OutcomeUnknown(payment.id, pending.kind, result.message or outcome.value)
        common: dict[str, Any] = {
            "payment_id": payment.id,
            "version": payment.version + 1,
            "occurred_at": self.clock(),
        }
        if outcome is Outcome.NOT_SENT:
            dropped = ev.OperationNotSent(
                **common, operation=pending.kind, idempotency_key=key, message=result.message
            )
            await self._commit(payment, lease, [dropped])
            raise GatewayUnavailable(payment.id, pending.kind, result.message)
        succeeded = outcome is Outcome.SUCCEEDED
        code = result.decline_code or f"{pending.kind}_declined"
        event: ev.Event
        if pending.kind == "capture":
            assert pending.amount is not None
            event = (
                ev.PaymentCompleted(
                    **common,
                    amount=pending.amount,
                    idempotency_key=key,
                    gateway_reference=result.reference or reference,
                )
                if succeeded
                else ev.CaptureFailed(
                    **common,
                    amount=pending.amount,
                    idempotency_key=key,
                    code=code,
                    message=result.message,
                )
            )
        elif pending.kind == "refund":
            assert pending.amount is not None
            event = (
                ev.RefundSucceeded(
                    **common,
                    refund_no=pending.number,
                    amount=pending.amount,
                    idempotency_key=key,
                    gateway_reference=result.reference,
                    reason=pending.reason,
                )
                if succeeded
                else ev.RefundFailed(
                    **common,
                    refund_no=pending.number,
                    amount=pending.amount,
                    idempotency_key=key,
                    code=code,
                    message=result.message,
                )
            )
        elif succeeded:
            event = ev.PaymentCancelled(**common, reason=pending.reason or "", voided=True)
        else:
            # A refused void leaves the authorisation as it was: record nothing but the
            # dropped intent, so the payment can be captured or voided again.
            event = ev.OperationNotSent(
                **common, operation="void", idempotency_key=key, message=f"declined: {code}"
            )
        payment = await self._commit(payment, lease, [event])
        if not succeeded:
            raise GatewayDeclined(payment.id, pending.kind, code, result.message)
        return payment

    @staticmethod
    def _operation_amount(
        payment: Payment, amount: Money | None, limit: Money, operation: str
    ) -> Money:
        if amount is None:
            return limit
        if not isinstance(amount, Money):
            raise InvalidInput("amount", f"expected Money, got {type(amount).__name__}")
        if amount.currency != payment.amount.currency:
            raise InvalidInput(
                "amount",
                f"currency {amount.currency} differs from the payment's {payment.amount.currency}",
            )
        if amount.minor == 0:
            raise InvalidInput("amount", f"{operation} amount must be greater than zero")
        if amount.minor > limit.minor:
            raise OperationNotAllowed(
                payment.id, f"{operation} of {amount} exceeds the {limit} available"
            )
        return amount
