"""What this process just wrote, kept so that reading it back skips decoding.

A payment's projection is loaded right after it was committed (process after create, each
step of the lifecycle), and the in-process relay reads back every event it just committed:
decoding those from JSON (orjson + cattrs) cost more per payment than writing them. The objects
are immutable, so handing out the committed object is the same as decoding its row - provided
the row is still that object: projections are only served when the row's version matches, and
events (immutable once written) by their unique id. Bounded, oldest first out.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class RecentlyWritten(Generic[K, V]):
    def __init__(self, capacity: int = 20_000) -> None:
        self._capacity = capacity
        self._items: dict[K, V] = {}

    def put(self, key: K, value: V) -> None:
        items = self._items
        items.pop(key, None)  # re-inserted: now the newest
        items[key] = value
        if len(items) > self._capacity:
            del items[next(iter(items))]

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def take(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)
