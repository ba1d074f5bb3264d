"""The janitor: a running service's periodic recovery task.

Every ``engine.reconcile_interval_s`` seconds (0 switches it off) the janitor runs one *pass*:

1. :meth:`PaymentService.reconcile` settles payments left open at a gateway (PROCESSING,
   UNKNOWN, REQUIRES_ACTION, a pending capture, refund or void) unchanged for
   ``engine.reconcile_after_s`` seconds, by a status lookup with the same idempotency key -
   or, when the lookups cannot see a lost create (Stripe's lagging search, PayPal) and the
   gateway dedupes creates, by creating it again with the same key at the same gateway
   (``engine.retry.repeat_unknown_create``, within the gateway's key retention);
2. :meth:`PaymentService.resume_idempotency_keys` finishes keyed ``pay`` requests left in
   flight as long: it processes a payment a crash left INITIATED and completes the keys of
   payments now settled;
3. the store's ``prune`` deletes what serves nothing any more, ``PRUNE_BATCH`` rows at a time
   and at most ``PRUNE_BATCHES`` batches a pass (the next pass goes on): outbox messages
   published more than ``engine.outbox_retention_s`` ago (0 keeps them) and completed
   idempotency records past their expiry. Without it both tables grow with every payment.

Both are idempotent and lock-protected, so a pass racing live requests, another janitor or
``aegispay reconcile`` costs duplicate work at worst, never a second charge. The first pass
comes one interval after the service starts (a CLI command that enters the service briefly
runs none). When there is nothing to do a pass is three store calls and one lock grant.

* **One pass at a time**: a pass takes the lock ``aegispay:janitor`` from the service's lock
  manager without waiting; if it is held - by a pass of this process (``run_once`` called
  while the loop runs one), or of another process sharing the locks (Redis) - the pass is
  skipped and reported as such. With in-process locks, every process runs its own passes.
* **Never fatal**: an error ends the pass, not the service: it is logged and reported, and
  the next pass waits longer (the interval doubled for each failure in a row, up to
  ``MAX_BACKOFF`` intervals). Errors about single payments are only counted in the passes'
  reports. Cancellation is never swallowed.
* **Stops with the service**: the loop runs in the service's task group and is cancelled on
  ``__aexit__``; a pass cut short is like a crash at that point, which both passes are built
  to survive.

Tests drive passes with :meth:`Janitor.run_once` (and the service's ``clock=``), and the loop
with a fake ``sleep``; nothing here reads the wall clock.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from .errors import AegisPayError, LockTimeout
from .store.base import PaymentStore, Pruned

if TYPE_CHECKING:
    from .service import PaymentService, ReconcileReport, ResumeReport

log = logging.getLogger("aegispay.janitor")

LOCK_KEY = "aegispay:janitor"
#: Rows of each kind one prune statement deletes, and how many statements one pass runs.
PRUNE_BATCH = 1000
PRUNE_BATCHES = 20
#: After failed passes in a row, the wait grows up to this many intervals.
MAX_BACKOFF = 10


@attrs.frozen
class JanitorReport:
    """One pass: what each step did (None: it failed, see ``failures``, or did not run).

    ``failures`` maps a step (``lock``, ``reconcile``, ``resume``, ``prune``) to the error
    that ended it; ``skipped`` says that another pass held the janitor's lock, so this one
    did nothing.
    """

    started_at: datetime
    finished_at: datetime
    reconcile: ReconcileReport | None = None
    resume: ResumeReport | None = None
    pruned: Pruned | None = None
    failures: Mapping[str, str] = attrs.field(factory=dict)
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return not self.skipped and not self.failures

    @property
    def did_something(self) -> bool:
        """True if the pass found a payment or a key to look at, or something to prune."""
        return bool(
            (self.reconcile is not None and self.reconcile.examined)
            or (self.resume is not None and self.resume.examined)
            or (self.pruned is not None and self.pruned != Pruned())
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "reconcile": self.reconcile.to_dict() if self.reconcile is not None else None,
            "resume": self.resume.to_dict() if self.resume is not None else None,
            "pruned": attrs.asdict(self.pruned) if self.pruned is not None else None,
            "failures": dict(self.failures),
            "skipped": self.skipped,
        }


class Janitor:
    """Runs recovery passes for ``service``: see the module docstring.

    ``last_report`` is the last pass that ran (not a skipped one); ``passes`` counts them and
    ``consecutive_failures`` the failed ones since the last good one. ``sleep`` waits between
    passes (a test replaces it to step the loop).
    """

    def __init__(
        self,
        service: PaymentService,
        interval_s: float,
        after_s: float,
        *,
        sleep: Callable[[float], Awaitable[Any]] = anyio.sleep,
    ) -> None:
        self.service = service
        self.interval_s = interval_s
        self.after_s = after_s
        self.sleep = sleep
        self.last_report: JanitorReport | None = None
        self.passes = 0
        self.consecutive_failures = 0
        self._busy = False
        self._stopping = False
        self._sleeping: anyio.CancelScope | None = None

    @property
    def enabled(self) -> bool:
        """Whether the service runs the loop (``run_once`` works either way)."""
        return self.interval_s > 0

    def delay(self) -> float:
        """The wait before the next pass: the interval, longer after failed passes."""
        factor = min(1 << min(self.consecutive_failures, 16), MAX_BACKOFF)
        return self.interval_s * factor

    async def run(self) -> None:
        """Run a pass after every :meth:`delay` until cancelled (a no-op when disabled)."""
        if not self.enabled:
            return
        while not self._stopping:
            with anyio.CancelScope() as self._sleeping:
                await self.sleep(self.delay())
            self._sleeping = None
            if self._stopping:
                return
            await self.run_once()

    def stop(self) -> None:
        """Finish the pass in progress (if any), then return from :meth:`run`; a wait for the
        next pass ends now. The service stops its janitor this way rather than cancelling it
        mid-query: a database call cancelled halfway leaves the driver a connection to tear
        down, which aiosqlite could not always finish at interpreter shutdown."""
        self._stopping = True
        if self._sleeping is not None:
            self._sleeping.cancel()

    async def run_once(self) -> JanitorReport:
        """Run one pass now, unless one is running (then return a skipped report). Never
        raises, except to be cancelled."""
        started = self.service.clock()
        if self._busy:
            return self._skipped(started)
        self._busy = True
        try:
            async with AsyncExitStack() as stack:
                try:
                    await stack.enter_async_context(self.service.locks.hold(LOCK_KEY, 0))
                except LockTimeout:
                    return self._skipped(started)
                except Exception as error:  # e.g. Redis unreachable
                    report = self._finish(started, None, None, {"lock": _describe(error)})
                else:
                    report = await self._pass(started)
            return report
        finally:
            self._busy = False

    async def _pass(self, started: datetime) -> JanitorReport:
        failures: dict[str, str] = {}
        reconcile: ReconcileReport | None = None
        resume: ResumeReport | None = None
        try:
            reconcile = await self.service.reconcile(self.after_s)
        except Exception as error:  # a pass must never take the service down
            failures["reconcile"] = _describe(error, "reconcile")
        try:
            resume = await self.service.resume_idempotency_keys(self.after_s)
        except Exception as error:
            failures["resume"] = _describe(error, "resume")
        try:
            pruned = await self._prune()
        except Exception as error:
            failures["prune"] = _describe(error, "prune")
            pruned = None
        return self._finish(started, reconcile, resume, failures, pruned)

    async def _prune(self) -> Pruned:
        service = self.service
        return await prune(
            service.store, service.clock(), service.engine.outbox_retention_s, PRUNE_BATCHES
        )

    def _finish(
        self,
        started: datetime,
        reconcile: ReconcileReport | None,
        resume: ResumeReport | None,
        failures: dict[str, str],
        pruned: Pruned | None = None,
    ) -> JanitorReport:
        report = JanitorReport(started, self.service.clock(), reconcile, resume, pruned, failures)
        self.last_report = report
        self.passes += 1
        if failures:
            self.consecutive_failures += 1
            log.warning(
                "janitor pass failed (%s); next pass in %gs",
                "; ".join(f"{step}: {error}" for step, error in failures.items()),
                self.delay(),
            )
        else:
            self.consecutive_failures = 0
        if report.did_something:
            log.info("janitor pass: %s", report.to_dict())
        return report

    def _skipped(self, started: datetime) -> JanitorReport:
        log.debug("janitor pass skipped: another pass holds %r", LOCK_KEY)
        return JanitorReport(started, started, skipped=True)


async def prune(
    store: PaymentStore, now: datetime, retention_s: float, batches: int | None = None
) -> Pruned:
    """``store.prune`` in batches of ``PRUNE_BATCH`` until one comes back short (or after
    ``batches``): messages published more than ``retention_s`` before ``now`` (0 keeps them),
    completed keys expired by ``now``. A janitor pass and ``aegispay db prune`` both run it."""
    published_before = published_cutoff(now, retention_s)
    total, done = Pruned(), 0
    while batches is None or done < batches:
        batch = await store.prune(published_before, now, PRUNE_BATCH)
        total, done = total + batch, done + 1
        if max(batch.messages, batch.keys) < PRUNE_BATCH:
            break
    return total


def published_cutoff(now: datetime, retention_s: float) -> datetime | None:
    """Messages published before this may be pruned; None (retention 0): none may."""
    return now - timedelta(seconds=retention_s) if retention_s > 0 else None


def _describe(error: BaseException, step: str = "lock") -> str:
    if not isinstance(error, AegisPayError):  # a bug rather than an outage: keep the trace
        log.warning("janitor: %s raised", step, exc_info=error)
    return f"{type(error).__name__}: {error}"
