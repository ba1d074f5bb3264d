"""The janitor (aegispay.janitor): the service's periodic recovery task.

Passes are driven with ``run_once`` and a fake clock; the loop with a fake ``sleep`` that the
test steps. Nothing here waits on real time.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from aegispay import (
    AuthorizeRequest,
    ConfigError,
    GatewayResult,
    HookContext,
    Money,
    Operation,
    Outcome,
    Payment,
    PaymentRequest,
    PaymentState,
    StatusRequest,
    build_service,
    hookimpl,
)
from aegispay.errors import StoreUnavailable
from aegispay.gateways import GatewayCapabilities
from aegispay.janitor import LOCK_KEY, MAX_BACKOFF, Janitor
from aegispay.locks.memory import MemoryLockManager
from aegispay.settings import EngineSettings, Settings, load_settings, settings_from_dict
from aegispay.store.base import IN_FLIGHT, IdempotencyRecord, Pruned
from aegispay.store.memory import MemoryStore
from aegispay.store.sql import SqlStore
from aegispay.testing import ScriptedGateway, make_test_service

pytestmark = pytest.mark.anyio

S = PaymentState
FAR = timedelta(days=1)
# An authorisation whose answer is lost, and pay()'s three status lookups that cannot tell.
LOST: dict[Operation, Sequence[Outcome | GatewayResult]] = {
    Operation.AUTHORIZE: [Outcome.UNKNOWN],
    Operation.STATUS: [Outcome.UNKNOWN] * 3,
}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Ticker:
    """A fake ``sleep`` for the janitor's loop: it records each delay and waits for the test."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._entered = anyio.Event()
        self._release = anyio.Event()

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        self._entered.set()
        await self._release.wait()
        self._release = anyio.Event()

    async def sleeping(self) -> None:
        """Wait until the loop is asleep (the first time: until it started)."""
        await self._entered.wait()

    def release(self) -> None:
        """Wake the loop (it runs a pass) without waiting for it."""
        self._entered = anyio.Event()
        self._release.set()

    async def tick(self) -> None:
        """Let the loop run one pass, and wait until it is asleep again."""
        self.release()
        await self._entered.wait()


class Crash(Exception):
    """Stands for the process dying between creating a payment and processing it."""


class CrashBeforeProcessing:
    """Fails processing (at the fraud check: the payment and its key are committed, nothing
    was sent) while ``armed``."""

    def __init__(self) -> None:
        self.armed = False

    @hookimpl
    def aegispay_check_fraud(self, payment: Payment, context: HookContext) -> None:
        if self.armed:
            raise Crash(payment.id)


class FlakyStore(MemoryStore):
    """A memory store whose scans fail with ``error`` while it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.error: Exception | None = None

    async def unsettled_payment_ids(self, older_than: datetime) -> list[str]:
        if self.error is not None:
            raise self.error
        return await super().unsettled_payment_ids(older_than)

    async def idempotency_in_flight(
        self, older_than: datetime, *, now: datetime | None = None, limit: int = 100
    ) -> list[IdempotencyRecord]:
        if self.error is not None:
            raise self.error
        return await super().idempotency_in_flight(older_than, now=now, limit=limit)


class BlockingStatusGateway(ScriptedGateway):
    """Status lookups wait until the test opens ``gate``; ``entered`` is set when one waits."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entered = anyio.Event()
        self.gate = anyio.Event()

    async def get_status(self, request: StatusRequest) -> GatewayResult:
        self.entered.set()
        await self.gate.wait()
        return await super().get_status(request)


def request(minor: int = 2500, **fields: Any) -> PaymentRequest:
    return PaymentRequest(Money(minor, "USD"), merchant_id="m_1", **fields)


def engine(**fields: Any) -> Settings:
    return Settings(engine=EngineSettings(**fields))


def service_with(
    gateways: Sequence[ScriptedGateway],
    *,
    clock: Clock,
    plugins: Sequence[Any] = (),
    interval_s: float = 0,
    **kwargs: Any,
) -> Any:
    return make_test_service(
        gateways=gateways,
        plugins=plugins,
        settings=engine(reconcile_interval_s=interval_s, reconcile_after_s=60),
        clock=clock,
        **kwargs,
    )


