"""Outbox relays on SQL stores: several relays (tasks and ``aegispay outbox relay`` processes)
on one PostgreSQL database, a failing payment isolated while others flow, a row that commits
late, a paused relay losing its lease, a dead relay's leases, and the ``outbox`` commands.

Relays that must not wait get a fake clock; the multi-process test waits only for conditions
(every message delivered), never for a fixed time.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]
import pytest
from _outbox_consumer import CREATE_TABLE, URL_VARIABLE, DeliveryLog
from _services import POSTGRES_URL, service_unavailable
from aegispay import Money, PaymentService
from aegispay import events as ev
from aegispay.cli import cli
from aegispay.hooks import Hooks
from aegispay.outbox import (
    OutboxMessage,
    OutboxRelay,
    OutboxSettled,
    RelaySettings,
    new_owner,
    owner_is_dead,
)
from aegispay.pluginmanager import make_plugin_host
from aegispay.store.memory import MemoryStore
from aegispay.store.sql import SqlStore, normalise_url, outbox, payment_events
from aegispay.testing import ScriptedGateway, make_test_service
from click.testing import CliRunner
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from store_conformance import LEASE, at, change, claim, fail, initiated, lifecycle
from test_events_and_relay import Clock, FlakySink, PoisonSink, Recorder, ids, request

pytestmark = pytest.mark.anyio

TESTS = Path(__file__).parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg and aiosqlite are asyncio libraries


@asynccontextmanager
async def pg_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database (a URL, so other processes can open it), migrated."""
    name = f"aegispay_relays_{secrets.token_hex(5)}"
    try:
        admin = await asyncpg.connect(POSTGRES_URL)
    except Exception as error:  # unreachable, refused...
        service_unavailable("PostgreSQL", str(error))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        store = SqlStore(url)
        await store.upgrade_schema()
        await store.close()
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "postgresql":
        async with pg_database() as url:
            yield url
        return
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    store = SqlStore(url)
    await store.upgrade_schema()
    await store.close()
    yield url


def service_on(store: SqlStore | MemoryStore, *plugins: object) -> PaymentService:
    service: PaymentService = make_test_service(
        gateways=[ScriptedGateway()], plugins=list(plugins), store=store
    )
    return service


def fixed_relay(
    store: Any, sinks: list[Any], hooks: Hooks, clock: Clock, **settings: Any
) -> OutboxRelay:
    return OutboxRelay(store, sinks, hooks, RelaySettings(**settings), clock=clock, rng=lambda: 0.5)


# -- a failing payment -------------------------------------------------------------------------


async def test_a_failing_payment_backs_off_then_parks_while_others_flow(sql_url: str) -> None:
    store = SqlStore(sql_url)
    recorder = Recorder()
    service = service_on(store, recorder)
    recorder.store = store
    sink, clock = PoisonSink(), Clock()
    relay = fixed_relay(store, [sink], service.hooks, clock, max_attempts=3)
    try:
        a = await service.pay(request(100))
        sink.poisoned.add(a.id)
        b = await service.pay(request(200))

        assert await relay.drain() == b.version
        assert sink.batches == [ids(a) + ids(b), ids(a), ids(b)]  # isolated payment by payment
        assert sink.accepted == ids(b)
        counts = await store.outbox_counts(clock())
        assert (counts.pending, counts.backing_off, counts.backing_off_payments) == (
            a.version,
            a.version,
            1,
        )
        assert counts.next_retry_at == clock() + timedelta(seconds=0.025)

        for attempt in (2, 3):
            # While a backs off, new payments go straight through.
            c = await service.pay(request(300 + attempt))
            assert await relay.drain() == c.version
            assert sink.accepted[-c.version :] == ids(c)
            due = (await store.outbox_counts(clock())).next_retry_at
            assert due is not None and due > clock()
            clock.now = due
            assert await relay.drain() == 0
            assert sink.batches[-1] == ids(a)

        parked = await store.outbox_parked()
        assert [(m.message_id, m.attempts) for m, _ in parked] == [(i, 3) for i in ids(a)]
        assert {error for _, error in parked} == {"poison: ValueError('cannot decode')"}
        assert a.id not in {e.payment_id for e in recorder.events}
        counts = await store.outbox_counts(clock())
        assert (counts.pending, counts.parked, counts.next_retry_at) == (0, a.version, None)

        # a's later messages continue; the parked ones come back when requeued.
        sink.poisoned.clear()
        refunded = await service.refund(a.id, Money(10, "USD"))
        assert await relay.drain() == refunded.version - a.version
        assert await store.outbox_requeue() == ids(a)
        assert await relay.drain() == a.version
        delivered_a = [i for i in sink.accepted if i.startswith(a.id)]
        assert delivered_a == ids(refunded)[a.version :] + ids(a)
        assert await store.outbox_parked() == []
    finally:
        await store.close()


