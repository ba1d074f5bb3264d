"""The transition table, checked pair by pair, and its enforcement by ``payment.apply``."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from aegispay import events as ev
from aegispay.errors import InvalidTransition, OperationNotAllowed
from aegispay.gateways import Outcome
from aegispay.money import Money
from aegispay.payment import Payment, apply, replay
from aegispay.states import (
    TERMINAL_STATES,
    TRANSITIONS,
    PaymentState,
    can_transition,
    check_transition,
    transition_diagram_mermaid,
    transition_table_markdown,
)

S = PaymentState
ALL_PAIRS = list(itertools.product(PaymentState, PaymentState))

# Written out independently of core/states.py, so that an accidental edit of the table fails.
EXPECTED_ALLOWED: frozenset[tuple[PaymentState, PaymentState]] = frozenset(
    {
        (S.INITIATED, S.PROCESSING),
        (S.INITIATED, S.FAILED),
        (S.INITIATED, S.CANCELLED),
        (S.PROCESSING, S.PROCESSING),
        (S.PROCESSING, S.REQUIRES_ACTION),
        (S.PROCESSING, S.AUTHORIZED),
        (S.PROCESSING, S.FAILED),
        (S.REQUIRES_ACTION, S.PROCESSING),
        (S.REQUIRES_ACTION, S.AUTHORIZED),
        (S.REQUIRES_ACTION, S.FAILED),
        (S.REQUIRES_ACTION, S.CANCELLED),
        (S.AUTHORIZED, S.COMPLETED),
        (S.AUTHORIZED, S.CANCELLED),
        (S.COMPLETED, S.PARTIALLY_REFUNDED),
        (S.COMPLETED, S.REFUNDED),
        (S.PARTIALLY_REFUNDED, S.PARTIALLY_REFUNDED),
        (S.PARTIALLY_REFUNDED, S.REFUNDED),
    }
)


def _pair_id(pair: tuple[PaymentState, PaymentState]) -> str:
    return f"{pair[0].name}->{pair[1].name}"


# -- the table itself --------------------------------------------------------------------------


def test_table_has_a_row_for_every_state() -> None:
    assert set(TRANSITIONS) == set(PaymentState)
    for state, targets in TRANSITIONS.items():
        assert isinstance(targets, frozenset), state
        assert targets <= set(PaymentState), state


def test_table_is_exactly_the_expected_one() -> None:
    allowed = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert allowed == EXPECTED_ALLOWED


@pytest.mark.parametrize("pair", ALL_PAIRS, ids=_pair_id)
def test_every_pair(pair: tuple[PaymentState, PaymentState]) -> None:
    from_state, to_state = pair
    allowed = pair in EXPECTED_ALLOWED
    assert (to_state in TRANSITIONS[from_state]) is allowed
    assert can_transition(from_state, to_state) is allowed
    if allowed:
        check_transition("pay_42", from_state, to_state)  # does not raise
        return
    with pytest.raises(InvalidTransition) as info:
        check_transition("pay_42", from_state, to_state)
    error = info.value
    assert error.payment_id == "pay_42"
    assert error.from_state is from_state
    assert error.to_state is to_state
    assert str(error) == (
        f"payment pay_42: transition {from_state.name} -> {to_state.name} is not allowed"
    )


@pytest.mark.parametrize("state", [S.FAILED, S.CANCELLED, S.REFUNDED], ids=lambda s: s.name)
def test_final_states_accept_nothing(state: PaymentState) -> None:
    assert TRANSITIONS[state] == frozenset()
    for target in PaymentState:
        assert not can_transition(state, target)
        with pytest.raises(InvalidTransition):
            check_transition("p", state, target)


@pytest.mark.parametrize("state", [S.COMPLETED, S.PARTIALLY_REFUNDED], ids=lambda s: s.name)
def test_captured_states_accept_only_the_refund_path(state: PaymentState) -> None:
    refund_path = {S.PARTIALLY_REFUNDED, S.REFUNDED}
    for target in PaymentState:
        assert can_transition(state, target) is (target in refund_path), target
    assert not can_transition(S.COMPLETED, S.COMPLETED)


def test_terminal_states() -> None:
    assert {
        S.COMPLETED,
        S.PARTIALLY_REFUNDED,
        S.REFUNDED,
        S.FAILED,
        S.CANCELLED,
    } == TERMINAL_STATES
    for state in PaymentState:
        if state not in TERMINAL_STATES:
            assert not TRANSITIONS[state] <= {S.PARTIALLY_REFUNDED, S.REFUNDED}, state


def _reachable(start: PaymentState) -> set[PaymentState]:
    seen = {start}
    todo = [start]
    while todo:
        for target in TRANSITIONS[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_every_state_is_reachable_from_initiated() -> None:
    assert _reachable(S.INITIATED) == set(PaymentState)


@pytest.mark.parametrize("state", list(PaymentState), ids=lambda s: s.name)
def test_every_state_can_end(state: PaymentState) -> None:
    assert _reachable(state) & {S.FAILED, S.CANCELLED, S.REFUNDED}


def test_no_way_back_to_initiated() -> None:
    assert all(S.INITIATED not in targets for targets in TRANSITIONS.values())


def test_markdown_lists_every_state_with_its_targets() -> None:
    lines = transition_table_markdown().splitlines()
    assert lines[:2] == ["| from | allowed next states |", "| --- | --- |"]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == 2, line
        rows[cells[0]] = cells[1]
    assert set(rows) == {state.name for state in PaymentState}
    for state in PaymentState:
        cell = rows[state.name]
        if TRANSITIONS[state]:
            assert set(cell.split(", ")) == {t.name for t in TRANSITIONS[state]}
        else:
            assert cell == "(none)"


def test_mermaid_has_every_edge_and_no_other() -> None:
    lines = [line.strip() for line in transition_diagram_mermaid().splitlines()]
    assert lines[0] == "stateDiagram-v2"
    assert "[*] --> INITIATED" in lines
    edges = {tuple(line.split(" --> ")) for line in lines[1:] if "[*]" not in line}
    assert edges == {(a.name, b.name) for a, b in EXPECTED_ALLOWED}
    for final in ("REFUNDED", "FAILED", "CANCELLED"):
        assert f"{final} --> [*]" in lines


# -- enforcement through apply -----------------------------------------------------------------

PID = "pay_1"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
AMOUNT = Money(10_000, "USD")
PART = Money(3_000, "USD")


def _history(*makers: Callable[[int], ev.Event]) -> list[ev.Event]:
    return [make(version) for version, make in enumerate(makers, start=1)]


def initiated(v: int) -> ev.Event:
    return ev.PaymentInitiated(
        payment_id=PID,
        version=v,
        occurred_at=T0,
        merchant_id="m",
        amount=AMOUNT,
        capture_mode="automatic",
    )


def started(attempt: int) -> Callable[[int], ev.Event]:
    return lambda v: ev.PaymentProcessingStarted(
        payment_id=PID,
        version=v,
        occurred_at=T0,
        attempt_no=attempt,
        gateway=f"gw{attempt}",
        idempotency_key=f"{PID}-a{attempt}",
    )


def requires_action(attempt: int) -> Callable[[int], ev.Event]:
    return lambda v: ev.PaymentRequiresAction(
        payment_id=PID,
        version=v,
        occurred_at=T0,
        attempt_no=attempt,
        next_action={"type": "redirect"},
    )


def authorized(attempt: int) -> Callable[[int], ev.Event]:
    return lambda v: ev.PaymentAuthorized(
        payment_id=PID, version=v, occurred_at=T0, attempt_no=attempt, amount=AMOUNT
    )


def completed(v: int) -> ev.Event:
    return ev.PaymentCompleted(
        payment_id=PID, version=v, occurred_at=T0, amount=AMOUNT, idempotency_key="cap"
    )


def refunded(amount: Money) -> Callable[[int], ev.Event]:
    return lambda v: ev.RefundSucceeded(
        payment_id=PID,
        version=v,
        occurred_at=T0,
        refund_no=v,
        amount=amount,
        idempotency_key=f"ref{v}",
    )


def failed(v: int) -> ev.Event:
    return ev.PaymentFailed(payment_id=PID, version=v, occurred_at=T0, code="declined")


def cancelled(v: int) -> ev.Event:
    return ev.PaymentCancelled(payment_id=PID, version=v, occurred_at=T0, reason="asked")


# Each state reached by folding real events, some by more than one path.
HISTORIES: dict[str, list[ev.Event]] = {
    "INITIATED": _history(initiated),
    "PROCESSING": _history(initiated, started(1)),
    "PROCESSING(failover)": _history(initiated, started(1), started(2)),
    "REQUIRES_ACTION": _history(initiated, started(1), requires_action(1)),
    "AUTHORIZED": _history(initiated, started(1), authorized(1)),
    "AUTHORIZED(after 3DS)": _history(initiated, started(1), requires_action(1), authorized(1)),
    "COMPLETED": _history(initiated, started(1), authorized(1), completed),
    "PARTIALLY_REFUNDED": _history(initiated, started(1), authorized(1), completed, refunded(PART)),
    "REFUNDED": _history(initiated, started(1), authorized(1), completed, refunded(AMOUNT)),
    "REFUNDED(in parts)": _history(
        initiated,
        started(1),
        authorized(1),
        completed,
        refunded(PART),
        refunded(AMOUNT - PART),
    ),
    "FAILED": _history(initiated, failed),
    "FAILED(after attempt)": _history(initiated, started(1), failed),
    "CANCELLED": _history(initiated, cancelled),
    "CANCELLED(voided)": _history(initiated, started(1), authorized(1), cancelled),
}


def test_histories_cover_every_state() -> None:
    states = set()
    for name, history in HISTORIES.items():
        payment = replay(history)
        assert payment is not None
        assert payment.state.name == name.split("(")[0]
        states.add(payment.state)
    assert states == set(PaymentState)


def _payment(name: str) -> Payment:
    payment = replay(HISTORIES[name])
    assert payment is not None
    return payment


# A state-changing event for the payment at hand, and the state it asks for.
EventFor = Callable[[Payment], tuple[ev.Event, PaymentState]]


def _next(p: Payment, make: Callable[[int], ev.Event]) -> ev.Event:
    return make(p.version + 1)


def _current_attempt(p: Payment) -> int:
    return p.attempts[-1].number if p.attempts else 1


def _refund_target(p: Payment, amount: Money) -> PaymentState:
    return S.REFUNDED if p.refunded_amount + amount == p.captured_amount else S.PARTIALLY_REFUNDED


STATE_CHANGING: dict[str, EventFor] = {
    "ProcessingStarted": lambda p: (_next(p, started(len(p.attempts) + 1)), S.PROCESSING),
    "RequiresAction": lambda p: (_next(p, requires_action(_current_attempt(p))), S.REQUIRES_ACTION),
    "Authorized": lambda p: (_next(p, authorized(_current_attempt(p))), S.AUTHORIZED),
    "Completed": lambda p: (_next(p, completed), S.COMPLETED),
    "Failed": lambda p: (_next(p, failed), S.FAILED),
    "Cancelled": lambda p: (_next(p, cancelled), S.CANCELLED),
    "RefundPart": lambda p: (
        _next(p, refunded(Money(100, "USD"))),
        _refund_target(p, Money(100, "USD")),
    ),
    "RefundRest": lambda p: (
        _next(p, refunded(p.captured_amount - min(p.refunded_amount, p.captured_amount))),
        _refund_target(p, p.captured_amount - min(p.refunded_amount, p.captured_amount)),
    ),
}


@pytest.mark.parametrize("event_name", list(STATE_CHANGING))
@pytest.mark.parametrize("history", list(HISTORIES))
def test_apply_accepts_exactly_the_allowed_transitions(history: str, event_name: str) -> None:
    payment = _payment(history)
    event, target = STATE_CHANGING[event_name](payment)
    if can_transition(payment.state, target):
        new = apply(payment, event)
        assert new.state is target
        assert new.version == payment.version + 1
        return
    with pytest.raises((InvalidTransition, OperationNotAllowed)) as info:
        apply(payment, event)
    if isinstance(info.value, InvalidTransition):
        assert info.value.payment_id == PID
        assert info.value.from_state is payment.state
        assert info.value.to_state is target
    else:
        # Only the attempt bookkeeping may refuse first: INITIATED has no attempt to settle.
        assert not payment.attempts
        assert "unknown attempt" in str(info.value)


@pytest.mark.parametrize(
    ("history", "event_name"),
    [
        ("COMPLETED", "Completed"),
        ("AUTHORIZED", "Authorized"),
        ("REQUIRES_ACTION", "RequiresAction"),
        ("FAILED", "Failed"),
        ("CANCELLED", "Cancelled"),
        ("REFUNDED", "RefundRest"),
    ],
)
def test_a_state_is_not_reentered_unless_the_table_says_so(history: str, event_name: str) -> None:
    """The table lists allowed self-transitions explicitly; the others must be refused too
    (e.g. a second capture of a COMPLETED payment)."""
    payment = _payment(history)
    event, target = STATE_CHANGING[event_name](payment)
    assert target is payment.state
    with pytest.raises(InvalidTransition) as info:
        apply(payment, event)
    assert info.value.from_state is target and info.value.to_state is target


@pytest.mark.parametrize(
    ("history", "make_event"),
    [
        (
            "INITIATED",
            lambda v: ev.PaymentFlaggedForReview(
                payment_id=PID, version=v, occurred_at=T0, risk_score=70, reasons=("velocity",)
            ),
        ),
        (
            "PROCESSING",
            lambda v: ev.PaymentAttemptFailed(
                payment_id=PID, version=v, occurred_at=T0, attempt_no=1, outcome=Outcome.NOT_SENT
            ),
        ),
        (
            "PROCESSING",
            lambda v: ev.PaymentOutcomeUnknown(
                payment_id=PID, version=v, occurred_at=T0, attempt_no=1
            ),
        ),
        (
            "REQUIRES_ACTION",
            lambda v: ev.PaymentOutcomeUnknown(
                payment_id=PID, version=v, occurred_at=T0, attempt_no=1
            ),
        ),
        (
            "AUTHORIZED",
            lambda v: ev.CaptureFailed(
                payment_id=PID,
                version=v,
                occurred_at=T0,
                amount=AMOUNT,
                idempotency_key="c",
                code="expired",
            ),
        ),
        (
            "COMPLETED",
            lambda v: ev.RefundFailed(
                payment_id=PID,
                version=v,
                occurred_at=T0,
                refund_no=1,
                amount=PART,
                idempotency_key="r",
                code="declined",
            ),
        ),
        (
            "PARTIALLY_REFUNDED",
            lambda v: ev.RefundFailed(
                payment_id=PID,
                version=v,
                occurred_at=T0,
                refund_no=2,
                amount=PART,
                idempotency_key="r2",
                code="declined",
            ),
        ),
    ],
)
def test_recording_events_keep_the_state(
    history: str, make_event: Callable[[int], ev.Event]
) -> None:
    payment = _payment(history)
    new = apply(payment, make_event(payment.version + 1))
    assert new.state is payment.state
    assert new.version == payment.version + 1
