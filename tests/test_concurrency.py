"""Concurrency: per-payment locks, optimistic versions and fencing tokens in the store.

Tasks are synchronised with anyio Events and ``wait_all_tasks_blocked`` - never with sleeps.
"""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import anyio.lowlevel
import pytest
from aegispay import (
    AegisPayError,
    AuthorizeRequest,
    ConcurrencyConflict,
    FencingTokenRejected,
    GatewayResult,
    InvalidTransition,
    LockTimeout,
    Money,
    Operation,
    OperationNotAllowed,
    Payment,
    PaymentRequest,
    PaymentState,
    RefundRequest,
    Settings,
)
from aegispay import events as ev
from aegispay.locks.memory import MemoryLockManager
from aegispay.payment import apply
from aegispay.settings import EngineSettings
from aegispay.store.base import Change
from aegispay.store.memory import MemoryStore
from aegispay.testing import ScriptedGateway, make_test_service

pytestmark = pytest.mark.anyio

S = PaymentState
NOW = datetime(2024, 1, 1, tzinfo=UTC)


def usd(minor: int) -> Money:
    return Money(minor, "USD")


class GatedGateway(ScriptedGateway):
    """Authorisations wait at a gate the test opens; ``entered`` counts who got that far."""

    def __init__(self, name: str = "gated") -> None:
        super().__init__(name)
        self.gate = anyio.Event()
        self.entered = 0

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        self.entered += 1
        await self.gate.wait()
        return await super().authorize(request)


class YieldingGateway(ScriptedGateway):
    """Yields to the scheduler inside every mutating call, so concurrent operations interleave
    wherever the engine lets them."""

    async def refund(self, request: RefundRequest) -> GatewayResult:
        await anyio.lowlevel.checkpoint()
        return await super().refund(request)

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        await anyio.lowlevel.checkpoint()
        return await super().authorize(request)


# -- many callers, one payment -----------------------------------------------------------------


async def test_fifty_concurrent_process_calls_charge_once() -> None:
    gateway = GatedGateway()
    service = make_test_service(gateways=[gateway])
    results: list[Payment] = []

    async def process(payment_id: str) -> None:
        results.append(await service.process_payment(payment_id))

    async with service:
        created = await service.create_payment(PaymentRequest(usd(1500)))
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(process, created.id)
                await anyio.wait_all_tasks_blocked()
                # One caller is at the gateway; the other 49 queue on the payment's lock.
                assert gateway.entered == 1
                assert service.locks.held_keys() == 1
                gateway.gate.set()
        stored = await service.get_payment(created.id)

    assert len(results) == 50
    assert gateway.charge_count(created.id) == 1
    assert [c.operation for c in gateway.calls] == [Operation.AUTHORIZE]
    assert stored.state is S.COMPLETED
    assert all(result == stored for result in results)
    assert service.locks.held_keys() == 0


async def test_concurrent_refunds_never_refund_more_than_captured() -> None:
    gateway = YieldingGateway()
    service = make_test_service(gateways=[gateway])
    outcomes: list[Payment | AegisPayError] = []

    async def refund(payment_id: str) -> None:
        try:
            outcomes.append(await service.refund(payment_id, usd(100)))
        except AegisPayError as error:
            outcomes.append(error)

    async with service:
        paid = await service.pay(PaymentRequest(usd(1000)))
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(13):
                    tg.start_soon(refund, paid.id)
        stored = await service.get_payment(paid.id)

    errors = [o for o in outcomes if isinstance(o, AegisPayError)]
    assert len(outcomes) == 13
    assert len(errors) == 3
    assert all(isinstance(e, OperationNotAllowed | InvalidTransition) for e in errors)
    assert stored.state is S.REFUNDED
    assert stored.refunded_amount == usd(1000)
    assert gateway.refunded[paid.id] == 1000
    assert len({r.idempotency_key for r in stored.refunds}) == 10
    assert service.locks.held_keys() == 0


