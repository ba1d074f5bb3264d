"""The transactional outbox's messages, the sink interface, and the relay that publishes them.

Every committed event becomes one outbox message in the same atomic commit. Relays run after
commit and deliver **per payment**:

* **Leases.** A relay leases the queues of the payments it delivers (``outbox_claim``: one
  statement on SQL claims many payments), so several relays - tasks in one process or separate
  processes on one database - never deliver the same payment at once, and each payment's
  messages go out in ``sequence`` order. A payment leased by another relay is skipped, never
  partly taken (no ``SKIP LOCKED`` reordering within a payment). A relay finds work by asking
  for unpublished messages, never by remembering how far it got, so a message whose
  transaction commits late is still found.
* **Settling.** After delivery the relay marks what it delivered published and releases its
  leases in one transaction (``outbox_settle``), guarded by its lease: a relay whose lease
  expired (it was paused, the lease was taken over) marks nothing; the new holder delivers
  those messages again. A batch once handed out is seen through to its settle even when the
  relay is cancelled (a service shutting down), for at most the lease. Working through a
  backlog, a relay settles one batch and claims the next in one store step
  (``outbox_settle_and_claim``); cancelled with a batch claimed but not yet delivered, it
  releases that batch's leases.
* **Isolation and backoff.** Sinks take batches (``EventSink.publish`` raising = the batch
  failed). When a batch of several payments fails, the relay delivers it again payment by
  payment, so only the payments that still fail count a failed attempt. Such a payment backs
  off - exponential backoff with full jitter, ``next_attempt_at`` - and its later messages wait
  behind it; other payments keep flowing.
* **Parking.** A message that failed ``max_attempts`` times is parked with its last error
  (``aegispay outbox status``) and no longer delivered. The payment's *later* messages then
  continue: consumers see a gap in that payment's ``sequence`` (and the parked message, if it
  is requeued with ``aegispay outbox requeue``, arrives late). Holding every later message of
  the payment back instead would let one poison message silence a payment for good, and an
  operator can always requeue.

Delivery is at-least-once: a sink may see a message again (after a failed batch, a lost lease
or a crash), so consumers deduplicate on ``message_id`` (the event id). Listeners
(``aegispay_on_event``) are called for each delivered message, in order, after every sink
accepted it; a listener's exception is logged and changes nothing.

The in-process relay (``PaymentService``) is woken by the store after each commit and sleeps
until the next one - or until the earliest backoff (or another relay's lease) is due. A relay
in another process (``aegispay outbox relay``) also polls, as it cannot hear other processes'
commits. Lease owners name their host and process: before its first pass a relay drops the
leases of this host's relays whose process has died, so a restart after ``kill -9`` delivers
their payments at once; other dead relays' leases expire.

Stores take ``now`` from the relay (``clock=``), so tests move a fake clock instead of waiting.
"""

from __future__ import annotations

import logging
import math
import os
import random
import secrets
import socket
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
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
class OutboxFailure:
    """One payment's failed delivery: the messages that were attempted, the error, and when the
    payment may be tried again."""

    payment_id: str
    message_ids: tuple[str, ...]
    error: str
    retry_at: datetime


@attrs.frozen
class OutboxSettled:
    """What ``outbox_settle`` did."""

    published: int = 0  # messages marked published
    failed: int = 0  # messages whose failed attempt was counted (parked ones included)
    parked: tuple[str, ...] = ()  # message ids parked now
    refused: int = 0  # messages left alone: the relay no longer held their payment's lease


@attrs.frozen
class OutboxCounts:
    """The outbox at a glance (``aegispay outbox status``)."""

    pending: int  # unpublished and not parked
    ready: int  # of those, deliverable now
    backing_off: int  # of those, held back by their payment's backoff
    backing_off_payments: int
    leased_payments: int  # payments a relay is delivering now (unexpired leases)
    parked: int
    next_retry_at: datetime | None  # when the earliest backoff ends


