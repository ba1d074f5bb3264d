"""The one narrow storage interface every backend implements (memory now; SQL, ... later).

A :class:`Change` is everything one state change writes, committed atomically or not at all:
the payment's new projection (checked against the expected version and, when a lock is held,
its fencing token), its new events, one outbox message per event, and optionally a new
idempotency record. Backends map their driver errors to :mod:`aegispay.errors` types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Literal, Protocol

import attrs

from ..events import Event
from ..outbox import OutboxCounts, OutboxFailure, OutboxMessage, OutboxSettled
from ..payment import Payment
from ..serialization import EventTypes
from ..states import PaymentState

IdempotencyState = Literal["in_flight", "completed"]
RecoveryPoint = Literal["created", "processing", "finished"]
IN_FLIGHT: IdempotencyState = "in_flight"
COMPLETED: IdempotencyState = "completed"
#: The recovery points of a keyed request, in the order a request passes them:
#:
#: * ``created``: the payment is stored (INITIATED), claimed in the same transaction; nothing
#:   was sent to a gateway. Resuming means processing it (``process_payment``).
#: * ``processing``: the payment left INITIATED and is still open at a gateway (an attempt in
#:   flight or UNKNOWN, a pending capture). Resuming means settling it by a status lookup with
#:   the attempt's own key (what ``process_payment`` and ``reconcile`` do), never a new charge.
#: * ``finished``: the payment is settled, or waits on the customer (REQUIRES_ACTION); the
#:   record is ``completed`` and nothing is left to resume.
#:
#: A record never moves backwards. A plain ``create_payment`` completes its record at
#: ``created``: its request (store the payment) is done in the claiming transaction.
RECOVERY_POINTS: tuple[RecoveryPoint, ...] = ("created", "processing", "finished")


def _check_state(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in (IN_FLIGHT, COMPLETED):
        raise ValueError(f"{attribute.name}: expected 'in_flight' or 'completed', got {value!r}")


def _check_point(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in RECOVERY_POINTS:
        raise ValueError(f"{attribute.name}: expected one of {RECOVERY_POINTS}, got {value!r}")


@attrs.frozen
class IdempotencyRecord:
    """A claimed idempotency key and the first response it produced (the created payment).

    ``state`` is ``in_flight`` while the keyed request still has work to do (``pay`` claims
    its key in flight) and ``completed`` once it has none (``create_payment`` claims its key
    completed). ``recovery_point`` says how far the request got (see :data:`RECOVERY_POINTS`);
    ``locked_at`` is when its holder last touched it (set while in flight, ``None`` once
    completed): a record in flight untouched for a while was left by a crash and is resumed.
    The record is absent for every purpose once ``expires_at`` has passed.
    """

    scope: str
    key: str
    fingerprint: str
    payment_id: str
    response: Payment
    created_at: datetime
    expires_at: datetime
    state: IdempotencyState = attrs.field(default=COMPLETED, validator=_check_state)
    recovery_point: RecoveryPoint = attrs.field(default="created", validator=_check_point)
    locked_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        """True once ``now`` has reached ``expires_at``: the key may be claimed anew."""
        return self.expires_at <= now


def advances(current: RecoveryPoint, to: RecoveryPoint) -> bool:
    """True if a record at ``current`` may move to ``to`` (forward, or staying put)."""
    return RECOVERY_POINTS.index(current) <= RECOVERY_POINTS.index(to)


@attrs.frozen
class IdempotencyProgress:
    """A keyed request's record moved forward in the same transaction as a change to its
    payment (``PaymentService.pay``). Applied like ``idempotency_advance``: forward only,
    only while in flight and naming this payment; otherwise it is ignored, never an error."""

    scope: str
    key: str
    payment_id: str
    recovery_point: RecoveryPoint
    state: IdempotencyState
    at: datetime


@attrs.frozen
class Change:
    """One atomic write. ``expected_version`` is 0 for a new payment."""

    payment: Payment
    expected_version: int
    events: tuple[Event, ...]
    fencing_token: int | None = None
    idempotency: IdempotencyRecord | None = None
    progress: IdempotencyProgress | None = None


class IdempotencyClaimed(Exception):
    """Raised by ``commit`` when the change's idempotency key is held by an unexpired record:
    nothing written."""

    def __init__(self, existing: IdempotencyRecord) -> None:
        super().__init__(f"idempotency key {existing.key!r} already claimed")
        self.existing = existing


def is_unsettled(payment: Payment) -> bool:
    """True while a payment waits on a gateway's answer (see ``unsettled_payment_ids``)."""
    return payment.pending is not None or payment.state in UNSETTLED_STATES


UNSETTLED_STATES = frozenset({PaymentState.PROCESSING, PaymentState.REQUIRES_ACTION})


@attrs.frozen
class Pruned:
    """What one ``prune`` deleted: published outbox messages, expired idempotency records."""

    messages: int = 0
    keys: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(self.messages + other.messages, self.keys + other.keys)


