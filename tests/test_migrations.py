"""Schema management: the Alembic migrations shipped in the package, and the store's refusal to
run on an unmigrated or newer-than-known database. On a SQLite file and on PostgreSQL (each test
in its own schema)."""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import sqlalchemy as sa
from _services import POSTGRES_URL, service_unavailable
from aegispay.errors import StoreError
from aegispay.serialization import make_converter
from aegispay.store import migrations
from aegispay.store.base import is_unsettled
from aegispay.store.sql import SqlStore, _upgrade, metadata, normalise_url, payment_events
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from store_conformance import change, fold, lifecycle

pytestmark = pytest.mark.anyio

TABLES = {
    "alembic_version",
    "idempotency_keys",
    "outbox",
    "outbox_leases",
    "payment_attempts",
    "payment_events",
    "payments",
}


def _metadata_0001() -> sa.MetaData:
    """The tables as revision 0001 (and the pre-migrations ``create_all``) made them."""
    added = {"outbox": {"next_attempt_at"}, "idempotency_keys": {"state", "recovery_point",
             "locked_at"}, "payments": {"unsettled", "updated_at"}}  # fmt: skip
    removed = {"outbox": [sa.Column("data", sa.Text, nullable=False)]}  # by 0005
    old = sa.MetaData()
    for name in ("payments", "payment_events", "outbox", "idempotency_keys"):
        table = metadata.tables[name]
        columns = [c._copy() for c in table.columns if c.name not in added.get(name, set())]
        sa.Table(name, old, *columns, *removed.get(name, []))
    return old


_schema_0001 = _metadata_0001()
Factory = Callable[[], SqlStore]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgresql"])
async def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: str
) -> AsyncIterator[Factory]:
    """Stores on one fresh, empty database (a SQLite file, or a PostgreSQL schema)."""
    stores: list[SqlStore] = []
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'pay.db'}"

        def factory() -> SqlStore:
            stores.append(SqlStore(url))
            return stores[-1]

        yield factory
        for store in stores:
            await store.close()
        return

    schema = f"aegispay_test_{secrets.token_hex(6)}"
    admin = create_async_engine(normalise_url(POSTGRES_URL))
    try:
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as error:  # unreachable, refused, unknown database...
        await admin.dispose()
        service_unavailable("PostgreSQL", str(error))

    def pg_factory() -> SqlStore:
        stores.append(SqlStore(POSTGRES_URL, schema=schema))
        return stores[-1]

    try:
        yield pg_factory
    finally:
        for store in stores:
            await store.close()
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


async def run_sync(store: SqlStore, fn: Callable[[sa.Connection], Any]) -> Any:
    async with store._engine.begin() as conn:
        return await conn.run_sync(fn)


def tables(conn: sa.Connection) -> set[str]:
    return set(sa.inspect(conn).get_table_names())


def stamped(schema: str | None) -> Callable[[sa.Connection], tuple[str, ...]]:
    def read(conn: sa.Connection) -> tuple[str, ...]:
        context = MigrationContext.configure(conn, opts={"version_table_schema": schema})
        return tuple(context.get_current_heads())

    return read


async def test_upgrade_from_empty_creates_all_tables_and_stamps_head(make_store: Factory) -> None:
    store = make_store()
    assert await run_sync(store, tables) == set()
    await store.upgrade_schema()
    assert await run_sync(store, tables) == TABLES
    assert await run_sync(store, stamped(store._schema)) == migrations.heads() == ("0007",)
    await store.check_schema()
    await store.commit(change(None, lifecycle("pay_1")[:1]))
    assert await store.payment_ids() == ["pay_1"]


async def test_upgrade_twice_is_a_no_op(make_store: Factory) -> None:
    await make_store().upgrade_schema()
    first = make_store()
    await first.commit(change(None, lifecycle("pay_1")[:1]))
    again = make_store()
    await again.upgrade_schema()
    await again.create_schema()  # the alias
    assert await run_sync(again, stamped(again._schema)) == ("0007",)
    assert await again.payment_ids() == ["pay_1"]


async def test_unmigrated_database_is_refused_on_first_use(make_store: Factory) -> None:
    store = make_store()
    for operation in (store.load("pay_1"), store.payment_ids(), store.outbox_pending(1)):
        with pytest.raises(StoreError, match="aegispay db upgrade --store") as info:
            await operation
        assert "no AegisPay schema" in str(info.value)
    with pytest.raises(StoreError, match="aegispay db upgrade"):
        await store.commit(change(None, lifecycle("pay_1")[:1]))
    # Once upgraded, the same store works (a failed check is not cached).
    await make_store().upgrade_schema()
    assert await store.load("pay_1") is None


