"""The main job: run N payments through the whole pipeline and report what happened.

Requests are generated from one seeded RNG in sequence, so request *i* is the same whatever
task picks it up; the simulated gateways draw outcomes from a hash of the seed and each
request's reference. The report checks the money, not just the speed: duplicate charges found
in the gateways' own ledger, charges the store does not know about, UNKNOWN outcomes never
settled, and replayed histories that differ from the stored projections.
"""

from __future__ import annotations

import gc
import os
import random
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import attrs

from .errors import AegisPayError, StoreError
from .gateways import Outcome
from .metrics import LatencyHistogram
from .money import Money
from .payment import Payment, replay
from .requests import PaymentRequest
from .service import PaymentService
from .states import PaymentState

if TYPE_CHECKING:
    from .scenarios import Timeline

S = PaymentState

# Currency mix: (code, weight). Covers exponents 0 (JPY), 2 and 3 (KWD).
CURRENCY_MIX = (("USD", 60), ("EUR", 15), ("GBP", 8), ("JPY", 7), ("INR", 5), ("KWD", 5))


@attrs.frozen
class SimulationOptions:
    payments: int
    concurrency: int = 100
    seed: int = 0
    refund_share: float = 0.10
    retry_share: float = 0.02  # clients re-sending the same request with the same key
    approve_share: float = 0.8  # reviewed payments a person approves (the rest are voided)
    # Tags this run's idempotency keys and references: a durable store keeps earlier runs'
    # keys, and a rerun must create new payments, not replay old ones. Not part of the seed:
    # it changes no draw, so seeded runs stay reproducible.
    run_id: str = attrs.field(factory=lambda: os.urandom(4).hex())


@attrs.frozen
class PaymentSpec:
    request: PaymentRequest
    key: str
    refund: str  # "", "partial" or "full"
    resend: bool
    approve: bool


