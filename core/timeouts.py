"""Gateway-call timeouts that cost almost nothing when a call finishes without waiting.

A deadline scope costs 10-20 us to set up (timer handle, scope bookkeeping), several times per
payment. A timeout can only interrupt a coroutine where it suspends, so on asyncio the call is
stepped once by hand and the timer is armed only if it suspends - the way ``asyncio.timeout``
works inside (``task.cancel()`` when it fires, ``uncancel()`` to tell our cancellation from
anybody else's), but paid for only by calls that wait. Nothing here is a cancel scope, so a
gateway adapter may open its own anyio or asyncio scopes before its first await.

trio's cancellation is scope-based, so on trio (and any other backend) the whole call simply
runs under ``anyio.fail_after``.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

import anyio
import sniffio

T = TypeVar("T")


@types.coroutine
def _resume(coro: Coroutine[Any, Any, T], yielded: Any) -> Generator[Any, Any, T]:
    """Continue ``coro`` after its first suspension (which yielded ``yielded``), passing every
    value and exception between it and the event loop unchanged."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # cancellation is thrown in here
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]


async def _asyncio_with_timeout(coro: Coroutine[Any, Any, T], seconds: float) -> T:
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]  # finished without waiting
    task = asyncio.current_task()
    assert task is not None
    fired = False

    def fire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    handle = asyncio.get_running_loop().call_later(seconds, fire)
    try:
        return await _resume(coro, yielded)
    except asyncio.CancelledError:
        # Ours alone: turn it into a timeout. Also cancelled from outside: let it propagate.
        if fired and task.uncancel() == 0:
            raise TimeoutError(f"no answer within {seconds:g}s") from None
        raise
    finally:
        handle.cancel()


async def run_with_timeout(coro: Coroutine[Any, Any, T], seconds: float) -> T:
    """Await ``coro``; raise TimeoutError if it is still waiting after ``seconds``."""
    if sniffio.current_async_library() == "asyncio":
        return await _asyncio_with_timeout(coro, seconds)
    with anyio.fail_after(seconds):
        return await coro
