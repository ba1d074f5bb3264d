"""``aegispay bench``: the speed figures, each next to a baseline measured in the same run.

Absolute numbers drift between machines (and with whatever else the machine is doing), so
every figure is printed beside a bare-asyncio baseline measured by the same process: a loop
doing the minimal work of a payment (three hook calls, four state writes, three event
objects), as in the project's reference baselines. Nothing here asserts a target; the
figures and the command go into docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import gc
import platform
import resource
import time
from typing import Any

import anyio
import attrs
import pluggy

from .settings import Settings


def bare_asyncio_baseline(payments: int = 50_000, concurrency: int = 1000) -> float:
    """Payments/s of a bare asyncio loop doing a minimal in-memory payment."""
    spec = pluggy.HookspecMarker("baseline")
    impl = pluggy.HookimplMarker("baseline")

    class Spec:
        @spec
        def baseline_validate(self, payment: str) -> None: ...
        @spec
        def baseline_route(self, payment: str) -> None: ...
        @spec
        def baseline_event(self, payment: str) -> None: ...

    class Impl:
        @impl
        def baseline_validate(self, payment: str) -> int:
            return 1

        @impl
        def baseline_route(self, payment: str) -> int:
            return 1

        @impl
        def baseline_event(self, payment: str) -> int:
            return 1

    @attrs.frozen
    class Event:
        payment_id: str
        version: int
        kind: str

    pm = pluggy.PluginManager("baseline")
    pm.add_hookspecs(Spec)
    pm.register(Impl())
    store: dict[str, Any] = {}
    events: list[Event] = []

    async def pay(i: int) -> None:
        pid = f"p{i}"
        pm.hook.baseline_validate(payment=pid)
        store[pid] = ("initiated", 1)
        events.append(Event(pid, 1, "initiated"))
        pm.hook.baseline_route(payment=pid)
        store[pid] = ("processing", 2)
        events.append(Event(pid, 2, "processing"))
        await asyncio.sleep(0)  # the gateway call
        store[pid] = ("authorized", 3)
        store[pid] = ("completed", 4)
        events.append(Event(pid, 3, "completed"))
        pm.hook.baseline_event(payment=pid)

    async def main() -> float:
        counter = iter(range(payments))

        async def worker() -> None:
            for i in counter:
                await pay(i)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return payments / (time.perf_counter() - started)

    return asyncio.run(main())


def _simulate(payments: int, concurrency: int, latency_ms: float, seed: int = 0) -> dict[str, Any]:
    from .cli import _simulation_settings, _tune_gc
    from .simulation import SimulationOptions, run_simulation
    from .stack import build_service

    settings = _simulation_settings(Settings(), seed, None, latency_ms, "memory://")
    service = build_service(settings)
    ledger = service.host.plugin("simulated_gateways").ledger
    _tune_gc()
    try:
        report: dict[str, Any] = anyio.run(
            run_simulation, service, SimulationOptions(payments, concurrency, seed), ledger
        )
    finally:
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)
    return report


def memory_profile(payments: int, concurrency: int = 1000, checkpoints: int = 4) -> dict[str, Any]:
    """RSS growth per payment in each part of one long run, and the size of every
    non-store structure at the end (all should be 0 or bounded)."""
    from .cli import _simulation_settings, _tune_gc
    from .simulation import SimulationOptions, run_simulation
    from .stack import build_service

    settings = _simulation_settings(Settings(), 0, None, 0.0, "memory://")
    service = build_service(settings)
    ledger = service.host.plugin("simulated_gateways").ledger
    fraud = service.host.plugin("fraud_rules")
    marks: list[tuple[int, float]] = []
    step = max(1, payments // checkpoints)
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if done % step == 0:
            marks.append((done, _current_rss_mb()))

    _tune_gc()
    start_rss = _current_rss_mb()
    try:
        anyio.run(
            run_simulation, service, SimulationOptions(payments, concurrency, 0), ledger, progress
        )
    finally:
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)
    slopes = []
    previous = (0, start_rss)
    for count, rss in marks:
        slopes.append(round((rss - previous[1]) * 1024 * 1024 / (count - previous[0])))
        previous = (count, rss)
    store = service.store
    return {
        "payments": payments,
        "rss_mb_at": {str(count): rss for count, rss in marks},
        "bytes_per_payment_by_quarter": slopes,
        "bounded_structures_at_end": {
            "lock_table": service.locks.held_keys(),  # type: ignore[attr-defined]
            "outbox_pending": store.outbox_size(),  # type: ignore[attr-defined]
            "velocity_counter_keys": len(fraud.velocity),
            "gateway_time_entries": len(ledger.gateway_time_ms),
        },
    }


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return round(pages * resource.getpagesize() / 1024 / 1024, 1)


def run_benchmarks(
    payments: int = 50_000, latency_payments: int = 20_000, memory_payments: int = 200_000
) -> dict[str, Any]:
    baseline = bare_asyncio_baseline()
    zero = _simulate(payments, 1000, 0.0)
    latency = _simulate(latency_payments, 1000, 100.0)
    memory = memory_profile(memory_payments) if memory_payments else None
    return {
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "cpus": _cpus(),
        },
        "bare_asyncio_baseline_per_s": round(baseline),
        "zero_latency": {
            "command": f"aegispay simulate --store memory:// --latency-ms 0 --payments {payments} "
            "--concurrency 1000",
            "throughput_per_s": zero["throughput_per_s"],
            "ratio_to_baseline": round(zero["throughput_per_s"] / baseline, 3),
            "latency_ms": zero["latency_ms"],
            "duplicate_charges": zero["duplicate_charges"],
            "replay_mismatches": zero["replay_mismatches"],
        },
        "latency_100ms": {
            "command": f"aegispay simulate --store memory:// --latency-ms 100 "
            f"--payments {latency_payments} --concurrency 1000",
            "throughput_per_s": latency["throughput_per_s"],
            "latency_ms": latency["latency_ms"],
            "overhead_ms": latency["overhead_ms"],
            "duplicate_charges": latency["duplicate_charges"],
        },
        "memory": memory,
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