async def crashed_pay(service: Any, crash: CrashBeforeProcessing, key: str) -> Payment:
    """A keyed request that died after its create committed: an INITIATED payment, its key in
    flight at "created". Today's ``pay`` stores a payment only with its first decision, so
    only a database written by an earlier AegisPay holds such a key; the janitor must still
    finish it. Written as that ``pay`` wrote it (the create claiming the key in flight), and
    ``crash`` then stops the first processing attempt as that process's death did."""
    crash.armed = True
    await service._create_observed(request(), key, IN_FLIGHT)
    with pytest.raises(Crash):
        await service.pay(request(), idempotency_key=key)
    crash.armed = False
    record = await service.store.find_idempotency("m_1", key)
    assert record is not None and (record.state, record.recovery_point) == ("in_flight", "created")
    payment = await service.get_payment(record.payment_id)
    assert payment.state is S.INITIATED
    return payment


# -- settings -------------------------------------------------------------------------------


def test_settings_defaults_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no aegispay.toml
    defaults = EngineSettings()
    assert (defaults.reconcile_interval_s, defaults.reconcile_after_s) == (30.0, 60.0)
    assert EngineSettings(reconcile_interval_s=0).reconcile_interval_s == 0  # switched off
    with pytest.raises(ValueError, match="reconcile_interval_s"):
        EngineSettings(reconcile_interval_s=-1)
    with pytest.raises(ValueError, match="reconcile_after_s"):
        EngineSettings(reconcile_after_s=0)
    with pytest.raises(ConfigError, match=r"reconcile_interval_s: must be 0 or more"):
        settings_from_dict({"engine": {"reconcile_interval_s": -5}})
    loaded = load_settings(
        env={
            "AEGISPAY_ENGINE__RECONCILE_INTERVAL_S": "0",
            "AEGISPAY_ENGINE__RECONCILE_AFTER_S": "120",
        }
    )
    assert (loaded.engine.reconcile_interval_s, loaded.engine.reconcile_after_s) == (0, 120)


# -- passes -----------------------------------------------------------------------------------


async def test_a_pass_with_nothing_to_do_looks_and_does_nothing() -> None:
    gateway = ScriptedGateway()
    clock = Clock()
    service = service_with([gateway], clock=clock)
    async with service:
        paid = await service.pay(request(), idempotency_key="k-1")
        clock.advance(3600)
        report = await service.janitor.run_once()
    assert report.ok and not report.skipped and not report.did_something
    assert report.reconcile is not None and report.reconcile.examined == 0
    assert report.resume is not None and report.resume.examined == 0
    assert report.started_at == report.finished_at == clock()
    assert service.janitor.last_report is report
    assert service.janitor.passes == 1
    assert [c.operation for c in gateway.calls] == [Operation.AUTHORIZE]  # no lookups
    assert paid.state is S.COMPLETED
    assert service.locks.held_keys() == 0
    assert report.to_dict()["resume"]["examined"] == 0


