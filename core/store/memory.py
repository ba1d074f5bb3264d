"""The in-memory store: one process, nothing kept. Fast, and the reference for other backends.

``commit`` never awaits between its checks and its writes, so under one event loop it is atomic
without a lock. Snapshots are immutable, so handing them out cannot corrupt the store.

The outbox is kept per payment: a queue of pending messages for each payment that has any, the
payments deliverable now in the order they became so (``_ready``), and a heap of backoff
deadlines. Claiming, settling and committing cost O(1) per message; only the rare paths (a
failure, a requeue, a lease lost mid-batch) rebuild one payment's queue.
"""

from __future__ import annotations

import heapq
import itertools
import operator
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

import attrs

from ..errors import ConcurrencyConflict, FencingTokenRejected
from ..events import Event
from ..outbox import OutboxCounts, OutboxFailure, OutboxMessage, OutboxSettled
from ..payment import Payment
from .base import (
    COMPLETED,
    IN_FLIGHT,
    Change,
    IdempotencyClaimed,
    IdempotencyProgress,
    IdempotencyRecord,
    Pruned,
    advances,
    is_unsettled,
)


class _Stream:
    __slots__ = ("events", "fence", "payment")

    def __init__(self, payment: Payment) -> None:
        self.payment = payment
        self.events: list[Event] = []
        self.fence = 0


_payment_id = operator.attrgetter("payment_id")


