"""In-process locks: one anyio.Lock per key while someone holds or waits for it.

Entries are removed when the last holder leaves, so the table stays as small as the number of
payments in flight. Tokens increase on every grant, across keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from ..errors import LockTimeout
from .base import Lease


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.users = 0


class MemoryLockManager:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._token = 0

    @asynccontextmanager
    async def hold(self, key: str, timeout: float) -> AsyncIterator[Lease]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            if entry.users == 1:
                # Uncontended (nobody else holds or waits): skip the cancel scope.
                await entry.lock.acquire()
            else:
                with anyio.move_on_after(timeout) as scope:
                    await entry.lock.acquire()
                if scope.cancelled_caught:
                    raise LockTimeout(key, timeout)
            try:
                self._token += 1
                yield Lease(key, self._token)
            finally:
                entry.lock.release()
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]

    def held_keys(self) -> int:
        return len(self._entries)

    async def close(self) -> None:
        return None