async def test_a_pass_settles_an_unknown_payment_and_resumes_a_crashed_request() -> None:
    # The first payment's answer is lost and its status lookups say UNKNOWN: pay() returns it
    # PROCESSING with its key in flight at "processing". The second dies before processing.
    gateway = ScriptedGateway(
        script={Operation.AUTHORIZE: [Outcome.UNKNOWN], Operation.STATUS: [Outcome.UNKNOWN] * 3}
    )
    clock = Clock()
    crash = CrashBeforeProcessing()
    service = service_with([gateway], clock=clock, plugins=[crash])
    async with service:
        lost = await service.pay(request(), idempotency_key="lost")
        assert lost.state is S.PROCESSING
        record = await service.store.find_idempotency("m_1", "lost")
        assert record is not None
        assert (record.state, record.recovery_point) == ("in_flight", "processing")
        crashed = await crashed_pay(service, crash, "crashed")

        clock.advance(59)  # not stuck yet: a pass leaves both alone
        early = await service.janitor.run_once()
        assert early.reconcile is not None and early.resume is not None
        assert (early.reconcile.examined, early.resume.examined) == (0, 0)

        clock.advance(2)
        report = await service.janitor.run_once()
        assert report.ok and report.did_something
        assert report.reconcile is not None and report.resume is not None
        assert (report.reconcile.examined, dict(report.reconcile.settled)) == (1, {"completed": 1})
        assert report.resume.to_dict() == {
            "examined": 2,
            "completed": {"completed": 2},
            "completed_total": 2,
            "resumed": 1,
            "still_in_flight": 0,
            "still_in_flight_ids": [],
            "errors": {},
        }
        for key, payment in (("lost", lost), ("crashed", crashed)):
            settled = await service.get_payment(payment.id)
            assert settled.state is S.COMPLETED
            assert gateway.charge_count(payment.id) == 1
            done = await service.store.find_idempotency("m_1", key)
            assert done is not None
            assert (done.state, done.recovery_point, done.locked_at) == (
                "completed",
                "finished",
                None,
            )
        assert await service.store.idempotency_in_flight(clock() + FAR) == []

        # Nothing left: the next pass finds nothing, and the clients' retries get the payments.
        clock.advance(3600)
        quiet = await service.janitor.run_once()
        assert not quiet.did_something
        again = await service.pay(request(), idempotency_key="crashed")
        assert again.id == crashed.id and again.state is S.COMPLETED
        assert gateway.charge_count(crashed.id) == 1
    assert service.janitor.passes == 3


async def test_a_key_whose_payment_is_still_open_waits_for_reconcile() -> None:
    # Status lookups keep answering UNKNOWN: the payment stays PROCESSING, the key in flight;
    # the resume pass only touches it (no lookups of its own: that is reconcile's job).
    gateway = ScriptedGateway(
        script={Operation.AUTHORIZE: [Outcome.UNKNOWN], Operation.STATUS: [Outcome.UNKNOWN] * 6}
    )
    clock = Clock()
    service = service_with([gateway], clock=clock)
    async with service:
        lost = await service.pay(request(), idempotency_key="lost")
        lookups = sum(c.operation is Operation.STATUS for c in gateway.calls)
        assert lookups == 3
        clock.advance(61)
        report = await service.janitor.run_once()
        assert report.reconcile is not None and report.reconcile.still_open_ids == (lost.id,)
        assert report.resume is not None
        assert (report.resume.examined, report.resume.still_in_flight) == (1, 1)
        assert report.resume.still_in_flight_ids == (lost.id,)
        assert sum(c.operation is Operation.STATUS for c in gateway.calls) == 6  # reconcile's
        record = await service.store.find_idempotency("m_1", "lost")
        assert record is not None and record.state == "in_flight"
        assert record.locked_at == clock()  # touched: looked at again in reconcile_after_s

        clock.advance(61)  # the gateway answers now
        report = await service.janitor.run_once()
        assert report.resume is not None and dict(report.resume.completed) == {"completed": 1}
        assert gateway.charge_count(lost.id) == 1


class LaggingSearchGateway(ScriptedGateway):
    """Like Stripe: dedupes creates by idempotency key, but its lookup (a search that lags)
    cannot see a create, so every lookup answers UNKNOWN. The first create of each key is
    lost on the way (connect timeout: UNKNOWN, nothing charged); a repeat arrives."""

    def __init__(self) -> None:
        super().__init__("lagging")
        self.capabilities = GatewayCapabilities(idempotent_create=True)
        self.lost: set[str] = set()

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        if request.idempotency_key not in self.lost:
            self.lost.add(request.idempotency_key)
            self._record(Operation.AUTHORIZE, request.payment_id, request.idempotency_key, None)
            return GatewayResult(Outcome.UNKNOWN, message="connect timeout")
        return await super().authorize(request)

    async def get_status(self, request: StatusRequest) -> GatewayResult:
        self._record(Operation.STATUS, request.payment_id, request.idempotency_key, None)
        return GatewayResult(Outcome.UNKNOWN, message="no match yet")