class PaymentStore(Protocol):
    async def commit(self, change: Change) -> None:
        """Write ``change`` atomically, or raise (and write nothing):
        ConcurrencyConflict (stale version), FencingTokenRejected (older token),
        IdempotencyClaimed (the key exists), StoreUnavailable.

        A claim on a key whose record has expired (``expires_at <= claim.created_at``, the
        claimer's clock) replaces that record in the same transaction; an unexpired record is
        never replaced."""

    async def load(self, payment_id: str) -> Payment | None: ...

    async def events(self, payment_id: str) -> list[Event]: ...

    async def find_idempotency(
        self, scope: str, key: str, now: datetime | None = None
    ) -> IdempotencyRecord | None:
        """The record for ``(scope, key)``. With ``now``, a record that has expired by then
        is treated as absent; without, the stored record is returned whatever its expiry
        (the stores' own conflict path, which only meets unexpired records)."""

    async def idempotency_advance(self, step: IdempotencyProgress) -> bool:
        """Move the in-flight record ``(step.scope, step.key)`` of ``step.payment_id`` to
        ``step.recovery_point`` and ``step.state`` in one conditional write (what a change's
        ``progress`` does inside its transaction); ``locked_at`` becomes ``step.at`` while in
        flight, ``None`` once completed. Writes nothing and returns False when the record is absent,
        belongs to another payment (replaced after expiry), is already completed, or is past
        ``recovery_point``: a record never moves backwards, so a slow writer cannot undo a
        faster one's progress. Separate from ``commit``: the payment is the source of truth,
        the record only a hint about where to resume (see ``PaymentService.pay``)."""

    async def idempotency_in_flight(
        self, older_than: datetime, *, now: datetime | None = None, limit: int = 100
    ) -> list[IdempotencyRecord]:
        """Up to ``limit`` records in flight whose ``locked_at`` is before ``older_than``,
        least recently touched first (requests a crash left unfinished); with ``now``,
        expired records are left out (a client's retry would create a new payment: resuming
        the old one could charge the customer twice for one order)."""

    async def payment_ids(self) -> list[str]: ...

    async def unsettled_payment_ids(self, older_than: datetime) -> list[str]:
        """Ids (sorted) of payments left open - PROCESSING or REQUIRES_ACTION, or with a
        pending capture, refund or void - whose projection was last updated before
        ``older_than``: what ``PaymentService.reconcile`` settles."""

    # -- outbox ---------------------------------------------------------------------------
    # A message is *pending* until published or parked. A payment *backs off* while one of
    # its pending messages has a retry time after ``now``; it is *leased* while an owner's
    # lease on it has not expired. ``now`` is always the caller's clock (relays inject it).

    async def outbox_claim(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[OutboxMessage]:
        """Lease to ``owner`` (until ``lease_until``) the payments with pending messages that
        are not backing off and not leased by another owner (a lease of ``owner``'s own is
        taken again), oldest first, and return their pending messages: at most ``limit`` in
        all, per payment a prefix of its pending messages in ``sequence`` order, grouped by
        payment, every claimed payment with at least one. Empty: nothing deliverable now."""

    async def outbox_settle(
        self,
        owner: str,
        now: datetime,
        delivered: Sequence[OutboxMessage],
        failures: Sequence[OutboxFailure],
        max_attempts: int,
    ) -> OutboxSettled:
        """Record a delivery, atomically, for the payments ``owner`` still leases at ``now``:
        ``delivered`` messages are published; each failure's messages count one more attempt
        and keep ``error`` - those that reached ``max_attempts`` are parked, the others make
        their payment back off until ``retry_at`` - and those payments' leases are released.
        Messages of payments whose lease ``owner`` lost are left alone (``refused``)."""

    async def outbox_settle_and_claim(
        self,
        owner: str,
        now: datetime,
        delivered: Sequence[OutboxMessage],
        failures: Sequence[OutboxFailure],
        max_attempts: int,
        lease_until: datetime,
        limit: int,
    ) -> tuple[OutboxSettled, list[OutboxMessage]]:
        """``outbox_settle`` and then ``outbox_claim`` at the same ``now``: what a relay that
        works through a backlog does between two batches. A store may do both in one
        transaction (one wait for SQLite's write lock instead of two)."""

    async def outbox_next_due(self, owner: str, after: datetime) -> datetime | None:
        """The earliest time later than ``after`` (the ``now`` of the relay's last claim, which
        came back empty) when something ``owner`` could not claim then may become claimable:
        a backoff ending, or another owner's lease expiring. It may already be past: then claim
        again. None: nothing is waiting; only a new commit brings work."""

    async def outbox_lease_owners(self, now: datetime) -> list[str]:
        """The owners holding unexpired leases at ``now`` (sorted)."""

    async def outbox_release(self, owners: Sequence[str]) -> int:
        """Drop every lease of ``owners`` - relays known to be dead - so their payments can be
        claimed at once instead of after expiry; returns how many leases were dropped."""

    async def outbox_pending(self, limit: int) -> list[OutboxMessage]:
        """Up to ``limit`` pending messages (backing off or not), each payment's in
        ``sequence`` order, oldest first (payments may interleave). For inspection: relays
        use ``outbox_claim``."""

    async def outbox_parked(self) -> list[tuple[OutboxMessage, str]]:
        """Parked messages with their last error, oldest first."""

    async def outbox_requeue(self, message_ids: Sequence[str] | None = None) -> list[str]:
        """Unpark the given parked messages (None: all of them) with a fresh attempt count;
        returns the ids requeued (ids not parked are ignored). A requeued message is
        delivered before its payment's pending messages with a higher ``sequence``."""

    async def outbox_counts(self, now: datetime) -> OutboxCounts: ...

    async def prune(
        self, published_before: datetime | None, expired_before: datetime, limit: int
    ) -> Pruned:
        """Delete what serves nothing any more, at most ``limit`` rows of each kind: outbox
        messages published before ``published_before`` (None: keep every one), oldest first,
        and completed idempotency records that expired before ``expired_before`` (an expired
        record is already treated as absent). Pending and parked messages, records still in
        flight (the janitor resumes them), payments and their history are never deleted.
        Call again while a kind comes back at ``limit``. The janitor runs it each pass
        (``engine.outbox_retention_s``), as does ``aegispay db prune``."""

    def use_event_types(self, event_types: EventTypes) -> None:
        """Decode stored events with this registry (the service's, including plugins' own
        event types). Called once by the service that uses the store."""

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each commit made through this store object (in-process
        wake-up for the relay; other processes poll)."""

    async def close(self) -> None: ...
