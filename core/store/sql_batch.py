"""The batched write path: many payments' changes in one transaction, decided per change.

:class:`~aegispay.store.group_commit.Coalescer` hands :func:`write_batch` the changes that
queued while the previous transaction ran (distinct payments, distinct idempotency keys). It
writes them with a handful of multi-row statements and reports which changes it could not
settle itself; the store runs those through the per-change path, which raises the precise
error (IdempotencyClaimed, ConcurrencyConflict, FencingTokenRejected) or, for an expired
idempotency key, replaces it. So a conflict in one payment never fails another, and the rare
cases keep one implementation.

The rows (:class:`Prepared`) and the decision (:func:`decide`, :func:`kept`) are shared: the
store writes them on the bare driver connection (:mod:`~aegispay.store.sql_direct`: fewer
round trips, less Python per row), and through SQLAlchemy (:func:`write_batch`) only for an
aiosqlite without the internals that path uses.

Why the checks are sound without per-row guards: the projection rows a batch updates are read
``FOR UPDATE`` on PostgreSQL (held to commit), and a SQLite writer holds the database's write
lock from ``BEGIN IMMEDIATE``; the version and fencing checks are therefore made on rows nobody
else can change before this transaction ends. The UPDATE keeps its version guard and the
history's ``(payment_id, version)`` key backs it: if anything slipped through, the insert of
the events fails and the whole batch is redone change by change.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncConnection

from ..events import Event
from .base import IN_FLIGHT, RECOVERY_POINTS, Change, IdempotencyProgress, IdempotencyRecord
from .sql_schema import idempotency_keys, outbox, payment_attempts, payment_events, payments


def sqlite_keys_query(
    columns: Sequence[str], wanted: Sequence[tuple[str, str]]
) -> tuple[str, list[str]]:
    """The ``idempotency_keys`` rows of these (scope, key) pairs: SQL and its parameters.

    A join with the pairs as a VALUES table, each pair a primary-key lookup. Not
    ``(scope, key) IN (VALUES ...)``: SQLite plans that row-value IN as a scan of the whole
    key index per query, which made every batch's lookup cost grow with the table (a test
    checks the plan)."""
    listed = ", ".join(f'k."{name}"' for name in columns)
    pairs = ", ".join("(?, ?)" for _ in wanted)
    sql = (
        f"SELECT {listed} FROM (VALUES {pairs}) AS w JOIN idempotency_keys AS k"
        " ON k.scope = w.column1 AND k.key = w.column2"
    )
    return sql, [part for pair in wanted for part in pair]


class RedoAll(Exception):
    """Roll the batch back and run every change through the per-change path."""


class Rows(Protocol):
    """The store's row builders (shared with the per-change path)."""

    def _claim_row(
        self, record: IdempotencyRecord, response_json: str | None = None
    ) -> dict[str, Any]: ...

    def _projection_row(self, change: Change) -> dict[str, Any]: ...

    def _event_rows(
        self, events: Sequence[Event]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]: ...

    def _attempt_rows(self, change: Change) -> list[dict[str, Any]]: ...


class Prepared:
    """Every row a batch may write, built before its transaction; ``*_owner[j]`` is the index
    of the change that row ``j`` belongs to (to leave out the deferred changes' rows)."""

    __slots__ = ("attempt_owner", "attempts", "claims", "event_owner", "history", "messages",
                 "projections", "steps")  # fmt: skip

    def __init__(self, changes: Sequence[Change], rows: Rows) -> None:
        projections: list[dict[str, Any]] = []
        claims: list[dict[str, Any] | None] = []
        steps: list[IdempotencyProgress | None] = []
        events: list[Event] = []
        event_owner: list[int] = []
        attempts: list[dict[str, Any]] = []
        attempt_owner: list[int] = []
        for i, change in enumerate(changes):
            projection = rows._projection_row(change)
            projections.append(projection)
            record = change.idempotency
            if record is None:
                claims.append(None)
            elif record.response is change.payment and change.expected_version == 0:
                claims.append(rows._claim_row(record, projection["data"]))  # encoded once
            else:
                claims.append(rows._claim_row(record))
            step, claim = change.progress, claims[-1]
            if step is not None and claim is not None and _same_key(step, claim):
                _advance_claim(claim, step)
                step = None
            steps.append(step)
            events.extend(change.events)
            event_owner.extend([i] * len(change.events))
            for attempt in rows._attempt_rows(change):
                attempts.append(attempt)
                attempt_owner.append(i)
        self.projections = projections
        self.claims = claims
        self.steps = steps
        self.history, self.messages = rows._event_rows(events) if events else ([], [])
        self.event_owner = event_owner
        self.attempts = attempts
        self.attempt_owner = attempt_owner