class MemoryStore:
    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._idempotency: dict[tuple[str, str], IdempotencyRecord] = {}
        self._in_flight: set[tuple[str, str]] = set()  # keys of in-flight records
        # -- outbox: see the module docstring.
        self._queues: dict[str, list[OutboxMessage]] = {}  # pending, per payment, in order
        self._ready: dict[str, None] = {}  # payments with pending messages, not backing off
        self._retry_at: dict[str, datetime] = {}  # payments backing off: until when
        self._retries: list[tuple[datetime, int, str]] = []  # heap of (retry_at, n, payment)
        self._retry_no = itertools.count()
        self._leases: dict[str, tuple[str, datetime]] = {}  # payment -> (owner, expires_at)
        self._parked: dict[str, tuple[OutboxMessage, str]] = {}  # message id -> (msg, error)
        self._listeners: list[Callable[[], None]] = []

    async def commit(self, change: Change) -> None:
        payment = change.payment
        stream = self._streams.get(payment.id)
        current = stream.payment.version if stream else 0
        if current != change.expected_version:
            raise ConcurrencyConflict(payment.id, change.expected_version, current)
        token = change.fencing_token
        if token is not None and stream is not None and token < stream.fence:
            raise FencingTokenRejected(payment.id, token, stream.fence)
        if change.idempotency is not None:
            record = change.idempotency
            existing = self._idempotency.get((record.scope, record.key))
            # An expired record is replaced (in this same atomic step); a live one never is.
            if existing is not None and not existing.expired(record.created_at):
                raise IdempotencyClaimed(existing)
            self._keep(record)
        if stream is None:
            stream = self._streams[payment.id] = _Stream(payment)
        stream.payment = payment
        if change.fencing_token is not None and change.fencing_token > stream.fence:
            stream.fence = change.fencing_token
        stream.events.extend(change.events)
        if change.events:
            queue = self._queues.get(payment.id)
            if queue is None:  # a payment with a queue is already ready or backing off
                queue = self._queues[payment.id] = []
                if payment.id not in self._retry_at:
                    self._ready[payment.id] = None
            for event in change.events:
                queue.append(OutboxMessage(event.event_id, event.payment_id, event.version, event))
        if change.progress is not None:
            self._advance(change.progress)
        for listener in self._listeners:
            listener()

    async def load(self, payment_id: str) -> Payment | None:
        stream = self._streams.get(payment_id)
        return stream.payment if stream else None

    async def events(self, payment_id: str) -> list[Event]:
        stream = self._streams.get(payment_id)
        return list(stream.events) if stream else []

    # -- idempotency --------------------------------------------------------------------

    async def find_idempotency(
        self, scope: str, key: str, now: datetime | None = None
    ) -> IdempotencyRecord | None:
        record = self._idempotency.get((scope, key))
        if record is None or (now is not None and record.expired(now)):
            return None
        return record

    async def idempotency_advance(self, step: IdempotencyProgress) -> bool:
        return self._advance(step)

    def _advance(self, step: IdempotencyProgress) -> bool:
        """Forward only, while in flight and naming this payment (see the protocol)."""
        record = self._idempotency.get((step.scope, step.key))
        if (
            record is None
            or record.payment_id != step.payment_id
            or record.state != IN_FLIGHT
            or not advances(record.recovery_point, step.recovery_point)
        ):
            return False
        locked_at = step.at if step.state == IN_FLIGHT else None
        self._keep(
            attrs.evolve(
                record, recovery_point=step.recovery_point, state=step.state, locked_at=locked_at
            )
        )
        return True

    async def idempotency_in_flight(
        self, older_than: datetime, *, now: datetime | None = None, limit: int = 100
    ) -> list[IdempotencyRecord]:
        found = []
        for scope_key in self._in_flight:
            record = self._idempotency[scope_key]
            if record.locked_at is not None and record.locked_at >= older_than:
                continue
            if now is not None and record.expired(now):
                continue
            found.append(record)
        found.sort(key=_touched)
        return found[: max(limit, 0)]

    def _keep(self, record: IdempotencyRecord) -> None:
        scope_key = (record.scope, record.key)
        self._idempotency[scope_key] = record
        if record.state == COMPLETED:
            self._in_flight.discard(scope_key)
        else:
            self._in_flight.add(scope_key)

    async def prune(
        self, published_before: datetime | None, expired_before: datetime, limit: int
    ) -> Pruned:
        # Published messages are not kept here (the queues hold pending ones only).
        expired = [
            scope_key
            for scope_key, record in self._idempotency.items()
            if record.state == COMPLETED and record.expires_at < expired_before
        ]
        expired.sort(key=lambda scope_key: self._idempotency[scope_key].expires_at)
        deleted = expired[: max(limit, 0)]
        for scope_key in deleted:
            del self._idempotency[scope_key]
        return Pruned(keys=len(deleted))

    async def payment_ids(self) -> list[str]:
        return list(self._streams)

    async def unsettled_payment_ids(self, older_than: datetime) -> list[str]:
        return sorted(
            payment_id
            for payment_id, stream in self._streams.items()
            if is_unsettled(stream.payment) and stream.payment.updated_at < older_than
        )

    # -- outbox -------------------------------------------------------------------------------

    async def outbox_claim(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[OutboxMessage]:
        if self._retries and self._retries[0][0] <= now:
            self._end_backoffs(now)
        batch: list[OutboxMessage] = []
        room = limit
        if room <= 0:
            return batch
        leases, queues = self._leases, self._queues
        lease = (owner, lease_until)
        for payment_id in self._ready:
            held = leases.get(payment_id)
            if held is not None and held[0] != owner and held[1] > now:
                continue  # another relay delivers this payment now
            leases[payment_id] = lease
            queue = queues[payment_id]
            if len(queue) < room:
                batch += queue
                room -= len(queue)
            else:
                batch += queue[:room]
                break
        return batch

    def _end_backoffs(self, now: datetime) -> None:
        retries, retry_at = self._retries, self._retry_at
        while retries and retries[0][0] <= now:
            due, _, payment_id = heapq.heappop(retries)
            if retry_at.get(payment_id) == due:
                del retry_at[payment_id]
                if payment_id in self._queues:
                    self._ready[payment_id] = None

    def _holds(self, owner: str, payment_id: str, now: datetime) -> bool:
        lease = self._leases.get(payment_id)
        return lease is not None and lease[0] == owner and lease[1] > now

    async def outbox_settle(
        self,
        owner: str,
        now: datetime,
        delivered: Sequence[OutboxMessage],
        failures: Sequence[OutboxFailure],
        max_attempts: int,
    ) -> OutboxSettled:
        published = refused = 0
        queues, leases, ready = self._queues, self._leases, self._ready
        for payment_id, run in itertools.groupby(delivered, _payment_id):  # grouped, in order
            messages = list(run)
            lease = leases.get(payment_id)
            if lease is None or lease[0] != owner or lease[1] <= now:
                refused += len(messages)
                continue
            del leases[payment_id]
            queue = queues.get(payment_id)
            if queue is None:
                continue
            count, size = len(messages), len(queue)
            # What was claimed is a prefix of the queue, and commits only append: if its first
            # and last messages are still where they were, so is the rest.
            if count <= size and queue[0] is messages[0] and queue[count - 1] is messages[-1]:
                published += count
                if count == size:
                    del queues[payment_id]
                    ready.pop(payment_id, None)
                    continue
                del queue[:count]
            else:  # a requeue inserted messages meanwhile, or some were published already
                gone = {m.message_id for m in messages}
                kept = [m for m in queue if m.message_id not in gone]
                published += size - len(kept)
                queue[:] = kept
                if not kept:
                    del queues[payment_id]
                    ready.pop(payment_id, None)

        failed = 0
        parked: list[str] = []
        for failure in failures:
            payment_id = failure.payment_id
            if not self._holds(owner, payment_id, now):
                refused += len(failure.message_ids)
                continue
            queue = queues.get(payment_id)
            attempted = set(failure.message_ids)
            backing_off = False
            if queue is not None:
                kept = []
                for message in queue:
                    if message.message_id in attempted:
                        failed += 1
                        message = attrs.evolve(message, attempts=message.attempts + 1)
                        if message.attempts >= max_attempts:
                            self._parked[message.message_id] = (message, failure.error)
                            parked.append(message.message_id)
                            continue
                        backing_off = True
                    kept.append(message)
                queue[:] = kept
            if backing_off:
                self._retry_at[payment_id] = failure.retry_at
                heapq.heappush(self._retries, (failure.retry_at, next(self._retry_no), payment_id))
                self._ready.pop(payment_id, None)
            del leases[payment_id]
            if queue is not None and not queue:
                del queues[payment_id]
                self._ready.pop(payment_id, None)
        return OutboxSettled(published, failed, tuple(parked), refused)

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
        settled = await self.outbox_settle(owner, now, delivered, failures, max_attempts)
        return settled, await self.outbox_claim(owner, now, lease_until, limit)

    async def outbox_next_due(self, owner: str, after: datetime) -> datetime | None:
        times = [t for t in self._retry_at.values() if t > after]
        times.extend(
            expires
            for holder, expires in self._leases.values()
            if holder != owner and expires > after
        )
        return min(times, default=None)

    async def outbox_lease_owners(self, now: datetime) -> list[str]:
        return sorted({owner for owner, expires in self._leases.values() if expires > now})

    async def outbox_release(self, owners: Sequence[str]) -> int:
        dead = set(owners)
        gone = [p for p, (owner, _) in self._leases.items() if owner in dead]
        for payment_id in gone:
            del self._leases[payment_id]
        return len(gone)

    async def outbox_pending(self, limit: int) -> list[OutboxMessage]:
        found: list[OutboxMessage] = []
        for queue in self._queues.values():
            if len(found) >= limit:
                break
            found.extend(queue[: max(limit - len(found), 0)])
        return found

    async def outbox_parked(self) -> list[tuple[OutboxMessage, str]]:
        return list(self._parked.values())

    async def outbox_requeue(self, message_ids: Sequence[str] | None = None) -> list[str]:
        wanted: Iterable[str] = list(self._parked) if message_ids is None else message_ids
        requeued = []
        for message_id in wanted:
            entry = self._parked.pop(message_id, None)
            if entry is None:
                continue
            message = attrs.evolve(entry[0], attempts=0)
            queue = self._queues.get(message.payment_id)
            if queue is None:
                queue = self._queues[message.payment_id] = []
            ordered = sorted([*queue, message], key=lambda m: m.sequence)
            queue[:] = ordered
            if message.payment_id not in self._retry_at:
                self._ready[message.payment_id] = None
            requeued.append(message_id)
        return requeued

    async def outbox_counts(self, now: datetime) -> OutboxCounts:
        pending = backing_off = 0
        waiting_payments = 0
        for payment_id, queue in self._queues.items():
            pending += len(queue)
            retry_at = self._retry_at.get(payment_id)
            if retry_at is not None and retry_at > now:
                backing_off += len(queue)
                waiting_payments += 1
        leased = sum(1 for _, expires in self._leases.values() if expires > now)
        later = [t for t in self._retry_at.values() if t > now]
        return OutboxCounts(
            pending=pending,
            ready=pending - backing_off,
            backing_off=backing_off,
            backing_off_payments=waiting_payments,
            leased_payments=leased,
            parked=len(self._parked),
            next_retry_at=min(later, default=None),
        )

    def outbox_size(self) -> int:
        """How many messages wait to be published (not parked)."""
        return sum(len(queue) for queue in self._queues.values())

    def use_event_types(self, event_types: object) -> None:
        """Nothing to do: events are kept as objects, never decoded."""

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    async def close(self) -> None:
        self._listeners.clear()


def _touched(record: IdempotencyRecord) -> tuple[bool, datetime]:
    """Least recently touched first; a record never touched (no ``locked_at``) before all."""
    return (record.locked_at is not None, record.locked_at or record.created_at)