def generate(options: SimulationOptions) -> Iterator[PaymentSpec]:
    rng = random.Random(options.seed)
    random_ = rng.random
    total = sum(weight for _, weight in CURRENCY_MIX)
    # (cumulative share, code, 10**exponent): one random() picks a currency.
    mix, running = [], 0
    for code, weight in CURRENCY_MIX:
        running += weight
        mix.append((running / total, code, 10 ** Money.zero(code).exponent))
    customers = max(50, options.payments // 5)
    for i in range(options.payments):
        pick = random_()
        _, currency, unit = next(entry for entry in mix if pick < entry[0])
        # 1.00 to 500.00 in major units, whole cents (whole units without decimals).
        amount = Money(max(1, int(100 + random_() * 49_900) * unit // 100), currency)
        blocked = random_() < 0.005
        customer = f"cus_blocked_{i % 3}" if blocked else f"cus_{int(random_() * customers)}"
        roll = random_()
        refund = (
            "partial"
            if roll < options.refund_share / 2
            else ("full" if roll < options.refund_share else "")
        )
        yield PaymentSpec(
            PaymentRequest(
                amount,
                customer_id=customer,
                payment_method="pm_card_visa",
                reference=f"sim-{options.seed}-{i}",  # gateways draw by it: no run id
                metadata={"order": str(i)},
            ),
            key=f"sim-{options.seed}-{options.run_id}-{i}",
            refund=refund,
            resend=random_() < options.retry_share,
            approve=random_() < options.approve_share,
        )


@attrs.define
class _Tally:
    latency: LatencyHistogram = attrs.field(factory=LatencyHistogram)
    overhead: LatencyHistogram = attrs.field(factory=LatencyHistogram)
    outcomes: Counter[str] = attrs.field(factory=Counter)
    routed: Counter[str] = attrs.field(factory=Counter)
    attempts: dict[str, Counter[str]] = attrs.field(factory=dict)
    refunds: int = 0
    resends: int = 0
    resend_mismatches: int = 0
    errors: Counter[str] = attrs.field(factory=Counter)
    store_errors: int = 0  # payments the store failed: never expected of a run
    done: int = 0
    payment_ids: list[str] = attrs.field(factory=list)  # this run's, for the audit


async def _one(
    service: PaymentService,
    spec: PaymentSpec,
    tally: _Tally,
    ledger: Any,
    paid: Callable[[Payment], None] | None = None,
) -> None:
    started = time.perf_counter()
    payment = await service.pay(spec.request, idempotency_key=spec.key)
    tally.payment_ids.append(payment.id)
    if spec.resend:
        again = await service.pay(spec.request, idempotency_key=spec.key)
        tally.resends += 1
        if again.id != payment.id:
            tally.resend_mismatches += 1
    if paid is not None:
        paid(payment)
    elapsed_ms = (time.perf_counter() - started) * 1000
    tally.latency.record_ms(elapsed_ms)
    gateway_ms = ledger.take_gateway_time(payment.id) if ledger is not None else 0.0
    tally.overhead.record_ms(max(0.0, elapsed_ms - gateway_ms))
    if payment.attempts:
        tally.routed[payment.attempts[0].gateway] += 1
    for attempt in payment.attempts:
        counter = tally.attempts.setdefault(attempt.gateway, Counter())
        counter[attempt.outcome.value if attempt.outcome else "in_flight"] += 1
    if payment.review and payment.state is S.AUTHORIZED:
        if spec.approve:
            payment = await service.capture(payment.id)
        else:
            payment = await service.cancel(payment.id, "rejected in review")
    if spec.refund and payment.state is S.COMPLETED:
        amount = None
        if spec.refund == "partial" and payment.amount.minor > 1:
            # A third, in whole cents as the amounts are (real gateways refuse 0.001 KWD).
            cent = max(1, 10**payment.amount.exponent // 100)
            third = payment.amount.minor // 3 // cent * cent
            amount = Money(third or cent, payment.amount.currency)
        payment = await service.refund(payment.id, amount, reason="requested_by_customer")
        tally.refunds += 1


async def run_simulation(
    service: PaymentService,
    options: SimulationOptions,
    ledger: Any = None,
    progress: Callable[[int], None] | None = None,
    timeline: Timeline | None = None,
) -> dict[str, Any]:
    """Run the workload on ``service`` (already built; entered here) and return the report.

    With a ``timeline`` (registered as a plugin of ``service``), payment *i* starts at the
    timeline's arrival time for *i*, and the report gains ``timeline``: the run in time
    buckets (see :mod:`aegispay.scenarios`)."""
    tally = _Tally()
    specs = enumerate(generate(options))
    rss_start = _rss_mb()

    async def worker() -> None:
        for index, spec in specs:  # a shared iterator: each spec is taken exactly once
            try:
                if timeline is None:
                    await _one(service, spec, tally, ledger)
                else:
                    await _timed(service, spec, tally, ledger, timeline, index)
            except AegisPayError as error:
                tally.errors[type(error).__name__] += 1
                if isinstance(error, StoreError):
                    tally.store_errors += 1
            tally.done += 1
            # The in-memory store and zero-latency gateways never suspend: yield every few
            # payments so the outbox relay and the other workers get their turn, as they
            # would with real I/O.
            if tally.done % 8 == 0:
                await anyio.lowlevel.checkpoint()
            if progress is not None:
                progress(1)

    gc.collect()
    async with service:
        if timeline is not None:
            timeline.start()
        started = time.perf_counter()
        cpu_started = time.process_time()
        async with anyio.create_task_group() as group:
            for _ in range(min(options.concurrency, options.payments) or 1):
                group.start_soon(worker)
        answered = time.perf_counter() - started
    # Leaving the service publishes what the relay has not yet: the run is over only when
    # every payment is answered AND every event published. Timing only the answers would
    # flatter a relay that falls behind (its backlog would grow without bound in production).
    elapsed = time.perf_counter() - started
    # This process's CPU over the same span (every thread: aiosqlite's too; not a database
    # server's): per payment, and the share of the wall time it was busy. A share well below
    # one core means the run waited (on the database, on batches), not computed.
    cpu = time.process_time() - cpu_started
    rss_end = _rss_mb()
    audit = await audit_store(service, ledger, tally.payment_ids)
    payments = tally.done
    report: dict[str, Any] = {
        "payments": payments,
        "concurrency": options.concurrency,
        "seed": options.seed,
        "elapsed_s": round(elapsed, 3),
        "throughput_per_s": round(payments / elapsed, 1) if elapsed else 0.0,
        "answered_s": round(answered, 3),
        "publish_backlog_s": round(elapsed - answered, 3),
        "cpu_s": round(cpu, 3),
        "cpu_us_per_payment": round(cpu / payments * 1e6, 1) if payments else 0.0,
        "latency_ms": tally.latency.summary(),
        "overhead_ms": tally.overhead.summary(),
        "outcomes": dict(sorted(audit.pop("states").items())),
        "by_gateway": {
            name: {"first_choice": tally.routed.get(name, 0), "attempts": dict(sorted(c.items()))}
            for name, c in sorted(tally.attempts.items())
        },
        "refunds": tally.refunds,
        "idempotent_resends": tally.resends,
        "resend_mismatches": tally.resend_mismatches,
        "errors": dict(tally.errors),
        # A gateway error can be the scenario's point (an outage); a store error never is:
        # the CLI fails the run on it, or a broken store would pass as a fast one.
        "store_errors": tally.store_errors,
        **audit,
        "gateway_health": service.gateway_health(),
        "events_published": service.relay.published,
        "max_rss_mb": {"start": rss_start, "end": rss_end},
    }
    if timeline is not None:
        report["timeline"] = timeline.report(service.gateway_monitor)
    return report


async def _timed(
    service: PaymentService,
    spec: PaymentSpec,
    tally: _Tally,
    ledger: Any,
    timeline: Timeline,
    index: int,
) -> None:
    """One payment on the timeline: started at its arrival time, its result recorded once
    it is paid (a later refund's failure does not change whether it was paid)."""
    arrival = timeline.begin(index)
    recorded = False

    def paid(payment: Payment) -> None:
        nonlocal recorded
        recorded = True
        timeline.finish(arrival, payment)

    try:
        await _one(service, spec, tally, ledger, paid)
    finally:
        if not recorded:  # pay itself raised: the payment was not made
            timeline.payments.append((arrival, True, False, False))


async def audit_store(
    service: PaymentService, ledger: Any, payment_ids: Sequence[str] | None = None
) -> dict[str, Any]:
    """Check stored payments (``payment_ids``, default all) against their own history and the
    gateways' ledger. Payments are checked concurrently: a SQL store batches their reads."""
    states: Counter[str] = Counter()
    mismatches = 0
    known: dict[str, Payment] = {}
    unsettled = 0
    ids = iter(
        sorted(set(payment_ids)) if payment_ids is not None else await service.store.payment_ids()
    )

    async def check() -> None:
        nonlocal mismatches, unsettled
        for payment_id in ids:  # a shared iterator: each id is checked once
            stored = await service.store.load(payment_id)
            assert stored is not None
            known[payment_id] = stored
            states[stored.state.value] += 1
            if replay(await service.store.events(payment_id)) != stored:
                mismatches += 1
            if any(a.outcome in (None, Outcome.UNKNOWN) for a in stored.attempts):
                unsettled += 1

    async with anyio.create_task_group() as group:
        for _ in range(100):
            group.start_soon(check)
    report: dict[str, Any] = {
        "states": states,
        "replay_mismatches": mismatches,
        "unsettled_attempts": unsettled,
        "outbox_pending": len(await service.store.outbox_pending(10**9)),
    }
    if ledger is not None:
        orphans = 0
        for charge in ledger.charges.values():
            payment = known.get(charge.payment_id)
            recorded = payment is not None and any(
                a.idempotency_key == charge.idempotency_key
                and a.gateway_reference == charge.reference
                for a in payment.attempts
            )
            if not recorded and not charge.voided:
                orphans += 1
        report["duplicate_charges"] = ledger.duplicate_charges()
        report["unrecorded_charges"] = orphans
        report["unknown_outcomes"] = len(ledger.unknown_keys)
        report["status_lookups"] = ledger.status_lookups
    return report


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