def decide(
    changes: Sequence[Change],
    current: dict[str, tuple[int, int]],
    taken: set[tuple[str, str]],
) -> tuple[set[int], dict[int, int]]:
    """The changes left to the per-change path, and each update's new fence.

    ``current``: the (locked) version and fence of the updated payments; ``taken``: the
    idempotency keys that exist. Versions and fences first, then the claims of the changes
    still standing. Both write paths (``write_batch``, ``sql_direct``) decide with it."""
    deferred: set[int] = set()
    fences: dict[int, int] = {}
    for i, change in enumerate(changes):
        if change.expected_version > 0:
            version, fence = current.get(change.payment.id, (0, 0))
            token = change.fencing_token
            if version != change.expected_version or (token is not None and token < fence):
                deferred.add(i)
                continue
            fences[i] = fence if token is None else max(fence, token)
        record = change.idempotency
        if record is not None and (record.scope, record.key) in taken:
            deferred.add(i)
    return deferred, fences


def _kept(rows: list[Any], owners: list[int], deferred: set[int]) -> list[Any]:
    if not deferred:
        return rows
    return [row for row, i in zip(rows, owners, strict=True) if i not in deferred]


class Kept(NamedTuple):
    """The rows of the changes a batch writes itself (the deferred ones left out). ``updated``:
    projection rows carrying their new ``fence`` and the ``expected`` version."""

    claims: list[dict[str, Any]]
    created: list[dict[str, Any]]
    updated: list[dict[str, Any]]
    steps: list[IdempotencyProgress]
    history: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    attempts: list[dict[str, Any]]


def kept(
    changes: Sequence[Change], prepared: Prepared, deferred: set[int], fences: dict[int, int]
) -> Kept:
    claims, created, updated, steps = [], [], [], []
    for i, change in enumerate(changes):
        if i in deferred:
            continue
        projection = prepared.projections[i]
        if change.expected_version == 0:
            created.append(projection)
        else:
            projection["fence"] = fences[i]
            projection["expected"] = change.expected_version
            updated.append(projection)
        claim = prepared.claims[i]
        if claim is not None:
            claims.append(claim)
        step = prepared.steps[i]
        if step is not None:
            steps.append(step)
    owner = prepared.event_owner
    return Kept(
        claims, created, updated, steps,
        _kept(prepared.history, owner, deferred), _kept(prepared.messages, owner, deferred),
        _kept(prepared.attempts, prepared.attempt_owner, deferred),
    )  # fmt: skip


def _same_key(step: IdempotencyProgress, claim: dict[str, Any]) -> bool:
    return bool(step.scope == claim["scope"] and step.key == claim["key"])


def _advance_claim(claim: dict[str, Any], step: IdempotencyProgress) -> None:
    """A change that claims a key and advances that same key (a keyed create and its first
    step in one commit): the advance is applied to the claim's row before it is written,
    under the guard the UPDATE would apply to it right after - in flight, this payment, at
    the step's point or before it. On PostgreSQL the claim and the advances are parts of one
    statement, and no part sees another's rows: an UPDATE would miss the claim."""
    earlier = RECOVERY_POINTS[: RECOVERY_POINTS.index(step.recovery_point) + 1]
    if (
        claim["state"] == IN_FLIGHT
        and claim["payment_id"] == step.payment_id
        and claim["recovery_point"] in earlier
    ):
        claim["recovery_point"] = step.recovery_point
        claim["state"] = step.state
        claim["locked_at"] = step.at if step.state == IN_FLIGHT else None


