"""The payment aggregate as the fold of its events: ``apply``, ``replay``, ``check_invariant``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import attrs
import pytest
from aegispay import events as ev
from aegispay.errors import InvalidMoney, InvalidTransition, OperationNotAllowed
from aegispay.gateways import Outcome
from aegispay.money import Money
from aegispay.payment import Attempt, Payment, Refund, apply, check_invariant, replay
from aegispay.states import PaymentState
from hypothesis import given
from hypothesis import strategies as st

S = PaymentState
PID = "pay_1"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def usd(minor: int) -> Money:
    return Money(minor, "USD")


class History:
    """Builds one payment's events with consecutive versions and increasing timestamps."""

    def __init__(self, amount: Money | None = None, payment_id: str = PID) -> None:
        amount = usd(10_000) if amount is None else amount
        self.payment_id = payment_id
        self.events: list[ev.Event] = []
        self.add(ev.PaymentInitiated, merchant_id="m_1", amount=amount, capture_mode="automatic")

    def add(self, event_type: type[ev.Event], **fields: Any) -> History:
        self.events.append(self.make(event_type, **fields))
        return self

    def make(self, event_type: type[ev.Event], **fields: Any) -> ev.Event:
        version = len(self.events) + 1
        return event_type(
            payment_id=self.payment_id,
            version=version,
            occurred_at=T0 + timedelta(seconds=version),
            **fields,
        )

    def start(self, attempt: int = 1) -> History:
        return self.add(
            ev.PaymentProcessingStarted,
            attempt_no=attempt,
            gateway=f"gw{attempt}",
            idempotency_key=f"{self.payment_id}-a{attempt}",
        )

    def authorize(self, minor: int = 10_000, attempt: int = 1) -> History:
        return self.add(
            ev.PaymentAuthorized,
            attempt_no=attempt,
            amount=usd(minor),
            gateway_reference=f"ref{attempt}",
        )

    def capture(self, minor: int = 10_000) -> History:
        return self.add(ev.PaymentCompleted, amount=usd(minor), idempotency_key="cap")

    def refund(self, minor: int) -> History:
        number = sum(isinstance(e, ev.RefundSucceeded | ev.RefundFailed) for e in self.events) + 1
        return self.add(
            ev.RefundSucceeded, refund_no=number, amount=usd(minor), idempotency_key=f"r{number}"
        )

    def payment(self) -> Payment:
        payment = replay(self.events)
        assert payment is not None
        return payment

    def next(self, event_type: type[ev.Event], **fields: Any) -> ev.Event:
        """The next event, without adding it."""
        return self.make(event_type, **fields)


def completed(minor: int = 10_000, captured: int | None = None) -> History:
    return (
        History(usd(minor))
        .start()
        .authorize(minor)
        .capture(minor if captured is None else captured)
    )


# -- the first event ---------------------------------------------------------------------------


def test_empty_history_is_no_payment() -> None:
    assert replay([]) is None
    assert replay(iter(())) is None


def test_initiated_event_creates_the_payment() -> None:
    event = ev.PaymentInitiated(
        payment_id="pay_9",
        version=1,
        occurred_at=T0,
        merchant_id="m_7",
        amount=Money(1234, "KWD"),
        capture_mode="manual",
        customer_id="c_1",
        payment_method="card",
        reference="order-1",
        description="two books",
        country="KW",
        metadata={"cart": "42"},
    )
    payment = apply(None, event)
    assert payment == Payment(
        id="pay_9",
        merchant_id="m_7",
        amount=Money(1234, "KWD"),
        state=S.INITIATED,
        version=1,
        created_at=T0,
        updated_at=T0,
        capture_mode="manual",
        customer_id="c_1",
        payment_method="card",
        reference="order-1",
        description="two books",
        country="KW",
        metadata={"cart": "42"},
    )
    assert payment.authorized is None and payment.captured is None and payment.refunded is None
    assert payment.authorized_amount == payment.captured_amount == Money(0, "KWD")
    assert payment.refundable_amount == Money(0, "KWD")
    assert payment.attempts == () and payment.refunds == ()
    assert payment.current_attempt is None and payment.gateway is None
    assert payment.unresolved_attempt is None