@attrs.frozen
class RelaySettings:
    # Each batch costs a settle and a claim whatever its size (one transaction on SQLite,
    # three statements on PostgreSQL), so under load a small batch makes the relay fall
    # behind the payments (200 published ~1,000 messages/s on PostgreSQL while payments
    # committed ~5,000/s). 1,000 in-process listener calls hold the event loop for a few
    # milliseconds.
    batch_size: int = 1000
    max_attempts: int = 10
    # A failing payment waits uniform(0, min(max, base * 2 ** failures)) ("full jitter").
    base_backoff_s: float = 0.05
    max_backoff_s: float = 5.0
    # How long a claim holds a payment. The sinks get 80% of it for a batch (then the batch
    # counts as failed); a relay that still takes longer marks nothing, and the payment is
    # delivered again by the next holder. Keep batch_size x sink latency well below it.
    lease_s: float = 30.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def _host_id() -> str:
    """This host, as far as process ids mean anything: the hostname plus, on Linux, the pid
    namespace (containers sharing a hostname do not share process ids)."""
    host = socket.gethostname()[:80]
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return host
    return f"{host}/{namespace.removeprefix('pid:[').removesuffix(']')}"


_HOST = _host_id()
_PROCESS = secrets.token_hex(4)  # tells this process from an earlier one with the same pid


def new_owner() -> str:
    """A relay's lease owner id: unique per relay object; names its host and process, so a
    restarted relay can tell that a lease's owner died (``owner_is_dead``)."""
    return f"{_HOST}:{os.getpid()}:{_PROCESS}:{secrets.token_hex(4)}"


def owner_is_dead(owner: str) -> bool:
    """True only when ``owner`` is provably a dead relay of this host: its process no longer
    runs, or this process reuses its pid. Anything else (another host, a live process, a
    foreign owner format) counts as alive: its leases expire by themselves."""
    parts = owner.rsplit(":", 3)
    if len(parts) != 4 or parts[0] != _HOST or not parts[1].isdigit() or os.name != "posix":
        return False
    pid, process = int(parts[1]), parts[2]
    if pid == os.getpid():
        return process != _PROCESS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by another user
        return False
    return False


def backoff_delay(settings: RelaySettings, failures: int, rng: Callable[[], float]) -> float:
    """Full jitter: uniform in (0, min(max, base * 2 ** (failures - 1))], never 0, so a failed
    payment is never due again at the same instant."""
    cap = min(settings.max_backoff_s, settings.base_backoff_s * math.pow(2, max(failures - 1, 0)))
    return cap * (1.0 - rng())