# The version guard stays even though the rows were checked (and are locked): belt and braces.
SQLITE_UPDATE = (
    "UPDATE payments SET version = ?, state = ?, data = ?, fence = ?, unsettled = ?,"
    " updated_at = ? WHERE id = ? AND version = ?"
)
# A key's recovery point moved forward (values: ``step_row``), guarded as ``advance_keys`` says.
SQLITE_ADVANCE = (
    "UPDATE idempotency_keys SET recovery_point = ?, state = ?, locked_at = ?"
    f" WHERE scope = ? AND key = ? AND payment_id = ? AND state = '{IN_FLIGHT}'"
    f" AND recovery_point IN ({', '.join('?' for _ in RECOVERY_POINTS)})"
)


def step_row(step: IdempotencyProgress) -> tuple[Any, ...]:
    """An advance's values: point, state, locked_at, scope, key, payment_id, then the points
    it may move from (this one and those before it, repeated to a fixed arity)."""
    earlier = RECOVERY_POINTS[: RECOVERY_POINTS.index(step.recovery_point) + 1]
    earlier = (earlier * len(RECOVERY_POINTS))[: len(RECOVERY_POINTS)]
    locked_at = step.at if step.state == IN_FLIGHT else None
    return (step.recovery_point, step.state, locked_at, step.scope, step.key, step.payment_id,
            *earlier)  # fmt: skip


async def write_batch(
    conn: AsyncConnection, changes: Sequence[Change], prepared: Prepared
) -> set[int]:
    """Write what can be decided here; return the indexes left to the per-change path.

    SQLite only, through SQLAlchemy's connection: PostgreSQL batches always run on the bare
    driver (``sql_direct``), and SQLite ones do too unless aiosqlite lacks the internals that
    path needs. The decision is :func:`decide`'s, on the same reads as the direct path's.
    Raises :class:`RedoAll` (after which the caller rolls back) when a write hit an integrity
    constraint.
    """
    # Read the current versions and fences, and which keys exist, and decide - before any
    # write, so a change that fails here leaves nothing behind (not even its claim). The
    # reads are sound: this transaction holds SQLite's write lock.
    ids = sorted({c.payment.id for c in changes if c.expected_version > 0})
    current: dict[str, tuple[int, int]] = {}
    if ids:
        query = sa.select(payments.c.id, payments.c.version, payments.c.fence)
        found = await conn.execute(query.where(payments.c.id.in_(ids)))
        current = {row.id: (row.version, row.fence) for row in found}
    wanted = sorted({(r.scope, r.key) for c in changes if (r := c.idempotency) is not None})
    taken: set[tuple[str, str]] = set()
    if wanted:
        sql, params = sqlite_keys_query(("scope", "key"), wanted)
        found_keys: Any = await conn.exec_driver_sql(sql, tuple(params))  # untyped rows
        taken = {(row[0], row[1]) for row in found_keys}
    deferred, fences = decide(changes, current, taken)
    rows = kept(changes, prepared, deferred, fences)
    # The direct path's order: claims, new payments, updates, history, outbox (seq order is
    # commit order), attempts, then the recovery points.
    await insert_many(conn, idempotency_keys, rows.claims, postgres=False)
    await insert_many(conn, payments, rows.created, postgres=False)
    if rows.updated:
        values = [
            (p["version"], p["state"], p["data"], p["fence"], _bind_sqlite(p["unsettled"]),
             _bind_sqlite(p["updated_at"]), p["id"], p["expected"])
            for p in rows.updated
        ]  # fmt: skip
        await conn.exec_driver_sql(SQLITE_UPDATE, values)
    await insert_many(conn, payment_events, rows.history, postgres=False)
    await insert_many(conn, outbox, rows.messages, postgres=False)
    upsert = ATTEMPT_UPSERT
    await insert_many(conn, payment_attempts, rows.attempts, postgres=False, upsert=upsert)
    if rows.steps:
        await advance_keys(conn, rows.steps, postgres=False, results=False)
    return deferred


# On a payment_attempts conflict: the attempt's latest view wins.
ATTEMPT_UPSERT = (
    ("payment_id", "attempt_no"),
    ("outcome", "gateway_reference", "updated_at"),
)


