"""The SQL store: SQLite (aiosqlite) and PostgreSQL (asyncpg) on SQLAlchemy 2 Core, asyncio only.

One ``commit`` is one database transaction: the projection row (optimistic version check plus
fencing token in a single guarded ``UPDATE``), the idempotency row, the events and their outbox
rows. Unique keys, not check-then-insert, decide every race: ``(payment_id, version)`` for the
history, ``(scope, key)`` for idempotency. Driver errors never escape: they become
:class:`~aegispay.errors.ConcurrencyConflict`, :class:`~aegispay.errors.StoreUnavailable` (whose
message names the URL without its password) or :class:`~aegispay.errors.StoreError`.

The schema is managed by the Alembic migrations shipped in :mod:`aegispay.store.migrations`:
``upgrade_schema()`` (``aegispay db upgrade``) creates or upgrades a database, and the first read
or write of a store checks the database's revision once (``check_schema()``), refusing an
unmigrated, older or newer-than-known schema with a message that says what to do.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, nullcontext
from datetime import datetime
from typing import Any, TypeVar

import anyio
import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from alembic import command
from alembic.runtime.migration import MigrationContext
from sqlalchemy import exc
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import StaticPool

from ..errors import (
    AegisPayError,
    ConcurrencyConflict,
    ConfigError,
    FencingTokenRejected,
    StoreError,
    StoreUnavailable,
)
from ..events import Event
from ..outbox import OutboxCounts, OutboxFailure, OutboxMessage, OutboxSettled
from ..payment import Payment
from ..serialization import EventTypes, payment_from_json, payment_to_json
from ..urls import safe_url
from . import migrations
from .base import (
    COMPLETED,
    IN_FLIGHT,
    Change,
    IdempotencyClaimed,
    IdempotencyProgress,
    IdempotencyRecord,
    Pruned,
    is_unsettled,
)
from .group_commit import Coalescer
from .recent import RecentlyWritten
from .sql_batch import (
    ATTEMPT_UPSERT,
    Prepared,
    RedoAll,
    advance_keys,
    insert_many,
    sqlite_keys_query,
    write_batch,
)
from .sql_direct import (
    CLAIM_COLUMNS,
    KeyRow,
    fetch_sqlite,
    sqlite_runner,
    write_postgres,
    write_sqlite,
)
from .sql_outbox import (
    SqliteExecutor,
    _pg_claim,
    _pg_event_data,
    _pg_next_due,
    _pg_settle,
    _pg_settle_and_claim,
    _settle_params,
    _settled,
    _sqlite_claim,
    _sqlite_claim_step,
    _sqlite_event_data,
    _sqlite_next_due,
    _sqlite_settle,
    _sqlite_settle_and_claim,
    through_sqlalchemy,
)
from .sql_schema import (
    idempotency_keys,
    metadata,
    outbox,
    outbox_leases,
    payment_attempts,
    payment_events,
    payments,
)

# The tables are re-exported: migrations' env.py and the tests import them from here.
__all__ = [
    "SqlStore",
    "idempotency_keys",
    "metadata",
    "normalise_url",
    "outbox",
    "outbox_leases",
    "payment_attempts",
    "payment_events",
    "payments",
]

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_ALIASES = {"postgres": "postgresql"}


def normalise_url(url: str) -> str:
    """Plain ``sqlite://`` / ``postgresql://`` URLs get their asyncio driver; ``+driver`` kept."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        raise ConfigError(f"store: {safe_url(url)!r} is not a database URL") from None
    name = parsed.drivername
    if "+" in name:
        return url
    name = _ALIASES.get(name, name)
    if name not in _ASYNC_DRIVERS:
        raise ConfigError(
            f"store: unsupported database {name!r} (supported: sqlite://, postgresql://)"
        )
    # Swap the scheme as text: re-rendering the URL would re-quote its parts (":memory:").
    return _ASYNC_DRIVERS[name] + url[url.index(":") :]


_PENDING = sa.and_(outbox.c.published_at.is_(None), outbox.c.parked.is_(False))
# Outbox rows with their event's JSON (the row refers to the event: migration 0005).
_MESSAGES = sa.select(outbox, payment_events.c.data).join_from(
    outbox, payment_events, payment_events.c.event_id == outbox.c.message_id
)
_T = TypeVar("_T")

# Errors that mean "could not talk to the database" (nothing was written).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    exc.OperationalError,
    exc.InterfaceError,
    exc.DisconnectionError,
    exc.TimeoutError,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
)


# The same on the bare driver paths (sqlite3's own errors; SQLAlchemy wraps them elsewhere).
_UNAVAILABLE_DIRECT: tuple[type[BaseException], ...] = (*_UNAVAILABLE, sqlite3.OperationalError)


class _Rejected(Exception):
    """Inside a transaction: the projection or history key was taken. Rolls back; the caller
    then reads the current row to say why (ConcurrencyConflict or FencingTokenRejected)."""


class _Claimed(Exception):
    """Inside a transaction: the idempotency key exists. Rolls back, then the record is read."""


def _advance_keys(step: IdempotencyProgress) -> tuple[tuple[str, str]]:
    """Two advances of one key never share a batch (their order would be lost)."""
    return ((step.scope, step.key),)