# -- several relays, several processes ---------------------------------------------------------


def consumer_entry_point(directory: Path) -> Path:
    """A distribution on ``directory`` whose ``aegispay`` entry point is the test consumer."""
    info = directory / "aegispay_test_outbox_consumer-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: aegispay-test-outbox-consumer\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[aegispay]\noutbox_consumer = _outbox_consumer:ConsumerPlugin\n"
    )
    return directory


NOTIFY_ON_CHANGE = """
CREATE FUNCTION notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('changed', TG_TABLE_NAME); RETURN NULL; END $$;
CREATE TRIGGER outbox_changed AFTER INSERT OR UPDATE OR DELETE ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION notify_change();
CREATE TRIGGER leases_changed AFTER INSERT OR UPDATE OR DELETE ON outbox_leases
    FOR EACH STATEMENT EXECUTE FUNCTION notify_change();
CREATE TRIGGER deliveries_changed AFTER INSERT ON deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION notify_change();
"""


class Changes:
    """Wakes the test whenever another process or task commits a change to the outbox, the
    leases or the deliveries (PostgreSQL NOTIFY, sent at commit): waiting needs no polling."""

    def __init__(self) -> None:
        self._changed = anyio.Event()

    def __call__(self, *_: object) -> None:  # asyncpg's listener callback
        self._changed.set()

    async def wait_for(self, condition: Callable[[], Awaitable[bool]], what: str) -> None:
        with anyio.fail_after(120):
            while True:
                self._changed = anyio.Event()  # before looking: no change goes unnoticed
                if await condition():
                    return
                await self._changed.wait()
        raise AssertionError(what)  # pragma: no cover (fail_after raised)


