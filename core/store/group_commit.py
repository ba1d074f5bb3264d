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
  for the next batch, in arrival order) - nor does any batch still running.
* ``in_flight`` batches may run at once (each on its own connection): while one waits on the
  database the next is built and sent, so a run is not bound by one batch's round trip. As
  they hold no key in common, they touch disjoint payments and keys, and the database orders
  them as it orders any concurrent transactions.
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
        in_flight: int = 1,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch: must be at least 1, got {max_batch}")
        if in_flight < 1:
            raise ValueError(f"in_flight: must be at least 1, got {in_flight}")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._keys = keys
        self._owner = owner
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._in_flight = in_flight
        self._drainers: set[asyncio.Task[None]] = set()
        self._running_keys: set[Hashable] = set()  # the keys of the batches now running
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
        if len(self._drainers) < self._in_flight:
            self._start_drainer()
        return await future

    def _start_drainer(self) -> None:
        task = asyncio.create_task(self._drain(), name="aegispay group commit")
        self._drainers.add(task)

    async def wait_idle(self) -> None:
        """Wait until everything queued has been run (for shutdown)."""
        while self._drainers:
            await asyncio.shield(next(iter(self._drainers)))

    async def _drain(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            while self._queue:
                batch, keys = self._take()
                if not batch:  # all that waits shares keys with running batches
                    break
                try:
                    await self._run(batch)
                finally:
                    self._running_keys.difference_update(keys)
        finally:
            self._drainers.discard(task)
            # Anything still queued (held back by a running batch's keys, or left when _run
            # raised BaseException) must not be stranded: the last drainer hands it on.
            if self._queue and not self._drainers:
                self._start_drainer()

    def _take(self) -> tuple[list[tuple[T, asyncio.Future[R]]], set[Hashable]]:
        """The next batch, and the keys it holds (kept from other batches while it runs)."""
        queue = self._queue
        batch: list[tuple[T, asyncio.Future[R]]] = []
        seen: set[Hashable] = set()
        if self._keys is None:
            while queue and len(batch) < self._max_batch:
                batch.append(queue.popleft())
            return batch, seen
        running = self._running_keys
        later: list[tuple[T, asyncio.Future[R]]] = []
        while queue and len(batch) < self._max_batch:
            entry = queue.popleft()
            if entry[1].done():  # its caller was cancelled while queued: nothing to write
                continue
            keys = self._keys(entry[0])
            if seen.isdisjoint(keys) and running.isdisjoint(keys):
                seen.update(keys)
                batch.append(entry)
            else:
                later.append(entry)
        queue.extendleft(reversed(later))  # they keep their place at the front
        running.update(seen)
        return batch, seen

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
