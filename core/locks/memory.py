"""In-process locks: FIFO per key, with an entry only while someone holds or waits.

The uncontended path takes the lock without suspending (no cancel scope, no checkpoint), so a
lock costs about a microsecond; waiters park on an anyio Event with a timeout. Entries are
removed when the last holder leaves, so the table is as small as the number of payments in
flight. Tokens increase on every grant, across keys, and start from the clock (microseconds),
so they keep increasing across restarts of the process.
"""

from __future__ import annotations

import time
from collections import deque

import anyio

from ..errors import LockTimeout
from .base import Lease


class _Entry:
    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: deque[anyio.Event] = deque()


class _Hold:
    """``async with manager.hold(key, timeout) as lease`` (a class, not a generator-based
    context manager: this is entered for every operation on every payment)."""

    __slots__ = ("_entry", "_key", "_manager", "_timeout")

    def __init__(self, manager: MemoryLockManager, key: str, timeout: float) -> None:
        self._manager = manager
        self._key = key
        self._timeout = timeout
        self._entry: _Entry | None = None

    async def __aenter__(self) -> Lease:
        manager = self._manager
        entry = manager._held.get(self._key)
        if entry is None:
            entry = manager._held[self._key] = _Entry()
        else:
            await manager._wait(self._key, entry, self._timeout)
        self._entry = entry
        # Never below the clock in microseconds: a durable store remembers the highest token
        # per payment, and a restarted process must not hand out smaller ones.
        manager._token = max(manager._token + 1, time.time_ns() // 1000)
        return Lease(self._key, manager._token)

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._entry is not None
        self._manager._release(self._key, self._entry)


class MemoryLockManager:
    def __init__(self) -> None:
        self._held: dict[str, _Entry] = {}
        self._token = 0

    def hold(self, key: str, timeout: float) -> _Hold:
        return _Hold(self, key, timeout)

    async def _wait(self, key: str, entry: _Entry, timeout: float) -> None:  # noqa: ASYNC109
        granted = anyio.Event()
        entry.waiters.append(granted)
        try:
            with anyio.fail_after(timeout):
                await granted.wait()
        except TimeoutError:
            self._give_up(key, entry, granted)
            raise LockTimeout(key, timeout) from None
        except BaseException:  # cancelled from outside
            self._give_up(key, entry, granted)
            raise

    def _give_up(self, key: str, entry: _Entry, granted: anyio.Event) -> None:
        if granted.is_set():
            # Granted just as we gave up: pass the lock on rather than leak it.
            self._release(key, entry)
        else:
            entry.waiters.remove(granted)

    def _release(self, key: str, entry: _Entry) -> None:
        if entry.waiters:
            entry.waiters.popleft().set()  # hand over directly: FIFO, no thundering herd
        else:
            del self._held[key]

    def held_keys(self) -> int:
        return len(self._held)

    async def close(self) -> None:
        return None