async def test_a_pass_repeats_a_create_that_lookups_cannot_see() -> None:
    # Status lookups cannot settle the attempt; the gateway dedupes creates by key, so the
    # pass creates it again with the same key: the one charge is made, at the same gateway.
    gateway = LaggingSearchGateway()
    backup = ScriptedGateway("backup")
    clock = Clock()
    service = service_with([gateway, backup], clock=clock)
    async with service:
        lost = await service.pay(request(), idempotency_key="lost")
        assert lost.state is S.PROCESSING
        assert gateway.charges == {}
        clock.advance(61)
        report = await service.janitor.run_once()
        settled = await service.get_payment(lost.id)
    assert report.reconcile is not None
    assert (report.reconcile.examined, dict(report.reconcile.settled)) == (1, {"completed": 1})
    assert report.resume is not None and dict(report.resume.completed) == {"completed": 1}
    assert settled.state is S.COMPLETED
    assert [(a.gateway, a.outcome) for a in settled.attempts] == [("lagging", Outcome.SUCCEEDED)]
    key = f"{lost.id}-1"
    assert [c.idempotency_key for c in gateway.calls if c.operation is Operation.AUTHORIZE] == [
        key,
        key,
    ]
    assert gateway.charge_count(lost.id) == 1
    assert backup.calls == []


async def test_a_pass_leaves_expired_keys_alone() -> None:
    # Resuming a request whose key has expired could charge twice for one order: the client's
    # retry would already be a new payment. The payment stays INITIATED, never charged.
    gateway = ScriptedGateway()
    clock = Clock()
    crash = CrashBeforeProcessing()
    service = make_test_service(
        gateways=[gateway],
        plugins=[crash],
        settings=engine(reconcile_interval_s=0, idempotency_ttl_s=3600),
        clock=clock,
    )
    async with service:
        crashed = await crashed_pay(service, crash, "late")
        clock.advance(3600)
        report = await service.janitor.run_once()
        assert report.resume is not None and report.resume.examined == 0
        assert (await service.get_payment(crashed.id)).state is S.INITIATED
        assert gateway.calls == []


async def test_errors_end_a_pass_not_the_janitor_and_back_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FlakyStore()
    clock = Clock()
    service = service_with([ScriptedGateway()], clock=clock, store=store, interval_s=10)
    janitor = service.janitor
    async with service:
        assert janitor.delay() == 10
        store.error = StoreUnavailable("store down")
        first = await janitor.run_once()
        assert not first.ok and first.reconcile is None and first.resume is None
        assert dict(first.failures) == {
            "reconcile": "StoreUnavailable: store down",
            "resume": "StoreUnavailable: store down",
        }
        assert janitor.last_report is first and janitor.consecutive_failures == 1
        assert janitor.delay() == 20
        await janitor.run_once()
        assert janitor.delay() == 40
        for _ in range(5):
            await janitor.run_once()
        assert janitor.delay() == 10 * MAX_BACKOFF  # capped

        # A bug rather than an outage: caught all the same, and logged with its trace.
        store.error = RuntimeError("bug")
        with caplog.at_level(logging.WARNING, logger="aegispay.janitor"):
            buggy = await janitor.run_once()
        assert buggy.failures["reconcile"] == "RuntimeError: bug"
        assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records)

        store.error = None
        healthy = await janitor.run_once()
        assert healthy.ok and janitor.consecutive_failures == 0 and janitor.delay() == 10
        assert janitor.passes == 9
        assert service.locks.held_keys() == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # aiosqlite
