"""The Redis lock manager against a real Redis: exclusion, fencing, renewal, waking, failures.

asyncio only (redis.asyncio). Tasks are ordered with anyio Events; sleeps only let time pass
(a lease expiring), and the one deliberate wait is a LockTimeout.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import _services
import anyio
import anyio.lowlevel
import pytest
import redis.asyncio as aioredis
from _services import REDIS_URL
from aegispay import events as ev
from aegispay.errors import ConfigError, FencingTokenRejected, LockTimeout, StoreUnavailable
from aegispay.locks.redis import DEFAULT_FENCE_RETENTION_S, RedisLockManager, _Script
from aegispay.money import Money
from aegispay.payment import Payment, apply
from aegispay.requests import PaymentRequest
from aegispay.states import PaymentState
from aegispay.store.base import Change
from aegispay.store.memory import MemoryStore
from aegispay.testing import ScriptedGateway, make_test_service
from redis.exceptions import ConnectionError as RedisConnectionError

pytestmark = pytest.mark.anyio

NOW = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio only


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    async with _services.redis_client() as client:
        yield client


@pytest.fixture
async def prefix(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    """A random key prefix per test; its keys are deleted afterwards."""
    async with _services.redis_key_prefix(redis_client) as value:
        yield value


@pytest.fixture
async def locks(prefix: str) -> AsyncIterator[RedisLockManager]:
    manager = RedisLockManager(REDIS_URL, prefix=prefix)
    yield manager
    await manager.close()


def usd(minor: int) -> Money:
    return Money(minor, "USD")


def initiated(payment_id: str) -> tuple[Payment, ev.Event]:
    event = ev.PaymentInitiated(
        payment_id=payment_id,
        version=1,
        occurred_at=NOW,
        merchant_id="m",
        amount=usd(1000),
        capture_mode="automatic",
    )
    return apply(None, event), event


def next_change(payment: Payment, token: int, tag: str) -> Change:
    event = ev.CaptureFailed(
        payment_id=payment.id,
        version=payment.version + 1,
        occurred_at=NOW,
        amount=usd(1),
        idempotency_key=f"k-{tag}",
        code=tag,
    )
    return Change(apply(payment, event), payment.version, (event,), token)


async def test_mutual_exclusion_loses_no_update(locks: RedisLockManager) -> None:
    counter = 0

    async def increment() -> None:
        nonlocal counter
        async with locks.hold("counter", 10):
            value = counter
            await anyio.lowlevel.checkpoint()  # others run between the read and the write
            counter = value + 1

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(increment)
    assert counter == 20


async def test_tokens_strictly_increase_including_after_expiry(
    prefix: str, redis_client: aioredis.Redis
) -> None:
    short = RedisLockManager(REDIS_URL, prefix=prefix, lease_ms=150, renew=False)
    other = RedisLockManager(REDIS_URL, prefix=prefix)
    tokens: list[int] = []
    try:
        for _ in range(3):
            async with other.hold("k", 5) as lease:
                tokens.append(lease.token)
        # Held but never released: the lease expires, and the next grant still goes up.
        expired = short.hold("k", 5)
        lease = await expired.__aenter__()
        tokens.append(lease.token)
        with anyio.fail_after(5):
            async with other.hold("k", 5) as lease:
                tokens.append(lease.token)
        await expired.__aexit__(None, None, None)
        assert expired.lost
        async with other.hold("k", 5) as lease:
            tokens.append(lease.token)
        await redis_client.delete(other.fence_key("k"))  # Redis lost its counters (no persistence)
        async with other.hold("k", 5) as lease:
            tokens.append(lease.token)  # still above every earlier token: the clock floor
    finally:
        await short.close()
        await other.close()
    assert tokens == sorted(set(tokens)), tokens
    assert len(tokens) == 7
    # The counter outlives any lease, but not forever (one key per payment ever locked).
    retention_ms = DEFAULT_FENCE_RETENTION_S * 1000
    assert retention_ms - 60_000 < await redis_client.pttl(other.fence_key("k")) <= retention_ms


async def test_fence_retention_is_configurable_and_must_outlive_the_lease(
    prefix: str, redis_client: aioredis.Redis
) -> None:
    short = RedisLockManager(REDIS_URL, prefix=prefix, fence_retention_s=60)
    try:
        async with short.hold("k", 5):
            pass
        assert 50_000 < await redis_client.pttl(short.fence_key("k")) <= 60_000
    finally:
        await short.close()
    with pytest.raises(ConfigError, match="fence_retention_s"):
        RedisLockManager(REDIS_URL, prefix=prefix, lease_ms=10_000, fence_retention_s=10)


async def test_release_by_a_former_owner_keeps_the_new_owners_lock(
    locks: RedisLockManager, redis_client: aioredis.Redis
) -> None:
    hold = locks.hold("k", 5)
    async with hold:
        # Our lease "expired" and someone else took the lock.
        await redis_client.set(locks.lock_key("k"), b"someone-else", px=10_000)
    assert hold.lost
    assert await redis_client.get(locks.lock_key("k")) == b"someone-else"


async def test_waiting_past_the_timeout_raises_lock_timeout(
    locks: RedisLockManager, redis_client: aioredis.Redis
) -> None:
    async with locks.hold("k", 5):
        with pytest.raises(LockTimeout) as raised:
            await locks.hold("k", 0.2).__aenter__()
        assert raised.value.key == "k"
        # The waiter's subscription is gone.
        assert await redis_client.pubsub_numsub(locks.channel("k")) == [
            (locks.channel("k").encode(), 0)
        ]
    async with locks.hold("k", 0.2):  # and the lock is free again
        pass


async def test_an_error_in_the_body_propagates_unwrapped_and_releases(
    locks: RedisLockManager, redis_client: aioredis.Redis
) -> None:
    # renew=True: the body runs inside the renewal task group, which must not wrap the error.
    with pytest.raises(KeyError):
        async with locks.hold("k", 5):
            raise KeyError("boom")
    assert await redis_client.exists(locks.lock_key("k")) == 0


async def test_a_cancelled_holder_releases_the_lock(
    locks: RedisLockManager, redis_client: aioredis.Redis
) -> None:
    entered = anyio.Event()

    async def hold_forever() -> None:
        async with locks.hold("k", 5):
            entered.set()
            await anyio.Event().wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold_forever)
        await entered.wait()
        tg.cancel_scope.cancel()
    # The lease had ~10 s left: only a release lets this in.
    assert await redis_client.exists(locks.lock_key("k")) == 0
    async with locks.hold("k", 0.5):
        pass


class _ObservedWaits(RedisLockManager):
    """Sets ``waiting`` when a waiter is subscribed and blocked on the release channel."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting = anyio.Event()

    async def _wait_for_release(self, released: Any, seconds: float) -> None:
        self.waiting.set()
        await super()._wait_for_release(released, seconds)


