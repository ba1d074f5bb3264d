"""Idempotency keys on create / pay: replay the first result, reject a changed request, one
payment and one charge however many duplicates race; the record's lifecycle (in flight,
recovery points, completion), a request resumed after a crash, "in progress", and expiry."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from _services import POSTGRES_URL, service_unavailable
from aegispay import (
    AuthorizeRequest,
    GatewayResult,
    HookContext,
    IdempotencyKeyInProgress,
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
from aegispay.errors import LockTimeout
from aegispay.settings import EngineSettings, Settings
from aegispay.store.base import IN_FLIGHT, Change, IdempotencyClaimed, IdempotencyRecord
from aegispay.store.sql import SqlStore, normalise_url
from aegispay.testing import ScriptedGateway, make_test_service
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

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
        {"payment_method_type": "upi"},  # a family where the first named none
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


def test_a_request_without_a_method_type_keeps_its_earlier_fingerprint() -> None:
    """``payment_method_type`` came later: a request without it must keep the fingerprint an
    earlier version stored with its key (the value below is that version's), or every retry
    of such a key after an upgrade would be refused as a reused key. With it, it differs."""
    fields: dict[str, Any] = {"merchant_id": "m_1", "customer_id": "c_1",
                              "payment_method": "pm_1", "reference": "o-1",
                              "metadata": {"b": "2", "a": "1"}}  # fmt: skip
    plain = PaymentRequest(Money(1999, "EUR"), **fields)
    assert plain.fingerprint() == (
        "88a56c07f1e9b03a12cb182f666bfbf3592b8ad478747f1a180178a147fe15c6"
    )
    typed = PaymentRequest(Money(1999, "EUR"), **fields, payment_method_type="card")
    assert typed.fingerprint() != plain.fingerprint()


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
    record = await service.store.find_idempotency("default", "burst")
    assert record is not None and (record.state, record.recovery_point) == ("completed", "finished")


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


# -- the record's lifecycle -------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Crash(Exception):
    """Stands for the process dying between creating a payment and processing it."""


class CrashBeforeProcessing:
    def __init__(self) -> None:
        self.armed = False

    @hookimpl
    def aegispay_check_fraud(self, payment: Payment, context: HookContext) -> None:
        if self.armed:
            raise Crash(payment.id)


class HoldingGateway(ScriptedGateway):
    """Authorisations wait until ``release`` is set (``holding`` is set when one waits), and
    record the key's idempotency record as the store had it at that moment."""

    def __init__(self, service_ref: list[Any]) -> None:
        super().__init__()
        self.service_ref = service_ref
        self.holding = anyio.Event()
        self.release = anyio.Event()
        self.seen: list[IdempotencyRecord | None] = []

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        service = self.service_ref[0]
        self.seen.append(await service.store.find_idempotency("default", "held"))
        self.holding.set()
        await self.release.wait()
        return await super().authorize(request)


async def test_pay_claims_its_key_in_flight_and_completes_it_once_settled() -> None:
    clock = Clock()
    ref: list[Any] = []
    gateway = HoldingGateway(ref)
    gateway.release.set()
    service = make_test_service(gateways=[gateway], clock=clock)
    ref.append(service)
    async with service:
        paid = await service.pay(request(), idempotency_key="held")
    (during,) = gateway.seen
    assert during is not None and during.payment_id == paid.id
    # While the gateway has the request, the key is in flight at "processing": it moved in
    # the transaction that committed the intent, not in a write of its own.
    assert (during.state, during.recovery_point, during.locked_at) == (
        "in_flight",
        "processing",
        clock(),
    )
    after = await service.store.find_idempotency("default", "held")
    assert after is not None
    assert (after.state, after.recovery_point, after.locked_at) == ("completed", "finished", None)
    assert after.response.state is S.INITIATED  # the first response: the payment as created
    assert await service.store.idempotency_in_flight(clock() + timedelta(days=1)) == []


async def test_create_payment_claims_its_key_completed() -> None:
    clock = Clock()
    service = make_test_service(gateways=[ScriptedGateway()], clock=clock)
    async with service:
        await service.create_payment(request(), idempotency_key="plain")
        record = await service.store.find_idempotency("default", "plain")
        assert record is not None
        assert (record.state, record.recovery_point, record.locked_at) == (
            "completed",
            "created",
            None,
        )
        # Never resumed: nothing was asked of it but the creation.
        clock.advance(3600)
        report = await service.resume_idempotency_keys(older_than_s=60)
    assert report.examined == 0


@pytest.mark.parametrize(
    ("outcomes", "state", "record"),
    [
        ([Outcome.REQUIRES_ACTION], S.REQUIRES_ACTION, ("completed", "finished")),
        ([Outcome.DECLINED], S.FAILED, ("completed", "finished")),
        ([Outcome.UNKNOWN, Outcome.UNKNOWN], S.PROCESSING, ("in_flight", "processing")),
    ],
    ids=["requires-action", "declined", "unknown"],
)
async def test_where_pay_leaves_its_key(
    outcomes: list[Outcome], state: PaymentState, record: tuple[str, str]
) -> None:
    # Waiting on the customer and a final failure complete the key; an answer nobody knows
    # yet (UNKNOWN, status lookups no wiser) leaves it in flight at "processing".
    script = {Operation.AUTHORIZE: outcomes[:1], Operation.STATUS: [Outcome.UNKNOWN] * 3}
    service = make_test_service(gateways=[ScriptedGateway(script=script)])
    async with service:
        payment = await service.pay(request(), idempotency_key="k")
        found = await service.store.find_idempotency("default", "k")
    assert payment.state is state
    assert found is not None and (found.state, found.recovery_point) == record


async def test_a_request_that_dies_before_its_first_decision_leaves_nothing() -> None:
    # pay() stores the payment with its first decision (here: the intent), so a death at the
    # fraud check leaves no payment and no key; the retry is a first request, charged once.
    gateway = ScriptedGateway()
    crash = CrashBeforeProcessing()
    service = make_test_service(gateways=[gateway], plugins=[crash])
    async with service:
        crash.armed = True
        with pytest.raises(Crash):
            await service.pay(request(), idempotency_key="retry-me")
        crash.armed = False
        assert await service.store.payment_ids() == []
        assert await service.store.find_idempotency("default", "retry-me") is None
        again = await service.pay(request(), idempotency_key="retry-me")
        assert again.state is S.COMPLETED and gateway.charge_count(again.id) == 1
        assert await service.store.payment_ids() == [again.id]


async def died_after_create(service: Any, crash: CrashBeforeProcessing, key: str) -> None:
    """A keyed request that died after its create committed (an INITIATED payment, the key in
    flight at "created"): what ``pay`` left before it stored a payment with its first decision,
    so what a database written by an earlier AegisPay may hold."""
    crash.armed = True
    await service._create_observed(request(), key, IN_FLIGHT)
    with pytest.raises(Crash):
        await service.pay(request(), idempotency_key=key)
    crash.armed = False


async def test_a_retry_resumes_a_request_that_died_before_processing() -> None:
    gateway = ScriptedGateway()
    crash = CrashBeforeProcessing()
    clock = Clock()
    service = make_test_service(gateways=[gateway], plugins=[crash], clock=clock)
    async with service:
        await died_after_create(service, crash, "retry-me")
        (payment_id,) = await service.store.payment_ids()
        assert (await service.get_payment(payment_id)).state is S.INITIATED
        record = await service.store.find_idempotency("default", "retry-me")
        assert record is not None and (record.state, record.recovery_point) == (
            "in_flight",
            "created",
        )
        # The client retries at once (no janitor needed): it picks the request up.
        again = await service.pay(request(), idempotency_key="retry-me")
        assert again.id == payment_id and again.state is S.COMPLETED
        assert gateway.charge_count(payment_id) == 1
        record = await service.store.find_idempotency("default", "retry-me")
        assert record is not None and record.state == "completed"
        clock.advance(3600)
        assert (await service.resume_idempotency_keys(older_than_s=60)).examined == 0


async def test_the_resume_pass_finishes_a_request_that_died_before_processing() -> None:
    gateway = ScriptedGateway()
    crash = CrashBeforeProcessing()
    clock = Clock()
    service = make_test_service(gateways=[gateway], plugins=[crash], clock=clock)
    async with service:
        await died_after_create(service, crash, "dead")
        (payment_id,) = await service.store.payment_ids()
        clock.advance(30)
        fresh = await service.resume_idempotency_keys(older_than_s=60)
        assert fresh.examined == 0  # maybe still running: left alone
        clock.advance(31)
        report = await service.resume_idempotency_keys(older_than_s=60)
        assert (report.examined, report.resumed, dict(report.completed)) == (
            1,
            1,
            {"completed": 1},
        )
        assert (await service.get_payment(payment_id)).state is S.COMPLETED
        assert gateway.charge_count(payment_id) == 1
        replayed = await service.pay(request(), idempotency_key="dead")
        assert replayed.id == payment_id and gateway.charge_count(payment_id) == 1


async def test_a_duplicate_in_flight_waits_for_the_first_and_gets_its_result() -> None:
    ref: list[Any] = []
    gateway = HoldingGateway(ref)
    service = make_test_service(gateways=[gateway])
    ref.append(service)
    results: list[Payment] = []

    async def pay() -> None:
        results.append(await service.pay(request(), idempotency_key="held"))

    async with service, anyio.create_task_group() as tg:
        tg.start_soon(pay)
        await gateway.holding.wait()  # the first holds the payment, at its gateway
        tg.start_soon(pay)
        # The duplicate of a create_payment-only caller needs no wait: the creation it
        # asks for is done. It gets the payment as created.
        created = await service.create_payment(request(), idempotency_key="held")
        assert created.state is S.INITIATED
        await anyio.wait_all_tasks_blocked()  # the duplicate waits for the lock
        gateway.release.set()
    first, second = results
    assert first == second and first.state is S.COMPLETED and first.id == created.id
    assert gateway.charge_count(first.id) == 1
    assert [c.operation for c in gateway.calls] == [Operation.AUTHORIZE]


async def test_a_duplicate_that_cannot_get_the_payment_in_time_is_told_in_progress() -> None:
    ref: list[Any] = []
    gateway = HoldingGateway(ref)
    settings = Settings(engine=EngineSettings(lock_timeout_s=0.05))
    service = make_test_service(gateways=[gateway], settings=settings)
    ref.append(service)
    results: list[Payment] = []

    async def first() -> None:
        results.append(await service.pay(request(), idempotency_key="held"))

    async with service:
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await gateway.holding.wait()  # held at the gateway until released below
            with pytest.raises(IdempotencyKeyInProgress) as raised:
                await service.pay(request(), idempotency_key="held")
            gateway.release.set()
        # Retrying later with the same key gets the first request's result.
        again = await service.pay(request(), idempotency_key="held")
    assert (raised.value.key, raised.value.scope) == ("held", "default")
    assert isinstance(raised.value.__cause__, LockTimeout)
    assert "in progress" in str(raised.value)
    (paid,) = results
    assert again == paid and paid.state is S.COMPLETED
    assert gateway.charge_count(paid.id) == 1


async def test_an_expired_key_is_a_new_key() -> None:
    gateway = ScriptedGateway()
    clock = Clock()
    settings = Settings(engine=EngineSettings(idempotency_ttl_s=3600))
    service = make_test_service(gateways=[gateway], settings=settings, clock=clock)
    async with service:
        first = await service.pay(request(), idempotency_key="k")
        clock.advance(3599)
        with pytest.raises(IdempotencyKeyReused):
            await service.pay(request(999), idempotency_key="k")
        assert await service.pay(request(), idempotency_key="k") == first
        clock.advance(1)  # expired: absent, and a new claim replaces it
        assert await service.store.find_idempotency("default", "k", clock()) is None
        second = await service.pay(request(999), idempotency_key="k")
        record = await service.store.find_idempotency("default", "k", clock())
    assert second.id != first.id and second.amount == Money(999, "USD")
    assert record is not None and record.payment_id == second.id
    assert record.expires_at == clock() + timedelta(seconds=3600)
    assert gateway.charge_count(first.id) == gateway.charge_count(second.id) == 1


# -- PostgreSQL: expired-key claims racing in separate transactions ----------------------------


@pytest.fixture
async def pg_store(anyio_backend: str) -> AsyncIterator[SqlStore]:
    schema = f"aegispay_idem_{secrets.token_hex(6)}"
    admin = create_async_engine(normalise_url(POSTGRES_URL))
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as error:
        await admin.dispose()
        service_unavailable("PostgreSQL", str(error))
    # No group commit: every claim is its own transaction, so the race is the database's.
    store = SqlStore(POSTGRES_URL, schema=schema, group_commit=False)
    try:
        await store.upgrade_schema()
        yield store
    finally:
        await store.close()
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # asyncpg is an asyncio library
async def test_postgres_racing_claims_replace_an_expired_key_once(pg_store: SqlStore) -> None:
    from aegispay import events as ev
    from aegispay.payment import apply

    t0 = datetime(2024, 5, 1, tzinfo=UTC)

    def create(n: int, created: datetime, expires: datetime) -> Change:
        event = ev.PaymentInitiated(
            payment_id=f"pay_{n}", version=1, occurred_at=created, merchant_id="m",
            amount=Money(100 + n, "USD"), capture_mode="automatic",
        )  # fmt: skip
        payment = apply(None, event)
        record = IdempotencyRecord(
            "m", "k", f"fp{n}", payment.id, payment, created, expires,
            state="in_flight", locked_at=created,
        )  # fmt: skip
        return Change(payment, 0, (event,), idempotency=record)

    await pg_store.commit(create(0, t0, t0 + timedelta(hours=1)))
    later = t0 + timedelta(hours=2)
    outcome: dict[int, str] = {}

    async def claim(n: int) -> None:
        try:
            await pg_store.commit(create(n, later, later + timedelta(hours=1)))
        except IdempotencyClaimed as claimed:
            outcome[n] = claimed.existing.payment_id
        else:
            outcome[n] = "won"

    async with anyio.create_task_group() as tg:
        for n in range(1, 9):
            tg.start_soon(claim, n)
    winners = [n for n, o in outcome.items() if o == "won"]
    assert len(winners) == 1, outcome
    assert set(outcome.values()) == {"won", f"pay_{winners[0]}"}
    found = await pg_store.find_idempotency("m", "k")
    assert found is not None and found.payment_id == f"pay_{winners[0]}"
    assert sorted(await pg_store.payment_ids()) == ["pay_0", f"pay_{winners[0]}"]