@pytest.mark.parametrize("retention_s", [3600, 0])
async def test_a_pass_prunes_published_messages_and_expired_keys(
    tmp_path: Path, retention_s: int
) -> None:
    """Messages published longer ago than ``outbox_retention_s`` (0: never) and completed
    keys past their expiry are deleted by the passes; payments stay. The relay stamps
    messages with the wall clock, so the service's clock starts there."""
    clock = Clock()
    clock.now = datetime.now(UTC)
    store = SqlStore(f"sqlite:///{tmp_path / 'janitor.db'}")
    await store.upgrade_schema()
    settings = engine(
        reconcile_interval_s=0, reconcile_after_s=60, outbox_retention_s=retention_s,
        idempotency_ttl_s=86_400,
    )  # fmt: skip
    service = make_test_service(
        gateways=[ScriptedGateway()], settings=settings, clock=clock, store=store
    )
    try:
        async with service:
            for n in range(3):
                await service.pay(request(), idempotency_key=f"k-{n}")
            await service.relay.drain()
            assert (await service.janitor.run_once()).pruned == Pruned()
            clock.advance(2 * 3600)  # the messages are old; the keys not yet expired
            aged = await service.janitor.run_once()
            assert aged.pruned == Pruned(messages=12 if retention_s else 0)
            assert aged.did_something == bool(retention_s)
            clock.advance(86_400)
            expired = await service.janitor.run_once()
            assert expired.pruned == Pruned(keys=3) and expired.ok
            assert expired.to_dict()["pruned"] == {"messages": 0, "keys": 3}
            assert await service.store.find_idempotency("m_1", "k-0") is None
            assert len(await service.store.payment_ids()) == 3
    finally:
        await service.aclose()  # leaving the service does not close its store


class BuggyFraudCheck:
    """A fraud plugin with a bug that only the payments in ``victims`` trip."""

    def __init__(self) -> None:
        self.victims: set[str] = set()

    @hookimpl
    def aegispay_check_fraud(self, payment: Payment, context: HookContext) -> None:
        if payment.id in self.victims:
            raise RuntimeError(f"bug on {payment.id}")


async def test_one_bad_request_does_not_hold_up_the_others() -> None:
    gateway = ScriptedGateway()
    clock = Clock()
    crash, bug = CrashBeforeProcessing(), BuggyFraudCheck()
    service = service_with([gateway], clock=clock, plugins=[crash, bug])
    async with service:
        poison = await crashed_pay(service, crash, "poison")  # the oldest: first in line
        clock.advance(1)
        healthy = await crashed_pay(service, crash, "healthy")
        bug.victims.add(poison.id)
        clock.advance(61)
        report = await service.janitor.run_once()
        assert report.ok and report.resume is not None  # the pass itself went fine
        assert (report.resume.examined, report.resume.resumed) == (2, 1)
        assert dict(report.resume.errors) == {"RuntimeError": 1}
        assert report.resume.still_in_flight_ids == (poison.id,)
        assert (await service.get_payment(healthy.id)).state is S.COMPLETED
        record = await service.store.find_idempotency("m_1", "poison")
        assert record is not None and record.locked_at == clock()  # to the back of the line

        bug.victims.clear()  # fixed: the next pass after reconcile_after_s finishes it
        clock.advance(61)
        report = await service.janitor.run_once()
        assert report.resume is not None and report.resume.resumed == 1
        assert (await service.get_payment(poison.id)).state is S.COMPLETED


class BrokenLocks(MemoryLockManager):
    def hold(self, key: str, timeout: float) -> Any:
        if key == LOCK_KEY:
            raise StoreUnavailable("redis down")
        return super().hold(key, timeout)


async def test_a_lock_manager_failure_is_a_failed_pass() -> None:
    service = service_with([ScriptedGateway()], clock=Clock(), locks=BrokenLocks())
    async with service:
        report = await service.janitor.run_once()
    assert dict(report.failures) == {"lock": "StoreUnavailable: redis down"}
    assert report.reconcile is None and not report.skipped
    assert service.janitor.consecutive_failures == 1