class OutboxRelay:
    """Publishes a store's pending outbox messages after commit, payment by payment.

    One relay object runs one pass at a time (``publish_pending``); several relay objects - in
    one process or many - share a store safely through leases. ``clock`` and ``rng`` are
    injectable for tests (backoff is computed from them).
    """

    def __init__(
        self,
        store: PaymentStore,
        sinks: Sequence[EventSink],
        hooks: Hooks,
        settings: RelaySettings | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        rng: Callable[[], float] = random.random,
        owner: str | None = None,
        poll_interval: float | None = None,
    ) -> None:
        self._store = store
        self._sinks = tuple(sinks)
        self._hooks = hooks
        self._settings = settings or RelaySettings()
        self._clock = clock
        self._rng = rng
        self.owner = owner or new_owner()
        # Seconds between looks at the store even without a wake-up (commits made by other
        # processes); None: only wake-ups and due backoffs.
        self.poll_interval = poll_interval
        self._lease = timedelta(seconds=self._settings.lease_s)
        self._wakeup = anyio.Event()
        self._woken = False
        self._pass_lock = anyio.Lock()
        self._claimed_at = self._clock()  # the ``now`` of the latest claim
        self._started = False  # dead relays' leases released (before the first pass)
        self._stopping = False
        self.published = 0
        self.failed = 0
        self.parked = 0

    @property
    def settings(self) -> RelaySettings:
        return self._settings

    @settings.setter
    def settings(self, settings: RelaySettings) -> None:  # before running (e.g. from the CLI)
        self._settings = settings
        self._lease = timedelta(seconds=settings.lease_s)

    def notify(self) -> None:
        """Called by the store after a commit: there is something to publish."""
        if not self._woken:
            self._woken = True
            self._wakeup.set()

    async def run(self) -> None:
        """Publish until cancelled. Sleeps until a commit, the earliest due backoff or another
        relay's lease expiry (or ``poll_interval``), whichever comes first."""
        errors = 0
        while not self._stopping:
            # Reset before draining: a commit made while draining wakes the next round.
            self._wakeup = anyio.Event()
            self._woken = False
            try:
                await self.drain()
                due = await self._store.outbox_next_due(self.owner, self._claimed_at)
            except Exception:
                errors += 1
                delay = backoff_delay(self._settings, errors, lambda: 0.0)
                log.exception("outbox relay: store failed; retrying in %.2fs", delay)
                await anyio.sleep(delay)
                continue
            errors = 0
            timeout = math.inf
            if due is not None:
                timeout = max((due - self._clock()).total_seconds(), 0.0)
            if self.poll_interval is not None:
                timeout = min(timeout, self.poll_interval)
            if self._stopping:
                return
            with anyio.move_on_after(timeout):
                await self._wakeup.wait()

    def stop(self) -> None:
        """Finish the round in progress, then return from :meth:`run` (a wait ends now). The
        service stops its relay this way rather than cancelling it mid-query: a database call
        cancelled halfway leaves the driver a connection to tear down, which aiosqlite could
        not always finish at interpreter shutdown (a hang, seen about 1 run in 40)."""
        self._stopping = True
        self._wakeup.set()

    async def drain(self) -> int:
        """Publish everything deliverable now (for tests and shutdown); returns how many
        messages were published. Payments backing off or leased by another relay are left.

        Between two batches the store settles the one delivered and claims the next in one
        step (``outbox_settle_and_claim``): on SQLite one wait for the write lock, not two,
        which under load decided whether the relay kept up with the payments."""
        total = 0
        async with self._pass_lock:
            batch = await self._claim()
            while batch:
                # Once handed out, a batch is seen through to its settle even if the relay is
                # being cancelled (a service shutting down): stopping between delivery and
                # settle would deliver it again, out of order with what follows. Bounded by
                # the lease: past it, settling is refused anyway.
                count, deadline = len(batch), anyio.current_time() + self._settings.lease_s
                with anyio.CancelScope(shield=True, deadline=deadline) as scope:
                    delivered, failures = await self._deliver(batch)
                    now = self._clock()
                    self._claimed_at = now
                    settled, batch = await self._store.outbox_settle_and_claim(
                        self.owner, now, delivered, failures, self._settings.max_attempts,
                        now + self._lease, self._settings.batch_size,
                    )  # fmt: skip
                    self._settled(settled)
                    total += settled.published
                if scope.cancelled_caught:
                    # Settled or not, claimed or not: unknown. Claim afresh (our own
                    # leases are ours to take again).
                    self._outlived(count)
                    batch = await self._claim()
                    continue
                if not batch:
                    break
                try:
                    await anyio.lowlevel.checkpoint()  # let payments run between batches
                except BaseException:
                    # Cancelled holding a batch it has not delivered: hand its payments
                    # back now rather than leave them leased until the lease expires.
                    with anyio.CancelScope(shield=True):
                        await self._store.outbox_release([self.owner])
                    raise
        return total

    async def publish_pending(self) -> int:
        """One pass: claim up to ``batch_size`` messages, deliver, settle. Returns how many
        messages were published (failed ones are recorded for a later retry, not raised)."""
        async with self._pass_lock:
            batch = await self._claim()
            if not batch:
                return 0
            with anyio.CancelScope(
                shield=True, deadline=anyio.current_time() + self._settings.lease_s
            ) as scope:  # as in drain
                delivered, failures = await self._deliver(batch)
                settled = await self._store.outbox_settle(
                    self.owner, self._clock(), delivered, failures, self._settings.max_attempts
                )
                self._settled(settled)
            if scope.cancelled_caught:
                self._outlived(len(batch))
                return 0
            return settled.published

    async def _claim(self) -> list[OutboxMessage]:
        if not self._started:
            self._started = True
            await self.release_dead_owners()
        now = self._clock()
        self._claimed_at = now
        return await self._store.outbox_claim(
            self.owner, now, now + self._lease, self._settings.batch_size
        )

    def _outlived(self, count: int) -> None:
        log.warning(
            "outbox relay %s: settling a batch of %d message(s) outlived its %.0fs "
            "lease; it will be delivered again",
            self.owner,
            count,
            self._settings.lease_s,
        )

    async def _deliver(
        self, batch: Sequence[OutboxMessage]
    ) -> tuple[Sequence[OutboxMessage], Sequence[OutboxFailure]]:
        """Hand ``batch`` to the sinks, then its accepted messages to the listeners; returns
        (the messages delivered, the failures to record)."""
        errors: dict[str, str] = {}
        if self._sinks:
            # The sinks get most of the lease; the rest is for the listeners and the settle.
            budget = self._settings.lease_s * 0.8
            with anyio.move_on_after(budget) as publishing:
                errors = await self._publish(batch)
            if publishing.cancelled_caught:  # a hanging sink fails the whole batch
                error = f"sinks did not take the batch within {budget:.3g}s"
                errors = dict.fromkeys((m.payment_id for m in batch), error)
                log.warning("outbox: %s (%d message(s))", error, len(batch))
        delivered = batch if not errors else [m for m in batch if m.payment_id not in errors]
        on_event = self._hooks.on_event
        for message in delivered:
            await on_event(message.event)
        return delivered, (self._failures(batch, errors) if errors else ())

    def _settled(self, settled: OutboxSettled) -> None:
        self.published += settled.published
        self.failed += settled.failed
        self.parked += len(settled.parked)
        if settled.parked:
            log.error(
                "outbox: parked %d message(s) after %d failed attempts: %s",
                len(settled.parked),
                self._settings.max_attempts,
                ", ".join(settled.parked[:10]) + (" ..." if len(settled.parked) > 10 else ""),
            )
        if settled.refused:
            log.warning(
                "outbox relay %s: lease lost before settling; %d message(s) will be "
                "delivered again by the relay holding them now",
                self.owner,
                settled.refused,
            )

    async def release_dead_owners(self) -> list[str]:
        """Drop the leases of relays of this host whose process died (a crash, ``kill -9``),
        so their payments are delivered now rather than after the leases expire. Runs before
        a relay's first pass; returns the owners released."""
        owners = await self._store.outbox_lease_owners(self._clock())
        dead = [owner for owner in owners if owner != self.owner and owner_is_dead(owner)]
        if dead:
            count = await self._store.outbox_release(dead)
            log.warning("outbox: released %d lease(s) of dead relay(s) %s", count, dead)
        return dead

    async def _publish(self, batch: Sequence[OutboxMessage]) -> dict[str, str]:
        """Hand ``batch`` to every sink; returns {payment id: error} for the payments that
        some sink refused. A failed batch of several payments is retried payment by payment,
        so one payment's failure does not fail the others."""
        errors: dict[str, str] = {}
        for sink in self._sinks:
            todo = batch if not errors else [m for m in batch if m.payment_id not in errors]
            if not todo:
                break
            try:
                await sink.publish(todo)
                continue
            except Exception as error:
                first_error = _describe(sink, error)
            groups: dict[str, list[OutboxMessage]] = {}
            for message in todo:
                groups.setdefault(message.payment_id, []).append(message)
            if len(groups) == 1:
                errors[todo[0].payment_id] = first_error
            else:
                for payment_id, messages in groups.items():
                    try:
                        await sink.publish(messages)
                    except Exception as error:
                        errors[payment_id] = _describe(sink, error)
            log.warning(
                "outbox: sink %r failed for %d payment(s) (of %d in the batch): %s",
                sink.name,
                len([p for p in groups if p in errors]),
                len(groups),
                first_error,
            )
        return errors

    def _failures(
        self, batch: Sequence[OutboxMessage], errors: dict[str, str]
    ) -> list[OutboxFailure]:
        attempted: dict[str, list[OutboxMessage]] = {}
        for message in batch:
            if message.payment_id in errors:
                attempted.setdefault(message.payment_id, []).append(message)
        now = self._clock()
        failures = []
        for payment_id, messages in attempted.items():
            failures_so_far = max(m.attempts for m in messages) + 1
            delay = backoff_delay(self._settings, failures_so_far, self._rng)
            failures.append(
                OutboxFailure(
                    payment_id,
                    tuple(m.message_id for m in messages),
                    errors[payment_id],
                    now + timedelta(seconds=delay),
                )
            )
        return failures


def _describe(sink: EventSink, error: BaseException) -> str:
    return f"{sink.name}: {error!r}"
