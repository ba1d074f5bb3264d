"""The in-memory store: one process, nothing kept. Fast, and the reference for other backends.

``commit`` never awaits between its checks and its writes, so under one event loop it is atomic
without a lock. Snapshots are immutable, so handing them out cannot corrupt the store.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime

from ..errors import ConcurrencyConflict, FencingTokenRejected
from ..events import Event
from ..outbox import OutboxMessage
from ..payment import Payment
from .base import Change, IdempotencyClaimed, IdempotencyRecord, is_unsettled


class _Stream:
    __slots__ = ("events", "fence", "payment")

    def __init__(self, payment: Payment) -> None:
        self.payment = payment
        self.events: list[Event] = []
        self.fence = 0


class MemoryStore:
    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._idempotency: dict[tuple[str, str], IdempotencyRecord] = {}
        self._outbox: deque[OutboxMessage] = deque()
        self._failures: dict[str, tuple[int, str]] = {}
        self._parked: list[tuple[OutboxMessage, str]] = []
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
            if existing is not None:
                raise IdempotencyClaimed(existing)
            self._idempotency[(record.scope, record.key)] = record
        if stream is None:
            stream = self._streams[payment.id] = _Stream(payment)
        stream.payment = payment
        if change.fencing_token is not None and change.fencing_token > stream.fence:
            stream.fence = change.fencing_token
        stream.events.extend(change.events)
        for event in change.events:
            self._outbox.append(
                OutboxMessage(event.event_id, event.payment_id, event.version, event)
            )
        for listener in self._listeners:
            listener()

    async def load(self, payment_id: str) -> Payment | None:
        stream = self._streams.get(payment_id)
        return stream.payment if stream else None

    async def events(self, payment_id: str) -> list[Event]:
        stream = self._streams.get(payment_id)
        return list(stream.events) if stream else []

    async def find_idempotency(self, scope: str, key: str) -> IdempotencyRecord | None:
        return self._idempotency.get((scope, key))

    async def payment_ids(self) -> list[str]:
        return list(self._streams)

    async def unsettled_payment_ids(self, older_than: datetime) -> list[str]:
        return sorted(
            payment_id
            for payment_id, stream in self._streams.items()
            if is_unsettled(stream.payment) and stream.payment.updated_at < older_than
        )

    async def outbox_pending(self, limit: int) -> list[OutboxMessage]:
        outbox = self._outbox
        return [outbox[i] for i in range(min(limit, len(outbox)))]

    async def outbox_mark_published(self, message_ids: Sequence[str]) -> None:
        # The relay publishes the head of the queue in order, so these are at the front.
        wanted = set(message_ids)
        while self._outbox and self._outbox[0].message_id in wanted:
            message = self._outbox.popleft()
            self._failures.pop(message.message_id, None)

    async def outbox_record_failure(
        self, message_ids: Sequence[str], error: str, max_attempts: int
    ) -> None:
        for message_id in message_ids:
            attempts = self._failures.get(message_id, (0, ""))[0] + 1
            self._failures[message_id] = (attempts, error)
        # Park the head while it has used up its attempts, so it stops blocking the queue.
        while self._outbox and self._failures.get(self._outbox[0].message_id, (0, ""))[0] >= (
            max_attempts
        ):
            message = self._outbox.popleft()
            attempts, last_error = self._failures.pop(message.message_id)
            self._parked.append((message, last_error))

    async def outbox_parked(self) -> list[tuple[OutboxMessage, str]]:
        return list(self._parked)

    def outbox_size(self) -> int:
        return len(self._outbox)

    def use_event_types(self, event_types: object) -> None:
        """Nothing to do: events are kept as objects, never decoded."""

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    async def close(self) -> None:
        self._listeners.clear()