@pytest.mark.parametrize(
    "event",
    [
        ev.PaymentProcessingStarted(
            payment_id=PID,
            version=1,
            occurred_at=T0,
            attempt_no=1,
            gateway="g",
            idempotency_key="k",
        ),
        ev.PaymentFailed(payment_id=PID, version=1, occurred_at=T0, code="x"),
        ev.PaymentCancelled(payment_id=PID, version=1, occurred_at=T0),
    ],
    ids=lambda e: e.type_name,
)
def test_history_must_start_with_initiated(event: ev.Event) -> None:
    with pytest.raises(OperationNotAllowed) as info:
        apply(None, event)
    assert info.value.payment_id == PID
    assert event.type_name in str(info.value)
    with pytest.raises(OperationNotAllowed):
        replay([event])


@pytest.mark.parametrize("version", [0, 2, 5])
def test_initiated_must_be_version_1(version: int) -> None:
    event = ev.PaymentInitiated(
        payment_id=PID,
        version=version,
        occurred_at=T0,
        merchant_id="m",
        amount=usd(1),
        capture_mode="automatic",
    )
    with pytest.raises(OperationNotAllowed, match="version 1"):
        apply(None, event)


def test_initiated_only_once() -> None:
    history = History()
    again = history.next(
        ev.PaymentInitiated, merchant_id="m", amount=usd(1), capture_mode="automatic"
    )
    with pytest.raises(OperationNotAllowed, match="only be the first event"):
        apply(history.payment(), again)


# -- versions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 4, 100])
def test_versions_must_follow_without_gaps(version: int) -> None:
    payment = History().start().payment()  # version 2
    event = ev.PaymentFailed(payment_id=PID, version=version, occurred_at=T0, code="x")
    with pytest.raises(OperationNotAllowed) as info:
        apply(payment, event)
    assert f"event version {version} does not follow 2" in str(info.value)
    assert info.value.payment_id == PID


def test_replay_refuses_a_history_with_a_missing_event() -> None:
    events = completed().events
    for dropped in range(1, len(events) - 1):  # dropping the last one leaves a valid prefix
        with pytest.raises(OperationNotAllowed, match="does not follow"):
            replay(events[:dropped] + events[dropped + 1 :])


def test_replay_refuses_reordered_events() -> None:
    events = completed().events
    with pytest.raises(OperationNotAllowed):
        replay([events[0], events[2], events[1], events[3]])


# -- what each event does ------------------------------------------------------------------------


def test_each_event_updates_the_projection() -> None:
    h = History()
    h.add(ev.PaymentFlaggedForReview, risk_score=80, reasons=("velocity",))
    p = h.payment()
    assert p.review is True and p.capture_mode == "manual" and p.state is S.INITIATED

    h.start(1)
    p = h.payment()
    assert p.state is S.PROCESSING
    assert p.attempts == (Attempt(1, "gw1", f"{PID}-a1"),)
    assert p.unresolved_attempt == p.attempts[0] and p.gateway == "gw1"

    h.add(ev.PaymentAttemptFailed, attempt_no=1, outcome=Outcome.NOT_SENT, message="timeout")
    p = h.payment()
    assert p.state is S.PROCESSING
    assert p.attempts[0].outcome is Outcome.NOT_SENT and p.attempts[0].message == "timeout"
    assert p.unresolved_attempt is None

    h.start(2)
    h.add(ev.PaymentOutcomeUnknown, attempt_no=2, message="reset")
    p = h.payment()
    assert [a.number for a in p.attempts] == [1, 2]
    assert p.attempts[1].outcome is Outcome.UNKNOWN
    assert p.unresolved_attempt == p.attempts[1] and p.gateway == "gw2"

    h.add(
        ev.PaymentRequiresAction,
        attempt_no=2,
        gateway_reference="pi_2",
        next_action={"type": "redirect", "url": "https://bank.example"},
    )
    p = h.payment()
    assert p.state is S.REQUIRES_ACTION
    assert p.next_action == {"type": "redirect", "url": "https://bank.example"}
    assert p.attempts[1].outcome is Outcome.REQUIRES_ACTION
    assert p.gateway_reference == "pi_2"

    h.authorize(10_000, attempt=2)
    p = h.payment()
    assert p.state is S.AUTHORIZED and p.authorized == usd(10_000)
    assert p.next_action is None and p.attempts[1].outcome is Outcome.SUCCEEDED
    assert p.gateway_reference == "ref2"

    h.add(ev.CaptureFailed, amount=usd(10_000), idempotency_key="c1", code="expired")
    assert h.payment().state is S.AUTHORIZED and h.payment().captured is None

    h.capture(8_000)
    p = h.payment()
    assert p.state is S.COMPLETED and p.captured == usd(8_000)
    assert p.refundable_amount == usd(8_000)

    h.add(ev.RefundFailed, refund_no=1, amount=usd(500), idempotency_key="r1", code="nope")
    p = h.payment()
    assert p.state is S.COMPLETED and p.refunded is None
    assert p.refunds == (Refund(1, usd(500), "r1", False),)

    h.refund(3_000)
    p = h.payment()
    assert p.state is S.PARTIALLY_REFUNDED and p.refunded == usd(3_000)
    assert p.refunds[-1] == Refund(2, usd(3_000), "r2", True)
    assert p.refundable_amount == usd(5_000)

    h.refund(5_000)
    p = h.payment()
    assert p.state is S.REFUNDED and p.refunded == usd(8_000)
    assert p.refundable_amount == usd(0)
    assert p.version == len(h.events) == 13
    assert p.created_at == T0 + timedelta(seconds=1)
    assert p.updated_at == T0 + timedelta(seconds=13)