async def insert_many(
    conn: AsyncConnection,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    *,
    postgres: bool,
    upsert: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
) -> None:
    """One driver-level ``executemany`` of a plain INSERT (or upsert).

    SQLAlchemy's compiled multi-row inserts cost tens of microseconds per row in Python; the
    driver's executemany costs a few. The price is doing SQLAlchemy's one job here by hand:
    binding values as the column types would (UTC datetimes; SQLite's text dates and 0/1
    booleans). A unique-key violation raises :class:`RedoAll`.
    """
    if not rows:
        return
    columns = list(rows[0])
    names = ", ".join(f'"{name}"' for name in columns)
    if postgres:
        # One statement whatever the row count: a column of values per array parameter.
        arrays = ", ".join(f"${n}::{_pg_array(table, name)}" for n, name in enumerate(columns, 1))
        sql = f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({arrays})"
    else:
        marks = ", ".join("?" for _ in columns)
        sql = f"INSERT INTO {table.name} ({names}) VALUES ({marks})"
    if upsert is not None:
        keys, updated = upsert
        assignments = ", ".join(f'"{c}" = excluded."{c}"' for c in updated)
        sql += f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {assignments}"
    try:
        if postgres:
            params = tuple([_bind_postgres(row[name]) for row in rows] for name in columns)
            await conn.exec_driver_sql(sql, params)
        else:
            values = [tuple(_bind_sqlite(row[name]) for name in columns) for row in rows]
            await conn.exec_driver_sql(sql, values)
    except exc.IntegrityError:
        raise RedoAll from None


async def advance_keys(
    conn: AsyncConnection,
    steps: Sequence[IdempotencyProgress],
    *,
    postgres: bool,
    results: bool = True,
) -> list[bool]:
    """Move idempotency records forward, each guarded (in flight, this payment, at the new
    point or before it); True for those that moved. Driver-level statements: compiling one
    SQLAlchemy UPDATE per step cost more than the rest of a payment's writes."""
    rows = [step_row(step) for step in steps]
    points = len(RECOVERY_POINTS)
    if postgres:
        columns = [list(column) for column in zip(*rows, strict=True)]
        columns[2] = [_bind_postgres(value) for value in columns[2]]
        earlier_columns = ", ".join(f"${n}::text[]" for n in range(7, 7 + points))
        earlier_names = ", ".join(f"e{n}" for n in range(points))
        moved = await conn.exec_driver_sql(
            "UPDATE idempotency_keys AS k SET recovery_point = v.point, state = v.state,"
            " locked_at = v.locked_at FROM unnest($1::text[], $2::text[], $3::timestamptz[],"
            f" $4::text[], $5::text[], $6::text[], {earlier_columns})"
            f" AS v(point, state, locked_at, scope, key, payment_id, {earlier_names})"
            " WHERE k.scope = v.scope AND k.key = v.key AND k.payment_id = v.payment_id"
            f" AND k.state = '{IN_FLIGHT}' AND k.recovery_point IN ({earlier_names})"
            " RETURNING k.scope, k.key",
            tuple(columns),
        )
        done = {(row.scope, row.key) for row in moved}
        return [(step.scope, step.key) in done for step in steps]
    bound = [tuple(_bind_sqlite(v) for v in row) for row in rows]
    if not results:  # one executemany: which steps applied is not wanted (group commit)
        await conn.exec_driver_sql(SQLITE_ADVANCE, bound)
        return []
    return [(await conn.exec_driver_sql(SQLITE_ADVANCE, values)).rowcount == 1 for values in bound]


def _pg_array(table: sa.Table, column: str) -> str:
    """The PostgreSQL array type for ``unnest`` of one column's values."""
    kind = table.c[column].type
    if isinstance(kind, sa.TypeDecorator):
        kind = kind.impl_instance
    if isinstance(kind, sa.DateTime):
        return "timestamptz[]"
    if isinstance(kind, sa.Boolean):
        return "bool[]"
    if isinstance(kind, sa.BigInteger):
        return "int8[]"
    if isinstance(kind, sa.Integer):
        return "int4[]"
    return "text[]"


def _bind_postgres(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return value


def sqlite_time(value: datetime | None) -> str | None:
    """As SQLAlchemy's SQLite DATETIME stores it (``_UtcDateTime`` converts to UTC first):
    ``YYYY-MM-DD HH:MM:SS.ffffff``, which compares correctly as text."""
    if value is None:
        return None
    if value.tzinfo is not UTC:  # the clock's datetimes are UTC already: no conversion
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]  # without the "+00:00"


def _bind_sqlite(value: Any) -> Any:
    if isinstance(value, datetime):
        return sqlite_time(value)
    if isinstance(value, bool):
        return int(value)
    return value