async def test_relays_in_tasks_and_processes_deliver_each_payment_in_order(
    pg_url: str, tmp_path: Path
) -> None:
    deliveries = await asyncpg.connect(pg_url)
    await deliveries.execute(CREATE_TABLE)
    await deliveries.execute(NOTIFY_ON_CHANGE)
    changes = Changes()
    listener = await asyncpg.connect(pg_url)
    await listener.add_listener("changed", changes)
    producer_store = SqlStore(pg_url)
    producer = service_on(producer_store)

    async def produce(first: int, count: int) -> None:
        limiter = anyio.CapacityLimiter(8)

        async def one(n: int) -> None:
            async with limiter:
                payment = await producer.pay(request(1000 + n))
                if n % 3 == 0:  # a few more events, committed later
                    await producer.refund(payment.id, Money(100, "USD"))

        async with anyio.create_task_group() as group:
            for n in range(first, first + count):
                group.start_soon(one, n)

    async def delivered_by(relay: str) -> int:
        query = "SELECT count(*) FROM deliveries WHERE relay = $1"
        return int(await deliveries.fetchval(query, relay))

    # A backlog before any relay runs, so both processes find work as soon as they are up.
    await produce(0, 150)
    env = os.environ | {
        URL_VARIABLE: pg_url,
        "PYTHONPATH": os.pathsep.join(
            [str(consumer_entry_point(tmp_path / "plugin")), str(TESTS)]
            + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        ),
    }
    command = [sys.executable, "-m", "aegispay", "outbox", "relay", "--store", pg_url]
    logs = [(tmp_path / f"relay{i}.out", tmp_path / f"relay{i}.err") for i in range(2)]
    processes = []
    for out, err in logs:
        with out.open("w") as stdout, err.open("w") as stderr:
            processes.append(
                await anyio.open_process(
                    # Small passes, as the tasks below: the backlog is shared, not taken
                    # whole by whichever relay starts first.
                    [*command, "--interval", "0.05", "--batch-size", "16"],
                    cwd=tmp_path,
                    env=env,
                    stdout=stdout,
                    stderr=stderr,
                )
            )
    relay_stores = [SqlStore(pg_url) for _ in range(3)]
    sinks = [DeliveryLog(pg_url, f"task-{i}") for i in range(3)]
    hooks = Hooks(make_plugin_host(builtins=False, entry_points=False).pm)
    relays = [
        OutboxRelay(store, [sink], hooks, RelaySettings(batch_size=16), poll_interval=0.05)
        for store, sink in zip(relay_stores, sinks, strict=True)
    ]
    for relay in relays:
        producer_store.on_commit(relay.notify)  # tasks in this process hear its commits
    try:
        for process in processes:
            label = f"process-{process.pid}"

            async def started(label: str = label, process: Any = process) -> bool:
                assert process.returncode is None, "a relay process exited"
                return await delivered_by(label) > 0

            await changes.wait_for(started, f"{label} delivers")

        async with anyio.create_task_group() as group:
            for relay in relays:
                group.start_soon(relay.run)
            await produce(150, 150)  # while five relays deliver

            async def all_delivered() -> bool:
                counts = await producer_store.outbox_counts(datetime.now(UTC))
                return counts.pending == 0 and counts.leased_payments == 0

            await changes.wait_for(all_delivered, "every message published")
            group.cancel_scope.cancel()
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            for process in processes:
                await process.wait()
        for sink in sinks:
            await sink.close()
        for store in relay_stores:
            await store.close()
        await listener.close()

    outputs = [(out.read_text(), err.read_text()) for out, err in logs]
    for (_, err), process in zip(outputs, processes, strict=True):
        assert process.returncode == 0, err
        assert "relay stopped" in err
    process_published = [int(re.findall(r"published: (\d+)", out)[-1]) for out, _ in outputs]

    engine = create_async_engine(normalise_url(pg_url))
    async with engine.connect() as conn:
        rows = (await conn.execute(outbox.select())).all()
    await engine.dispose()
    log = await deliveries.fetch(
        "SELECT message_id, payment_id, sequence, relay FROM deliveries ORDER BY id"
    )
    await deliveries.close()
    await producer_store.close()

    # Nothing lost: every message published, none parked, each delivered at least once.
    assert len(rows) > 1000
    assert all(row.published_at is not None and not row.parked for row in rows)
    assert {row.message_id for row in rows} == {d["message_id"] for d in log}
    # Each message marked published by exactly one relay.
    assert sum(process_published) + sum(r.published for r in relays) == len(rows)
    # Per payment, the consumer never saw the sequence go backwards.
    seen: dict[str, list[int]] = defaultdict(list)
    for delivery in log:
        seen[delivery["payment_id"]].append(delivery["sequence"])
    for payment_id, sequences in seen.items():
        assert sequences == sorted(sequences), payment_id
        assert sorted(set(sequences)) == list(range(1, len(set(sequences)) + 1)), payment_id
    # The work really was shared by tasks and processes.
    relays_seen = {d["relay"] for d in log}
    assert {f"process-{p.pid}" for p in processes} <= relays_seen
    assert len(relays_seen) >= 3
    assert all(n > 0 for n in process_published)