def test_failed_and_cancelled_record_why() -> None:
    p = History().start().add(ev.PaymentFailed, code="card_declined", message="no funds").payment()
    assert (p.state, p.failure_code, p.failure_message) == (S.FAILED, "card_declined", "no funds")

    h = History().start().add(ev.PaymentRequiresAction, attempt_no=1, next_action={"t": "3ds"})
    p = h.add(ev.PaymentCancelled, reason="customer left", voided=True).payment()
    assert p.state is S.CANCELLED and p.next_action is None


def test_events_about_an_unknown_attempt_are_refused() -> None:
    h = History().start(1)
    for event in (
        h.next(ev.PaymentAuthorized, attempt_no=7, amount=usd(10_000)),
        h.next(ev.PaymentAttemptFailed, attempt_no=7, outcome=Outcome.DECLINED),
        h.next(ev.PaymentOutcomeUnknown, attempt_no=7),
        h.next(ev.PaymentRequiresAction, attempt_no=7),
    ):
        with pytest.raises(OperationNotAllowed, match="unknown attempt 7"):
            apply(h.payment(), event)


@attrs.frozen(kw_only=True)
class NoteAdded(ev.Event):
    type_name: ClassVar[str] = "tests.NoteAdded"
    text: str


def test_a_plugin_event_is_recorded_without_changing_the_payment() -> None:
    h = History().start()
    before = h.payment()
    after = apply(before, h.next(NoteAdded, text="hello"))
    assert after.version == before.version + 1
    assert after.updated_at == T0 + timedelta(seconds=3)
    assert attrs.evolve(after, version=before.version, updated_at=before.updated_at) == before


# -- immutability --------------------------------------------------------------------------------


def test_payment_is_frozen() -> None:
    payment = completed().payment()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        payment.state = S.REFUNDED  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        payment.captured = usd(1)  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        payment.attempts[0].outcome = None  # type: ignore[misc]
    assert payment.state is S.COMPLETED


def test_apply_leaves_the_previous_payment_untouched() -> None:
    h = completed()
    before = h.payment()
    snapshot = attrs.asdict(before, recurse=False)
    after = apply(
        before, h.next(ev.RefundSucceeded, refund_no=1, amount=usd(1), idempotency_key="r")
    )
    assert after is not before
    assert attrs.asdict(before, recurse=False) == snapshot
    assert before.state is S.COMPLETED and after.state is S.PARTIALLY_REFUNDED


def test_a_refused_event_changes_nothing() -> None:
    h = completed(captured=6_000)
    before = h.payment()
    snapshot = attrs.asdict(before, recurse=False)
    with pytest.raises(OperationNotAllowed):
        apply(
            before, h.next(ev.RefundSucceeded, refund_no=1, amount=usd(6_001), idempotency_key="r")
        )
    assert attrs.asdict(before, recurse=False) == snapshot


# -- the money invariant ------------------------------------------------------------------------


def test_cannot_authorize_more_than_the_amount() -> None:
    h = History(usd(10_000)).start()
    with pytest.raises(OperationNotAllowed, match="money invariant"):
        apply(h.payment(), h.next(ev.PaymentAuthorized, attempt_no=1, amount=usd(10_001)))


