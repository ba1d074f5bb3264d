"""Idempotency keys on create / pay: replay the first result, reject a changed request, one
payment and one charge however many duplicates race."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from aegispay import (
    GatewayResult,
    HookContext,
    IdempotencyKeyReused,
    InvalidInput,
    Money,
    Operation,
    Outcome,
    Payment,
    PaymentRequest,
    PaymentState,
    PaymentValidationError,
    Problem,
    hookimpl,
)
from aegispay.testing import ScriptedGateway, make_test_service

pytestmark = pytest.mark.anyio

S = PaymentState


def request(minor: int = 1000, **fields: Any) -> PaymentRequest:
    return PaymentRequest(Money(minor, "USD"), **fields)


class CountingValidator:
    """Counts validation calls, i.e. how many requests were treated as new."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def aegispay_validate_payment(
        self, request: PaymentRequest, context: HookContext
    ) -> Sequence[Problem] | None:
        self.calls += 1
        return None


class GateValidator:
    """An async validator that holds every request until the test opens the gate, so that
    concurrent duplicates all get past the "is this key known?" check before any commits."""

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.arrived = 0

    @hookimpl
    async def aegispay_validate_payment(
        self, request: PaymentRequest, context: HookContext
    ) -> Sequence[Problem] | None:
        self.arrived += 1
        await self.gate.wait()
        return None


async def test_same_key_same_request_returns_the_first_result() -> None:
    validator = CountingValidator()
    service = make_test_service(gateways=[ScriptedGateway()], plugins=[validator])
    async with service:
        first = await service.create_payment(
            request(metadata={"order": "o-1"}), idempotency_key="k-1"
        )
        again = await service.create_payment(
            request(metadata={"order": "o-1"}), idempotency_key="k-1"
        )
        ids = await service.store.payment_ids()

    assert again == first
    assert again.id == first.id
    assert ids == [first.id]
    assert validator.calls == 1  # a replay is not a new request


async def test_metadata_order_does_not_change_the_request() -> None:
    service = make_test_service(gateways=[ScriptedGateway()])
    async with service:
        first = await service.create_payment(
            request(metadata={"a": "1", "b": "2"}), idempotency_key="k-order"
        )
        again = await service.create_payment(
            request(metadata={"b": "2", "a": "1"}), idempotency_key="k-order"
        )
    assert again == first


async def test_same_key_pay_twice_charges_once() -> None:
    gateway = ScriptedGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        first = await service.pay(request(), idempotency_key="pay-1")
        again = await service.pay(request(), idempotency_key="pay-1")
        ids = await service.store.payment_ids()

    assert first.state is S.COMPLETED
    assert again == first
    assert ids == [first.id]
    assert gateway.charge_count(first.id) == 1
    assert [c.operation for c in gateway.calls] == [Operation.AUTHORIZE]


async def test_same_key_replays_a_final_failure_without_a_second_attempt() -> None:
    decline = GatewayResult(Outcome.DECLINED, decline_code="card_declined")
    gateway = ScriptedGateway(script={Operation.AUTHORIZE: [decline]})
    service = make_test_service(gateways=[gateway])
    async with service:
        first = await service.pay(request(), idempotency_key="declined-1")
        again = await service.pay(request(), idempotency_key="declined-1")

    assert first.state is S.FAILED
    assert first.failure_code == "card_declined"
    assert again == first
    assert len(gateway.calls) == 1


@pytest.mark.parametrize(
    "changed",
    [
        {"amount": 1001},
        {"customer_id": "cus_other"},
        {"capture_mode": "manual"},
        {"description": "something else"},
        {"metadata": {"order": "o-1", "line": "2"}},  # an extra nested key
        {"metadata": {"order": "o-2"}},  # a nested value
        {"metadata": {}},
    ],
    ids=lambda changed: "-".join(f"{k}={v}" for k, v in changed.items()),
)
async def test_same_key_different_request_is_rejected(changed: dict[str, Any]) -> None:
    base: dict[str, Any] = {"customer_id": "cus_1", "metadata": {"order": "o-1"}}
    changed = dict(changed)  # parametrised values are shared between the two backends' runs
    amount = changed.pop("amount", 1000)
    validator = CountingValidator()
    service = make_test_service(gateways=[ScriptedGateway()], plugins=[validator])
    async with service:
        first = await service.create_payment(request(1000, **base), idempotency_key="k-1")
        with pytest.raises(IdempotencyKeyReused) as raised:
            await service.create_payment(
                request(amount, **{**base, **changed}), idempotency_key="k-1"
            )
        ids = await service.store.payment_ids()
        stored = await service.get_payment(first.id)

    assert raised.value.key == "k-1"
    assert raised.value.scope == "default"
    assert "k-1" in str(raised.value)
    assert ids == [first.id]
    assert stored == first
    assert validator.calls == 1