async def test_a_waiter_wakes_on_release(prefix: str) -> None:
    holder = RedisLockManager(REDIS_URL, prefix=prefix)
    waiter = _ObservedWaits(REDIS_URL, prefix=prefix)
    acquired: list[int] = []

    async def wait_for_lock() -> None:
        async with waiter.hold("k", 5) as lease:
            acquired.append(lease.token)

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg, holder.hold("k", 5) as held:
                tg.start_soon(wait_for_lock)
                await waiter.waiting.wait()
                started = anyio.current_time()
        # The lease had ~10 s left and the waiter's timeout is 5 s: without the release
        # message it would have raised LockTimeout.
        assert len(acquired) == 1 and acquired[0] > held.token
        assert anyio.current_time() - started < 5
    finally:
        await holder.close()
        await waiter.close()


class _CountedWaits(RedisLockManager):
    """Sets ``all_waiting`` once ``expected`` distinct waiters are blocked on a release."""

    def __init__(self, *args: Any, expected: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.expected = expected
        self.waiters: set[int] = set()
        self.all_waiting = anyio.Event()

    async def _wait_for_release(self, released: Any, seconds: float) -> None:
        self.waiters.add(id(released))
        if len(self.waiters) >= self.expected:
            self.all_waiting.set()
        await super()._wait_for_release(released, seconds)


async def test_waiters_share_one_subscription(prefix: str, redis_client: aioredis.Redis) -> None:
    """A manager's waiters watch their release channels on one subscription: 60 holders
    queueing on 20 held payments, through a manager of only 4 connections, all get their
    lease in turn, and Redis counts one subscriber per channel. (With a subscription of
    their own they took the pool's connections, and the acquires and releases they waited
    for queued behind them until the pool's timeout.)"""
    locks = _CountedWaits(REDIS_URL, prefix=prefix, max_connections=4, expected=60)
    keys = [f"p{n}" for n in range(20)]
    tokens: dict[str, list[int]] = {key: [] for key in keys}
    let_go = anyio.Event()

    async def first(key: str, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with locks.hold(key, 5) as lease:
            tokens[key].append(lease.token)
            task_status.started()
            await let_go.wait()

    async def later(key: str) -> None:
        async with locks.hold(key, 20) as lease:
            tokens[key].append(lease.token)

    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for key in keys:
                    await tg.start(first, key)
                for n in range(60):
                    tg.start_soon(later, keys[n % 20])
                await locks.all_waiting.wait()
                assert locks._watch.watched() == 20
                for key in keys[:3]:
                    channel = locks.channel(key)
                    assert await redis_client.pubsub_numsub(channel) == [(channel.encode(), 1)]
                let_go.set()
        for key in keys:  # the first holder and its three waiters, one after another
            assert len(tokens[key]) == 4 and tokens[key] == sorted(set(tokens[key])), tokens
        assert locks._watch.watched() == 0
    finally:
        await locks.close()


async def test_a_managers_waiters_get_the_lease_in_the_order_they_came(prefix: str) -> None:
    """Twelve waiters queue on one payment, one after another: each release wakes only the
    one that waited longest, so they get the lease in arrival order, and the release costs
    one try rather than one per waiter. (Woken all at once, they tried 12 + 11 + ... times.)"""
    locks = _CountedWaits(REDIS_URL, prefix=prefix, expected=1)
    order: list[int] = []

    async def wait(n: int) -> None:
        async with locks.hold("k", 20):
            order.append(n)

    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg, locks.hold("k", 5):
                for n in range(12):
                    tg.start_soon(wait, n)
                    await locks.all_waiting.wait()  # n is queued before n + 1 asks
                    locks.expected += 1
                    locks.all_waiting = anyio.Event()
                tries = locks._acquires.items
        assert order == list(range(12))
        # After the queue formed: one try per release, plus a few a wake left over by a
        # waiter that got the lease may cost (never one per waiter per release).
        assert locks._acquires.items - tries <= 2 * 12, locks._acquires.items - tries
    finally:
        await locks.close()


class _StallingTries(_CountedWaits):
    """A try of the hold ``stall`` never reaches Redis: it blocks until cancelled."""

    stall: Any = None
    stalled: Any = None  # an anyio.Event, set by the test

    async def _try_acquire(self, hold: Any) -> int:
        if hold is self.stall:
            self.stalled.set()
            await anyio.sleep_forever()
        return await super()._try_acquire(hold)


async def test_a_waiter_woken_then_cancelled_passes_the_wake_on(prefix: str) -> None:
    """The first in line is woken by a release and cancelled before its try reaches Redis:
    the payment is free, and the next waiter must learn it now - not when the old holder's
    lease would have run out (60 s: past the test's 10 s deadline and the waiter's 30 s)."""
    holder = RedisLockManager(REDIS_URL, prefix=prefix, lease_ms=60_000)
    locks = _StallingTries(REDIS_URL, prefix=prefix, expected=1)
    locks.stalled = anyio.Event()
    held = holder.hold("k", 5)
    await held.__aenter__()
    first = locks.hold("k", 5)
    acquired: list[int] = []

    async def wait_first(scope: anyio.CancelScope) -> None:
        with scope:
            async with first:
                acquired.append(0)

    async def wait_second() -> None:
        async with locks.hold("k", 30) as lease:
            acquired.append(lease.token)

    released = False
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()
                tg.start_soon(wait_first, scope)
                await locks.all_waiting.wait()
                locks.expected, locks.all_waiting = 2, anyio.Event()
                tg.start_soon(wait_second)
                await locks.all_waiting.wait()
                locks.stall = first
                await held.__aexit__(None, None, None)  # publishes: the first is woken
                released = True
                await locks.stalled.wait()
                scope.cancel()
        assert len(acquired) == 1 and acquired[0] > 0  # the second waiter, in time
    finally:
        if not released:
            await held.__aexit__(None, None, None)
        await holder.close()
        await locks.close()


async def test_a_broken_subscription_fails_its_waiters_and_the_next_starts_afresh(
    prefix: str, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared subscription's connection fails: its waiter gets StoreUnavailable (no
    waiter is left on a dead reader), and the next waiter subscribes anew and is woken."""
    holder = RedisLockManager(REDIS_URL, prefix=prefix)
    waiter = _ObservedWaits(REDIS_URL, prefix=prefix)
    held = holder.hold("k", 5)
    await held.__aenter__()
    failures: list[BaseException] = []
    acquired: list[int] = []

    async def wait_for_lock() -> None:
        try:
            async with waiter.hold("k", 5) as lease:
                acquired.append(lease.token)
        except StoreUnavailable as error:
            failures.append(error)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("connection reset by peer")

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_lock)
                await waiter.waiting.wait()
                pubsub = waiter._watch._pubsub
                # The reader is blocked in a read: a message wakes it (the waiter tries again
                # and waits again), and its next read fails.
                monkeypatch.setattr(pubsub, "get_message", broken)
                await redis_client.publish(waiter.channel("k"), b"0")
            assert len(failures) == 1 and "connection reset" in str(failures[0])
            assert waiter._watch.watched() == 0 and waiter._watch._pubsub is None

            waiter.waiting = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_lock)
                await waiter.waiting.wait()
                assert waiter._watch._pubsub not in (None, pubsub)
                # The lease has ~10 s left and the waiter's timeout is 5 s: only the release
                # message on the new subscription gets it the lock in time.
                await held.__aexit__(None, None, None)
        assert len(acquired) == 1 and len(failures) == 1
    finally:
        if not acquired:
            await held.__aexit__(None, None, None)
        await holder.close()
        await waiter.close()


async def test_renewal_keeps_the_lease_while_the_holder_works(
    prefix: str, redis_client: aioredis.Redis
) -> None:
    locks = RedisLockManager(REDIS_URL, prefix=prefix, lease_ms=300)
    work_done = anyio.Event()

    async def time_passes() -> None:
        await anyio.sleep(1.0)  # more than three leases
        work_done.set()

    try:
        hold = locks.hold("k", 5)
        async with anyio.create_task_group() as tg, hold:
            tg.start_soon(time_passes)
            await work_done.wait()
            assert await redis_client.pttl(locks.lock_key("k")) > 0
            with pytest.raises(LockTimeout):
                await locks.hold("k", 0.05).__aenter__()
        assert not hold.lost
        assert await redis_client.exists(locks.lock_key("k")) == 0
    finally:
        await locks.close()


async def test_kleppmann_paused_holder_is_fenced_by_the_store(prefix: str) -> None:
    store = MemoryStore()
    payment, event = initiated("pay_kleppmann")
    await store.commit(Change(payment, 0, (event,)))
    a_locks = RedisLockManager(REDIS_URL, prefix=prefix, lease_ms=200, renew=False)
    b_locks = RedisLockManager(REDIS_URL, prefix=prefix)
    a_paused = anyio.Event()
    resume_a = anyio.Event()
    outcome: list[BaseException] = []
    changes: dict[str, Change] = {}

    async def holder_a() -> None:
        hold = a_locks.hold(payment.id, 5)
        async with hold as lease:
            a_paused.set()
            await resume_a.wait()  # "GC pause" well past the 200 ms lease
            current = await store.load(payment.id)
            assert current is not None
            changes["a"] = next_change(current, lease.token, "a")
            try:
                await store.commit(changes["a"])
            except FencingTokenRejected as error:
                outcome.append(error)
        assert hold.lost

    async def holder_b() -> None:
        await a_paused.wait()
        async with b_locks.hold(payment.id, 5) as lease:  # granted once A's lease expires
            current = await store.load(payment.id)
            assert current is not None
            changes["b"] = next_change(current, lease.token, "b")
            await store.commit(changes["b"])
        resume_a.set()

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder_a)
                tg.start_soon(holder_b)
    finally:
        await a_locks.close()
        await b_locks.close()

    [rejected] = outcome
    assert isinstance(rejected, FencingTokenRejected)
    assert changes["a"].fencing_token is not None and changes["b"].fencing_token is not None
    assert changes["a"].fencing_token < changes["b"].fencing_token
    assert await store.load(payment.id) == changes["b"].payment
    assert [e.version for e in await store.events(payment.id)] == [1, 2]
    assert (await store.events(payment.id))[1] == changes["b"].events[0]


async def test_unreachable_redis_is_store_unavailable_without_the_password() -> None:
    locks = RedisLockManager("redis://:secret@127.0.0.1:1/0")
    assert "secret" not in repr(locks)
    try:
        with anyio.fail_after(30), pytest.raises(StoreUnavailable) as raised:
            async with locks.hold("k", 1):
                pass
    finally:
        await locks.close()
    assert "secret" not in str(raised.value)
    assert "127.0.0.1:1" in str(raised.value)


async def test_service_with_redis_locks_charges_once(prefix: str) -> None:
    gateway = ScriptedGateway()
    service = make_test_service(
        gateways=[gateway], locks=RedisLockManager(REDIS_URL, prefix=prefix)
    )
    results: list[Payment] = []

    async def process(payment_id: str) -> None:
        results.append(await service.process_payment(payment_id))

    async with service:  # closes the lock manager on the way out
        created = await service.create_payment(PaymentRequest(usd(1500)))
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(process, created.id)
        stored = await service.get_payment(created.id)

    assert len(results) == 20
    assert gateway.charge_count(created.id) == 1
    assert stored.state is PaymentState.COMPLETED
    assert all(result == stored for result in results)


async def test_concurrent_holders_share_round_trips_and_leave_nothing_behind(
    locks: RedisLockManager, redis_client: aioredis.Redis
) -> None:
    tokens: dict[str, int] = {}
    all_in = anyio.Event()

    async def hold(key: str) -> None:
        async with locks.hold(key, 5) as lease:
            tokens[key] = lease.token
            if len(tokens) == 200:
                all_in.set()
            await all_in.wait()  # every lease is held at once

    async with anyio.create_task_group() as tg:
        for n in range(200):
            tg.start_soon(hold, f"p{n}")
    assert len(tokens) == 200 and min(tokens.values()) > 0
    # First tries went to Redis in shared script calls, not one call per holder.
    assert locks._acquires.batches < 200 and locks._acquires.items == 200
    assert locks._releases.items == 200
    assert not await redis_client.keys(f"{locks.prefix}*:lock")
    assert locks._renewer is None  # the renewal task stops with the last lease


class _GrantedThenStuck(RedisLockManager):
    """Grants in Redis, then never answers the holder: as if it were cancelled mid-call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.granted = anyio.Event()
        self.unstick = anyio.Event()

    async def _acquire_batch(self, items: Any) -> list[int]:
        result = await super()._acquire_batch(items)
        self.granted.set()
        await self.unstick.wait()
        return result


async def test_an_acquire_cancelled_after_the_grant_gives_the_lock_back(
    prefix: str, redis_client: aioredis.Redis
) -> None:
    locks = _GrantedThenStuck(REDIS_URL, prefix=prefix)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(locks.hold("k", 5).__aenter__)
            await locks.granted.wait()
            assert await redis_client.exists(locks.lock_key("k")) == 1
            tg.cancel_scope.cancel()
        # Without the undo the lease (10 s) would keep every other worker out.
        assert await redis_client.exists(locks.lock_key("k")) == 0
        locks.unstick.set()
    finally:
        await locks.close()


class _GrantedLate(RedisLockManager):
    """Holds the acquire call back until told, so its grant lands after the holder gave up."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sending = anyio.Event()
        self.send = anyio.Event()

    async def _acquire_batch(self, items: Any) -> list[int]:
        self.sending.set()
        await self.send.wait()
        return await super()._acquire_batch(items)


async def test_a_grant_that_lands_after_its_holder_gave_up_is_given_back(
    prefix: str, redis_client: aioredis.Redis
) -> None:
    locks = _GrantedLate(REDIS_URL, prefix=prefix)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(locks.hold("k", 5).__aenter__)
            await locks.sending.wait()
            tg.cancel_scope.cancel()
        # The holder's own give-back reached Redis before its grant did: it found nothing.
        assert await redis_client.exists(locks.lock_key("k")) == 0
        locks.send.set()
        await locks._acquires.wait_idle()
        await locks._releases.wait_idle()
        # The grant arrived for no one: the batch task gave it back (else 10 s of lease).
        assert await redis_client.exists(locks.lock_key("k")) == 0
        async with locks.hold("k", 0.5):
            pass
    finally:
        await locks.close()


async def test_scripts_missing_from_the_script_cache_are_sent_whole(
    locks: RedisLockManager, redis_client: aioredis.Redis
) -> None:
    # Scripts Redis has never seen (as after a restart or SCRIPT FLUSH, without flushing the
    # cache others use): EVALSHA answers NOSCRIPT, and the body goes instead.
    tag = f"\n-- {uuid.uuid4().hex}\n"
    for name in ("_acquire_script", "_release_script", "_renew_script"):
        script = getattr(locks, name)
        setattr(locks, name, _Script(script.body.decode() + tag))
    assert not any(await redis_client.script_exists(locks._acquire_script.sha))
    for _ in range(2):  # the second time from the script cache
        async with locks.hold("k", 5) as lease:
            assert lease.token > 0
            assert await redis_client.exists(locks.lock_key("k")) == 1
        assert await redis_client.exists(locks.lock_key("k")) == 0


async def test_a_kept_connection_closed_by_the_server_is_replaced(
    locks: RedisLockManager, redis_client: aioredis.Redis
) -> None:
    async with locks.hold("k", 5):
        pass
    [kept] = locks._spare
    await kept.send_command("CLIENT", "ID")
    client_id = await kept.read_response()
    assert await redis_client.client_kill_filter(_id=client_id) == 1
    # Without a retry on a fresh connection this would be StoreUnavailable.
    async with locks.hold("k", 5) as lease:
        assert lease.token > 0


class _ReleasedWhenTold(RedisLockManager):
    """Holds each release call back until told."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.releasing = anyio.Event()
        self.release = anyio.Event()

    async def _release_batch(self, items: Any) -> list[int]:
        self.releasing.set()
        await self.release.wait()
        return await super()._release_batch(items)


async def test_a_holder_cancelled_while_releasing_leaves_only_once_released(
    prefix: str, redis_client: aioredis.Redis
) -> None:
    locks = _ReleasedWhenTold(REDIS_URL, prefix=prefix)
    scope = anyio.CancelScope()
    left = anyio.Event()
    hold = locks.hold("k", 5)

    async def holder() -> None:
        with scope:
            async with hold:
                pass
        left.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await locks.releasing.wait()
            scope.cancel()
            await anyio.wait_all_tasks_blocked()
            assert not left.is_set()  # still waiting for its release, cancelled or not
            assert await redis_client.exists(locks.lock_key("k")) == 1
            locks.release.set()
            await left.wait()
            assert await redis_client.exists(locks.lock_key("k")) == 0
        assert not hold.lost
    finally:
        locks.release.set()  # close() waits for queued releases
        await locks.close()


async def test_a_key_that_cannot_be_encoded_fails_only_its_own_holder(
    locks: RedisLockManager,
) -> None:
    tokens: list[int] = []

    async def good(key: str) -> None:
        async with locks.hold(key, 5) as lease:
            tokens.append(lease.token)

    async def bad() -> None:
        with pytest.raises(UnicodeEncodeError):
            async with locks.hold("p\udc80", 5):
                pass

    async with anyio.create_task_group() as tg:  # first tries that would share a batch
        tg.start_soon(good, "a")
        tg.start_soon(bad)
        tg.start_soon(good, "b")
    assert len(tokens) == 2