def test_cannot_capture_more_than_authorized() -> None:
    h = History(usd(10_000)).start().authorize(5_000)
    with pytest.raises(OperationNotAllowed, match="money invariant"):
        apply(h.payment(), h.next(ev.PaymentCompleted, amount=usd(5_001), idempotency_key="c"))
    assert apply(
        h.payment(), h.next(ev.PaymentCompleted, amount=usd(5_000), idempotency_key="c")
    ).captured == usd(5_000)


def test_cannot_refund_more_than_captured() -> None:
    h = completed(10_000, captured=6_000)
    with pytest.raises(OperationNotAllowed) as info:
        apply(
            h.payment(),
            h.next(ev.RefundSucceeded, refund_no=1, amount=usd(6_001), idempotency_key="r"),
        )
    assert info.value.payment_id == PID
    assert "refunded 6001" in str(info.value) and "captured 6000" in str(info.value)


def test_cannot_refund_more_than_captured_in_several_refunds() -> None:
    h = completed(10_000).refund(4_000).refund(4_000)
    assert h.payment().state is S.PARTIALLY_REFUNDED
    with pytest.raises(OperationNotAllowed, match="money invariant"):
        apply(
            h.payment(),
            h.next(ev.RefundSucceeded, refund_no=3, amount=usd(2_001), idempotency_key="r3"),
        )


def _with_amounts(
    amount: int,
    authorized: int | None,
    captured: int | None,
    refunded: int | None,
    currency: str = "USD",
) -> Payment:
    base = History(Money(amount, currency)).payment()

    def money(minor: int | None) -> Money | None:
        return None if minor is None else Money(minor, currency)

    return attrs.evolve(
        base, authorized=money(authorized), captured=money(captured), refunded=money(refunded)
    )


@pytest.mark.parametrize(
    ("amount", "authorized", "captured", "refunded", "holds"),
    [
        (100, None, None, None, True),
        (100, 100, 100, 100, True),
        (100, 100, 60, 60, True),
        (100, 50, 50, 0, True),
        (100, 0, 0, 0, True),
        (100, 101, None, None, False),
        (100, 50, 51, None, False),
        (100, None, 1, None, False),
        (100, 100, 60, 61, False),
        (100, 100, None, 1, False),
    ],
)
def test_check_invariant_cases(
    amount: int, authorized: int | None, captured: int | None, refunded: int | None, holds: bool
) -> None:
    payment = _with_amounts(amount, authorized, captured, refunded)
    if holds:
        check_invariant(payment)
        return
    with pytest.raises(OperationNotAllowed) as info:
        check_invariant(payment)
    assert "money invariant broken" in str(info.value)


@given(
    amount=st.integers(0, 10**6),
    authorized=st.none() | st.integers(0, 10**6),
    captured=st.none() | st.integers(0, 10**6),
    refunded=st.none() | st.integers(0, 10**6),
)
def test_check_invariant_holds_exactly_for_ordered_amounts(
    amount: int, authorized: int | None, captured: int | None, refunded: int | None
) -> None:
    payment = _with_amounts(amount, authorized, captured, refunded)
    holds = (refunded or 0) <= (captured or 0) <= (authorized or 0) <= amount
    if holds:
        check_invariant(payment)
    else:
        with pytest.raises(OperationNotAllowed):
            check_invariant(payment)


@pytest.mark.parametrize("field", ["authorized", "captured", "refunded"])
def test_check_invariant_requires_the_payment_currency(field: str) -> None:
    """The docstring's contract: the ordering holds "in the payment's currency"."""
    payment = _with_amounts(10_000, 10_000, 5_000, 1_000)
    check_invariant(payment)
    same_minor_in_euro = Money(getattr(payment, field).minor, "EUR")
    foreign = attrs.evolve(payment, **{field: same_minor_in_euro})
    with pytest.raises(OperationNotAllowed):
        check_invariant(foreign)


FOREIGN_AMOUNT_EVENTS: dict[str, tuple[History, Callable[[History], ev.Event]]] = {
    "authorize": (
        History(usd(10_000)).start(),
        lambda h: h.next(ev.PaymentAuthorized, attempt_no=1, amount=Money(10_000, "EUR")),
    ),
    "capture": (
        History(usd(10_000)).start().authorize(10_000),
        lambda h: h.next(ev.PaymentCompleted, amount=Money(5_000, "EUR"), idempotency_key="c"),
    ),
    "refund": (
        completed(10_000),
        lambda h: h.next(
            ev.RefundSucceeded, refund_no=1, amount=Money(5, "EUR"), idempotency_key="r"
        ),
    ),
}


