"""The group-commit batch on the bare driver connection: fewer round trips, less Python per row.

:mod:`~aegispay.store.sql_batch` holds the batch's rows and its decision, and writes it through
SQLAlchemy where this path is unavailable; this module is what the store runs in practice, and
what differs is only how the rows reach the database:

* Rows are built once, before the transaction, in the event loop's thread
  (``sql_batch.Prepared``); the decision (``sql_batch.decide``, shared with ``write_batch``):
  a stale version, an old fencing token or a taken idempotency key defers the change to the
  per-change path (which names the precise error), and writes nothing of it.
* PostgreSQL (:func:`write_postgres`): BEGIN, one locking read, ONE write statement, COMMIT.
  Each table's rows travel as one JSON text parameter (orjson, in C) expanded by the server
  (``json_populate_recordset``): asyncpg encoded every element of the former array
  parameters in Python. The writes are data-modifying CTEs of one statement, which all see
  the snapshot taken before it: no part reads what another writes. (The one dependency, a
  change that claims a key and advances it, is folded into the claim's row beforehand.) A
  unique (or other integrity) violation anywhere raises :class:`RedoAll`, as before.
* SQLite (:func:`write_sqlite`): the whole transaction - BEGIN IMMEDIATE, reads, decision,
  ``executemany`` writes, COMMIT - is ONE call in aiosqlite's thread instead of a thread
  hand-off per statement (and several per SQLAlchemy cursor); sqlite3 releases the GIL
  while it works. Values bind by column: only the datetime columns need converting.
  (Tried and dropped: one ``json_each`` statement per table, to hand the GIL back once per
  table rather than once per row - SQLite's JSON extraction cost more than it saved.)

``aiosqlite.Connection._execute`` is private (SQLAlchemy's own adapter uses the same
internals): :func:`sqlite_runner` checks for it and the store falls back to the SQLAlchemy
path when it is missing, so an aiosqlite upgrade that drops it is slower, not broken.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, NamedTuple

import asyncpg  # type: ignore[import-untyped]
import orjson

from .base import IN_FLIGHT, RECOVERY_POINTS, Change, IdempotencyProgress
from .sql_batch import (
    SQLITE_ADVANCE,
    SQLITE_UPDATE,
    Prepared,
    RedoAll,
    decide,
    kept,
    sqlite_keys_query,
    sqlite_time,
    step_row,
)

# The row builders' keys (``SqlStore._projection_row`` and friends), in statement order. A
# test checks them against the builders, so a new column cannot be dropped silently here.
PAYMENT_COLUMNS = ("id", "version", "state", "fence", "data", "unsettled", "updated_at")
CLAIM_COLUMNS = ("scope", "key", "fingerprint", "payment_id", "response", "created_at",
                 "expires_at", "state", "recovery_point", "locked_at")  # fmt: skip
EVENT_COLUMNS = ("payment_id", "data", "version", "event_id", "type", "occurred_at")
OUTBOX_COLUMNS = ("payment_id", "message_id", "sequence", "attempts", "parked")
ATTEMPT_COLUMNS = ("payment_id", "attempt_no", "gateway", "idempotency_key", "outcome",
                   "gateway_reference", "updated_at")  # fmt: skip
# The only columns whose values need converting for a driver (datetimes).
_TIMES = {
    "payments": ("updated_at",),
    "idempotency_keys": ("created_at", "expires_at", "locked_at"),
    "payment_events": ("occurred_at",),
    "outbox": (),
    "payment_attempts": ("updated_at",),
}


# -- PostgreSQL --------------------------------------------------------------------------------

# The payments to update, locked in id order (a fixed lock order), and the keys that exist.
_PG_READ = (
    "WITH locked AS MATERIALIZED (SELECT id, version, fence FROM payments"
    " WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE)"
    " SELECT id, version, fence, NULL::text AS scope, NULL::text AS key FROM locked"
    " UNION ALL SELECT NULL, NULL, NULL, k.scope, k.key FROM idempotency_keys AS k"
    " JOIN unnest($2::text[], $3::text[]) AS w(scope, key)"
    " ON k.scope = w.scope AND k.key = w.key"
)


def _pg_insert(table: str, columns: Sequence[str], n: int) -> str:
    names = ", ".join(f'"{c}"' for c in columns)
    return (
        f"INSERT INTO {table} ({names}) SELECT {names}"
        f" FROM json_populate_recordset(NULL::{table}, ${n}::json)"
    )


_PG_POINTS = ", ".join(f"e{n} text" for n in range(len(RECOVERY_POINTS)))
_PG_ADVANCE = (
    "UPDATE idempotency_keys AS k SET recovery_point = v.point, state = v.state,"
    " locked_at = v.locked_at FROM json_to_recordset($7::json) AS v(point text, state text,"
    f" locked_at timestamptz, scope text, key text, payment_id text, {_PG_POINTS})"
    " WHERE k.scope = v.scope AND k.key = v.key AND k.payment_id = v.payment_id"
    f" AND k.state = '{IN_FLIGHT}'"
    f" AND k.recovery_point IN ({', '.join(f'v.e{n}' for n in range(len(RECOVERY_POINTS)))})"
)
# One statement, whatever the batch holds (empty JSON arrays for what it lacks): prepared
# once per connection. Inserted in array order: outbox seq order is commit order.
_PG_WRITE = (
    f"WITH claims AS ({_pg_insert('idempotency_keys', CLAIM_COLUMNS, 1)}),"
    f" created AS ({_pg_insert('payments', PAYMENT_COLUMNS, 2)}),"
    # The version guard stays although the rows are locked and checked: belt and braces.
    " updated AS (UPDATE payments AS p SET version = v.version, state = v.state,"
    " data = v.data, fence = v.fence, unsettled = v.unsettled, updated_at = v.updated_at"
    " FROM json_to_recordset($3::json) AS v(id text, version int4, state text, data text,"
    " fence int8, unsettled bool, updated_at timestamptz, expected int4)"
    " WHERE p.id = v.id AND p.version = v.expected),"
    f" history AS ({_pg_insert('payment_events', EVENT_COLUMNS, 4)}),"
    f" messages AS ({_pg_insert('outbox', OUTBOX_COLUMNS, 5)}),"
    f" attempts AS ({_pg_insert('payment_attempts', ATTEMPT_COLUMNS, 6)}"
    " ON CONFLICT (payment_id, attempt_no) DO UPDATE SET outcome = excluded.outcome,"
    " gateway_reference = excluded.gateway_reference, updated_at = excluded.updated_at),"
    f" advanced AS ({_PG_ADVANCE})"
    " SELECT 1"
)
_EMPTY = "[]"


def _pg_json(rows: Sequence[Any], times: Sequence[str] = ()) -> str:
    """One JSON array of row objects. Aware datetimes keep their offset (exact, microseconds
    included); a naive one is read as local time, as the column type's binding does."""
    if not rows:
        return _EMPTY
    for name in times:
        for row in rows:
            value = row[name]
            if value is not None and value.tzinfo is None:
                row[name] = value.astimezone(UTC)
    # A column of JSON text (always orjson's output) is embedded as JSON, not as a string:
    # orjson copies it instead of escaping every quote, and the server stores a nested JSON
    # value into a text column as its text, verbatim (``json``, unlike ``jsonb``, keeps it).
    first, fragment = rows[0], orjson.Fragment
    for name in _JSON_TEXT:
        if name in first:
            for row in rows:
                value = row[name]
                if type(value) is str:
                    row[name] = fragment(value)
    return orjson.dumps(rows).decode()