# -- a late commit, a paused relay, a dead relay -----------------------------------------------


async def test_a_row_that_commits_late_is_still_delivered(pg_url: str) -> None:
    store = SqlStore(pg_url)
    sink = FlakySink("recorder")
    service = service_on(store)
    relay = fixed_relay(store, [sink], service.hooks, Clock())
    engine = create_async_engine(normalise_url(pg_url))
    late = initiated("pay_late")
    try:
        async with engine.connect() as slow:
            transaction = await slow.begin()
            # Takes its seq now, commits only later (with its event, as every writer does).
            history, messages = store._event_rows([late])
            await slow.execute(payment_events.insert(), history)
            await slow.execute(outbox.insert(), messages)
            early = await service.pay(request())  # later seqs, committed first
            assert await relay.drain() == early.version
            assert sink.deliveries == [ids(early)]
            await transaction.commit()
        # No cursor remembered "up to where": the late row is found by its status.
        assert await relay.drain() == 1
        assert sink.deliveries[-1] == ["pay_late:1"]
        async with engine.connect() as conn:
            seqs = dict((await conn.execute(outbox.select().with_only_columns(
                outbox.c.message_id, outbox.c.seq
            ))).all())  # fmt: skip
        assert seqs["pay_late:1"] < seqs[f"{early.id}:1"]
        assert await store.outbox_pending(100) == []
    finally:
        await engine.dispose()
        await store.close()


async def test_a_paused_relay_loses_its_lease_and_marks_nothing(pg_url: str) -> None:
    class PausingSink:
        name = "pausing"

        def __init__(self) -> None:
            self.entered = anyio.Event()
            self.resume = anyio.Event()
            self.seen: list[list[str]] = []

        async def publish(self, messages: list[OutboxMessage]) -> None:
            self.seen.append([m.message_id for m in messages])
            self.entered.set()
            await self.resume.wait()

    stores = [SqlStore(pg_url) for _ in range(2)]
    service = service_on(stores[0])
    paused, healthy = PausingSink(), FlakySink("healthy")
    clock_a, clock_b = Clock(), Clock()
    relay_a = fixed_relay(stores[0], [paused], service.hooks, clock_a)
    relay_b = fixed_relay(stores[1], [healthy], service.hooks, clock_b)
    try:
        payment = await service.pay(request())
        async with anyio.create_task_group() as group:
            group.start_soon(relay_a.publish_pending)
            await paused.entered.wait()  # a holds the lease, and stalls mid-delivery
            assert await relay_b.drain() == 0  # b keeps off the payment while the lease holds
            clock_b.advance(RelaySettings().lease_s + 1)
            assert await relay_b.drain() == payment.version  # the lease expired: b took over
            clock_a.advance(RelaySettings().lease_s + 1)
            paused.resume.set()
        # a woke up past its lease: it marked nothing (b had); nothing is left pending.
        assert relay_a.published == 0 and relay_b.published == payment.version
        assert paused.seen == healthy.deliveries == [ids(payment)]
        assert await stores[0].outbox_pending(100) == []
        assert (await stores[0].outbox_counts(clock_b())).leased_payments == 0
    finally:
        for store in stores:
            await store.close()


