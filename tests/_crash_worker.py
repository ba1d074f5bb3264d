"""A payment worker that kills itself with SIGKILL at a chosen fail point.

Run as a script by tests/test_crash_recovery.py:
    python _crash_worker.py STORE_URL LEDGER_PATH DELIVERED_PATH FAILPOINT KILL_AT PAYMENTS

It pays PAYMENTS payments (reference and idempotency key ``o<i>``) through a real SqlStore and
a gateway whose ledger lives in its own SQLite file (it survives the kill, like a real
processor), printing ``ACK <i> <payment id> <state>`` after each acknowledged payment. At the
KILL_AT-th time FAILPOINT is reached, the process SIGKILLs itself: no cleanup, no flush.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from aegispay import (
    AuthorizeRequest,
    CaptureRequest,
    FeeModel,
    GatewayResult,
    HookContext,
    Money,
    Outcome,
    Payment,
    PaymentRequest,
    RefundRequest,
    StatusRequest,
    VoidRequest,
    build_service,
    hookimpl,
    make_plugin_host,
)
from aegispay.observe import GatewayCall
from aegispay.outbox import OutboxMessage
from aegispay.settings import PluginConfig, Settings

FAILPOINTS = ("after_create", "after_intent", "after_gateway", "during_relay")


class LedgerGateway:
    """A processor with a durable ledger, idempotent by key, as real gateways are."""

    name = "ledger"
    supported_currencies = None
    fees = FeeModel()

    def __init__(self, path: str) -> None:
        # Several worker processes may share the ledger: wait for its lock, never fail on it.
        self.db = sqlite3.connect(path, isolation_level=None, timeout=60)
        self.db.execute("pragma journal_mode=wal")
        self.db.execute(
            "create table if not exists charges (key text primary key, payment_id text,"
            " amount integer, captured integer)"
        )
        self.db.execute("create table if not exists refunds (key text primary key, amount integer)")

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        self.db.execute(
            "insert or ignore into charges values (?, ?, ?, ?)",
            (
                request.idempotency_key,
                request.payment_id,
                request.amount.minor,
                int(request.capture),
            ),
        )
        return GatewayResult(
            Outcome.SUCCEEDED, reference=request.idempotency_key, captured=request.capture
        )

    async def get_status(self, request: StatusRequest) -> GatewayResult:
        row = self.db.execute(
            "select captured from charges where key = ?", (request.idempotency_key,)
        ).fetchone()
        if row is None:
            return GatewayResult(Outcome.NOT_SENT, message="no such request")
        return GatewayResult(
            Outcome.SUCCEEDED, reference=request.idempotency_key, captured=bool(row[0])
        )

    async def capture(self, request: CaptureRequest) -> GatewayResult:
        self.db.execute(
            "update charges set captured = 1 where key = ?", (request.gateway_reference,)
        )
        return GatewayResult(Outcome.SUCCEEDED, reference=request.gateway_reference, captured=True)

    async def void(self, request: VoidRequest) -> GatewayResult:
        return GatewayResult(Outcome.SUCCEEDED, reference=request.gateway_reference)

    async def refund(self, request: RefundRequest) -> GatewayResult:
        self.db.execute(
            "insert or ignore into refunds values (?, ?)",
            (request.idempotency_key, request.amount.minor),
        )
        return GatewayResult(Outcome.SUCCEEDED, reference=request.idempotency_key)


class DeliveryLog:
    """An event sink that appends every delivered message id to a file (fsynced)."""

    name = "delivery-log"

    def __init__(self, path: str, on_publish: Callable[[], None]) -> None:
        self.path = path
        self.on_publish = on_publish

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        self.on_publish()
        # Synchronous on purpose: the delivery must be on disk before publish returns.
        with open(self.path, "a") as log:  # noqa: ASYNC230
            log.writelines(f"{m.message_id}\n" for m in messages)
            log.flush()
            os.fsync(log.fileno())


class CrashPlugin:
    def __init__(self, ledger: str, delivered: str, failpoint: str, kill_at: int) -> None:
        self.gateway = LedgerGateway(ledger)
        self.sink = DeliveryLog(delivered, lambda: self._reach("during_relay"))
        self.failpoint = failpoint
        self.kill_at = kill_at
        self.reached = 0

    def _reach(self, point: str) -> None:
        if point == self.failpoint:
            self.reached += 1
            if self.reached == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    @hookimpl
    def aegispay_register_gateways(
        self, register: Callable[[Any], None], config: PluginConfig
    ) -> None:
        register(self.gateway)

    @hookimpl
    def aegispay_register_event_sinks(
        self, register: Callable[[Any], None], config: PluginConfig
    ) -> None:
        register(self.sink)

    @hookimpl
    def aegispay_check_fraud(self, payment: Payment, context: HookContext) -> None:
        # The first step of processing: the payment is built and validated, but pay() stores
        # it (and claims its key) only with its first decision, the intent; nothing was sent.
        self._reach("after_create")

    @hookimpl
    def aegispay_before_gateway_call(self, call: GatewayCall) -> None:
        self._reach("after_intent")  # the intent (PROCESSING) is committed by now

    @hookimpl
    def aegispay_after_gateway_call(
        self, call: GatewayCall, result: GatewayResult, elapsed_ms: float
    ) -> None:
        self._reach("after_gateway")  # the gateway acted; its result is not committed yet


def build(store_url: str, plugin: object) -> Any:
    host = make_plugin_host(
        plugins=[plugin], builtins=True, entry_points=False, deny=["simulated_gateways"]
    )
    return build_service(Settings(store=store_url), host=host)


def request(i: int) -> PaymentRequest:
    return PaymentRequest(Money(1000 + i, "USD"), customer_id=f"c{i}", reference=f"o{i}")


async def main(
    store_url: str, ledger: str, delivered: str, failpoint: str, kill_at: int, n: int
) -> None:
    service = build(store_url, CrashPlugin(ledger, delivered, failpoint, kill_at))
    async with service:
        for i in range(n):
            payment = await service.pay(request(i), idempotency_key=f"o{i}")
            print(f"ACK {i} {payment.id} {payment.state.value}", flush=True)
    await service.aclose()


if __name__ == "__main__":
    store_url, ledger, delivered, failpoint, kill_at, n = sys.argv[1:7]
    assert failpoint in FAILPOINTS, failpoint
    Path(delivered).touch()
    anyio.run(main, store_url, ledger, delivered, failpoint, int(kill_at), int(n))
