"""The SQL store: the conformance suite on in-memory SQLite, file SQLite and PostgreSQL, plus
what only a SQL backend has (URLs, durability across reopen, unreachable servers)."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import anyio
import attrs
import pytest
from _services import POSTGRES_URL, service_unavailable
from aegispay import Money, PaymentRequest
from aegispay.errors import (
    ConcurrencyConflict,
    ConfigError,
    FencingTokenRejected,
    StoreError,
    StoreUnavailable,
)
from aegispay.store import sql as sql_module
from aegispay.store import sql_direct
from aegispay.store.base import Change, IdempotencyClaimed, IdempotencyProgress, is_unsettled
from aegispay.store.recent import RecentlyWritten
from aegispay.store.sql import SqlStore, normalise_url, payment_events, payments
from aegispay.store.sql_batch import _bind_sqlite, sqlite_keys_query
from aegispay.store.sql_direct import CLAIM_COLUMNS, sqlite_runner
from aegispay.store.sql_outbox import _SQLITE_CLAIM
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine
from store_conformance import (
    StoreConformance,
    StoreFactory,
    at,
    change,
    idem,
    in_flight,
    initiated,
    lifecycle,
    snapshot,
    started,
)


async def commit_all(store: SqlStore, changes: list[Change]) -> list[BaseException | None]:
    """Commit ``changes`` concurrently (all queued before the first batch runs)."""
    results: list[BaseException | None] = [None] * len(changes)

    async def one(i: int) -> None:
        try:
            await store.commit(changes[i])
        except Exception as error:
            results[i] = error

    async with anyio.create_task_group() as tasks:
        for i in range(len(changes)):
            tasks.start_soon(one, i)
    return results


class _SqlConformance(StoreConformance):
    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"  # aiosqlite and asyncpg are asyncio libraries

    async def test_own_writes_are_served_undecoded_only_while_current(
        self, make_store: StoreFactory
    ) -> None:
        """A store hands back the projection it committed without decoding it - but never a
        stale one: once another store (another process) wrote a newer version, it reads that."""
        ours = await make_store()
        if cast(SqlStore, ours)._url.database in (None, "", ":memory:"):
            pytest.skip("an in-memory SQLite database is private to its store object")
        theirs = await make_store()
        created = change(None, [initiated("pay_1")])
        await ours.commit(created)
        assert await ours.load("pay_1") is created.payment  # the committed object itself
        moved = change(created.payment, [started("pay_1", 2)])
        await theirs.commit(moved)
        loaded = await ours.load("pay_1")
        assert loaded == moved.payment and loaded is not moved.payment
        # The events it committed reach its relay as the very objects; others' are decoded.
        messages = await ours.outbox_pending(10)
        assert messages[0].event is created.events[0]
        assert messages[1].event == moved.events[0] and messages[1].event is not moved.events[0]

    async def test_group_commit_decides_each_change_on_its_own(self, store: SqlStore) -> None:
        """Concurrent commits share transactions, yet each gets its own verdict: duplicate
        idempotency keys, stale versions and old fencing tokens fail only their change."""
        assert store._commits is not None
        # Round 1: 60 creates at once (fence 100); creates 50..59 reuse keys k0..k9.
        creates = []
        for i in range(60):
            first = change(None, [initiated(f"pay_{i:02}")], token=100)
            claim = idem(first.payment, key=f"k{i % 50}")
            creates.append(attrs.evolve(first, idempotency=claim))
        results = await commit_all(store, creates)
        for i in range(10):
            pair = (results[i], results[i + 50])
            assert sorted(r is None for r in pair) == [False, True], pair
            loser = next(r for r in pair if r is not None)
            assert isinstance(loser, IdempotencyClaimed)
            winner = creates[i] if results[i] is None else creates[i + 50]
            assert loser.existing.payment_id == winner.payment.id
        assert all(r is None for r in results[10:50])
        created = [c for c, r in zip(creates, results, strict=True) if r is None]
        assert len(created) == 50
        assert store._commits.batches < store._commits.items  # they were batched

        # Round 2: payments 0-9 get an old token; 10-19 get two racing updates of version 1.
        updates, by_payment = [], {}
        for c in sorted(created, key=lambda c: c.payment.id)[:40]:
            n = int(c.payment.id[4:]) if c.payment.id < "pay_50" else int(c.payment.id[4:]) - 50
            token = 50 if n < 10 else 100
            update = change(c.payment, [started(c.payment.id, 2)], token=token)
            updates.append(update)
            by_payment[c.payment.id] = [update]
            if 10 <= n < 20:
                twin = change(c.payment, [started(c.payment.id, 2, gateway="beta")], token=100)
                updates.append(twin)
                by_payment[c.payment.id].append(twin)
        results = await commit_all(store, updates)
        verdict = dict(zip(map(id, updates), results, strict=True))
        for payment_id, mine in by_payment.items():
            outcomes = [verdict[id(u)] for u in mine]
            stored = await store.load(payment_id)
            history = await store.events(payment_id)
            assert stored is not None
            if len(mine) == 2:  # the race: exactly one wins, the other conflicts
                assert sorted(o is None for o in outcomes) == [False, True]
                lost = next(o for o in outcomes if o is not None)
                assert isinstance(lost, ConcurrencyConflict)
                assert not isinstance(lost, FencingTokenRejected)
                won = mine[outcomes.index(None)]
                assert stored == won.payment
                assert history[1:] == list(won.events)
            elif mine[0].fencing_token == 50:
                assert isinstance(outcomes[0], FencingTokenRejected)
                assert stored.version == 1 and len(history) == 1
            else:
                assert outcomes == [None]
                assert stored == mine[0].payment and len(history) == 2
        # Every written event has its outbox message and its attempt row; nothing else does.
        async with store._engine.connect() as conn:
            counts = {
                table: (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar()
                for table in ("payment_events", "outbox", "payment_attempts", "idempotency_keys")
            }
        assert counts == {
            "payment_events": 50 + 30,
            "outbox": 50 + 30,
            "payment_attempts": 30,
            "idempotency_keys": 50,
        }

    async def test_batch_keeps_values_exact(self, store: SqlStore) -> None:
        """The batch path's own encoding (JSON parameters on PostgreSQL, values bound by
        column on SQLite) stores what SQLAlchemy's types did: instants to the microsecond
        whatever the offset, booleans, text with quotes, backslashes and non-ASCII."""
        berlin = timezone(timedelta(hours=2))
        creates, updates = [], []
        for i in range(6):
            event = attrs.evolve(
                initiated(f"pay_{i}"),
                occurred_at=at(i).astimezone(berlin),  # same instant, +02:00
                description='b\u00fccher "7" \\ \u2713',
            )
            first = change(None, [event], token=7)
            creates.append(attrs.evolve(first, idempotency=idem(first.payment, key=f"k{i}")))
        assert await commit_all(store, creates) == [None] * 6
        for c in creates:
            update = change(c.payment, [started(c.payment.id, 2)], token=9)
            updates.append(update)
        assert await commit_all(store, updates) == [None] * 6
        store._recent_payments = RecentlyWritten()  # decode what the database holds
        store._recent_events = RecentlyWritten()
        for i, (c, u) in enumerate(zip(creates, updates, strict=True)):
            assert await store.load(c.payment.id) == u.payment
            assert await store.events(c.payment.id) == [*c.events, *u.events]
            assert await store.find_idempotency("m_1", f"k{i}") == c.idempotency
        # The relay of another process: outbox rows name their event, read back from history.
        claimed = await store.outbox_claim("other-relay", at(100), at(200), 100)
        committed = [e for c in (*creates, *updates) for e in c.events]
        assert sorted((m.message_id, m.event) for m in claimed) == sorted(
            (e.event_id, e) for e in committed
        )
        async with store._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(payments.c.updated_at, payments.c.unsettled, payments.c.fence).where(
                        payments.c.id == "pay_3"
                    )
                )
            ).one()
            occurred = (
                await conn.execute(
                    select(payment_events.c.occurred_at).where(
                        payment_events.c.payment_id == "pay_3", payment_events.c.version == 1
                    )
                )
            ).scalar_one()
        assert row.updated_at == updates[3].payment.updated_at and row.fence == 9
        assert row.unsettled is is_unsettled(updates[3].payment)
        assert occurred == at(3) and occurred.utcoffset() == timedelta(0)

    async def test_batch_redone_change_by_change_fails_only_the_culprit(
        self, store: SqlStore
    ) -> None:
        """A batch write that hits a unique key (a create of an id that exists) is rolled back
        whole and redone change by change: only that change fails, with the precise error."""
        existing = change(None, [initiated("pay_x")])
        await store.commit(existing)
        batch = [change(None, [initiated(f"pay_{i}")]) for i in range(5)]
        batch.insert(2, change(None, [initiated("pay_x", minor=5)]))
        results = await commit_all(store, batch)
        assert isinstance(results[2], ConcurrencyConflict)
        assert [r for i, r in enumerate(results) if i != 2] == [None] * 5
        assert await store.load("pay_x") == existing.payment
        assert len(await store.outbox_pending(100)) == 6

    async def test_claim_and_progress_of_one_key_in_one_change(self, store: SqlStore) -> None:
        """A change that claims a key and moves it on: the move sees the claim (PostgreSQL
        writes both in one statement otherwise, where a part never sees another's rows)."""
        c = change(None, [initiated("pay_1")])
        claim = in_flight(c.payment, "k", locked_at=at(0))
        step = IdempotencyProgress("m_1", "k", "pay_1", "processing", "in_flight", at(5))
        others = [change(None, [initiated(f"pay_{i}")]) for i in range(2, 5)]
        both = attrs.evolve(c, idempotency=claim, progress=step)
        assert await commit_all(store, [*others, both]) == [None] * 4
        record = await store.find_idempotency("m_1", "k")
        assert record is not None
        assert (record.recovery_point, record.state, record.locked_at) == (
            "processing",
            "in_flight",
            at(5),
        )


class TestSqliteMemoryStore(_SqlConformance):
    @pytest.fixture
    async def make_store(self, anyio_backend: str) -> AsyncIterator[StoreFactory]:
        stores: list[SqlStore] = []

        async def factory() -> SqlStore:
            stores.append(SqlStore("sqlite://"))
            await stores[-1].create_schema()
            return stores[-1]

        yield factory
        for store in stores:
            await store.close()


async def _sqlite_file_stores(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Stores on one SQLite file, migrated; closed afterwards."""
    stores: list[SqlStore] = []

    async def factory() -> SqlStore:
        stores.append(SqlStore(f"sqlite:///{tmp_path / 'aegispay.db'}"))
        await stores[-1].create_schema()
        return stores[-1]

    yield factory
    for store in stores:
        await store.close()


class TestSqliteFileStore(_SqlConformance):
    @pytest.fixture
    async def make_store(self, anyio_backend: str, tmp_path: Path) -> AsyncIterator[StoreFactory]:
        async for factory in _sqlite_file_stores(tmp_path):
            yield factory

    async def test_installed_aiosqlite_runs_batches_in_one_hand_off(self, store: SqlStore) -> None:
        """The direct path uses aiosqlite's private ``_execute``/``_conn``: if an upgrade drops
        them the store still works (next test), but slower - this says so."""
        async with store._transaction(raw=True) as driver:
            assert sqlite_runner(driver) is not None

    async def test_file_connections_are_tuned(self, store: SqlStore) -> None:
        """WAL + synchronous=NORMAL, and the cache and checkpoint sizes group commit wants."""
        async with store._transaction() as conn:
            values = [
                (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "synchronous", "cache_size", "wal_autocheckpoint")
            ]
        assert values == ["wal", 1, -65536, 10000]

    async def test_the_relay_claim_probes_the_backoff_index(self, store: SqlStore) -> None:
        """Whether a payment is backing off is one probe of ix_outbox_backoff (empty while
        sinks are healthy), not a pass over the payment's rows for every pending row."""
        params = {"owner": "me", "now": "2026-01-01 00:00:00.000000",
                  "lease_until": "2026-01-01 00:00:30.000000", "limit": 1000}  # fmt: skip
        async with store._transaction() as conn:
            found = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {_SQLITE_CLAIM}", params)
            plan = [row[-1] for row in found]
        assert "SEARCH b USING INDEX ix_outbox_backoff (payment_id=?)" in plan, plan
        assert not any(step.split()[:2] == ["SCAN", "o"] for step in plan), plan  # no full walk

    async def test_key_lookups_use_the_primary_key_not_a_scan(self, store: SqlStore) -> None:
        """Every batch looks its idempotency keys up (finds, and the claims' check): each pair
        must be one primary-key search. ``(scope, key) IN (VALUES ...)`` was planned as a scan
        of the whole key index, per batch - a cost that grew with the table."""
        sql, params = sqlite_keys_query(CLAIM_COLUMNS, [("m_1", "k_1"), ("m_2", "k_2")])
        async with store._transaction() as conn:
            plan = [
                row[-1]
                for row in await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", tuple(params))
            ]
        assert any(
            step.startswith("SEARCH k USING") and "(scope=? AND key=?)" in step for step in plan
        ), plan
        assert not any(step.startswith("SCAN k") for step in plan), plan

    async def test_without_aiosqlite_internals_sqlalchemy_does_the_work(
        self, store: SqlStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(sql_module, "sqlite_runner", lambda driver: None)
        first = [change(None, [initiated(f"pay_{i}")]) for i in range(4)]
        assert await commit_all(store, first) == [None] * 4
        second = [change(c.payment, [started(c.payment.id, 2)]) for c in first]
        second.append(change(first[0].payment, [started("pay_0", 2)]))  # stale: conflicts
        results = await commit_all(store, second)
        assert results[:4] == [None] * 4 and isinstance(results[4], ConcurrencyConflict)
        store._recent_payments = RecentlyWritten()
        assert await store.load("pay_1") == second[1].payment
        assert await store.events("pay_1") == [*first[1].events, *second[1].events]

    @pytest.mark.parametrize(
        ("error", "expected"),
        [
            (sqlite3.OperationalError("database is locked"), StoreUnavailable),
            (sqlite3.DatabaseError("database disk image is malformed"), StoreError),
        ],
    )
    async def test_driver_errors_of_the_direct_path_become_ours(
        self,
        store: SqlStore,
        monkeypatch: pytest.MonkeyPatch,
        error: Exception,
        expected: type[Exception],
    ) -> None:
        """sqlite3's own errors (SQLAlchemy does not see the direct path's) map as SQLAlchemy's
        wrapped ones did, for every change of the batch."""

        def failing(db: sqlite3.Connection, *args: object) -> set[int]:
            raise error

        monkeypatch.setattr(sql_module, "write_sqlite", failing)
        results = await commit_all(store, [change(None, [initiated(f"pay_{i}")]) for i in range(3)])
        assert all(type(r) is expected for r in results), results
        assert "sqlite" in str(results[0])
        monkeypatch.undo()
        assert await store.load("pay_0") is None
        assert await commit_all(store, [change(None, [initiated("pay_0")])]) == [None]

    async def test_wal_mode_and_synchronous(self, store: SqlStore) -> None:
        async with store._engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            # 1 = NORMAL
            assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 1
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1

    async def test_survives_close_and_reopen(self, make_store: StoreFactory) -> None:
        store = await make_store()
        history = lifecycle("pay_1")
        first = change(None, history[:5], token=3)
        await store.commit(attrs.evolve(first, idempotency=idem(first.payment)))
        await store.commit(change(first.payment, history[5:], token=3))
        # The outbox's state survives too: published, parked, attempts and backoff.
        from store_conformance import at, claim, fail

        published = await claim(store, "relay", limit=1)  # pay_1:1
        await store.outbox_settle("relay", at(100), published, (), 5)
        parked = await claim(store, "relay", limit=1)  # pay_1:2
        await store.outbox_settle("relay", at(100), [], [fail(parked, "sink down", at(150))], 1)
        flaky = await claim(store, "relay", limit=1)  # pay_1:3
        await store.outbox_settle("relay", at(100), [], [fail(flaky, "flaky", at(150))], 5)
        counts = await store.outbox_counts(at(100))
        assert (counts.parked, counts.backing_off, counts.next_retry_at) == (1, 8, at(150))
        before = await snapshot(store, ["pay_1"])
        record = await store.find_idempotency("m_1", "key-1")
        await store.close()

        reopened = await make_store()
        assert await snapshot(reopened, ["pay_1"]) == before
        assert await reopened.find_idempotency("m_1", "key-1") == record
        assert [m.attempts for m in await reopened.outbox_pending(1)] == [1]
        assert await reopened.outbox_counts(at(100)) == counts
        # The fence survived too: an older lock holder is still refused.
        payment = await reopened.load("pay_1")
        assert payment is not None
        with pytest.raises(FencingTokenRejected):
            await reopened.commit(change(payment, [], token=2))


class TestSqliteFileStoreThroughSqlAlchemy(_SqlConformance):
    """The whole suite on the fallback an aiosqlite without the direct path's internals gets:
    the same batch decision (``sql_batch.decide``), written through SQLAlchemy."""

    @pytest.fixture
    async def make_store(
        self, anyio_backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> AsyncIterator[StoreFactory]:
        monkeypatch.setattr(sql_module, "sqlite_runner", lambda driver: None)
        async for factory in _sqlite_file_stores(tmp_path):
            yield factory


class TestPostgresStore(_SqlConformance):
    @pytest.fixture
    async def make_store(self, anyio_backend: str) -> AsyncIterator[StoreFactory]:
        # Each test gets its own schema: tests never see each other's rows.
        schema = f"aegispay_test_{secrets.token_hex(6)}"
        admin = create_async_engine(normalise_url(POSTGRES_URL))
        try:
            async with admin.begin() as conn:
                await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        except Exception as error:  # unreachable, refused, unknown database...
            await admin.dispose()
            service_unavailable("PostgreSQL", str(error))
        stores: list[SqlStore] = []

        async def factory() -> SqlStore:
            stores.append(SqlStore(POSTGRES_URL, schema=schema))
            await stores[-1].create_schema()
            return stores[-1]

        try:
            yield factory
        finally:
            for store in stores:
                await store.close()
            async with admin.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            await admin.dispose()

    async def test_prune_keeps_a_key_claimed_again_while_it_waited(self, store: SqlStore) -> None:
        """An expired key that a new request claims while ``prune`` picks it: the claim
        (replacing the record in place) holds the row; the prune waits for it, then
        re-checks the row it finds - in flight now - and keeps it."""
        c = change(None, [initiated("pay_1")])
        old = attrs.evolve(idem(c.payment, key="k"), expires_at=at(10))
        await store.commit(attrs.evolve(c, idempotency=old))
        async with store._engine.connect() as claimer:
            await claimer.execute(text("BEGIN"))
            await claimer.execute(
                text(
                    "UPDATE idempotency_keys SET state = 'in_flight', expires_at = :later,"
                    " payment_id = 'pay_2' WHERE key = 'k'"
                ),
                {"later": at(86_400)},
            )
            pid = (await claimer.execute(text("SELECT pg_backend_pid()"))).scalar()
            pruned: list[Any] = []
            async with anyio.create_task_group() as tg:

                async def prune() -> None:
                    pruned.append(await store.prune(None, at(50), 10))

                tg.start_soon(prune)
                with anyio.fail_after(10):  # until the prune waits on the claimer's row lock
                    while not await _blocked_by(store, pid):  # noqa: ASYNC110 (a server's state)
                        await anyio.sleep(0.01)
                await claimer.execute(text("COMMIT"))
        assert pruned[0].keys == 0
        record = await store.find_idempotency("m_1", "k")
        assert record is not None and (record.state, record.payment_id) == ("in_flight", "pay_2")

    async def test_tables_live_in_the_test_schema(self, store: SqlStore) -> None:
        async with store._engine.connect() as conn:
            schema = (await conn.execute(text("SELECT current_schema()"))).scalar()
            found = await conn.execute(
                text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                {"s": schema},
            )
            tables = sorted(row[0] for row in found)
        assert str(schema).startswith("aegispay_test_")
        assert tables == [
            "alembic_version",
            "idempotency_keys",
            "outbox",
            "outbox_leases",
            "payment_attempts",
            "payment_events",
            "payments",
        ]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite://", "sqlite+aiosqlite://"),
        ("sqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
        ("sqlite:///aegispay.db", "sqlite+aiosqlite:///aegispay.db"),
        ("sqlite:////var/lib/aegispay.db", "sqlite+aiosqlite:////var/lib/aegispay.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u@db.example/pay", "postgresql+asyncpg://u@db.example/pay"),
        ("postgresql://u:p%40ss@db:5433/pay", "postgresql+asyncpg://u:p%40ss@db:5433/pay"),
        ("postgres://u@db/pay", "postgresql+asyncpg://u@db/pay"),
        ("postgresql+asyncpg://u@db/pay", "postgresql+asyncpg://u@db/pay"),
        ("postgresql+psycopg://u@db/pay", "postgresql+psycopg://u@db/pay"),
    ],
)
def test_url_normalisation(url: str, expected: str) -> None:
    assert normalise_url(url) == expected


@pytest.mark.parametrize("url", ["mysql://u@db/pay", "not a url", "memory://"])
def test_unsupported_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        normalise_url(url)


@pytest.mark.parametrize(
    "value",
    [
        at(0),  # UTC, microseconds
        at(0).replace(microsecond=0),  # no microseconds: still written out
        at(0).astimezone(timezone(timedelta(hours=-5))),  # another offset: converted
        None,
    ],
)
def test_sqlite_time_is_sqlalchemys_text(value: datetime | None) -> None:
    """SQLite compares datetimes as text: the direct path must write SQLAlchemy's format."""
    expected = None if value is None else _bind_sqlite(value)
    assert sql_direct.sqlite_time(value) == expected


def test_direct_column_lists_match_the_row_builders() -> None:
    """sql_direct names each table's columns itself: they must be the row builders' keys."""
    store = SqlStore("sqlite://")
    first = change(None, lifecycle("pay_1")[:2], token=1)
    record = idem(first.payment)
    history, messages = store._event_rows(first.events)
    assert tuple(store._projection_row(first)) == sql_direct.PAYMENT_COLUMNS
    assert tuple(store._claim_row(record)) == sql_direct.CLAIM_COLUMNS
    assert tuple(history[0]) == sql_direct.EVENT_COLUMNS
    assert tuple(messages[0]) == sql_direct.OUTBOX_COLUMNS
    assert tuple(store._attempt_rows(first)[0]) == sql_direct.ATTEMPT_COLUMNS
    assert set(sql_direct.KeyRow._fields) == set(sql_direct.CLAIM_COLUMNS)


def test_schema_only_on_postgres() -> None:
    with pytest.raises(ConfigError, match="schema"):
        SqlStore("sqlite://", schema="x")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_closed_port_is_store_unavailable_without_password(anyio_backend: str) -> None:
    store = SqlStore("postgresql://postgres:s3cret-pw@127.0.0.1:1/test")
    assert "s3cret-pw" not in store.url
    try:
        for operation in (store.create_schema(), store.load("pay_1"), store.outbox_pending(1)):
            with pytest.raises(StoreUnavailable) as info:
                await operation
            message = str(info.value)
            assert "s3cret-pw" not in message
            assert "127.0.0.1:1" in message and "***" in message
        with pytest.raises(StoreUnavailable):
            await store.commit(change(None, lifecycle("pay_1")[:1]))
    finally:
        await store.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_missing_schema_is_a_store_error(anyio_backend: str) -> None:
    store = SqlStore("sqlite://")  # create_schema() not called
    try:
        with pytest.raises(StoreError):
            await store.load("pay_1")
    finally:
        await store.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_leaving_a_service_cancels_no_database_call_halfway(
    tmp_path: Path, anyio_backend: str
) -> None:
    """The relay and the janitor are stopped between steps, not cancelled mid-query: a call
    cancelled halfway makes SQLAlchemy tear the connection down in a background task, which
    hung interpreter shutdown about once in 40 runs (aiosqlite)."""
    from aegispay.settings import Settings
    from aegispay.testing import make_test_service
    from sqlalchemy import event

    url = f"sqlite:///{tmp_path / 'pay.db'}"
    torn_down: list[object] = []
    for _ in range(5):
        store = SqlStore(url)
        await store.upgrade_schema()
        event.listen(store._engine.sync_engine, "invalidate", lambda *a: torn_down.append(a))
        service = make_test_service(store=store, settings=Settings(store=url))
        try:
            async with service:
                for _ in range(5):
                    await service.pay(PaymentRequest(Money(1000, "USD")))
        finally:
            await service.aclose()
    assert torn_down == []


async def _blocked_by(store: SqlStore, pid: Any) -> bool:
    """Whether some session of ``store``'s database waits on a lock that backend ``pid`` holds."""
    async with store._engine.connect() as conn:
        found = await conn.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
            {"pid": pid},
        )
        return bool(found.scalar())
