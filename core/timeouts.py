"""Timeouts that cost nothing when a call finishes without waiting.

A timeout can only interrupt a coroutine where it suspends. So the coroutine is first stepped
by hand: if it finishes without suspending (an in-process gateway, a cached answer), no cancel
scope is needed at all; otherwise the rest of it runs under ``anyio.fail_after``, with every
value and exception passed through unchanged, so asyncio and trio see an ordinary await.
Creating a cancel scope costs tens of microseconds, which the per-payment path cannot afford
several times over.
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


@types.coroutine
def _resume(coro: Coroutine[Any, Any, T], yielded: Any) -> Generator[Any, Any, T]:
    """Continue ``coro`` after its first suspension (which yielded ``yielded``)."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # cancellation and timeouts are thrown in here
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]


async def run_with_timeout(coro: Coroutine[Any, Any, T], seconds: float) -> T:
    """Await ``coro``; raise TimeoutError if it is still waiting after ``seconds``."""
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    except BaseException:
        coro.close()
        raise
    with anyio.fail_after(seconds):
        return await _resume(coro, yielded)
