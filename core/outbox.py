"""The transactional outbox's messages, the sink interface, and the relay that publishes them.

Every committed event becomes one outbox message in the same atomic commit. The relay runs
after commit: it hands batches to every registered sink and to the ``aegispay_on_event``
listeners, then marks them published. Delivery is at-least-once; ``message_id`` (the event id)
is stable so consumers deduplicate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import anyio
import anyio.lowlevel
import attrs

from .events import Event

if TYPE_CHECKING:
    from .hooks import Hooks
    from .store.base import PaymentStore

log = logging.getLogger("aegispay.outbox")


@attrs.frozen
class OutboxMessage:
    message_id: str
    payment_id: str
    sequence: int
    event: Event
    attempts: int = 0


@runtime_checkable
class EventSink(Protocol):
    """A destination for committed events. ``publish`` raises to have the batch retried."""

    name: str

    async def publish(self, messages: Sequence[OutboxMessage]) -> None: ...


@attrs.frozen
class RelaySettings:
    # Small enough that one batch of listener calls does not hold the event loop for long
    # (each batch runs without suspending when sinks and listeners are in-process).
    batch_size: int = 200
    max_attempts: int = 10
    base_backoff_s: float = 0.05
    max_backoff_s: float = 5.0


class OutboxRelay:
    """Publishes a store's pending outbox messages, in commit order, after commit."""

    def __init__(
        self,
        store: PaymentStore,
        sinks: Sequence[EventSink],
        hooks: Hooks,
        settings: RelaySettings | None = None,
    ) -> None:
        self._store = store
        self._sinks = tuple(sinks)
        self._hooks = hooks
        self._settings = settings or RelaySettings()
        self._wakeup = anyio.Event()
        self._woken = False
        self.published = 0
        self.parked = 0

    def notify(self) -> None:
        """Called by the store after a commit: there is something to publish."""
        if not self._woken:
            self._woken = True
            self._wakeup.set()

    async def run(self) -> None:
        """Publish until cancelled. Sleeps while the outbox is empty."""
        failures = 0
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            self._woken = False
            while True:
                try:
                    count = await self.publish_pending()
                except Exception:
                    failures += 1
                    delay = min(
                        self._settings.max_backoff_s,
                        self._settings.base_backoff_s * math.pow(2, failures - 1),
                    )
                    log.exception("outbox publish failed; retrying in %.2fs", delay)
                    await anyio.sleep(delay)
                    continue
                failures = 0
                if count == 0:
                    break
                await anyio.lowlevel.checkpoint()  # let payments run between batches

    async def drain(self) -> int:
        """Publish everything pending now (for tests and shutdown); returns how many."""
        total = 0
        while count := await self.publish_pending():
            total += count
        return total

    async def publish_pending(self) -> int:
        batch = await self._store.outbox_pending(self._settings.batch_size)
        if not batch:
            return 0
        try:
            for sink in self._sinks:
                await sink.publish(batch)
        except Exception as error:
            await self._store.outbox_record_failure(
                [m.message_id for m in batch], repr(error), self._settings.max_attempts
            )
            raise
        for message in batch:
            await self._hooks.on_event(message.event)
        await self._store.outbox_mark_published([m.message_id for m in batch])
        self.published += len(batch)
        return len(batch)