async def test_unmigrated_message_hides_the_password(anyio_backend: str) -> None:
    # The test server trusts local connections, so a password in the URL is harmless there.
    url = make_url(POSTGRES_URL).set(password="s3cret-pw").render_as_string(hide_password=False)
    schema = f"aegispay_test_{secrets.token_hex(6)}"
    admin = create_async_engine(normalise_url(POSTGRES_URL))
    try:
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as error:
        await admin.dispose()
        service_unavailable("PostgreSQL", str(error))
    store = SqlStore(url, schema=schema)
    try:
        with pytest.raises(StoreError) as info:
            await store.load("pay_1")
    finally:
        await store.close()
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()
    message = str(info.value)
    assert "s3cret-pw" not in message
    assert "`aegispay db upgrade --store postgresql://postgres:***@" in message


async def test_newer_revision_is_refused(make_store: Factory) -> None:
    await make_store().upgrade_schema()
    store = make_store()
    table = sa.table("alembic_version", sa.column("version_num"), schema=store._schema)

    def stamp_newer(conn: sa.Connection) -> None:
        conn.execute(table.update().values(version_num="ffff"))

    await run_sync(store, stamp_newer)
    with pytest.raises(StoreError, match="newer than this AegisPay knows") as info:
        await store.load("pay_1")
    assert "ffff" in str(info.value) and "upgrade aegispay" in str(info.value)
    with pytest.raises(StoreError, match="newer"):
        await store.check_schema()


async def test_migrated_schema_matches_metadata(make_store: Factory) -> None:
    store = make_store()
    await store.upgrade_schema()

    def diff(conn: sa.Connection) -> list[Any]:
        # Reflection names the store's schema (first on the search_path) as the default one,
        # ``None``: so must the version table, for the comparison to leave it out.
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    assert await run_sync(store, diff) == []


def _at_0004_with_outbox(store: SqlStore, payment_id: str, *, orphan: bool) -> Any:
    """Migrate to 0004 and store ``lifecycle(payment_id)``'s first three events with their
    outbox rows as 0004 kept them (each with a copy of the event's JSON), all pending; with
    ``orphan`` the last event's history row is left out."""
    events = lifecycle(payment_id)[:3]
    history, messages = store._event_rows(events)
    old_outbox = sa.table(
        "outbox", *(sa.column(name) for name in ("message_id", "payment_id", "sequence", "data",
                                                 "attempts", "parked"))
    )  # fmt: skip

    def fill(conn: sa.Connection) -> None:
        _upgrade(conn, store._schema, "0004")
        conn.execute(sa.insert(payment_events), history[:-1] if orphan else history)
        copies = [{**m, "data": h["data"]} for m, h in zip(messages, history, strict=True)]
        conn.execute(sa.insert(old_outbox), copies)

    return events, fill


async def test_0005_outbox_rows_refer_to_their_events(make_store: Factory) -> None:
    """Pending messages survive the column's removal: the relay gets each event back whole
    (from ``payment_events``), and downgrading puts the copies back."""
    store = make_store()
    events, fill = _at_0004_with_outbox(store, "pay_1", orphan=False)
    await run_sync(store, fill)
    await store.upgrade_schema()

    def columns(conn: sa.Connection) -> set[str]:
        return {c["name"] for c in sa.inspect(conn).get_columns("outbox")}

    assert "data" not in await run_sync(store, columns)
    pending = await store.outbox_pending(10)
    assert [(m.message_id, m.sequence, m.event) for m in pending] == [
        (e.event_id, e.version, e) for e in events
    ]

    def downgrade(conn: sa.Connection) -> list[tuple[str, str]]:
        config = migrations.alembic_config()
        config.attributes.update(connection=conn, schema=store._schema)
        command.downgrade(config, "0004")
        rows = conn.execute(sa.text("SELECT message_id, data FROM outbox ORDER BY seq"))
        return [tuple(row) for row in rows]

    copies = [(e.event_id, store._event_types.to_json(e).decode()) for e in events]
    assert await run_sync(store, downgrade) == copies
    assert await run_sync(store, stamped(store._schema)) == ("0004",)