async def test_one_pass_at_a_time_here_and_across_services_sharing_locks() -> None:
    gateway = BlockingStatusGateway(script=LOST)
    gateway.gate.set()  # pay()'s own lookups answer (UNKNOWN)
    clock = Clock()
    store, locks = MemoryStore(), MemoryLockManager()
    service = service_with([gateway], clock=clock, store=store, locks=locks)
    # Another process's service on the same store and (shared, e.g. Redis) locks.
    other = service_with([gateway], clock=clock, store=store, locks=locks)
    async with service, other:
        lost = await service.pay(request())
        assert lost.state is S.PROCESSING
        gateway.gate = anyio.Event()
        gateway.entered = anyio.Event()
        clock.advance(120)
        reports = []

        async def first_pass() -> None:
            reports.append(await service.janitor.run_once())

        async with anyio.create_task_group() as tg:
            tg.start_soon(first_pass)
            await gateway.entered.wait()  # the first pass is inside a status lookup
            here = await service.janitor.run_once()
            there = await other.janitor.run_once()
            for skipped in (here, there):
                assert skipped.skipped and not skipped.ok
                assert skipped.reconcile is None and skipped.resume is None
            assert service.janitor.last_report is None and service.janitor.passes == 0
            assert other.janitor.last_report is None and other.janitor.passes == 0
            gateway.gate.set()
        (report,) = reports
        assert report.ok and report.reconcile is not None
        assert dict(report.reconcile.settled) == {"completed": 1}
        assert service.janitor.last_report is report
        # The lock is free again: the other service's next pass runs.
        assert not (await other.janitor.run_once()).skipped
    assert locks.held_keys() == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis.asyncio
async def test_one_pass_at_a_time_across_processes_sharing_redis_locks() -> None:
    import redis.asyncio as aioredis
    from _services import REDIS_URL, service_unavailable
    from aegispay.locks.redis import RedisLockManager

    client = aioredis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as error:
        await client.aclose()
        service_unavailable("Redis", str(error))
    prefix = f"aegispay-test:{uuid.uuid4().hex}:"
    gateway = BlockingStatusGateway(script=LOST)
    gateway.gate.set()
    clock, store = Clock(), MemoryStore()
    # Two "processes": each its own Redis lock manager, on one store and one Redis.
    mine, theirs = (
        RedisLockManager(REDIS_URL, prefix=prefix),
        RedisLockManager(REDIS_URL, prefix=prefix),
    )
    service = service_with([gateway], clock=clock, store=store, locks=mine)
    other = service_with([gateway], clock=clock, store=store, locks=theirs)
    try:
        async with service, other:
            lost = await service.pay(request())
            gateway.gate, gateway.entered = anyio.Event(), anyio.Event()
            clock.advance(120)
            reports = []

            async def first_pass() -> None:
                reports.append(await service.janitor.run_once())

            async with anyio.create_task_group() as tg:
                tg.start_soon(first_pass)
                await gateway.entered.wait()
                assert (await other.janitor.run_once()).skipped
                gateway.gate.set()
            assert reports[0].ok and (await service.get_payment(lost.id)).state is S.COMPLETED
            assert not (await other.janitor.run_once()).skipped  # released
    finally:
        await mine.close()
        await theirs.close()
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


# -- the loop ---------------------------------------------------------------------------------


async def test_the_service_runs_the_loop_and_stops_it_on_exit() -> None:
    gateway = ScriptedGateway()
    clock = Clock()
    crash = CrashBeforeProcessing()
    store = FlakyStore()
    service = service_with([gateway], clock=clock, plugins=[crash], store=store, interval_s=5)
    ticker = Ticker()
    service.janitor.sleep = ticker.sleep
    async with service:
        await ticker.sleeping()  # started by __aenter__, asleep before its first pass
        assert ticker.delays == [5] and service.janitor.passes == 0
        crashed = await crashed_pay(service, crash, "k")
        clock.advance(61)
        await ticker.tick()
        assert service.janitor.passes == 1
        report = service.janitor.last_report
        assert report is not None and report.resume is not None and report.resume.resumed == 1
        assert (await service.get_payment(crashed.id)).state is S.COMPLETED

        store.error = StoreUnavailable("down")
        await ticker.tick()
        await ticker.tick()
        store.error = None
        await ticker.tick()
        assert ticker.delays == [5, 5, 10, 20, 5]  # backed off while failing, then back
        assert service.janitor.passes == 4
    # Leaving cancelled the sleeping loop: no error, no further pass.
    assert service.janitor.passes == 4
    assert len(ticker.delays) == 5