@pytest.mark.parametrize("operation", list(FOREIGN_AMOUNT_EVENTS))
def test_apply_refuses_amounts_in_another_currency(operation: str) -> None:
    history, make = FOREIGN_AMOUNT_EVENTS[operation]
    with pytest.raises((OperationNotAllowed, InvalidMoney)):
        apply(history.payment(), make(history))


# -- partial refunds -------------------------------------------------------------------------------


@given(
    captured=st.integers(1, 100_000),
    fractions=st.lists(st.integers(1, 100_000), min_size=1, max_size=8),
)
def test_partial_refunds_reach_refunded_exactly_at_the_captured_amount(
    captured: int, fractions: list[int]
) -> None:
    h = completed(100_000, captured=captured)
    payment = h.payment()
    total = 0
    for part in fractions:
        event = h.next(
            ev.RefundSucceeded,
            refund_no=len(h.events),
            amount=usd(part),
            idempotency_key=f"r{len(h.events)}",
        )
        if payment.state is S.REFUNDED or total + part > captured:
            with pytest.raises((OperationNotAllowed, InvalidTransition)):
                apply(payment, event)
            break
        payment = apply(payment, event)
        h.events.append(event)
        total += part
        assert payment.refunded == usd(total)
        assert payment.refundable_amount == usd(captured - total)
        expected = S.REFUNDED if total == captured else S.PARTIALLY_REFUNDED
        assert payment.state is expected
    assert replay(h.events) == payment


# -- replay is the fold of apply -------------------------------------------------------------------