_JSON_TEXT = ("data", "response")  # payments, payment_events, outbox; idempotency_keys


_STEP_NAMES = ("point", "state", "locked_at", "scope", "key", "payment_id",
               *(f"e{n}" for n in range(len(RECOVERY_POINTS))))  # fmt: skip


def _pg_steps(steps: Sequence[IdempotencyProgress]) -> str:
    names = _STEP_NAMES
    return _pg_json([dict(zip(names, step_row(s), strict=True)) for s in steps], ("locked_at",))


async def write_postgres(db: Any, changes: Sequence[Change], prepared: Prepared) -> set[int]:
    """The batch in one transaction on an asyncpg connection; returns the deferred indexes.

    Raises :class:`RedoAll` (after rolling back) when a write hit an integrity constraint."""
    ids = sorted({c.payment.id for c in changes if c.expected_version > 0})
    wanted = sorted({(r.scope, r.key) for c in changes if (r := c.idempotency) is not None})
    async with db.transaction():
        current: dict[str, tuple[int, int]] = {}
        taken: set[tuple[str, str]] = set()
        if ids or wanted:
            scopes, keys = [s for s, _ in wanted], [k for _, k in wanted]
            for row in await db.fetch(_PG_READ, ids, scopes, keys):
                if row[0] is not None:
                    current[row[0]] = (row[1], row[2])
                else:
                    taken.add((row[3], row[4]))
        deferred, fences = decide(changes, current, taken)
        rows = kept(changes, prepared, deferred, fences)
        try:
            await db.execute(
                _PG_WRITE,
                _pg_json(rows.claims, _TIMES["idempotency_keys"]),
                _pg_json(rows.created, _TIMES["payments"]),
                _pg_json(rows.updated, _TIMES["payments"]),
                _pg_json(rows.history, _TIMES["payment_events"]),
                _pg_json(rows.messages),
                _pg_json(rows.attempts, _TIMES["payment_attempts"]),
                _pg_steps(rows.steps),
            )
        except asyncpg.IntegrityConstraintViolationError:
            raise RedoAll from None
    return deferred