def dead_process_owner() -> str:
    """A relay owner id naming a process of this host that has exited."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    host, _, process, relay = new_owner().rsplit(":", 3)
    return f"{host}:{int(child.stdout)}:{process}:{relay}"


def test_owner_is_dead() -> None:
    own = new_owner()
    host, pid, process, relay = own.rsplit(":", 3)
    assert not owner_is_dead(own)
    assert not owner_is_dead(new_owner())  # another relay of this process: alive
    assert owner_is_dead(f"{host}:{pid}:{'0' * 8}:{relay}")  # an earlier process, same pid
    assert owner_is_dead(dead_process_owner())
    assert not owner_is_dead(f"{host}:{os.getppid()}:{process}:{relay}")  # alive
    assert not owner_is_dead(f"elsewhere:{pid}:{process}:{relay}")  # another host: unknown
    assert not owner_is_dead("relay-a")


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "postgresql":
        async with pg_database() as url:
            yield SqlStore(url)
        return
    store = SqlStore(f"sqlite:///{tmp_path / 'outbox.db'}")
    await store.upgrade_schema()
    yield store


async def test_a_dead_relays_leases_are_released_on_start(any_store: Any) -> None:
    store = any_store
    service = service_on(store)
    sink, clock = FlakySink("recorder"), Clock()
    try:
        payment = await service.pay(request())
        alive = new_owner()
        other = await service.pay(request(2000))
        # A crashed relay left a lease on the first payment; a live one holds the second.
        dead = dead_process_owner()
        assert [m.payment_id for m in await store.outbox_claim(dead, clock(), clock() +
                timedelta(seconds=30), 1)] == [payment.id]  # fmt: skip
        assert {m.payment_id for m in await store.outbox_claim(alive, clock(), clock() +
                timedelta(seconds=30), 100)} == {other.id}  # fmt: skip
        relay = fixed_relay(store, [sink], service.hooks, clock)
        assert await relay.drain() == payment.version  # at once, not after 30 s
        assert sink.deliveries == [ids(payment)]
        assert await store.outbox_lease_owners(clock()) == [alive]
    finally:
        await store.close()


# -- the outbox commands -----------------------------------------------------------------------


def test_status_requeue_and_relay_commands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    runner = CliRunner()

    async def prepare() -> tuple[list[str], list[str]]:
        store = SqlStore(url)
        await store.upgrade_schema()
        service = service_on(store)
        parked_payment = await service.pay(request(100))
        waiting_payment = await service.pay(request(200))
        sink = PoisonSink()
        sink.poisoned.add(parked_payment.id)
        # Parks at once (max_attempts=1) ...
        await OutboxRelay(store, [sink], service.hooks, RelaySettings(max_attempts=1)).drain()
        # ... and one payment backs off for an hour on the real clock.
        sink.poisoned = {waiting_payment.id}
        refunded = await service.refund(waiting_payment.id, Money(10, "USD"))
        slow = RelaySettings(base_backoff_s=7200, max_backoff_s=7200)
        await OutboxRelay(store, [sink], service.hooks, slow, rng=lambda: 0.5).drain()
        await store.close()
        return ids(parked_payment), ids(refunded)[waiting_payment.version :]

    parked, waiting = anyio.run(prepare)
    assert len(waiting) == 2

    def invoke(*args: str) -> Any:
        return runner.invoke(cli, ["outbox", *args, "--store", url], catch_exceptions=False)

    status = invoke("status", "--json")
    assert status.exit_code == 0, status.output
    report = json.loads(status.output)
    assert report["pending"] == report["backing_off"] == 2
    assert (report["ready"], report["backing_off_payments"], report["leased_payments"]) == (0, 1, 0)
    assert report["next_retry_at"] is not None
    assert [p["message_id"] for p in report["parked"]] == parked
    assert {p["error"] for p in report["parked"]} == {"poison: ValueError('cannot decode')"}
    assert {p["attempts"] for p in report["parked"]} == {1}
    text = invoke("status")
    assert "pending: 2" in text.output and "backing off: 2 (1 payment(s)" in text.output
    assert f"parked: {len(parked)}" in text.output and "cannot decode" in text.output

    assert invoke("requeue").exit_code == 2  # neither ids nor --all
    assert invoke("requeue", parked[0], "--all").exit_code == 2
    one = invoke("requeue", parked[0], "pay_nope")
    assert one.exit_code == 1
    assert f"requeued {parked[0]}" in one.output and "not parked: pay_nope" in one.output
    rest = invoke("requeue", "--all")
    assert rest.exit_code == 0 and f"requeued: {len(parked) - 1}" in rest.output
    report = json.loads(invoke("status", "--json").output)
    assert report["parked"] == [] and report["pending"] == len(parked) + 2
    assert report["ready"] == len(parked)

    # The requeued messages are delivered (to the listeners: no sink is configured).
    relay = invoke("relay", "--once")
    assert relay.exit_code == 0 and f"published: {len(parked)}" in relay.output
    report = json.loads(invoke("status", "--json").output)
    assert (report["pending"], report["backing_off"]) == (2, 2)


async def test_listener_sees_delivered_messages_of_a_sql_store(sql_url: str) -> None:
    store = SqlStore(sql_url)
    recorder = Recorder()
    service = service_on(store, recorder)
    recorder.store = store
    try:
        async with service:  # the in-process relay, woken by commits
            first = await service.pay(request())
            second = await service.refund(first.id, Money(1, "USD"))
        assert [e.event_id for e in recorder.events] == ids(second)
        assert all(recorder.committed_on_delivery)
        assert all(isinstance(e, ev.Event) for e in recorder.events)
    finally:
        await store.close()


# -- the store's relay steps on the bare driver, and through SQLAlchemy --------------------------


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "sqlalchemy"])
async def test_relay_steps_of_another_store_object(
    sql_url: str, direct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a relay in another process sees (its store object committed nothing, so every
    event comes from the rows' JSON), on the bare-driver path and on SQLAlchemy's (where
    aiosqlite lacks its internals; with failures to record): claims group each payment's
    messages in order even when its rows interleave with another payment's; settling
    publishes them, counts what a lost lease refuses, and a failure's backoff is due next."""
    if not direct:
        monkeypatch.setattr(SqlStore, "_outbox_direct", _no_direct)
    writer, relay = SqlStore(sql_url), SqlStore(sql_url)
    try:
        a, b = lifecycle("pay_a"), lifecycle("pay_b")
        await writer.commit(change(None, a[:3]))
        await writer.commit(change(None, b[:2]))
        payment_a = await writer.load("pay_a")
        await writer.commit(change(payment_a, a[3:4]))  # seq order: a1 a2 a3 b1 b2 a4
        batch = await claim(relay, "r1", limit=10)
        assert [m.message_id for m in batch] == [
            "pay_a:1", "pay_a:2", "pay_a:3", "pay_a:4", "pay_b:1", "pay_b:2",
        ]  # fmt: skip
        assert [m.event for m in batch] == [*a[:4], *b[:2]]  # decoded from the rows
        assert all(m.attempts == 0 for m in batch)
        assert await claim(relay, "r2", now=at(101)) == []  # leased: nothing for another

        # Another owner's settle is refused, message by message; the holder's publishes.
        refused = await relay.outbox_settle("r2", at(101), batch, (), 3)
        assert refused == OutboxSettled(refused=6)
        assert await relay.outbox_settle("r1", at(101), batch[:4], (), 3) == OutboxSettled(4)
        # pay_b's lease (not settled) still holds it; past the lease it is r2's.
        assert await claim(relay, "r2", now=at(102)) == []
        later = at(100) + LEASE + timedelta(seconds=1)
        again = await claim(relay, "r2", now=later)
        assert [m.message_id for m in again] == ["pay_b:1", "pay_b:2"]
        # r1's lease is gone: its settle now marks nothing.
        assert await relay.outbox_settle("r1", later, batch[4:], (), 3) == OutboxSettled(refused=2)

        # A failure: counted, backing off, and the earliest thing due.
        retry_at = later + timedelta(seconds=5)
        failed = await relay.outbox_settle("r2", later, (), [fail(again, "down", retry_at)], 3)
        assert (failed.failed, failed.refused) == (2, 0)
        assert await relay.outbox_next_due("r2", later) == retry_at
        assert await claim(relay, "r2", now=later) == []
        retried = await claim(relay, "r2", now=retry_at)
        assert [(m.message_id, m.attempts) for m in retried] == [("pay_b:1", 1), ("pay_b:2", 1)]
        assert await relay.outbox_next_due("r3", retry_at) == retry_at + LEASE  # r2's lease
        assert await relay.outbox_settle("r2", retry_at, retried, (), 3) == OutboxSettled(2)
        assert await relay.outbox_size() == 0
        assert await relay.outbox_next_due("r3", retry_at) is None
    finally:
        await writer.close()
        await relay.close()


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "sqlalchemy"])
async def test_settle_and_claim_in_one_step(
    sql_url: str, direct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not direct:
        monkeypatch.setattr(SqlStore, "_outbox_direct", _no_direct)
    store = SqlStore(sql_url)
    try:
        a, b = lifecycle("pay_a"), lifecycle("pay_b")
        await store.commit(change(None, a[:2]))
        await store.commit(change(None, b[:1]))
        batch = await claim(store, "r1", limit=2)
        assert [m.message_id for m in batch] == ["pay_a:1", "pay_a:2"]
        payment_a = await store.load("pay_a")
        await store.commit(change(payment_a, a[2:3]))  # while the batch is out

        # Settled, and the next batch claimed at once: pay_a's lease was released and is
        # taken again for its new message; pay_b's oldest message comes first.
        lease_until = at(101) + LEASE
        settled, after = await store.outbox_settle_and_claim(
            "r1", at(101), batch, (), 3, lease_until, 10
        )
        assert settled == OutboxSettled(published=2)
        assert [m.message_id for m in after] == ["pay_b:1", "pay_a:3"]
        assert [m.event for m in after] == [b[0], a[2]]

        # Another owner's settle is refused; its claim then finds both payments leased.
        refused, none = await store.outbox_settle_and_claim(
            "r2", at(102), after, (), 3, at(102) + LEASE, 10
        )
        assert (refused, none) == (OutboxSettled(refused=2), [])

        # With a failure to record: pay_b backs off, pay_a is published, nothing is left
        # to claim until the backoff ends.
        retry_at = at(110)
        failure = fail(after[:1], "down", retry_at)
        settled, later = await store.outbox_settle_and_claim(
            "r1", at(103), after[1:], [failure], 3, at(103) + LEASE, 10
        )
        assert (settled.published, settled.failed, later) == (1, 1, [])
        assert await store.outbox_next_due("r1", at(103)) == retry_at
        retried = await claim(store, "r1", now=retry_at)
        assert [(m.message_id, m.attempts) for m in retried] == [("pay_b:1", 1)]
    finally:
        await store.close()


async def _no_direct(*args: Any, **kwargs: Any) -> None:
    return None  # as when aiosqlite lacks the internals: every step through SQLAlchemy


async def test_a_claim_cancelled_mid_statement_leaves_the_pool_usable(pg_url: str) -> None:
    """A relay task cancelled while PostgreSQL runs its claim on the bare driver: the
    connection goes back to the pool (asyncpg cancels the statement itself) and the store's
    next reads and writes work."""
    store = SqlStore(pg_url)
    try:
        await store.commit(change(None, lifecycle("pay_a")[:1]))  # one pooled connection
        started = anyio.Event()

        async def slow_claim(db: Any, params: dict[str, Any]) -> list[Any]:
            started.set()
            await db.fetch("SELECT pg_sleep(30)")
            return []

        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                direct = store._outbox_direct(slow_claim, lambda db, params: [], {})
                group.start_soon(lambda: direct)
                await started.wait()
                group.cancel_scope.cancel()
            payment = await store.load("pay_a")
            await store.commit(change(payment, lifecycle("pay_a")[1:2]))
            assert await store.outbox_size() == 2
    finally:
        await store.close()
