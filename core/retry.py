"""Retries of gateway calls: which outcomes may be repeated, and when.

A repeat is always the *same* call: the same gateway, the same request, the same idempotency
key. Moving a payment to another gateway is failover (a new attempt with its own key, decided
by the engine after a NOT_SENT), never a retry. What may be repeated (:func:`may_repeat`):

* NOT_SENT - the request provably never reached the gateway: any operation but a status
  lookup (whose NOT_SENT is the gateway's answer "no such request", not a failure). A 429's
  ``retry_after_s`` is the least wait before the repeat.
* UNKNOWN  - it may have been processed, so only a call the gateway dedupes by our key:
  a status lookup (it changes nothing); an authorisation only at a gateway that declares
  ``idempotent_create``; a capture, void or refund (the Gateway protocol requires those to
  be deduped by key, and the engine already repeats them on ``sync_payment``).
* anything else is an answer (SUCCEEDED, PENDING, REQUIRES_ACTION) or final (DECLINED).

Once any call of a sequence was UNKNOWN, the sequence can no longer end as NOT_SENT: a later
"not sent" only says that the *repeat* did not arrive, so :class:`aegispay.gateway_calls.
GatewayCaller` reports UNKNOWN instead, and a gateway-specific decline loses
``retryable_elsewhere`` - either would let the engine fail over after a call that may have
charged.

The loop is tenacity's (``AsyncRetrying``), entered only after a first call failed, so the
success path pays for one identity test. Its wait is full jitter over exponential backoff
(``retry.Retrier.backoff``) and its stop is the attempts, the operation's deadline, the longest
wait allowed and the gateway's circuit. The jitter's random source, the sleep and the clock
are attributes of :class:`Retrier`, so tests swap them and never really wait.
"""

from __future__ import annotations

import contextvars
import logging
import random
import time
from collections.abc import Awaitable, Callable

import anyio
from tenacity import AsyncRetrying, RetryCallState

from .gateways import GatewayCapabilities, GatewayResult, Operation, Outcome
from .settings import RetrySettings

log = logging.getLogger("aegispay.retry")

# The monotonic time (``Retrier.clock``) after which no retry starts in the current service
# operation; set per operation by the service (``PaymentService._locked``), None outside one.
# Per task: asyncio and trio copy the context into each task.
operation_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "aegispay_retry_deadline", default=None
)


def may_repeat(operation: Operation, outcome: Outcome, capabilities: GatewayCapabilities) -> bool:
    """Whether a call of ``operation`` that ended ``outcome`` may be made again at the same
    gateway with the same idempotency key (see the module docstring)."""
    if outcome is Outcome.NOT_SENT:
        return operation is not Operation.STATUS
    if outcome is Outcome.UNKNOWN:
        if operation is Operation.AUTHORIZE:
            return capabilities.idempotent_create
        return True
    return False


class Retrier:
    """Runs the repeats of one gateway call under ``settings`` (:class:`RetrySettings`).

    ``rng`` returns a float in [0, 1) for the jitter; ``sleep`` waits (async); ``clock`` is
    monotonic seconds for the deadline. All three are plain attributes a test may replace.
    """

    def __init__(
        self,
        settings: RetrySettings | None = None,
        *,
        rng: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[object]] = anyio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings if settings is not None else RetrySettings()
        self.rng = rng if rng is not None else random.Random().random
        self.sleep = sleep
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def deadline(self) -> float:
        """The deadline of an operation starting now."""
        return self.clock() + self.settings.deadline_s

    def backoff(self, retry_no: int, retry_after_s: float | None = None) -> float:
        """The wait before retry ``retry_no`` (1 for the first): uniform in [0, min(max_delay,
        base * 2^(retry_no-1))), and never less than the gateway's Retry-After."""
        s = self.settings
        ceiling = min(s.max_delay_s, s.base_delay_s * 2.0 ** min(retry_no - 1, 62))
        delay = self.rng() * ceiling
        if retry_after_s is not None and retry_after_s > delay:
            delay = retry_after_s
        return delay

    async def run(
        self,
        first: GatewayResult,
        call: Callable[[], Awaitable[GatewayResult]],
        *,
        repeatable: Callable[[GatewayResult], bool],
        max_attempts: int,
        paced: bool,
        blocked: Callable[[], bool],
        describe: str,
    ) -> GatewayResult:
        """Repeat ``call`` after ``first`` (the result of its first call) while ``repeatable``
        says so, at most ``max_attempts`` calls in all; the last result is returned.

        ``paced``: wait :meth:`backoff` between calls and respect the deadline and
        ``max_delay_s``; otherwise repeat at once (status lookups with retries off, as the
        engine always did). ``blocked()`` true stops the repeats (an open circuit: the call
        would fail fast anyway)."""
        settings = self.settings
        deadline = operation_deadline.get() if paced else None
        if paced and deadline is None:
            deadline = self.deadline()
        pending = [first]

        async def attempt() -> GatewayResult:
            if pending:  # tenacity's first attempt is the call already made
                return pending.pop()
            return await call()

        def retry(state: RetryCallState) -> bool:
            outcome = state.outcome
            assert outcome is not None
            return not outcome.failed and repeatable(outcome.result())

        def wait(state: RetryCallState) -> float:
            if not paced:
                return 0.0
            outcome = state.outcome
            assert outcome is not None
            return self.backoff(state.attempt_number, outcome.result().retry_after_s)

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= max_attempts or blocked():
                return True
            if paced:
                upcoming = state.upcoming_sleep
                if upcoming > settings.max_delay_s:
                    log.info("%s: not retried: asked to wait %.3gs", describe, upcoming)
                    return True
                assert deadline is not None
                if self.clock() + upcoming > deadline:
                    log.info("%s: not retried: the operation's deadline is near", describe)
                    return True
            return False

        def before_sleep(state: RetryCallState) -> None:
            outcome = state.outcome
            assert outcome is not None
            result: GatewayResult = outcome.result()
            log.info(
                "%s: retry %d of %d in %.3fs after %s%s",
                describe,
                state.attempt_number,
                max_attempts - 1,
                state.upcoming_sleep,
                result.outcome.value,
                f" ({result.message})" if result.message else "",
            )

        def last(state: RetryCallState) -> GatewayResult:
            outcome = state.outcome
            assert outcome is not None
            final: GatewayResult = outcome.result()
            return final

        async def sleep(seconds: float) -> None:
            if seconds > 0:  # unpaced repeats (status lookups, retries off) follow at once
                await self.sleep(seconds)

        retrying = AsyncRetrying(
            sleep=sleep,
            stop=stop,
            wait=wait,
            retry=retry,
            before_sleep=before_sleep,
            retry_error_callback=last,
            reraise=True,
        )
        result: GatewayResult = await retrying(attempt)
        return result