async def test_leaving_during_a_pass_cancels_it_cleanly() -> None:
    gateway = BlockingStatusGateway(script=LOST)
    gateway.gate.set()
    clock = Clock()
    store, locks = MemoryStore(), MemoryLockManager()
    service = service_with([gateway], clock=clock, store=store, locks=locks, interval_s=5)
    ticker = Ticker()
    service.janitor.sleep = ticker.sleep
    async with service:
        lost = await service.pay(request())
        gateway.gate = anyio.Event()
        gateway.entered = anyio.Event()
        clock.advance(120)
        await ticker.sleeping()
        ticker.release()
        await gateway.entered.wait()  # the pass is inside a status lookup: leave now
    assert locks.held_keys() == 0
    assert service.janitor.last_report is None  # the pass never finished
    assert (await store.load(lost.id)).state is S.PROCESSING  # type: ignore[union-attr]

    # Like a crash at that point: the next service's pass settles it.
    gateway.gate.set()
    again = service_with([gateway], clock=clock, store=store, locks=locks)
    async with again:
        report = await again.janitor.run_once()
    assert report.reconcile is not None and dict(report.reconcile.settled) == {"completed": 1}
    assert gateway.charge_count(lost.id) == 1


async def test_a_disabled_janitor_runs_no_loop_but_run_once_works() -> None:
    clock = Clock()
    service = service_with([ScriptedGateway()], clock=clock, interval_s=0)
    ticker = Ticker()
    service.janitor.sleep = ticker.sleep
    assert not service.janitor.enabled
    async with service:
        await service.janitor.run()  # returns at once: never sleeps, never passes
        assert ticker.delays == [] and service.janitor.passes == 0
        assert (await service.janitor.run_once()).ok
    assert ticker.delays == []


async def test_janitor_directly() -> None:
    # A Janitor can be run by hand on any service, with its own interval and threshold.
    clock = Clock()
    crash = CrashBeforeProcessing()
    service = service_with([ScriptedGateway()], clock=clock, plugins=[crash])
    janitor = Janitor(service, interval_s=1, after_s=5)
    async with service:
        crashed = await crashed_pay(service, crash, "k")
        clock.advance(6)
        report = await janitor.run_once()
    assert report.resume is not None and report.resume.resumed == 1
    assert (await service.get_payment(crashed.id)).state is S.COMPLETED
    assert service.janitor.passes == 0  # the service's own janitor did nothing


# -- the reconcile command ----------------------------------------------------------------------

CONFIG = """
[[plugins.simulated_gateways.gateways]]
name = "sim-sure"
latency_ms = 0.0
decline_rate = 0.0
not_sent_rate = 0.0
unknown_rate = 0.0
"""


async def _crash_a_keyed_pay(url: str, config: Path) -> str:
    store = SqlStore(url)
    await store.upgrade_schema()
    crash = CrashBeforeProcessing()
    service = build_service(
        attrs.evolve(load_settings(config, env={}), store=url),
        plugins=[crash],
        entry_points=False,
        store=store,
    )
    async with service:
        payment = await crashed_pay(service, crash, "cli-key")
    await service.aclose()
    return str(payment.id)


def test_the_reconcile_command_resumes_keyed_requests(tmp_path: Path) -> None:
    config = tmp_path / "aegispay.toml"
    config.write_text(CONFIG, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'pay.db'}"
    payment_id = anyio.run(_crash_a_keyed_pay, url, config, backend="asyncio")

    def reconcile(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "aegispay", "reconcile", "--store", url, *args]
        return subprocess.run(
            command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
        )

    result = reconcile("--older-than", "0", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["examined"] == 0  # nothing open at a gateway
    assert report["idempotency"]["resumed"] == 1
    assert report["idempotency"]["completed"] == {"completed": 1}
    assert report["idempotency"]["still_in_flight_ids"] == []

    text = reconcile("--older-than", "0")
    assert text.returncode == 0, text.stderr
    assert "in-flight idempotency keys: 0 examined" in text.stdout
    shown = subprocess.run(
        [sys.executable, "-m", "aegispay", "payments", "show", payment_id, "--store", url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "state: completed" in shown.stdout, shown.stderr
