"""The payment state machine: one declarative table, the single source of truth.

Docs render it (``aegispay states``), the engine enforces it, and the tests check every pair
against it. A transition from a state to itself is listed explicitly where it is allowed (a
failover attempt keeps a payment PROCESSING; a second partial refund keeps it PARTIALLY_REFUNDED).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from .errors import InvalidTransition


class PaymentState(enum.Enum):
    INITIATED = "initiated"
    PROCESSING = "processing"
    REQUIRES_ACTION = "requires_action"
    AUTHORIZED = "authorized"
    COMPLETED = "completed"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = PaymentState

TRANSITIONS: Mapping[PaymentState, frozenset[PaymentState]] = {
    # Created, nothing sent to a gateway yet.
    S.INITIATED: frozenset({S.PROCESSING, S.FAILED, S.CANCELLED}),
    # An attempt is in flight (its intent committed before the gateway call). PROCESSING ->
    # PROCESSING is a failover to the next gateway after NOT_SENT, or a recorded UNKNOWN outcome.
    S.PROCESSING: frozenset({S.PROCESSING, S.REQUIRES_ACTION, S.AUTHORIZED, S.FAILED}),
    # 3-D Secure, redirect or an asynchronous method: resolved by webhook or status lookup.
    S.REQUIRES_ACTION: frozenset({S.PROCESSING, S.AUTHORIZED, S.FAILED, S.CANCELLED}),
    # Funds held; capture or void.
    S.AUTHORIZED: frozenset({S.COMPLETED, S.CANCELLED}),
    # Terminal states accept nothing but the refund path.
    S.COMPLETED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED}),
    S.PARTIALLY_REFUNDED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED}),
    S.REFUNDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}

# The same table as a tuple on each member, for the per-event check: tuple membership compares
# by identity first, while a dict or set keyed by an Enum calls Enum.__hash__ in Python.
for _state, _targets in TRANSITIONS.items():
    _state._next = tuple(_targets)  # type: ignore[attr-defined]
del _state, _targets

TERMINAL_STATES = frozenset({S.COMPLETED, S.PARTIALLY_REFUNDED, S.REFUNDED, S.FAILED, S.CANCELLED})


def can_transition(from_state: PaymentState, to_state: PaymentState) -> bool:
    return to_state in TRANSITIONS[from_state]


def check_transition(payment_id: str, from_state: PaymentState, to_state: PaymentState) -> None:
    """Raise InvalidTransition unless the table allows ``from_state -> to_state``."""
    if to_state not in from_state._next:  # type: ignore[attr-defined]
        raise InvalidTransition(payment_id, from_state, to_state)


def transition_table_markdown() -> str:
    """The table as Markdown, one row per state: what docs/ shows."""
    lines = ["| from | allowed next states |", "| --- | --- |"]
    for state in PaymentState:
        targets = ", ".join(t.name for t in PaymentState if t in TRANSITIONS[state]) or "(none)"
        lines.append(f"| {state.name} | {targets} |")
    return "\n".join(lines)


def transition_diagram_mermaid() -> str:
    """The table as a Mermaid state diagram."""
    lines = ["stateDiagram-v2", "    [*] --> INITIATED"]
    for state in PaymentState:
        for target in PaymentState:
            if target in TRANSITIONS[state]:
                lines.append(f"    {state.name} --> {target.name}")
    for state in (S.REFUNDED, S.FAILED, S.CANCELLED):
        lines.append(f"    {state.name} --> [*]")
    return "\n".join(lines)
