"""The one narrow storage interface every backend implements (memory now; SQL, ... later).

A :class:`Change` is everything one state change writes, committed atomically or not at all:
the payment's new projection (checked against the expected version and, when a lock is held,
its fencing token), its new events, one outbox message per event, and optionally a new
idempotency record. Backends map their driver errors to :mod:`aegispay.errors` types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

import attrs

from ..events import Event
from ..outbox import OutboxMessage
from ..payment import Payment
from ..serialization import EventTypes
from ..states import PaymentState


@attrs.frozen
class IdempotencyRecord:
    """A claimed idempotency key and the first response it produced (the created payment)."""

    scope: str
    key: str
    fingerprint: str
    payment_id: str
    response: Payment
    created_at: datetime
    expires_at: datetime


@attrs.frozen
class Change:
    """One atomic write. ``expected_version`` is 0 for a new payment."""

    payment: Payment
    expected_version: int
    events: tuple[Event, ...]
    fencing_token: int | None = None
    idempotency: IdempotencyRecord | None = None


class IdempotencyClaimed(Exception):
    """Raised by ``commit`` when the change's idempotency key already exists: nothing written."""

    def __init__(self, existing: IdempotencyRecord) -> None:
        super().__init__(f"idempotency key {existing.key!r} already claimed")
        self.existing = existing


def is_unsettled(payment: Payment) -> bool:
    """True while a payment waits on a gateway's answer (see ``unsettled_payment_ids``)."""
    return payment.pending is not None or payment.state in UNSETTLED_STATES


UNSETTLED_STATES = frozenset({PaymentState.PROCESSING, PaymentState.REQUIRES_ACTION})


class PaymentStore(Protocol):
    async def commit(self, change: Change) -> None:
        """Write ``change`` atomically, or raise (and write nothing):
        ConcurrencyConflict (stale version), FencingTokenRejected (older token),
        IdempotencyClaimed (the key exists), StoreUnavailable."""

    async def load(self, payment_id: str) -> Payment | None: ...

    async def events(self, payment_id: str) -> list[Event]: ...

    async def find_idempotency(self, scope: str, key: str) -> IdempotencyRecord | None: ...

    async def payment_ids(self) -> list[str]: ...

    async def unsettled_payment_ids(self, older_than: datetime) -> list[str]:
        """Ids (sorted) of payments left open - PROCESSING or REQUIRES_ACTION, or with a
        pending capture, refund or void - whose projection was last updated before
        ``older_than``: what ``PaymentService.reconcile`` settles."""

    async def outbox_pending(self, limit: int) -> list[OutboxMessage]:
        """The oldest unpublished, unparked messages, in commit order."""

    async def outbox_mark_published(self, message_ids: Sequence[str]) -> None: ...

    async def outbox_record_failure(
        self, message_ids: Sequence[str], error: str, max_attempts: int
    ) -> None:
        """Count a failed delivery; park messages that reached ``max_attempts``."""

    async def outbox_parked(self) -> list[tuple[OutboxMessage, str]]: ...

    def use_event_types(self, event_types: EventTypes) -> None:
        """Decode stored events with this registry (the service's, including plugins' own
        event types). Called once by the service that uses the store."""

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each commit made through this store object (in-process
        wake-up for the relay; other processes poll)."""

    async def close(self) -> None: ...