async def test_concurrent_capture_and_cancel_one_wins() -> None:
    gateway = YieldingGateway()
    service = make_test_service(gateways=[gateway])
    errors: list[AegisPayError] = []

    async def attempt(operation: str, payment_id: str) -> None:
        try:
            await getattr(service, operation)(payment_id)
        except AegisPayError as error:
            errors.append(error)

    async with service:
        authorized = await service.pay(PaymentRequest(usd(1000), capture_mode="manual"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(attempt, "capture", authorized.id)
            tg.start_soon(attempt, "cancel", authorized.id)
        stored = await service.get_payment(authorized.id)

    assert len(errors) == 1
    assert isinstance(errors[0], InvalidTransition)
    assert stored.state in (S.COMPLETED, S.CANCELLED)
    captured = authorized.id in gateway.captured
    voided = authorized.id in gateway.voided
    assert captured != voided  # the money was either taken or released, never both
    assert captured == (stored.state is S.COMPLETED)


# -- optimistic concurrency and fencing in the store -------------------------------------------


def initiated(payment_id: str = "pay_store") -> tuple[Payment, ev.Event]:
    event = ev.PaymentInitiated(
        payment_id=payment_id,
        version=1,
        occurred_at=NOW,
        merchant_id="m",
        amount=usd(1000),
        capture_mode="automatic",
    )
    return apply(None, event), event


def next_change(payment: Payment, expected: int | None = None, token: int | None = None) -> Change:
    """A change that records one plugin-neutral fact (a failed capture) on ``payment``."""
    event = ev.CaptureFailed(
        payment_id=payment.id,
        version=payment.version + 1,
        occurred_at=NOW,
        amount=usd(1),
        idempotency_key=f"k{payment.version}",
        code="test",
    )
    new = apply(payment, event)
    return Change(new, payment.version if expected is None else expected, (event,), token)


async def test_commit_with_stale_expected_version_is_a_conflict() -> None:
    store = MemoryStore()
    payment, event = initiated()
    await store.commit(Change(payment, 0, (event,)))
    # Two writers both read version 1; the first commits, the second is stale.
    first = next_change(payment)
    second = next_change(payment)
    await store.commit(first)
    outbox_before = store.outbox_size()

    with pytest.raises(ConcurrencyConflict) as raised:
        await store.commit(second)

    assert raised.value.payment_id == payment.id
    assert raised.value.expected_version == 1
    assert raised.value.actual_version == 2
    assert await store.load(payment.id) == first.payment
    assert [e.version for e in await store.events(payment.id)] == [1, 2]
    assert store.outbox_size() == outbox_before


async def test_creating_an_existing_payment_again_is_a_conflict() -> None:
    store = MemoryStore()
    payment, event = initiated()
    await store.commit(Change(payment, 0, (event,)))
    with pytest.raises(ConcurrencyConflict):
        await store.commit(Change(payment, 0, (event,)))
    assert len(await store.events(payment.id)) == 1


async def test_commit_with_a_lower_fencing_token_is_rejected() -> None:
    store = MemoryStore()
    payment, event = initiated()
    await store.commit(Change(payment, 0, (event,)))
    newer = next_change(payment, token=10)
    await store.commit(newer)

    # A holder whose lease was lost (token 9) writes at the right version: still rejected.
    stale = next_change(newer.payment, token=9)
    with pytest.raises(FencingTokenRejected) as raised:
        await store.commit(stale)

    assert raised.value.payment_id == payment.id
    assert (raised.value.token, raised.value.highest) == (9, 10)
    assert isinstance(raised.value, ConcurrencyConflict)
    assert await store.load(payment.id) == newer.payment
    # The current holder's token (and newer ones) still write.
    same = next_change(newer.payment, token=10)
    await store.commit(same)
    await store.commit(next_change(same.payment, token=11))
    assert (await store.load(payment.id)).version == 4  # type: ignore[union-attr]


async def test_fencing_tokens_from_the_lock_manager_reject_a_stale_holder() -> None:
    service = make_test_service(gateways=[ScriptedGateway()])
    async with service:
        created = await service.create_payment(PaymentRequest(usd(1000)))
        async with service.locks.hold(created.id, 1.0) as old_lease:
            pass  # this holder is "paused" past its lease...
        async with service.locks.hold(created.id, 1.0) as new_lease:
            # ...while the next holder writes.
            await service.store.commit(next_change(created, token=new_lease.token))
        assert new_lease.token > old_lease.token
        current = await service.get_payment(created.id)
        with pytest.raises(FencingTokenRejected):
            await service.store.commit(next_change(current, token=old_lease.token))
        assert await service.get_payment(created.id) == current


async def test_lock_tokens_increase_on_every_grant() -> None:
    locks = MemoryLockManager()
    tokens = []
    for key in ("a", "b", "a", "c"):
        async with locks.hold(key, 1.0) as lease:
            assert lease.key == key
            tokens.append(lease.token)
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == len(tokens)


# -- the lock table ------------------------------------------------------------------------------


async def test_lock_table_is_empty_after_work_including_failures() -> None:
    gateway = ScriptedGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(service.pay, PaymentRequest(usd(500)))
        paid = await service.pay(PaymentRequest(usd(500)))
        await service.refund(paid.id, usd(100))
        with pytest.raises(InvalidTransition):
            await service.capture(paid.id)
        with pytest.raises(OperationNotAllowed):
            await service.refund(paid.id, usd(10_000))
    assert isinstance(service.locks, MemoryLockManager)
    assert service.locks.held_keys() == 0


async def test_lock_timeout_raises_and_leaves_the_payment_untouched() -> None:
    settings = Settings(engine=EngineSettings(lock_timeout_s=0.05))
    service = make_test_service(gateways=[ScriptedGateway()], settings=settings)
    held = anyio.Event()
    release = anyio.Event()

    async def hold(payment_id: str) -> None:
        async with service.locks.hold(payment_id, 1.0):
            held.set()
            await release.wait()

    async with service:
        authorized = await service.pay(PaymentRequest(usd(1000), capture_mode="manual"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold, authorized.id)
            await held.wait()
            with pytest.raises(LockTimeout) as raised:
                await service.capture(authorized.id)
            assert await service.get_payment(authorized.id) == authorized
            release.set()
        # Once the holder is gone the same operation goes through.
        captured = await service.capture(authorized.id)

    assert raised.value.key == authorized.id
    assert authorized.id in str(raised.value)
    assert captured.state is S.COMPLETED
    assert service.locks.held_keys() == 0


async def test_memory_lock_waiter_times_out_and_the_table_is_cleaned() -> None:
    locks = MemoryLockManager()
    held = anyio.Event()
    release = anyio.Event()

    async def hold() -> None:
        async with locks.hold("key", 1.0):
            held.set()
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold)
        await held.wait()
        with pytest.raises(LockTimeout):
            async with locks.hold("key", 0.01):
                pytest.fail("acquired a lock someone else holds")
        assert locks.held_keys() == 1
        release.set()
    assert locks.held_keys() == 0
    async with locks.hold("key", 0.01):
        assert locks.held_keys() == 1
    assert locks.held_keys() == 0


async def test_cancelled_waiter_leaves_no_entry_behind() -> None:
    locks = MemoryLockManager()
    held = anyio.Event()
    release = anyio.Event()

    async def hold() -> None:
        async with locks.hold("key", 1.0):
            held.set()
            await release.wait()

    async def wait_for_lock() -> None:
        async with locks.hold("key", 30.0):
            pytest.fail("the waiter was cancelled; it must not get the lock")

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold)
        await held.wait()
        async with anyio.create_task_group() as waiters:
            waiters.start_soon(wait_for_lock)
            await anyio.wait_all_tasks_blocked()
            waiters.cancel_scope.cancel()
        release.set()
    assert locks.held_keys() == 0
