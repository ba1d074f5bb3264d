"""Random operation sequences against one scripted gateway (Hypothesis stateful testing).

Every step scripts the gateway's next answers at random, runs one service operation on one of a
few payments, and then checks the invariants over every stored payment:

* the money invariant 0 <= refunded <= captured <= authorized <= amount;
* replaying the events rebuilds exactly the stored projection;
* no payment is charged more than once, and what the payment says agrees with what the
  gateway really did (charged, captured, refunded, voided);
* every error raised is one of AegisPay's own, and refused operations write nothing;
* a capture, refund or void is recorded as an intent first: while its outcome is unknown it
  stays pending (and is the only operation allowed), a NOT_SENT or refused void drops it
  without moving money, and ``sync_payment`` leaves nothing pending when it returns.

Each rule usually targets a payment in a state where the operation makes sense, and sometimes
any payment (so wrong-state operations are exercised too). Hypothesis is synchronous, so the
async service runs behind an anyio blocking portal (asyncio only).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import attrs
import hypothesis.strategies as st
from aegispay import (
    AegisPayError,
    GatewayDeclined,
    GatewayResult,
    GatewayUnavailable,
    InvalidInput,
    InvalidTransition,
    Money,
    Operation,
    OperationNotAllowed,
    Outcome,
    OutcomeUnknown,
    Payment,
    PaymentRequest,
    PaymentService,
    PaymentState,
    VoidRequest,
)
from aegispay import events as ev
from aegispay.settings import EngineSettings, Settings
from aegispay.testing import ScriptedGateway, make_test_service
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

S = PaymentState
T = TypeVar("T")

STATUS_LOOKUPS = 2
MAX_PAYMENTS = 3  # few payments, so that each one lives through many operations

AUTHORIZE_OUTCOMES = st.sampled_from(
    [
        Outcome.SUCCEEDED,
        Outcome.SUCCEEDED,
        Outcome.SUCCEEDED,
        Outcome.DECLINED,
        Outcome.NOT_SENT,
        Outcome.UNKNOWN,
        Outcome.UNKNOWN,
        Outcome.REQUIRES_ACTION,
        Outcome.PENDING,
    ]
)
FOLLOW_UP_OUTCOMES = st.sampled_from(
    [Outcome.SUCCEEDED, Outcome.SUCCEEDED, Outcome.DECLINED, Outcome.NOT_SENT, Outcome.UNKNOWN]
)
# A status lookup either tells the gateway's truth (nothing scripted) or fails (UNKNOWN); a
# scripted answer that contradicts what the gateway did would test the double, not the engine.
FAILED_LOOKUPS = st.integers(min_value=0, max_value=STATUS_LOOKUPS + 1)
CURRENCIES = st.sampled_from(["USD"] * 9 + ["EUR"])
# Hypothesis prefers the first element (and shrinks towards it): usually target a payment in a
# state where the operation makes sense.
TARGETED = st.sampled_from([True, True, True, True, False])

# Errors after which capture / cancel / refund must have written nothing at all.
WRITES_NOTHING = (InvalidTransition, OperationNotAllowed, InvalidInput)
CAPTURED_STATES = (S.COMPLETED, S.PARTIALLY_REFUNDED, S.REFUNDED)
# The states in which an operation of each kind may be pending.
PENDING_STATES = {
    "capture": (S.AUTHORIZED,),
    "refund": (S.COMPLETED, S.PARTIALLY_REFUNDED),
    "void": (S.AUTHORIZED, S.REQUIRES_ACTION),
}
INTENT_EVENTS = (ev.CaptureRequested, ev.RefundRequested, ev.VoidRequested)
OPERATION_NAMES = {"capture": "capture", "refund": "refund", "void": "cancel"}


def bookkeeping_only(before: Payment, after: Payment) -> Payment:
    """``before`` as it reads after events that only record an intent or drop it: the same
    payment but for version, timestamp and the pending operation."""
    return attrs.evolve(
        before, version=after.version, updated_at=after.updated_at, pending=after.pending
    )


class ModelGateway(ScriptedGateway):
    """A ScriptedGateway that, like a real one, refuses to void funds it already captured
    (possible here once a customer completes 3-D Secure in automatic mode)."""

    async def void(self, request: VoidRequest) -> GatewayResult:
        if request.payment_id in self.captured:
            self._record(Operation.VOID, request.payment_id, request.idempotency_key, None)
            return GatewayResult(Outcome.DECLINED, decline_code="already_captured")
        return await super().void(request)


def amounts(limit: int) -> st.SearchStrategy[int | None]:
    """None (the default amount), usually a valid amount, sometimes too much."""
    valid = st.integers(min_value=1, max_value=max(1, limit))
    return st.one_of(st.none(), valid, valid, st.integers(limit + 1, limit + 500))


class PaymentOperations(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal("asyncio")
        self.portal = self._portal_cm.__enter__()
        self.gateway = ModelGateway("only")
        self.service: PaymentService | None = None
        self.ids: list[str] = []

    # -- plumbing ----------------------------------------------------------------------------

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self.portal.call(fn, *args)

    @property
    def svc(self) -> PaymentService:
        assert self.service is not None
        return self.service

    def load(self, payment_id: str) -> Payment:
        return self.call(self.svc.get_payment, payment_id)

    def pick(
        self,
        data: st.DataObject,
        states: Collection[PaymentState],
        accept: Callable[[Payment], bool] = lambda p: False,
    ) -> Payment:
        """Usually a payment in one of ``states`` or ``accept``-ed (when there is one),
        sometimes any."""
        payments = [self.load(pid) for pid in self.ids]
        eligible = [p for p in payments if p.state in states or accept(p)]
        targeted: bool = data.draw(TARGETED, label="targeted")
        if eligible and targeted:
            payments = eligible
        return data.draw(st.sampled_from(payments), label="payment")

    def script(self, **queues: list[Outcome]) -> None:
        """The gateway's next answers, per operation; anything unscripted succeeds."""
        self.gateway.script = {op: deque() for op in Operation}
        for name, outcomes in queues.items():
            self.gateway.script[Operation[name.upper()]] = deque(outcomes)

    def attempt(self, operation: str, payment: Payment, *args: Any, may_write: bool) -> None:
        """Run one operation; check that a failure is ours and, unless the operation may have
        committed before failing (``may_write``), that it wrote only what it may have."""
        try:
            result: Payment = self.call(getattr(self.svc, operation), payment.id, *args)
        except Exception as error:
            assert isinstance(error, AegisPayError), f"{operation} raised foreign {error!r}"
            if not may_write:
                self.check_failed(operation, payment, self.load(payment.id), error)
        else:
            if not may_write or operation == "sync_payment":
                # A capture, refund or cancel that returned is settled; so is everything
                # sync_payment was asked to settle.
                assert result.pending is None, f"{operation} returned with {result.pending}"

    def check_failed(
        self, operation: str, before: Payment, after: Payment, error: Exception
    ) -> None:
        """What a capture, refund or cancel that raised ``error`` may have written."""
        if isinstance(error, WRITES_NOTHING):
            assert after == before, f"{operation} raised {error!r} but wrote"
            return
        # Otherwise the operation ran: its intent was recorded (or already pending).
        assert after.version > before.version or before.pending is not None, error
        if isinstance(error, OutcomeUnknown):
            # Nothing but the intent: still pending, no money moved, nothing else changed.
            assert after.pending is not None, f"{error!r} left nothing pending"
            assert OPERATION_NAMES[after.pending.kind] == operation
            assert after == bookkeeping_only(before, after), f"{error!r} changed the payment"
            if before.pending is not None:
                assert after == before, "an unknown retry wrote"
        elif isinstance(error, GatewayUnavailable) or (
            operation == "cancel" and isinstance(error, GatewayDeclined)
        ):
            # The intent is dropped: nothing pending, nothing moved, nothing else changed.
            assert after.pending is None
            assert after == bookkeeping_only(before, after), f"{error!r} changed the payment"
        else:
            assert isinstance(error, GatewayDeclined), error
            # A refused capture or refund: recorded (CaptureFailed / RefundFailed), no money.
            assert after.pending is None
            assert after.state is before.state
            assert after.captured_amount == before.captured_amount
            assert after.refunded_amount == before.refunded_amount

    # -- rules -------------------------------------------------------------------------------

    @initialize(capture_on_authorize=st.booleans())
    def build(self, capture_on_authorize: bool) -> None:
        self.gateway.capture_on_authorize = capture_on_authorize
        engine = EngineSettings(status_lookups=STATUS_LOOKUPS)

        async def build() -> PaymentService:
            service: PaymentService = make_test_service(
                gateways=[self.gateway], settings=Settings(engine=engine)
            )
            return service

        self.service = self.call(build)

    @precondition(lambda self: len(self.ids) < MAX_PAYMENTS)
    @rule(
        minor=st.integers(min_value=50, max_value=1_000),
        manual=st.booleans(),
        authorize=st.none() | AUTHORIZE_OUTCOMES,
        failed_lookups=FAILED_LOOKUPS,
    )
    def create(
        self, minor: int, manual: bool, authorize: Outcome | None, failed_lookups: int
    ) -> None:
        """create_payment, or (given an authorize outcome) pay: create and process at once."""
        request = PaymentRequest(
            Money(minor, "USD"), capture_mode="manual" if manual else "automatic"
        )
        self.script(
            authorize=[authorize] if authorize else [], status=[Outcome.UNKNOWN] * failed_lookups
        )
        before = set(self.call(self.svc.store.payment_ids))
        try:
            payment = self.call(
                self.svc.create_payment if authorize is None else self.svc.pay, request
            )
        except Exception as error:
            assert isinstance(error, AegisPayError), f"create raised foreign {error!r}"
        else:
            if authorize is None:
                assert payment.state is S.INITIATED
        # pay may fail after storing the payment (e.g. the automatic capture is not sent).
        self.ids.extend(set(self.call(self.svc.store.payment_ids)) - before)

    @precondition(lambda self: self.ids)
    @rule(
        data=st.data(),
        authorize=AUTHORIZE_OUTCOMES,
        follow_up=FOLLOW_UP_OUTCOMES,
        failed_lookups=FAILED_LOOKUPS,
    )
    def process(
        self, data: st.DataObject, authorize: Outcome, follow_up: Outcome, failed_lookups: int
    ) -> None:
        """Also finishes an automatic capture that did not happen, or a pending operation."""
        payment = self.pick(
            data,
            (S.INITIATED, S.PROCESSING),
            lambda p: (
                p.pending is not None or (p.state is S.AUTHORIZED and p.capture_mode == "automatic")
            ),
        )
        self.script(
            authorize=[authorize],
            capture=[follow_up],
            refund=[follow_up],
            void=[follow_up],
            status=[Outcome.UNKNOWN] * failed_lookups,
        )
        # process may commit the authorisation and then fail the automatic capture.
        self.attempt("process_payment", payment, may_write=True)

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), failed_lookups=FAILED_LOOKUPS, follow_up=FOLLOW_UP_OUTCOMES)
    def sync(self, data: st.DataObject, failed_lookups: int, follow_up: Outcome) -> None:
        payment = self.pick(
            data, (S.PROCESSING, S.REQUIRES_ACTION), lambda p: p.pending is not None
        )
        self.script(
            status=[Outcome.UNKNOWN] * failed_lookups,
            capture=[follow_up],
            refund=[follow_up],
            void=[follow_up],
        )
        self.attempt("sync_payment", payment, may_write=True)

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), outcome=FOLLOW_UP_OUTCOMES, same_amount=st.booleans())
    def retry_pending(self, data: st.DataObject, outcome: Outcome, same_amount: bool) -> None:
        """Repeat the operation that is pending (with its amount, or none)."""
        payment = self.pick(data, (), lambda p: p.pending is not None)
        pending = payment.pending
        if pending is None:
            return
        self.script(**{pending.kind: [outcome]})
        operation = OPERATION_NAMES[pending.kind]
        args: tuple[Any, ...] = ("test",) if pending.kind == "void" else (None,)
        if same_amount and pending.amount is not None:
            args = (pending.amount,)
        self.attempt(operation, payment, *args, may_write=False)

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), currency=CURRENCIES, outcome=FOLLOW_UP_OUTCOMES)
    def capture(self, data: st.DataObject, currency: str, outcome: Outcome) -> None:
        payment = self.pick(data, (S.AUTHORIZED,))
        minor = data.draw(amounts(payment.authorized_amount.minor), label="capture amount")
        self.script(capture=[outcome])
        amount = None if minor is None else Money(minor, currency)
        self.attempt("capture", payment, amount, may_write=False)

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), outcome=FOLLOW_UP_OUTCOMES)
    def cancel(self, data: st.DataObject, outcome: Outcome) -> None:
        payment = self.pick(data, (S.INITIATED, S.AUTHORIZED, S.REQUIRES_ACTION))
        self.script(void=[outcome])
        self.attempt("cancel", payment, "test", may_write=False)

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), currency=CURRENCIES, outcome=FOLLOW_UP_OUTCOMES)
    def refund(self, data: st.DataObject, currency: str, outcome: Outcome) -> None:
        payment = self.pick(data, (S.COMPLETED, S.PARTIALLY_REFUNDED))
        minor = data.draw(amounts(payment.refundable_amount.minor), label="refund amount")
        self.script(refund=[outcome])
        amount = None if minor is None else Money(minor, currency)
        self.attempt("refund", payment, amount, may_write=False)

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def customer_completes_action(self, data: st.DataObject) -> None:
        """The customer finishes 3-D Secure at the gateway: the gateway now holds the funds
        (and captures them in automatic mode); only a status lookup tells the engine."""
        payment = self.pick(data, (S.REQUIRES_ACTION,))
        attempt = payment.current_attempt
        if payment.state is not S.REQUIRES_ACTION or attempt is None:
            return
        answer = self.gateway.answers.get(attempt.idempotency_key)
        if answer is None or answer.outcome not in (Outcome.REQUIRES_ACTION, Outcome.PENDING):
            return
        capture = payment.capture_mode == "automatic" and self.gateway.capture_on_authorize
        self.gateway.answers[attempt.idempotency_key] = GatewayResult(
            Outcome.SUCCEEDED, reference=answer.reference, captured=capture
        )
        self.gateway.charges[payment.id] = self.gateway.charges.get(payment.id, 0) + 1
        if capture:
            self.gateway.captured[payment.id] = payment.amount.minor

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def customer_fails_action(self, data: st.DataObject) -> None:
        """The customer fails 3-D Secure: the gateway now reports the attempt declined."""
        payment = self.pick(data, (S.REQUIRES_ACTION,))
        attempt = payment.current_attempt
        if payment.state is not S.REQUIRES_ACTION or attempt is None:
            return
        answer = self.gateway.answers.get(attempt.idempotency_key)
        if answer is None or answer.outcome not in (Outcome.REQUIRES_ACTION, Outcome.PENDING):
            return
        self.gateway.answers[attempt.idempotency_key] = GatewayResult(
            Outcome.DECLINED, decline_code="authentication_failed"
        )

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def every_payment_is_consistent(self) -> None:
        if self.service is None:
            return
        stored = self.call(self.svc.store.payment_ids)
        assert sorted(stored) == sorted(self.ids)
        for payment_id in stored:
            self.check(self.load(payment_id))

    def check(self, p: Payment) -> None:
        gw = self.gateway
        refunded, captured = p.refunded_amount.minor, p.captured_amount.minor
        assert 0 <= refunded <= captured <= p.authorized_amount.minor <= p.amount.minor, p
        assert self.call(self.svc.replay, p.id) == p
        charges = gw.charge_count(p.id)

        # A pending operation is one that makes sense in the payment's state, with the key its
        # intent recorded.
        if p.pending is not None:
            assert p.state in PENDING_STATES[p.pending.kind], p
            history = self.call(self.svc.payment_history, p.id)
            intents = [e for e in history if isinstance(e, INTENT_EVENTS)]
            assert intents[-1].idempotency_key == p.pending.idempotency_key

        # What the payment records agrees with what the gateway really did.
        if p.state in (S.AUTHORIZED, *CAPTURED_STATES):
            assert charges == 1, p
        if p.state in (S.INITIATED, S.FAILED):
            assert charges == 0, p
        if p.state in CAPTURED_STATES:
            assert gw.captured.get(p.id) == captured, p
        else:
            assert captured == 0, p
        if p.state in (S.INITIATED, S.AUTHORIZED, S.FAILED, S.CANCELLED):
            assert p.id not in gw.captured, p
        if p.state is S.CANCELLED and charges:
            assert p.id in gw.voided, p
        assert gw.refunded.get(p.id, 0) == refunded, p
        assert sum(r.amount.minor for r in p.refunds if r.succeeded) == refunded
        if p.state is S.REFUNDED:
            assert refunded == captured > 0
        if p.state is S.PARTIALLY_REFUNDED:
            assert 0 < refunded < captured

        # Each attempt has its own derived key, and the gateway saw no other authorisations.
        keys = [a.idempotency_key for a in p.attempts]
        assert keys == [f"{p.id}-{a.number}" for a in p.attempts]
        sent = {
            c.idempotency_key
            for c in gw.calls
            if c.payment_id == p.id and c.operation is Operation.AUTHORIZE
        }
        assert sent <= set(keys)

    def teardown(self) -> None:
        try:
            if self.service is not None:
                self.call(self.svc.relay.drain)
                assert self.svc.locks.held_keys() == 0  # type: ignore[attr-defined]
                self.call(self.svc.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)


PaymentOperations.TestCase.settings = settings(
    max_examples=int(os.environ.get("AEGISPAY_TEST_HYPOTHESIS_EXAMPLES", "100")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPaymentOperations = PaymentOperations.TestCase
