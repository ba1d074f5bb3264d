"""Group commit: concurrent callers' writes (or reads) share one database round trip.

A transaction's cost on PostgreSQL or a SQLite file is mostly fixed - the round trips and the
commit's WAL flush - and hardly grows with its rows. So the store queues concurrent requests
and a single drain task runs them in batches: whatever queued while the previous batch was in
the database forms the next one. Nothing waits on a timer; a lone request goes at once.

What holds for every caller:

* It is answered only after *its own* result is known: for a commit, after the transaction
  holding its writes committed (or after its own error). The batch function answers per item,
  so one payment's conflict fails only that payment.
* Order within a payment holds: a payment's next change is only submitted once the previous
  one was answered, and a batch never holds two items with the same key (the later one waits
  for the next batch, in arrival order).
* Cancelling a caller does not cancel the batch (others' writes are in it); the caller just
  stops waiting. As with any database call, a cancelled commit may still have committed.

asyncio only, like the SQL store that uses it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

from ..errors import StoreError

T = TypeVar("T")
R = TypeVar("R")

# What a batch function returns per item: its result, or the exception to raise in its caller.
BatchFunction = Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]]


class Coalescer(Generic[T, R]):
    """Runs ``submit``-ted items through ``run_batch`` in batches of at most ``max_batch``.

    ``keys(item)`` names what must not appear twice in one batch (for commits: the payment id
    and the idempotency key); without it any items may share a batch.
    """

    def __init__(
        self,
        run_batch: BatchFunction[T, R],
        *,
        max_batch: int = 500,
        keys: Callable[[T], Sequence[Hashable]] | None = None,
        owner: str = "the SQL store",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch: must be at least 1, got {max_batch}")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._keys = keys
        self._owner = owner
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self.batches = 0  # how many batches ran (for benchmarks and tests)
        self.items = 0

    async def submit(self, item: T) -> R:
        """Queue ``item``; return its result, or raise its error, once its batch has run."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on asyncio (trio): say so, rather than fail obscurely
            raise StoreError(
                f"{self._owner} runs on asyncio only (anyio's asyncio backend); "
                'on trio, use the in-memory store and lock (store = "memory://", no lock URL)'
            ) from None
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain(), name="aegispay group commit")
        return await future

    async def wait_idle(self) -> None:
        """Wait until everything queued has been run (for shutdown)."""
        while self._drainer is not None:
            await asyncio.shield(self._drainer)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                await self._run(batch)
        finally:
            self._drainer = None
            # Anything queued after the last take (only if _run raised BaseException) must
            # not be stranded: hand it to a new drainer.
            if self._queue:
                self._drainer = asyncio.create_task(self._drain(), name="aegispay group commit")

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        queue = self._queue
        batch: list[tuple[T, asyncio.Future[R]]] = []
        if self._keys is None:
            while queue and len(batch) < self._max_batch:
                batch.append(queue.popleft())
            return batch
        seen: set[Hashable] = set()
        later: list[tuple[T, asyncio.Future[R]]] = []
        while queue and len(batch) < self._max_batch:
            entry = queue.popleft()
            if entry[1].done():  # its caller was cancelled while queued: nothing to write
                continue
            keys = self._keys(entry[0])
            if seen.isdisjoint(keys):
                seen.update(keys)
                batch.append(entry)
            else:
                later.append(entry)
        queue.extendleft(reversed(later))  # they keep their place at the front
        return batch

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        if not batch:
            return
        self.batches += 1
        self.items += len(batch)
        try:
            results = await self._run_batch([item for item, _ in batch])
        except Exception as error:  # the whole batch failed (e.g. the database went away)
            results = [error] * len(batch)
        except BaseException as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            raise
        if len(results) != len(batch):
            mismatch = RuntimeError(
                f"group commit: batch function answered {len(results)} of {len(batch)} items"
            )
            results = [mismatch] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