def _candidates(h: History, p: Payment) -> list[Callable[[], ev.Event]]:
    """Events that may legally follow ``p``: a random walk over the state machine."""
    n = len(p.attempts)
    attempt = p.current_attempt
    amount = p.amount.minor
    out: list[Callable[[], ev.Event]] = []

    def add(event_type: type[ev.Event], **fields: Any) -> None:
        out.append(lambda: h.next(event_type, **fields))

    if p.state is S.INITIATED:
        if not p.review:
            add(ev.PaymentFlaggedForReview, risk_score=60, reasons=("amount",))
        add(ev.PaymentProcessingStarted, attempt_no=1, gateway="gw1", idempotency_key="k1")
        add(ev.PaymentFailed, code="fraud_denied")
        add(ev.PaymentCancelled, reason="changed mind")
    elif p.state in (S.PROCESSING, S.REQUIRES_ACTION):
        assert attempt is not None
        add(
            ev.PaymentProcessingStarted,
            attempt_no=n + 1,
            gateway=f"gw{n + 1}",
            idempotency_key=f"k{n + 1}",
        )
        add(
            ev.PaymentAuthorized,
            attempt_no=attempt.number,
            amount=p.amount,
            gateway_reference=f"ref{attempt.number}",
        )
        add(ev.PaymentFailed, code="declined")
        if p.state is S.PROCESSING:
            add(ev.PaymentAttemptFailed, attempt_no=attempt.number, outcome=Outcome.NOT_SENT)
            add(ev.PaymentOutcomeUnknown, attempt_no=attempt.number)
            add(ev.PaymentRequiresAction, attempt_no=attempt.number, next_action={"t": "3ds"})
        else:
            add(ev.PaymentCancelled, voided=True)
    elif p.state is S.AUTHORIZED:
        add(ev.PaymentCompleted, amount=p.authorized_amount, idempotency_key="cap")
        if amount > 1:
            add(
                ev.PaymentCompleted,
                amount=Money(amount // 2, p.amount.currency),
                idempotency_key="cap",
            )
        add(ev.CaptureFailed, amount=p.authorized_amount, idempotency_key="cap", code="x")
        add(ev.PaymentCancelled, voided=True)
    elif p.state in (S.COMPLETED, S.PARTIALLY_REFUNDED):
        rest = p.refundable_amount
        add(ev.RefundSucceeded, refund_no=len(p.refunds) + 1, amount=rest, idempotency_key="r")
        if rest.minor > 1:
            add(
                ev.RefundSucceeded,
                refund_no=len(p.refunds) + 1,
                amount=Money(rest.minor // 3 or 1, rest.currency),
                idempotency_key="r",
            )
        add(
            ev.RefundFailed,
            refund_no=len(p.refunds) + 1,
            amount=rest,
            idempotency_key="r",
            code="declined",
        )
    return out


@st.composite
def histories(draw: st.DrawFn) -> list[ev.Event]:
    amount = draw(st.integers(1, 10**9))
    h = History(usd(amount))
    payment = h.payment()
    for _ in range(draw(st.integers(0, 14))):
        options = _candidates(h, payment)
        if not options:
            break
        event = draw(st.sampled_from(options))()
        payment = apply(payment, event)
        h.events.append(event)
    return h.events


@given(events=histories())
def test_replay_equals_the_stepwise_fold(events: list[ev.Event]) -> None:
    stepwise: Payment | None = None
    for i, event in enumerate(events, start=1):
        stepwise = apply(stepwise, event)
        check_invariant(stepwise)
        assert stepwise.version == i
        assert replay(events[:i]) == stepwise
    assert replay(events) == stepwise
    assert functools.reduce(apply, events, None) == stepwise


@given(events=histories(), data=st.data())
def test_replay_refuses_any_version_gap(events: list[ev.Event], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(events) - 1))
    shift = data.draw(st.sampled_from([-1, 1, 2]))
    broken = list(events)
    broken[index] = attrs.evolve(events[index], version=events[index].version + shift)
    with pytest.raises(OperationNotAllowed):
        replay(broken)


@given(events=histories())
def test_every_history_keeps_the_money_invariant(events: list[ev.Event]) -> None:
    payment = replay(events)
    assert payment is not None
    refunded = payment.refunded_amount.minor
    captured = payment.captured_amount.minor
    authorized = payment.authorized_amount.minor
    assert 0 <= refunded <= captured <= authorized <= payment.amount.minor
    assert (payment.state is S.REFUNDED) == (captured > 0 and refunded == captured)
    if payment.state is S.PARTIALLY_REFUNDED:
        assert 0 < refunded < captured
    if payment.state in (S.INITIATED, S.PROCESSING, S.REQUIRES_ACTION):
        assert captured == 0 and refunded == 0


# -- events.py -------------------------------------------------------------------------------------


def test_event_id_is_payment_and_version() -> None:
    event = ev.PaymentFailed(payment_id="pay_77", version=12, occurred_at=T0, code="x")
    assert event.event_id == "pay_77:12"


def test_events_are_frozen_and_keyword_only() -> None:
    event = ev.PaymentFailed(payment_id=PID, version=2, occurred_at=T0, code="x")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.code = "y"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ev.PaymentFailed(PID, 2, T0, "x")  # type: ignore[misc]


def test_event_defaults() -> None:
    a = ev.PaymentInitiated(
        payment_id=PID,
        version=1,
        occurred_at=T0,
        merchant_id="m",
        amount=usd(1),
        capture_mode="automatic",
    )
    b = ev.PaymentInitiated(
        payment_id=PID,
        version=1,
        occurred_at=T0,
        merchant_id="m",
        amount=usd(1),
        capture_mode="automatic",
    )
    assert a.metadata == {} and a.metadata is not b.metadata
    assert a.customer_id is None and a.reference is None
    cancelled = ev.PaymentCancelled(payment_id=PID, version=2, occurred_at=T0)
    assert cancelled.reason == "" and cancelled.voided is False


def test_core_event_types_have_their_own_unique_names() -> None:
    names = [t.type_name for t in ev.CORE_EVENT_TYPES]
    assert len(set(names)) == len(names) == 17
    for event_type in ev.CORE_EVENT_TYPES:
        assert issubclass(event_type, ev.Event)
        assert event_type.type_name == event_type.__name__
        assert "type_name" in event_type.__dict__
    assert ev.Event.type_name == "Event"
    assert ev.Event not in ev.CORE_EVENT_TYPES


@attrs.frozen(kw_only=True)
class ChargebackRefund(ev.RefundSucceeded):
    """A plugin's specialised refund: still a refund, with one more field."""

    type_name: ClassVar[str] = "tests.ChargebackRefund"
    dispute_id: str


def test_a_subclass_of_a_core_event_is_folded_like_its_base() -> None:
    h = completed(10_000)
    event = h.next(
        ChargebackRefund, refund_no=1, amount=usd(10_000), idempotency_key="cb", dispute_id="dp_1"
    )
    payment = apply(h.payment(), event)
    assert payment.state is S.REFUNDED
    assert payment.refunded == usd(10_000)
