"""One pub/sub subscription per lock manager, for every waiter's release channel.

A waiter used to open a subscription of its own, holding a pooled connection for as long as
it waited: a burst of waiters on contended payments could take every connection of the
manager's pool and leave none for the acquire and release calls they were waiting on. Here one
connection carries every channel that some waiter of the manager watches. A channel is
subscribed when its first waiter comes and unsubscribed when its last one leaves, and one
reader task wakes a waiter when a release is published on it.

A release wakes one waiter of the manager, the one that has waited longest: it tries for the
lease and, if a holder in another process got it first, waits again, still first in line. One
that leaves first in line without the lease (its timeout, a cancellation) wakes the next. So a
process's waiters get a payment's lease in the order they asked for it, and a release costs
one try, not one per waiter (waking them all made n waiters on one payment cost n^2 tries).
Across processes waiters still race, and a lease that expires publishes nothing, so every
waiter also tries again when the holder's remaining lease runs out.

A waiter is let in (:meth:`ReleaseWatch.watching`) only once Redis has confirmed its channel's
subscription, so a release published after that wakes it. The lock manager tries the lease
again after entering, since a release between the first try and the subscription went to
nobody. Messages published while the connection was down are lost (Redis pub/sub keeps
nothing), so a waiter also bounds each wait by the holder's remaining lease.

asyncio only, like the lock manager.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("aegispay.locks.redis")

# How long a subscription's confirmation may take before the waiter fails.
_CONFIRM_TIMEOUT_S = 5.0


class Release:
    """One waiter's wake-up: set when a release is published on its channel (or when the
    subscription broke, with ``error``). The waiter sets ``granted`` once it has the lease."""

    __slots__ = ("error", "event", "granted")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.error: Exception | None = None
        self.granted = False


class _Channel:
    __slots__ = ("subscribed", "waiters")

    def __init__(self, subscribed: asyncio.Future[None]) -> None:
        self.subscribed = subscribed  # Redis confirmed this channel's SUBSCRIBE
        self.waiters: dict[Release, None] = {}  # in arrival order (a dict: O(1) removal)


class ReleaseWatch:
    """The shared subscription of one :class:`~aegispay.locks.redis.RedisLockManager`.

    ``fail(error)`` raises the manager's own error for a Redis error (password masked)."""

    def __init__(self, client: aioredis.Redis, fail: Callable[[Exception], NoReturn]) -> None:
        self._client = client
        self._fail = fail
        self._pubsub: Any = None  # redis-py's PubSub (partly untyped); None while unused
        self._reader: asyncio.Task[None] | None = None
        self._channels: dict[bytes, _Channel] = {}
        # Per channel, the confirmations still owed for the SUBSCRIBEs sent, in order.
        self._confirms: dict[bytes, deque[asyncio.Future[None]]] = {}
        # One (UN)SUBSCRIBE on its way at a time: redis-py's PubSub connects on first use
        # without a lock, so concurrent first subscribes would each take a pooled connection.
        self._sending = asyncio.Lock()

    def watched(self) -> int:
        """How many channels are subscribed (or being subscribed) now."""
        return len(self._channels)

    @asynccontextmanager
    async def watching(self, channel: str) -> AsyncIterator[Release]:
        """Watch ``channel`` for the block: entered once the subscription is confirmed."""
        name = channel.encode()
        release = Release()
        entry = self._channels.get(name)
        first = entry is None
        if entry is None:  # registered before the first await: later waiters join it
            entry = self._channels[name] = _Channel(asyncio.get_running_loop().create_future())
        entry.waiters[release] = None
        try:
            if first:
                await self._subscribe(name, entry.subscribed)
            try:
                with anyio.fail_after(_CONFIRM_TIMEOUT_S):
                    await asyncio.shield(entry.subscribed)
            except TimeoutError:
                self._fail(TimeoutError(f"no confirmation of the subscription to {channel}"))
            except (RedisError, OSError) as error:
                self._fail(error)
            yield release
        finally:
            waiters = entry.waiters
            was_first = next(iter(waiters)) is release
            del waiters[release]
            if was_first and waiters and not release.granted:
                # Leaving first in line without the lease (timeout, cancellation): a wake it
                # had, or a try it gave up mid-way, must not be lost - the next one tries.
                next(iter(waiters)).event.set()
            if not waiters and self._channels.get(name) is entry:
                del self._channels[name]
                with anyio.CancelScope(shield=True):
                    await self._unsubscribe(name)

    async def _subscribe(self, name: bytes, confirmed: asyncio.Future[None]) -> None:
        """Send SUBSCRIBE (starting the connection and the reader if need be); the reader
        resolves ``confirmed`` when Redis confirms it. A failed send fails ``confirmed``, so
        the waiters that joined meanwhile learn it at once."""
        if self._pubsub is None:
            self._pubsub = self._client.pubsub()
        pubsub = self._pubsub
        self._confirms.setdefault(name, deque()).append(confirmed)
        try:
            async with self._sending:
                await pubsub.subscribe(name)
        except (RedisError, OSError) as error:
            self._forget_confirm(name, confirmed)
            _fail_future(confirmed, error)
            self._fail(error)
        if self._reader is None and self._pubsub is pubsub:
            loop = asyncio.get_running_loop()
            self._reader = loop.create_task(self._read(pubsub), name="aegispay lock releases")

    def _forget_confirm(self, name: bytes, confirmed: asyncio.Future[None]) -> None:
        owed = self._confirms.get(name)
        if owed is not None and confirmed in owed:
            owed.remove(confirmed)
            if not owed:
                del self._confirms[name]

    async def _unsubscribe(self, name: bytes) -> None:
        pubsub = self._pubsub
        if pubsub is None:  # the connection broke meanwhile: nothing is subscribed
            return
        try:
            async with self._sending:
                await pubsub.unsubscribe(name)
        except (RedisError, OSError) as error:
            log.warning("lock releases: unsubscribing %r failed: %s", name, error)

    async def _read(self, pubsub: Any) -> None:
        """Wake waiters as releases arrive; end (handing the connection back) once nothing is
        subscribed and nothing is being subscribed."""
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                kind, name = message["type"], message["channel"]
                if kind == "message":
                    entry = self._channels.get(name)
                    if entry is not None and entry.waiters:
                        next(iter(entry.waiters)).event.set()  # the longest waiting
                elif kind == "subscribe":
                    owed = self._confirms.get(name)
                    if owed:
                        confirmed = owed.popleft()
                        if not owed:
                            del self._confirms[name]
                        if not confirmed.done():
                            confirmed.set_result(None)
                elif kind == "unsubscribe" and message["data"] == 0 and self._idle(pubsub):
                    self._pubsub = self._reader = None  # a new waiter starts afresh
                    await _close(pubsub)
                    return
        except Exception as error:  # Redis or anything else: no waiter may wait on a dead task
            self._broken(pubsub, error)
            await _close(pubsub)

    def _idle(self, pubsub: Any) -> bool:
        """Nothing is (being) subscribed on ``pubsub``, the current connection."""
        return not self._channels and not self._confirms and self._pubsub is pubsub

    def _broken(self, pubsub: Any, error: Exception) -> None:
        """The subscription's connection failed: every waiter and pending confirmation
        learns it, and the next waiter starts a new subscription."""
        if self._pubsub is not pubsub:
            return
        self._pubsub = self._reader = None
        for entry in self._channels.values():
            for release in entry.waiters:
                release.error = error
                release.event.set()
            _fail_future(entry.subscribed, error)
        self._channels.clear()
        for owed in self._confirms.values():
            for confirmed in owed:
                _fail_future(confirmed, error)
        self._confirms.clear()

    async def close(self) -> None:
        reader, pubsub = self._reader, self._pubsub
        self._pubsub = self._reader = None
        if reader is not None:
            reader.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(reader, return_exceptions=True)
        if pubsub is not None:
            await _close(pubsub)


def _fail_future(future: asyncio.Future[None], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # retrieved: a future nobody awaits any more logs nothing


async def _close(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except (RedisError, OSError) as error:
        log.warning("lock releases: closing the subscription failed: %s", error)