class SqlStore:
    """A :class:`~aegispay.store.base.PaymentStore` on SQLite or PostgreSQL."""

    def __init__(
        self,
        url: str,
        event_types: EventTypes | None = None,
        *,
        schema: str | None = None,
        group_commit: bool = True,
        max_batch: int = 500,
        batches_in_flight: int = 2,
        migrate: bool = False,
    ) -> None:
        """``group_commit``: concurrent commits share transactions (see
        :mod:`aegispay.store.group_commit`); ``max_batch`` caps the changes in one, and
        ``batches_in_flight`` how many such transactions run at once (while one waits on the
        database, the next is built and sent; on SQLite they still write one at a time).
        ``migrate``: create or upgrade the schema on first use instead of refusing an
        unmigrated database (the embedded default store; servers use ``aegispay db upgrade``)."""
        self._migrate = migrate
        self._url: URL = make_url(normalise_url(url))
        self._given_url = safe_url(url)  # as the user wrote it, password masked
        self._schema = schema
        self._schema_checked = False
        self._event_types = event_types or EventTypes()
        self._listeners: list[Callable[[], None]] = []
        self._sqlite = self._url.get_backend_name() == "sqlite"
        memory = self._sqlite and self._url.database in (None, "", ":memory:")
        options: dict[str, Any] = {}
        if memory:
            # One shared connection is the in-memory database; the lock keeps two tasks
            # from interleaving transactions on it.
            options.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        elif self._sqlite:
            # Other processes' writers: wait for the file's write lock rather than fail.
            options.update(connect_args={"timeout": 60})
        if schema is not None:
            if self._url.get_backend_name() != "postgresql":
                raise ConfigError(f"store: schema={schema!r} is only supported on PostgreSQL")
            options["connect_args"] = {"server_settings": {"search_path": schema}}
        self._lock: anyio.Lock | None = anyio.Lock() if memory else None
        # SQLite has one writer at a time: this process's writers queue here, in order and
        # without spinning on SQLITE_BUSY, before they take the file lock.
        self._write_lock: anyio.Lock | None = anyio.Lock() if self._sqlite and not memory else None
        self._engine = create_async_engine(self._url, **options)
        if self._sqlite:
            _configure_sqlite(self._engine.sync_engine, wal=not memory)
        # Writers on SQLite take the write lock up front (BEGIN IMMEDIATE, see below).
        self._writer = self._engine.execution_options(aegispay_write=True)
        self._commits: Coalescer[Change, None] | None = None
        if group_commit:
            self._commits = Coalescer(
                self._commit_batch,
                max_batch=max_batch,
                keys=_commit_keys,
                in_flight=batches_in_flight,
            )
        self._loads: Coalescer[str, tuple[int, str] | None] = Coalescer(
            self._load_batch, max_batch=max_batch
        )
        # Read-backs of this process's own writes skip decoding (see store/recent.py).
        self._recent_payments: RecentlyWritten[str, Payment] = RecentlyWritten()
        self._recent_events: RecentlyWritten[str, Event] = RecentlyWritten()
        self._finds: Coalescer[tuple[str, str], Any] = Coalescer(
            self._find_batch, max_batch=max_batch
        )
        # Histories too (an audit or `replay --all` reads thousands concurrently).
        self._histories: Coalescer[str, list[str]] = Coalescer(
            self._events_batch, max_batch=max_batch
        )
        self._schema_check: anyio.Lock = anyio.Lock()

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return self._url.render_as_string(hide_password=True)

    # -- schema -------------------------------------------------------------------------------

    async def upgrade_schema(self) -> None:
        """Create or upgrade the database to this package's newest revision (idempotent)."""
        with self._errors():
            async with self._transaction(write=True, check=False) as conn:
                await conn.run_sync(_upgrade, self._schema)
        self._schema_checked = True

    async def create_schema(self) -> None:
        """Alias of :meth:`upgrade_schema`."""
        await self.upgrade_schema()

    async def check_schema(self) -> None:
        """Raise :class:`~aegispay.errors.StoreError` unless the database is at this package's
        head revision. Runs by itself before a store's first read or write; once it passed,
        it is not repeated."""
        with self._errors():
            async with self._transaction(check=False) as conn:
                current = await conn.run_sync(_current_revisions, self._schema)
        heads = migrations.heads()
        if set(current) == set(heads):
            self._schema_checked = True
            return
        upgrade = f"run `aegispay db upgrade --store {self._given_url}`"
        if not current:
            raise StoreError(f"store {self.url}: the database has no AegisPay schema; {upgrade}")
        unknown = sorted(r for r in current if not migrations.is_known(r))
        if unknown:
            raise StoreError(
                f"store {self.url}: the database schema is at revision {', '.join(unknown)}, "
                f"newer than this AegisPay knows (head {', '.join(heads)}); upgrade aegispay"
            )
        raise StoreError(
            f"store {self.url}: the database schema is at revision {', '.join(current)}, older "
            f"than this AegisPay needs (head {', '.join(heads)}); {upgrade}"
        )

    async def close(self) -> None:
        self._listeners.clear()
        if self._commits is not None:
            await self._commits.wait_idle()
        with self._errors():
            await self._engine.dispose()

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def use_event_types(self, event_types: EventTypes) -> None:
        """Decode events with the service's registry (which knows plugins' event types)."""
        self._event_types = event_types

    # -- writing ------------------------------------------------------------------------------

    async def commit(self, change: Change) -> None:
        if self._commits is not None:
            # Group commit: acknowledged once the shared transaction holding this change
            # committed, or with this change's own error.
            await self._commits.submit(change)
        else:
            await self._commit_one(change)
        self._recent_payments.put(change.payment.id, change.payment)
        for event in change.events:
            self._recent_events.put(event.event_id, event)
        # Only after the transaction committed: a listener must never see a rolled-back write.
        for listener in self._listeners:
            listener()

    async def _commit_batch(self, changes: Sequence[Change]) -> list[BaseException | None]:
        """One transaction for many changes (see :mod:`aegispay.store.sql_batch`); the
        changes it leaves undecided, or all of them if it cannot be trusted, go one by one."""
        results: list[BaseException | None] = [None] * len(changes)
        try:
            with self._errors():
                one_by_one = await self._write_batch(changes)
        except RedoAll:
            one_by_one = set(range(len(changes)))
        except AegisPayError as error:  # e.g. the database is unavailable: nothing written
            return [error] * len(changes)
        for i in sorted(one_by_one):
            try:
                await self._commit_one(changes[i])
            except Exception as error:
                results[i] = error
        return results

    async def _write_batch(self, changes: Sequence[Change]) -> set[int]:
        """The batch on the bare driver connection (:mod:`aegispay.store.sql_direct`): its
        rows are built first, outside the transaction; SQLAlchemy's path (``write_batch``)
        only where aiosqlite lacks what the direct path needs."""
        prepared = Prepared(changes, self)
        async with self._transaction(write=True, raw=True) as driver:
            if not self._sqlite:
                return await write_postgres(driver, changes, prepared)
            runner = sqlite_runner(driver)
            if runner is not None:
                run, db = runner
                deferred: set[int] = await run(write_sqlite, db, changes, prepared)
                return deferred
        async with self._transaction(write=True) as conn:
            return await write_batch(conn, changes, prepared)

    async def _commit_one(self, change: Change) -> None:
        with self._errors():
            try:
                async with self._transaction(write=True) as conn:
                    await self._write_projection(conn, change)
                    if change.idempotency is not None:
                        await self._claim(conn, change.idempotency)
                    await self._append(conn, change)
                    if change.progress is not None:
                        await advance_keys(conn, [change.progress], postgres=not self._sqlite)
            except _Rejected:
                raise await self._why_rejected(change) from None
            except _Claimed:
                claim = change.idempotency
                assert claim is not None
                existing = await self.find_idempotency(claim.scope, claim.key)
                if existing is None:  # claimed and gone again in between: only expiry does that
                    raise StoreError(f"idempotency key {claim.key!r} vanished; retry") from None
                raise IdempotencyClaimed(existing) from None

    def _projection_row(self, change: Change) -> dict[str, Any]:
        """The ``payments`` row for a new payment (and the values of an update)."""
        payment = change.payment
        return {
            "id": payment.id,
            "version": payment.version,
            "state": payment.state._value_,  # .value is a Python-level property: slower
            "fence": change.fencing_token or 0,
            "data": payment_to_json(payment).decode(),
            "unsettled": is_unsettled(payment),
            "updated_at": payment.updated_at,
        }

    def _attempt_rows(self, change: Change) -> list[dict[str, Any]]:
        """``payment_attempts`` rows for the attempts this change's events touched."""
        numbers = {n for e in change.events if (n := getattr(e, "attempt_no", None)) is not None}
        if not numbers:
            return []
        payment = change.payment
        return [
            {
                "payment_id": payment.id,
                "attempt_no": attempt.number,
                "gateway": attempt.gateway,
                "idempotency_key": attempt.idempotency_key,
                "outcome": attempt.outcome._value_ if attempt.outcome is not None else None,
                "gateway_reference": attempt.gateway_reference,
                "updated_at": payment.updated_at,
            }
            for attempt in payment.attempts
            if attempt.number in numbers
        ]

    async def _write_projection(self, conn: AsyncConnection, change: Change) -> None:
        payment, token = change.payment, change.fencing_token
        if change.expected_version == 0:
            await self._insert(conn, payments, [self._projection_row(change)])
            return
        row = self._projection_row(change)
        values: dict[str, Any] = {
            name: row[name] for name in ("version", "state", "data", "unsettled", "updated_at")
        }
        # Version check and fence check in the one statement that writes: no read-then-write gap.
        guard = sa.and_(payments.c.id == payment.id, payments.c.version == change.expected_version)
        if token is not None:
            guard = sa.and_(guard, payments.c.fence <= token)
            values["fence"] = sa.case((payments.c.fence < token, token), else_=payments.c.fence)
        result = await conn.execute(payments.update().where(guard).values(**values))
        if result.rowcount != 1:
            raise _Rejected

    async def _claim(self, conn: AsyncConnection, record: IdempotencyRecord) -> None:
        """Claim ``record``'s key; a record that has expired by the claim's ``created_at`` (the
        claimer's clock) is replaced, an unexpired one never is (then ``_Claimed``).

        One ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired``: check and replacement are a
        single atomic step of this transaction, and a conflict does not abort it. Two claimers
        of one expired key: the second waits for the first's row lock, then PostgreSQL checks
        the WHERE against the row the first committed - unexpired, so nothing is written and
        the second gets _Claimed (SQLite writers are serialised anyway).
        """
        insert = sqlite_insert if self._sqlite else postgresql_insert
        row = self._claim_row(record)
        statement = insert(idempotency_keys).values(row)
        keys = idempotency_keys.c
        statement = statement.on_conflict_do_update(
            index_elements=[keys.scope, keys.key],
            set_={name: statement.excluded[name] for name in row if name not in ("scope", "key")},
            where=keys.expires_at <= statement.excluded.created_at,
        )
        try:
            result = await conn.execute(statement)
        except exc.IntegrityError:
            raise _Claimed from None
        if result.rowcount != 1:  # a live record holds the key: nothing was written
            raise _Claimed

    def _claim_row(
        self, record: IdempotencyRecord, response_json: str | None = None
    ) -> dict[str, Any]:
        """The ``idempotency_keys`` row for a new claim (shared by every write path);
        ``response_json``: the response already encoded (a create's projection is its
        response, so the batch path encodes it once)."""
        return {
            "scope": record.scope,
            "key": record.key,
            "fingerprint": record.fingerprint,
            "payment_id": record.payment_id,
            "response": response_json or payment_to_json(record.response).decode(),
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "state": record.state,
            "recovery_point": record.recovery_point,
            "locked_at": record.locked_at,
        }

    async def _append(self, conn: AsyncConnection, change: Change) -> None:
        if not change.events:
            return
        history, messages = self._event_rows(change.events)
        await self._insert(conn, payment_events, history)
        # Inserted in event order inside this transaction, so seq order is commit order.
        await self._insert(conn, outbox, messages)
        attempts = self._attempt_rows(change)
        if attempts:
            try:  # the batch path's statement: one upsert, in one place
                await insert_many(conn, payment_attempts, attempts, postgres=not self._sqlite,
                                  upsert=ATTEMPT_UPSERT)  # fmt: skip
            except RedoAll:  # a unique key taken: this change is refused, as any other
                raise _Rejected from None

    def _event_rows(
        self, events: Sequence[Event]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The ``payment_events`` rows and the ``outbox`` rows for ``events``."""
        history, messages = [], []
        to_json = self._event_types.to_json
        for e in events:  # dict displays: merging dicts per row cost more than the JSON
            payment_id, version, event_id = e.payment_id, e.version, e.event_id
            data = to_json(e).decode()
            history.append({"payment_id": payment_id, "data": data, "version": version,
                            "event_id": event_id, "type": e.type_name,
                            "occurred_at": e.occurred_at})  # fmt: skip
            messages.append({"payment_id": payment_id, "message_id": event_id,
                             "sequence": version, "attempts": 0, "parked": False})  # fmt: skip
        return history, messages

    async def _insert(self, conn: AsyncConnection, table: sa.Table, rows: list[Any]) -> None:
        try:
            await conn.execute(table.insert(), rows)
        except exc.IntegrityError:
            raise _Rejected from None

    async def _why_rejected(self, change: Change) -> ConcurrencyConflict:
        payment_id, token = change.payment.id, change.fencing_token
        query = sa.select(payments.c.version, payments.c.fence).where(payments.c.id == payment_id)
        rows = await self._rows(query)
        version, fence = (rows[0].version, rows[0].fence) if rows else (0, 0)
        if version == change.expected_version and token is not None and token < fence:
            return FencingTokenRejected(payment_id, token, fence)
        return ConcurrencyConflict(payment_id, change.expected_version, version)

    # -- reading ------------------------------------------------------------------------------

    async def load(self, payment_id: str) -> Payment | None:
        # Concurrent loads share one query (and one pooled connection): under load, a query
        # per payment would queue for connections and dominate the path.
        row = await self._loads.submit(payment_id)
        if row is None:
            return None
        version, data = row
        recent = self._recent_payments.get(payment_id)
        if recent is not None and recent.version == version:
            return recent  # what this process committed, and still the stored version
        payment = payment_from_json(data)
        self._recent_payments.put(payment_id, payment)
        return payment

    async def _load_batch(self, payment_ids: Sequence[str]) -> list[tuple[int, str] | None]:
        ids = sorted(set(payment_ids))
        # PostgreSQL: one array parameter, one prepared statement whatever the count.
        where = f"IN ({', '.join('?' * len(ids))})" if self._sqlite else "= ANY($1::text[])"
        sql = f"SELECT id, version, data FROM payments WHERE id {where}"
        rows = await self._read(sql, ids if self._sqlite else (ids,))
        found = {row[0]: (row[1], row[2]) for row in rows}
        return [found.get(payment_id) for payment_id in payment_ids]

    async def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """One driver-level statement outside any transaction (one statement is its own
        snapshot): one round trip on PostgreSQL where BEGIN/COMMIT made three, one thread
        hand-off on SQLite where SQLAlchemy's cursor made five or more. Rows are tuples
        (asyncpg records) of the driver's values."""
        with self._errors():
            async with self._transaction(raw=True) as driver:
                if not self._sqlite:
                    return list(await driver.fetch(sql, *params))
                runner = sqlite_runner(driver)
                if runner is not None:
                    run, db = runner
                    rows: list[Any] = await run(fetch_sqlite, db, sql, params)
                    return rows
            async with self._transaction() as conn:  # aiosqlite without its private API
                return list(await conn.exec_driver_sql(sql, tuple(params)))

    async def events(self, payment_id: str) -> list[Event]:
        decode = self._event_types.from_json
        return [decode(data) for data in await self._histories.submit(payment_id)]

    async def _events_batch(self, payment_ids: Sequence[str]) -> list[list[str]]:
        ids = sorted(set(payment_ids))
        where = f"IN ({', '.join('?' * len(ids))})" if self._sqlite else "= ANY($1::text[])"
        rows = await self._read(
            f"SELECT payment_id, data FROM payment_events WHERE payment_id {where}"
            " ORDER BY payment_id, version",
            ids if self._sqlite else (ids,),
        )
        histories: dict[str, list[str]] = {}
        for payment_id, data in rows:
            histories.setdefault(payment_id, []).append(data)
        return [histories.get(payment_id, []) for payment_id in payment_ids]

    async def find_idempotency(
        self, scope: str, key: str, now: datetime | None = None
    ) -> IdempotencyRecord | None:
        # Batched like ``load``: a keyed create reads its key first, so under load this is
        # one query per batch of creates rather than one per create.
        row = await self._finds.submit((scope, key))
        if row is None or (now is not None and row.expires_at <= now):
            return None
        return self._idempotency_record(row)

    async def _find_batch(self, wanted: Sequence[tuple[str, str]]) -> list[Any]:
        pairs = sorted(set(wanted))
        params: Sequence[Any]
        if self._sqlite:
            sql, params = sqlite_keys_query(CLAIM_COLUMNS, pairs)
        else:  # array parameters: one prepared statement whatever the count
            listed = ", ".join(f'k."{name}"' for name in CLAIM_COLUMNS)
            sql = (
                f"SELECT {listed} FROM idempotency_keys AS k"
                " JOIN unnest($1::text[], $2::text[]) AS w(scope, key)"
                " ON k.scope = w.scope AND k.key = w.key"
            )
            params = ([scope for scope, _ in pairs], [key for _, key in pairs])
        found: dict[tuple[str, str], KeyRow] = {}
        for values in await self._read(sql, params):
            row = KeyRow._make(values)
            if self._sqlite:  # SQLite keeps datetimes as UTC text
                row = row.from_sqlite()
            found[row.scope, row.key] = row
        return [found.get(scope_key) for scope_key in wanted]

    async def payment_ids(self) -> list[str]:
        return list(await self._scalars(sa.select(payments.c.id).order_by(payments.c.id)))

    async def unsettled_payment_ids(self, older_than: datetime) -> list[str]:
        # ix_payments_unsettled (partial: only rows waiting on a gateway): an idle janitor
        # pass is one index lookup, whatever the number of settled payments.
        query = (
            sa.select(payments.c.id)
            .where(payments.c.unsettled, payments.c.updated_at < older_than)
            .order_by(payments.c.id)
        )
        return list(await self._scalars(query))

    # -- outbox -------------------------------------------------------------------------------
    # A payment's rows get their ``seq`` in ``sequence`` order (its next change commits only
    # after the previous one), so "oldest first" is ``seq`` order, per payment and overall.
    # Pending = ``_PENDING``; a payment backs off while one of its pending rows has a
    # ``next_attempt_at`` after now; leases live in ``outbox_leases`` (released on settle; a
    # dead relay's expired lease is overwritten by the next claim of that payment).

    async def outbox_size(self) -> int:
        """How many messages wait to be published (not parked)."""
        count = sa.select(sa.func.count()).select_from(outbox).where(_PENDING)
        return int(await self._scalar(count) or 0)

    async def outbox_claim(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[OutboxMessage]:
        if limit <= 0:
            return []
        # The bare driver (see ``_outbox_direct``): one round trip on PostgreSQL where
        # SQLAlchemy's transaction made four, one thread hand-off on SQLite; rows come back
        # without their JSON, which only the events this process did not commit need.
        params = {"owner": owner, "now": now, "lease_until": lease_until, "limit": limit}
        rows = await self._outbox_direct(_pg_claim, _sqlite_claim, params)
        if rows is not None:
            return await self._outbox_messages(rows)
        return await self._outbox_claim_generic(params)

    async def _outbox_claim_generic(self, params: dict[str, Any]) -> list[OutboxMessage]:
        """``outbox_claim`` where the direct path is missing: its own statements (one claim,
        written once), see :meth:`_without_direct`."""
        rows = await self._without_direct(_pg_claim, _sqlite_claim_step, params, write=True)
        return await self._outbox_messages(rows)

    async def _without_direct(
        self,
        postgres: Callable[[Any, dict[str, Any]], Awaitable[_T]],
        sqlite: Callable[[SqliteExecutor, dict[str, Any]], _T],
        params: dict[str, Any],
        *,
        write: bool,
    ) -> _T:
        """A relay step where :meth:`_outbox_direct` gave None (aiosqlite without the internals
        it uses): on SQLite the step's statements through SQLAlchemy's connection, in its
        transaction; PostgreSQL's steps need nothing SQLAlchemy lacks, so they run as ever."""
        with self._errors():
            if not self._sqlite:
                async with self._transaction(write=write, raw=True) as driver:
                    return await postgres(driver, params)
            async with self._transaction(write=write) as conn:
                result: _T = await conn.run_sync(
                    lambda sync: sqlite(through_sqlalchemy(sync), params)
                )
                return result

    async def outbox_settle(
        self,
        owner: str,
        now: datetime,
        delivered: Sequence[OutboxMessage],
        failures: Sequence[OutboxFailure],
        max_attempts: int,
    ) -> OutboxSettled:
        if not failures:  # the usual case: one statement (or hand-off) on the bare driver
            if not delivered:
                return OutboxSettled()
            params = _settle_params(owner, now, delivered)
            done = await self._outbox_direct(_pg_settle, _sqlite_settle, params)
            if done is not None:
                return _settled(delivered, *done)
        return await self._outbox_settle_generic(owner, now, delivered, failures, max_attempts)

    async def outbox_settle_and_claim(
        self,
        owner: str,
        now: datetime,
        delivered: Sequence[OutboxMessage],
        failures: Sequence[OutboxFailure],
        max_attempts: int,
        lease_until: datetime,
        limit: int,
    ) -> tuple[OutboxSettled, list[OutboxMessage]]:
        if delivered and not failures and limit > 0:
            # SQLite: one write transaction (one wait for the write lock); PostgreSQL: the
            # same statements as apart, on one pooled connection.
            params = _settle_params(owner, now, delivered)
            params.update(lease_until=lease_until, limit=limit)
            done = await self._outbox_direct(_pg_settle_and_claim, _sqlite_settle_and_claim, params)
            if done is not None:
                (published, lost), rows = done
                return _settled(delivered, published, lost), await self._outbox_messages(rows)
        settled = await self.outbox_settle(owner, now, delivered, failures, max_attempts)
        return settled, await self.outbox_claim(owner, now, lease_until, limit)

    async def _outbox_settle_generic(
        self,
        owner: str,
        now: datetime,
        delivered: Sequence[OutboxMessage],
        failures: Sequence[OutboxFailure],
        max_attempts: int,
    ) -> OutboxSettled:
        """``outbox_settle`` through SQLAlchemy: with failures to record (rare), or where
        aiosqlite lacks the direct path."""
        touched = sorted({m.payment_id for m in delivered} | {f.payment_id for f in failures})
        if not touched:
            return OutboxSettled()
        leases = outbox_leases
        with self._errors():
            async with self._transaction(write=True) as conn:
                # Lock our leases first: a relay taking over an expired one waits for this
                # transaction, then finds the rows published.
                mine = (
                    sa.select(leases.c.payment_id)
                    .where(
                        _one_of(leases.c.payment_id, touched, self._sqlite),
                        leases.c.owner == owner,
                        leases.c.expires_at > now,
                    )
                    .order_by(leases.c.payment_id)
                    .with_for_update()
                )
                held = set((await conn.execute(mine)).scalars())
                published_ids = [m.message_id for m in delivered if m.payment_id in held]
                ours = [f for f in failures if f.payment_id in held]
                refused = len(delivered) - len(published_ids)
                refused += sum(len(f.message_ids) for f in failures if f.payment_id not in held)
                published = 0
                if published_ids:
                    mark = (
                        outbox.update()
                        .where(_one_of(outbox.c.message_id, published_ids, self._sqlite))
                        .where(_PENDING)
                        .values(published_at=now)
                    )
                    published = (await conn.execute(mark)).rowcount
                counted: Sequence[Any] = ()
                if ours:
                    failed_ids = [i for f in ours for i in f.message_ids]
                    failing = _outbox_failure_statement(ours, failed_ids, max_attempts)
                    counted = (await conn.execute(failing)).all()
                if held:
                    release = leases.delete().where(
                        leases.c.owner == owner,
                        _one_of(leases.c.payment_id, sorted(held), self._sqlite),
                    )
                    await conn.execute(release)
        now_parked = {row.message_id for row in counted if row.parked}
        parked = tuple(i for f in failures for i in f.message_ids if i in now_parked)
        return OutboxSettled(published, len(counted), parked, refused)

    async def outbox_next_due(self, owner: str, after: datetime) -> datetime | None:
        rows = await self._outbox_direct(
            _pg_next_due, _sqlite_next_due, {"owner": owner, "after": after}, write=False
        )
        if rows is not None:
            return min((t for t in rows if t is not None), default=None)
        retry = sa.select(sa.func.min(outbox.c.next_attempt_at)).where(
            _PENDING, outbox.c.next_attempt_at > after
        )
        lease = sa.select(sa.func.min(outbox_leases.c.expires_at)).where(
            outbox_leases.c.owner != owner, outbox_leases.c.expires_at > after
        )
        row = (await self._rows(sa.select(retry.scalar_subquery(), lease.scalar_subquery())))[0]
        times = [t for t in row if t is not None]
        return min(times, default=None)

    async def outbox_lease_owners(self, now: datetime) -> list[str]:
        leases = outbox_leases
        query = sa.select(leases.c.owner).where(leases.c.expires_at > now).distinct()
        return sorted(await self._scalars(query))

    async def outbox_release(self, owners: Sequence[str]) -> int:
        if not owners:
            return 0
        release = outbox_leases.delete().where(outbox_leases.c.owner.in_(list(owners)))
        with self._errors():
            async with self._transaction(write=True) as conn:
                return int((await conn.execute(release)).rowcount)

    async def outbox_pending(self, limit: int) -> list[OutboxMessage]:
        query = _MESSAGES.where(_PENDING).order_by(outbox.c.seq).limit(max(limit, 0))
        return [self._message(row) for row in await self._rows(query)]

    async def outbox_parked(self) -> list[tuple[OutboxMessage, str]]:
        query = _MESSAGES.where(outbox.c.parked.is_(True)).order_by(outbox.c.seq)
        return [(self._message(row), row.last_error or "") for row in await self._rows(query)]

    async def outbox_requeue(self, message_ids: Sequence[str] | None = None) -> list[str]:
        requeue = outbox.update().where(outbox.c.parked.is_(True), outbox.c.published_at.is_(None))
        if message_ids is not None:
            if not message_ids:
                return []
            requeue = requeue.where(outbox.c.message_id.in_(list(message_ids)))
        requeue = requeue.values(parked=False, attempts=0, next_attempt_at=None)
        with self._errors():
            async with self._transaction(write=True) as conn:
                done = set((await conn.execute(requeue.returning(outbox.c.message_id))).scalars())
        if message_ids is not None:
            return [i for i in dict.fromkeys(message_ids) if i in done]
        return sorted(done)

    async def prune(
        self, published_before: datetime | None, expired_before: datetime, limit: int
    ) -> Pruned:
        if limit <= 0:
            return Pruned()
        statements = _PRUNE_SQLITE if self._sqlite else _PRUNE_POSTGRES
        messages = keys = 0
        with self._errors():
            async with self._transaction(write=True) as conn:
                if published_before is not None:
                    found = await conn.execute(
                        statements[0], {"before": published_before, "limit": limit}
                    )
                    messages = found.rowcount
                found = await conn.execute(
                    statements[1], {"before": expired_before, "limit": limit}
                )
                keys = found.rowcount
        return Pruned(messages, keys)

    async def outbox_counts(self, now: datetime) -> OutboxCounts:
        waiting = sa.and_(_PENDING, outbox.c.next_attempt_at > now)
        backing_off_ids = sa.select(outbox.c.payment_id).where(waiting)

        def count(*where: Any) -> Any:
            return sa.select(sa.func.count()).select_from(outbox).where(*where).scalar_subquery()

        query = sa.select(
            count(_PENDING),
            count(_PENDING, outbox.c.payment_id.in_(backing_off_ids)),
            sa.select(sa.func.count(sa.distinct(outbox.c.payment_id)))
            .where(waiting)
            .scalar_subquery(),
            sa.select(sa.func.count())
            .select_from(outbox_leases)
            .where(outbox_leases.c.expires_at > now)
            .scalar_subquery(),
            count(outbox.c.parked.is_(True)),
            sa.select(sa.func.min(outbox.c.next_attempt_at)).where(waiting).scalar_subquery(),
        )
        pending, backing_off, payments, leased, parked, next_retry = (await self._rows(query))[0]
        return OutboxCounts(
            pending=pending,
            ready=pending - backing_off,
            backing_off=backing_off,
            backing_off_payments=payments,
            leased_payments=leased,
            parked=parked,
            next_retry_at=next_retry,
        )

    async def _outbox_direct(
        self,
        postgres: Callable[[Any, dict[str, Any]], Awaitable[_T]],
        sqlite: Callable[[sqlite3.Connection, dict[str, Any]], _T],
        params: dict[str, Any],
        *,
        write: bool = True,
    ) -> _T | None:
        """One relay step on the pooled connection's bare driver, outside SQLAlchemy:
        ``postgres(asyncpg connection, params)`` - statements outside any transaction, so a
        step that is one statement is one round trip (its own snapshot and commit) - or
        ``sqlite(sqlite3 connection, params)`` in aiosqlite's thread, the whole transaction in
        one hand-off (``write``: holding the store's write lock). None when aiosqlite lacks
        the private API that needs (the caller then goes through SQLAlchemy)."""
        with self._errors():
            async with self._transaction(write=write, raw=True) as driver:
                if not self._sqlite:
                    return await postgres(driver, params)
                runner = sqlite_runner(driver)
                if runner is None:
                    return None
                run, db = runner
                result: _T = await run(sqlite, db, params)
                return result

    async def _outbox_messages(self, rows: Sequence[Any]) -> list[OutboxMessage]:
        """Messages from (message_id, payment_id, sequence, attempts) rows. The events this
        process committed come from ``_recent_events``; only the others' JSON is fetched
        (one more statement) and decoded."""
        take = self._recent_events.take
        events: list[Event | None] = []
        missing: list[str] = []
        for row in rows:
            event = take(row[0])
            if event is None:
                missing.append(row[0])
            events.append(event)
        if missing:
            params = {"messages": missing}
            found = await self._outbox_direct(
                _pg_event_data, _sqlite_event_data, params, write=False
            )
            if found is None:
                found = await self._without_direct(
                    _pg_event_data, _sqlite_event_data, params, write=False
                )
            decode, data = self._event_types.from_json, dict(found)
            if lost := [message_id for message_id in missing if message_id not in data]:
                # Written in one transaction with its event, a row cannot lack it, unless
                # someone deleted history by hand: say which, rather than a KeyError.
                raise StoreError(f"store {self.url}: outbox messages without their event: {lost}")
            for i, row in enumerate(rows):
                if events[i] is None:
                    events[i] = decode(data[row[0]])
        return [
            OutboxMessage(row[0], row[1], row[2], event, row[3])  # type: ignore[arg-type]
            for row, event in zip(rows, events, strict=True)
        ]

    def _message(self, row: Any) -> OutboxMessage:
        event = self._recent_events.take(row.message_id)  # committed here: no decoding
        if event is None:
            event = self._event_types.from_json(row.data)
        return OutboxMessage(row.message_id, row.payment_id, row.sequence, event, row.attempts)

    # -- idempotency --------------------------------------------------------------------------

    # With group commit, concurrent advances share a transaction (created on first use).
    _advances: Coalescer[IdempotencyProgress, bool] | None = None

    async def idempotency_advance(self, step: IdempotencyProgress) -> bool:
        if self._commits is None:
            (result,) = await self._advance_batch([step])
        else:
            if self._advances is None:
                self._advances = Coalescer(self._advance_batch, keys=_advance_keys)
            result = await self._advances.submit(step)
        if isinstance(result, BaseException):
            raise result
        return result

    async def _advance_batch(
        self, steps: Sequence[IdempotencyProgress]
    ) -> list[bool | BaseException]:
        """Each step is guarded (forward only); one transaction (one commit) for them all."""
        try:
            with self._errors():
                async with self._transaction(write=True) as conn:
                    return list(await advance_keys(conn, steps, postgres=not self._sqlite))
        except AegisPayError as error:  # e.g. the database is unavailable: nothing written
            return [error] * len(steps)

    async def idempotency_in_flight(
        self, older_than: datetime, *, now: datetime | None = None, limit: int = 100
    ) -> list[IdempotencyRecord]:
        table = idempotency_keys
        query = (
            sa.select(table)
            .where(
                table.c.state == IN_FLIGHT,
                sa.or_(table.c.locked_at.is_(None), table.c.locked_at < older_than),
            )
            .order_by(table.c.locked_at.is_not(None), table.c.locked_at, table.c.created_at)
            .limit(max(limit, 0))
        )
        if now is not None:
            query = query.where(table.c.expires_at > now)
        return [self._idempotency_record(row) for row in await self._rows(query)]

    def _idempotency_record(self, row: Any) -> IdempotencyRecord:
        response = payment_from_json(row.response)
        return IdempotencyRecord(
            row.scope, row.key, row.fingerprint, row.payment_id, response, row.created_at,
            row.expires_at, state=row.state, recovery_point=row.recovery_point,
            locked_at=row.locked_at,
        )  # fmt: skip

    # -- plumbing -----------------------------------------------------------------------------

    async def _rows(self, query: sa.Select[Any]) -> list[Any]:
        with self._errors():
            async with self._transaction() as conn:
                return list((await conn.execute(query)).all())

    async def _scalars(self, query: sa.Select[Any]) -> list[Any]:
        return [row[0] for row in await self._rows(query)]

    async def _scalar(self, query: sa.Select[Any]) -> Any:
        rows = await self._scalars(query)
        return rows[0] if rows else None

    @asynccontextmanager
    async def _transaction(
        self, write: bool = False, check: bool = True, raw: bool = False
    ) -> AsyncIterator[Any]:
        """A SQLAlchemy connection in a transaction; ``raw``: the pooled connection's bare
        driver connection (asyncpg or aiosqlite) with no transaction begun - the caller
        runs its own (see :mod:`aegispay.store.sql_direct`)."""
        if check and not self._schema_checked:
            async with self._schema_check:  # once, not once per concurrent first caller
                if not self._schema_checked:
                    await (self.upgrade_schema() if self._migrate else self.check_schema())
        serial: AbstractAsyncContextManager[Any] = self._lock or nullcontext()
        writers: AbstractAsyncContextManager[Any] = (
            self._write_lock if write and self._write_lock is not None else nullcontext()
        )
        if raw:
            async with serial, writers, self._engine.connect() as conn:
                driver = (await conn.get_raw_connection()).driver_connection
                try:
                    yield driver
                except _UNAVAILABLE:
                    # SQLAlchemy did not see the error: drop the connection from the pool
                    # itself rather than hand a broken one to the next caller.
                    await conn.invalidate()
                    raise
            return
        async with serial, writers, (self._writer if write else self._engine).begin() as conn:
            yield conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Driver errors become ours; the message names the URL without its password."""
        try:
            yield
        except (AegisPayError, IdempotencyClaimed, _Rejected, _Claimed):
            raise
        except _UNAVAILABLE_DIRECT as error:
            raise StoreUnavailable(
                f"store {self.url} is unavailable: {self._describe(error)}"
            ) from error
        except (exc.SQLAlchemyError, asyncpg.PostgresError, sqlite3.Error) as error:
            raise StoreError(f"store {self.url}: {self._describe(error)}") from error

    def _describe(self, error: BaseException) -> str:
        text = f"{type(error).__name__}: {error}"
        password = self._url.password
        return text.replace(str(password), "***") if password else text


def _commit_keys(change: Change) -> tuple[Any, ...]:
    """What two changes in one batch must not share: the payment, the idempotency key."""
    keys: list[Any] = [change.payment.id]
    if change.idempotency is not None:
        keys.append(("idempotency", change.idempotency.scope, change.idempotency.key))
    if change.progress is not None:
        keys.append(("idempotency", change.progress.scope, change.progress.key))
    return tuple(keys)


def _migration_context(connection: sa.Connection, schema: str | None) -> MigrationContext:
    return MigrationContext.configure(connection, opts={"version_table_schema": schema})


def _current_revisions(connection: sa.Connection, schema: str | None) -> tuple[str, ...]:
    """The revisions stamped in the database's version table (none: unmigrated)."""
    return tuple(_migration_context(connection, schema).get_current_heads())


def _upgrade(connection: sa.Connection, schema: str | None, target: str = "head") -> None:
    """Run the migrations to ``target`` on ``connection``, inside its transaction."""
    config = migrations.alembic_config()
    config.attributes["connection"] = connection
    config.attributes["schema"] = schema
    if not _current_revisions(connection, schema) and sa.inspect(connection).has_table(
        payments.name
    ):
        # Made by the pre-migrations ``metadata.create_all``: that schema is revision 0001.
        command.stamp(config, "0001")
    command.upgrade(config, target)


# Per connection, on files. The defaults (a 2 MiB page cache, a checkpoint every 1,000 WAL
# pages) are sized for small embedded use: under group commit each batch touches pages all
# over the tables' indexes, which then fell out of the cache between batches, and the writer
# stopped every few batches to copy the WAL back. A 64 MiB cache (an upper bound: SQLite
# grows it as pages are read) and a checkpoint every 10,000 pages (~40 MiB of WAL, reset
# each time) made the simulation's SQLite run ~11 % faster (1,437 -> 1,594/s, the mean of
# three interleaved 10,000-payment runs each; docs/benchmarks.md).
_SQLITE_FILE_TUNING = ("PRAGMA cache_size=-65536", "PRAGMA wal_autocheckpoint=10000")


def _configure_sqlite(engine: sa.Engine, *, wal: bool) -> None:
    """Per connection: foreign keys on; WAL + synchronous=NORMAL on files (durable at each
    commit's WAL append, and readers never block the writer). The driver's implicit
    transactions are switched off so SQLAlchemy's BEGIN is the real one."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if wal:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            for pragma in _SQLITE_FILE_TUNING:
                cursor.execute(pragma)
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # A deferred writer that read first can fail with SQLITE_BUSY on upgrade; taking the
        # write lock at BEGIN makes writers queue (busy timeout) and then see fresh data.
        write = conn.get_execution_options().get("aegispay_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


# -- outbox statements -------------------------------------------------------------------------


def _prune_statements(postgres: bool) -> tuple[sa.TextClause, sa.TextClause]:
    """``prune``'s two DELETEs: a batch of published messages (oldest first, along the
    primary key: published rows are the oldest) and of expired completed keys (oldest first,
    along ix_idempotency_expiry, migration 0007).

    The rows are picked by a subquery and deleted by their physical row id, PostgreSQL's
    ``ctid`` in an ``ARRAY`` (a TID scan: as ``IN (subquery)`` it hash-joined a scan of the
    whole table) or SQLite's ``rowid``. The outer WHERE repeats the conditions: a key that a
    new request claims again meanwhile (an expired record is replaced in place) is re-checked
    by PostgreSQL on its new version and kept."""
    picked = "= ANY(ARRAY({}))" if postgres else "IN ({})"
    row = "ctid" if postgres else "rowid"
    published = "published_at < :before"
    expired = f"expires_at < :before AND state = '{COMPLETED}'"
    oldest_messages = f"SELECT seq FROM outbox WHERE {published} ORDER BY seq LIMIT :limit"
    oldest_keys = (
        f"SELECT {row} FROM idempotency_keys WHERE {expired} ORDER BY expires_at LIMIT :limit"
    )
    messages = f"DELETE FROM outbox WHERE seq {picked.format(oldest_messages)} AND {published}"
    keys = f"DELETE FROM idempotency_keys WHERE {row} {picked.format(oldest_keys)} AND {expired}"

    def typed(sql: str, column: Any) -> sa.TextClause:
        return sa.text(sql).bindparams(
            sa.bindparam("before", type_=column.type), sa.bindparam("limit", type_=sa.Integer)
        )

    return typed(messages, outbox.c.published_at), typed(keys, idempotency_keys.c.expires_at)


_PRUNE_POSTGRES = _prune_statements(postgres=True)
_PRUNE_SQLITE = _prune_statements(postgres=False)


def _one_of(column: Any, values: Sequence[Any], sqlite: bool) -> Any:
    """``column IN values``. On PostgreSQL one array parameter (``= ANY(:values)``): the
    statement text does not change with the count, so it is compiled and prepared once;
    SQLite has no arrays and gets an expanding IN."""
    if sqlite:
        return column.in_(list(values))
    return column == sa.any_(sa.bindparam(None, list(values), type_=ARRAY(column.type)))


def _outbox_failure_statement(
    failures: Sequence[OutboxFailure], message_ids: Sequence[str], max_attempts: int
) -> Any:
    """One UPDATE for every failed payment: one more attempt, the payment's error and retry
    time, parked once ``max_attempts`` is reached; returns (message_id, parked)."""
    by_payment = outbox.c.payment_id
    error = sa.case({f.payment_id: f.error for f in failures}, value=by_payment)
    retry_type = outbox.c.next_attempt_at.type
    retry_at = sa.case(
        {f.payment_id: sa.literal(f.retry_at, retry_type) for f in failures}, value=by_payment
    )
    exhausted = outbox.c.attempts + 1 >= max_attempts
    return (
        outbox.update()
        .where(outbox.c.message_id.in_(list(message_ids)), _PENDING)
        .values(
            attempts=outbox.c.attempts + 1,
            last_error=error,
            next_attempt_at=retry_at,
            parked=sa.case((exhausted, sa.true()), else_=sa.false()),
        )
        .returning(outbox.c.message_id, outbox.c.parked)
    )


# -- outbox on the bare driver (``SqlStore._outbox_direct``) -------------------------------------
# The same statements as above, as text: asyncpg and sqlite3 take them as they are, with no
# SQLAlchemy compilation, row objects or result processors per row. ``parked IS false`` /
# ``IS 0`` as SQLAlchemy renders ``_PENDING``, so the plans stay those of the statements above.