async def test_different_currency_with_the_same_key_is_rejected() -> None:
    service = make_test_service(gateways=[ScriptedGateway()])
    async with service:
        await service.create_payment(PaymentRequest(Money(1000, "USD")), idempotency_key="k")
        with pytest.raises(IdempotencyKeyReused):
            await service.create_payment(PaymentRequest(Money(1000, "EUR")), idempotency_key="k")


async def test_keys_are_scoped_per_merchant() -> None:
    gateway = ScriptedGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        a = await service.pay(request(merchant_id="merchant-a"), idempotency_key="shared")
        b = await service.pay(request(merchant_id="merchant-b"), idempotency_key="shared")
        # Merchant b's key is its own: a different request under it is b's business only.
        with pytest.raises(IdempotencyKeyReused) as raised:
            await service.create_payment(
                request(5, merchant_id="merchant-b"), idempotency_key="shared"
            )
        a_again = await service.pay(request(merchant_id="merchant-a"), idempotency_key="shared")
        ids = await service.store.payment_ids()

    assert a.id != b.id
    assert (a.merchant_id, b.merchant_id) == ("merchant-a", "merchant-b")
    assert raised.value.scope == "merchant-b"
    assert a_again == a
    assert sorted(ids) == sorted([a.id, b.id])
    assert gateway.charge_count(a.id) == gateway.charge_count(b.id) == 1


async def test_fifty_concurrent_pays_with_one_key_store_one_payment_and_charge_once() -> None:
    gateway = ScriptedGateway()
    gate = GateValidator()
    service = make_test_service(gateways=[gateway], plugins=[gate])
    results: list[Payment] = []

    async def pay() -> None:
        results.append(await service.pay(request(4200), idempotency_key="burst"))

    async with service:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(pay)
                # Every duplicate is now parked in validation (past the key lookup) or waiting
                # on a claim: open the gate and let them race to commit.
                await anyio.wait_all_tasks_blocked()
                gate.gate.set()
        ids = await service.store.payment_ids()

    assert len(results) == 50
    assert len(ids) == 1
    (payment_id,) = ids
    assert {p.id for p in results} == {payment_id}
    assert all(p.state is S.COMPLETED for p in results)
    assert gateway.charge_count(payment_id) == 1
    assert [c.operation for c in gateway.calls] == [Operation.AUTHORIZE]
    assert service.locks.held_keys() == 0


@pytest.mark.parametrize(
    "key",
    ["has space", "tab\tkey", "ünïcode", "x" * 256],
    ids=["space", "tab", "non-ascii", "too-long"],
)
async def test_invalid_key_format_is_rejected_by_validation(key: str) -> None:
    gateway = ScriptedGateway()
    service = make_test_service(gateways=[gateway])
    async with service:
        with pytest.raises(PaymentValidationError) as raised:
            await service.pay(request(), idempotency_key=key)
        ids = await service.store.payment_ids()

    assert [p.field for p in raised.value.problems] == ["idempotency_key"]
    assert raised.value.field == "idempotency_key"
    assert ids == []
    assert gateway.calls == []


async def test_longest_valid_key_is_accepted() -> None:
    service = make_test_service(gateways=[ScriptedGateway()])
    async with service:
        payment = await service.create_payment(request(), idempotency_key="k" * 255)
    assert payment.state is S.INITIATED


async def test_empty_key_is_invalid_input() -> None:
    service = make_test_service(gateways=[ScriptedGateway()])
    async with service:
        with pytest.raises(InvalidInput) as raised:
            await service.create_payment(request(), idempotency_key="")
        assert await service.store.payment_ids() == []
    assert raised.value.field == "idempotency_key"
