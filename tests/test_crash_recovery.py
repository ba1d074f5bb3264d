"""Crash safety: a worker SIGKILLed between phases loses no acknowledged payment and never
charges twice; after a restart, the recovery passes (``reconcile``: status lookups of open
payments; ``resume_idempotency_keys``: keyed requests left in flight) settle every payment
before any client retries, the clients' retries with their idempotency keys get the one
payment, and every committed event is delivered at least once.

The worker (tests/_crash_worker.py) runs in its own process on a SQLite file store, with a
gateway whose ledger lives in another SQLite file, so both survive the kill as a database and
a real processor would.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from _crash_worker import CrashPlugin, build, request
from aegispay.gateways import Outcome
from aegispay.payment import replay
from aegispay.states import PaymentState
from aegispay.store.base import IdempotencyRecord
from aegispay.store.sql import SqlStore

WORKER = Path(__file__).with_name("_crash_worker.py")
PAYMENTS = 8


def run_worker(tmp: Path, failpoint: str, kill_at: int) -> tuple[int, dict[int, str]]:
    result = subprocess.run(
        [
            sys.executable,
            str(WORKER),
            f"sqlite:///{tmp / 'store.db'}",
            str(tmp / "ledger.db"),
            str(tmp / "delivered.txt"),
            failpoint,
            str(kill_at),
            str(PAYMENTS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    acks = {}
    for line in result.stdout.splitlines():
        _, index, payment_id, state = line.split()
        assert state == "completed", line
        acks[int(index)] = payment_id
    assert result.returncode == -9, (result.returncode, result.stderr[-2000:])
    return result.returncode, acks


async def upgrade(url: str) -> None:
    store = SqlStore(url)
    await store.upgrade_schema()
    await store.close()


async def recover_and_check(tmp: Path, acks: dict[int, str]) -> None:
    url = f"sqlite:///{tmp / 'store.db'}"
    service = build(url, CrashPlugin(str(tmp / "ledger.db"), str(tmp / "delivered.txt"), "", 0))
    async with service:
        # What the janitor (or `aegispay reconcile`) does after the restart: settle what the
        # crash left open, by status lookups only, then finish the keyed requests it left in
        # flight - processing a payment it left INITIATED.
        settled = await service.reconcile(older_than_s=0)
        resumed = await service.resume_idempotency_keys(older_than_s=0)
        assert settled.still_open == 0 and not settled.errors, settled
        assert resumed.still_in_flight == 0 and not resumed.errors, resumed
        for payment_id in await service.store.payment_ids():
            recovered = await service.store.load(payment_id)
            assert recovered is not None and recovered.state is PaymentState.COMPLETED
        far = datetime.now(UTC) + timedelta(days=1)
        assert await service.store.idempotency_in_flight(far) == []
        # Clients that got no acknowledgement retry with the same idempotency key.
        for i in range(PAYMENTS):
            payment = await service.pay(request(i), idempotency_key=f"o{i}")
            if i in acks:
                assert payment.id == acks[i], "an acknowledged payment was created again"
    # Leaving the service drained the outbox.
    store = service.store
    assert await store.outbox_pending(10_000) == []
    payments = {pid: await store.load(pid) for pid in await store.payment_ids()}
    by_reference = {p.reference: p for p in payments.values() if p is not None}
    assert len(payments) == PAYMENTS == len(by_reference), "one payment per idempotency key"
    delivered = set((tmp / "delivered.txt").read_text().split())
    for payment_id, payment in payments.items():
        assert payment is not None
        assert payment.state is PaymentState.COMPLETED, payment
        events = await store.events(payment_id)
        assert replay(events) == payment
        missing = {e.event_id for e in events} - delivered
        assert not missing, f"events never delivered: {sorted(missing)}"
    for index, payment_id in acks.items():
        assert payments[payment_id] is not None and payments[payment_id].reference == f"o{index}"
    await service.aclose()

    ledger = sqlite3.connect(tmp / "ledger.db")
    charges = ledger.execute("select key, payment_id from charges").fetchall()
    per_payment: dict[str, int] = {}
    for key, payment_id in charges:
        per_payment[payment_id] = per_payment.get(payment_id, 0) + 1
        payment = payments[payment_id]
        assert payment is not None
        recorded = [a for a in payment.attempts if a.idempotency_key == key]
        assert recorded and recorded[0].outcome is Outcome.SUCCEEDED, "a charge nobody recorded"
    assert all(count == 1 for count in per_payment.values()), per_payment
    assert len(per_payment) == PAYMENTS


@pytest.mark.parametrize(
    ("failpoint", "kill_at"),
    [
        ("after_create", 1),  # validated and built, fraud-checked: nothing stored yet
        ("after_create", 4),
        ("after_intent", 1),  # intent committed, the gateway never called
        ("after_intent", 4),
        ("after_gateway", 1),  # the gateway charged, the result not committed
        ("after_gateway", 4),
        ("during_relay", 1),  # events committed, their delivery cut short
        ("during_relay", 3),
    ],
)
def test_sigkill_at_a_fail_point_loses_nothing_and_charges_once(
    tmp_path: Path, failpoint: str, kill_at: int
) -> None:
    anyio.run(upgrade, f"sqlite:///{tmp_path / 'store.db'}", backend="asyncio")
    _, acks = run_worker(tmp_path, failpoint, kill_at)
    left = anyio.run(in_flight_keys, tmp_path, backend="asyncio")
    if failpoint == "after_create":
        # The payment is stored with its first decision (the intent): the killed request
        # left nothing, and was never acknowledged.
        assert left == []
    elif failpoint != "during_relay":
        # Exactly the killed request is in flight, at the point its payment reached: the key
        # moves in the same transaction as the payment ("processing" with the intent).
        assert [(r.key, r.recovery_point) for r in left] == [(f"o{kill_at - 1}", "processing")]
    anyio.run(recover_and_check, tmp_path, acks, backend="asyncio")


async def in_flight_keys(tmp: Path) -> list[IdempotencyRecord]:
    store = SqlStore(f"sqlite:///{tmp / 'store.db'}")
    try:
        return await store.idempotency_in_flight(datetime.now(UTC) + timedelta(days=1))
    finally:
        await store.close()