async def test_0005_rebuilds_the_outbox_where_sqlite_cannot_drop_a_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite before 3.35 has no DROP COLUMN: 0005 copies the table instead. This machine's
    SQLite is newer, so the migration is told otherwise (after the engine has connected, so
    SQLAlchemy's own feature checks saw the real version). The result must be the schema
    the native path makes - columns, indexes (the partial one with its WHERE) - with every
    pending message intact."""
    store = SqlStore(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        events, fill = _at_0004_with_outbox(store, "pay_1", orphan=False)
        await run_sync(store, fill)
        monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
        await store.upgrade_schema()
        monkeypatch.undo()

        def diff(conn: sa.Connection) -> list[Any]:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))

        def pending_index(conn: sa.Connection) -> str:
            found = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_outbox_pending'"
            )
            return str(found.scalar_one())

        assert await run_sync(store, diff) == []
        assert "WHERE published_at IS NULL" in await run_sync(store, pending_index)
        pending = await store.outbox_pending(10)
        assert [(m.message_id, m.sequence, m.event) for m in pending] == [
            (e.event_id, e.version, e) for e in events
        ]
    finally:
        await store.close()


async def test_0005_refuses_to_drop_a_message_whose_event_is_missing(
    make_store: Factory,
) -> None:
    store = make_store()
    events, fill = _at_0004_with_outbox(store, "pay_1", orphan=True)
    await run_sync(store, fill)
    with pytest.raises(StoreError, match=f"migration 0005.*{events[-1].event_id}"):
        await store.upgrade_schema()
    assert await run_sync(store, stamped(store._schema)) == ("0004",)


async def test_pre_migration_database_is_adopted(make_store: Factory) -> None:
    """A database made by the pre-migrations ``metadata.create_all`` (the 0001 tables) is
    stamped 0001, then upgraded, data kept."""
    store = make_store()
    await run_sync(store, _schema_0001.create_all)
    await make_store().upgrade_schema()
    await store.commit(change(None, lifecycle("pay_1")[:1]))
    assert await run_sync(store, stamped(store._schema)) == ("0007",)
    assert await store.payment_ids() == ["pay_1"]


async def test_upgrade_fills_in_what_the_janitor_reads(make_store: Factory) -> None:
    """0003 adds ``unsettled`` / ``updated_at`` and fills them in from stored projections: a
    payment waiting on a gateway (PROCESSING), one with a refund pending, settled ones."""
    store = make_store()
    await run_sync(store, _schema_0001.create_all)
    events = lifecycle("p")
    rows, expected = [], {}
    for n, payment_id in ((1, "pay_initiated"), (2, "pay_processing"), (7, "pay_captured"),
                          (len(events), "pay_refund_pending")):  # fmt: skip
        payment = fold(None, [attrs.evolve(e, payment_id=payment_id) for e in events[:n]])
        data = orjson.dumps(make_converter().unstructure(payment)).decode()
        rows.append({"id": payment_id, "version": payment.version, "state": payment.state.value,
                     "fence": 0, "data": data})  # fmt: skip
        expected[payment_id] = (is_unsettled(payment), payment.updated_at)
    assert sorted(flag for flag, _ in expected.values()) == [False, False, True, True]

    def insert(conn: sa.Connection) -> None:
        conn.execute(_schema_0001.tables["payments"].insert(), rows)

    await run_sync(store, insert)
    await make_store().upgrade_schema()

    def read(conn: sa.Connection) -> dict[str, tuple[bool, Any]]:
        table = metadata.tables["payments"]
        query = sa.select(table.c.id, table.c.unsettled, table.c.updated_at)
        return {row.id: (row.unsettled, row.updated_at) for row in conn.execute(query)}

    assert await run_sync(store, read) == expected
    later = max(at for _, at in expected.values()) + timedelta(seconds=1)
    waiting = sorted(payment_id for payment_id, (flag, _) in expected.items() if flag)
    assert await store.unsettled_payment_ids(later) == waiting
    assert await store.unsettled_payment_ids(min(at for _, at in expected.values())) == []


def test_migrations_know_one_linear_history() -> None:
    assert migrations.heads() == ("0007",)
    assert (
        migrations.is_known("0001") and migrations.is_known("0002") and migrations.is_known("0003")
    )
    assert all(migrations.is_known(r) for r in ("0004", "0005", "0006", "0007"))
    assert not migrations.is_known("ffff")
    assert (migrations.LOCATION / "env.py").is_file()


def test_cli_upgrade_twice_then_simulate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pay.db'}"

    def aegispay(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "aegispay", *args]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    for _ in range(2):
        result = aegispay("db", "upgrade", "--store", url)
        assert result.returncode == 0, result.stderr
        assert "schema up to date" in result.stdout
    with sqlite3.connect(tmp_path / "pay.db") as connection:
        (version,) = connection.execute("select version_num from alembic_version").fetchone()
    assert version == "0007"
    result = aegispay("simulate", "--payments", "5", "--latency-ms", "0", "--store", url, "--json")
    assert result.returncode == 0, result.stderr


def test_cli_simulate_on_unmigrated_database_says_to_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pay.db'}"
    command = [sys.executable, "-m", "aegispay", "simulate", "--payments", "1", "--store", url]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "aegispay db upgrade" in result.stdout + result.stderr