# -- SQLite ------------------------------------------------------------------------------------


def _sqlite_values(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], times: Sequence[str]
) -> list[tuple[Any, ...]]:
    """The rows as tuples in ``columns`` order; only the datetime columns are converted
    (sqlite3 binds str, int, float, None and bool - as 0/1 - itself)."""
    # sqlite_time inlined: a call per value was most of this function's time.
    for name in times:
        for row in rows:
            value = row[name]
            if value is not None:
                if value.tzinfo is not UTC:
                    value = value.astimezone(UTC)
                row[name] = value.isoformat(" ", "microseconds")[:26]
    values = itemgetter(*columns)
    return [values(row) for row in rows]


def _sqlite_insert(table: str, columns: Sequence[str], suffix: str = "") -> str:
    names = ", ".join(f'"{c}"' for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' for _ in columns)}){suffix}"


_SQLITE_CLAIM = _sqlite_insert("idempotency_keys", CLAIM_COLUMNS)
_SQLITE_CREATE = _sqlite_insert("payments", PAYMENT_COLUMNS)
_SQLITE_EVENTS = _sqlite_insert("payment_events", EVENT_COLUMNS)
_SQLITE_OUTBOX = _sqlite_insert("outbox", OUTBOX_COLUMNS)
_SQLITE_ATTEMPTS = _sqlite_insert(
    "payment_attempts",
    ATTEMPT_COLUMNS,
    " ON CONFLICT (payment_id, attempt_no) DO UPDATE SET outcome = excluded.outcome,"
    " gateway_reference = excluded.gateway_reference, updated_at = excluded.updated_at",
)


def sqlite_step(step: IdempotencyProgress) -> tuple[Any, ...]:
    row = step_row(step)
    return (*row[:2], sqlite_time(row[2]), *row[3:])


def write_sqlite(db: sqlite3.Connection, changes: Sequence[Change], prepared: Prepared) -> set[int]:
    """The batch in one transaction, run in aiosqlite's thread; returns the deferred indexes.

    Raises :class:`RedoAll` (after rolling back) when a write hit an integrity constraint."""
    db.execute("BEGIN IMMEDIATE")  # the write lock up front, as the store's other writers
    try:
        deferred = _write_sqlite(db, changes, prepared)
        db.execute("COMMIT")
    except sqlite3.IntegrityError:
        _rollback(db)
        raise RedoAll from None
    except BaseException:
        _rollback(db)
        raise
    return deferred


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        db.execute("ROLLBACK")


def _write_sqlite(
    db: sqlite3.Connection, changes: Sequence[Change], prepared: Prepared
) -> set[int]:
    ids = sorted({c.payment.id for c in changes if c.expected_version > 0})
    current: dict[str, tuple[int, int]] = {}
    if ids:
        found = db.execute(
            f"SELECT id, version, fence FROM payments WHERE id IN ({', '.join('?' * len(ids))})",
            ids,
        )
        current = {row[0]: (row[1], row[2]) for row in found}
    wanted = sorted({(r.scope, r.key) for c in changes if (r := c.idempotency) is not None})
    taken: set[tuple[str, str]] = set()
    if wanted:
        found = db.execute(*sqlite_keys_query(("scope", "key"), wanted))
        taken = {(row[0], row[1]) for row in found}
    deferred, fences = decide(changes, current, taken)
    rows = kept(changes, prepared, deferred, fences)
    # The order of sql_batch.write_batch: claims, new payments, updates, history, outbox,
    # attempts, then the recovery points (which may advance a key claimed just above).
    if rows.claims:
        values = _sqlite_values(rows.claims, CLAIM_COLUMNS, _TIMES["idempotency_keys"])
        db.executemany(_SQLITE_CLAIM, values)
    if rows.created:
        values = _sqlite_values(rows.created, PAYMENT_COLUMNS, _TIMES["payments"])
        db.executemany(_SQLITE_CREATE, values)
    if rows.updated:
        updated = [
            (p["version"], p["state"], p["data"], p["fence"], p["unsettled"],
             sqlite_time(p["updated_at"]), p["id"], p["expected"])
            for p in rows.updated
        ]  # fmt: skip
        db.executemany(SQLITE_UPDATE, updated)
    if rows.history:
        values = _sqlite_values(rows.history, EVENT_COLUMNS, _TIMES["payment_events"])
        db.executemany(_SQLITE_EVENTS, values)
        db.executemany(_SQLITE_OUTBOX, _sqlite_values(rows.messages, OUTBOX_COLUMNS, ()))
    if rows.attempts:
        values = _sqlite_values(rows.attempts, ATTEMPT_COLUMNS, _TIMES["payment_attempts"])
        db.executemany(_SQLITE_ATTEMPTS, values)
    if rows.steps:
        db.executemany(SQLITE_ADVANCE, [sqlite_step(step) for step in rows.steps])
    return deferred


SqliteRunner = Callable[..., Awaitable[Any]]


def sqlite_runner(driver_connection: Any) -> tuple[SqliteRunner, sqlite3.Connection] | None:
    """aiosqlite's "run this function in the connection's thread" and its sqlite3 connection,
    or None when this aiosqlite lacks them (private API: the caller then keeps to SQLAlchemy)."""
    run = getattr(driver_connection, "_execute", None)
    try:
        db = driver_connection._conn
    except (AttributeError, ValueError):
        return None
    if not callable(run) or not isinstance(db, sqlite3.Connection):
        return None
    return run, db


class KeyRow(NamedTuple):
    """An ``idempotency_keys`` row read on the bare driver (``CLAIM_COLUMNS`` order), with
    the attributes ``SqlStore._idempotency_record`` reads, as SQLAlchemy's rows had."""

    scope: str
    key: str
    fingerprint: str
    payment_id: str
    response: str
    created_at: datetime
    expires_at: datetime
    state: str
    recovery_point: str
    locked_at: datetime | None

    def from_sqlite(self) -> KeyRow:
        """The datetimes parsed from SQLite's UTC text (as ``_UtcDateTime`` reads them)."""
        return self._replace(
            created_at=_sqlite_parse(self.created_at),
            expires_at=_sqlite_parse(self.expires_at),
            locked_at=_sqlite_parse(self.locked_at),
        )


def _sqlite_parse(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def fetch_sqlite(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    """A read in aiosqlite's thread: one hand-off for the statement and its rows."""
    return db.execute(sql, params).fetchall()
