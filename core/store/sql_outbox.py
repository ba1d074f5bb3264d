"""The outbox relay's steps on the bare driver: claim, settle, settle-and-claim, next due.

:class:`~aegispay.store.sql.SqlStore` runs these instead of its SQLAlchemy statements (which
stay for settles with failures, and for an aiosqlite without the internals it needs): on
PostgreSQL each step is one or two statements on the asyncpg connection, id lists travelling
as one JSON text parameter; on SQLite each step is one transaction in one call in aiosqlite's
thread. The semantics are those of :mod:`aegispay.outbox` (per-payment leases, ``sequence``
order, no cursor). Where aiosqlite lacks that path, the claim and the event reads run these
same SQLite statements through SQLAlchemy's connection (:func:`through_sqlalchemy`); settles
with failures keep SQLAlchemy statements of their own in ``sql.py``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import asyncpg  # type: ignore[import-untyped]
import orjson
import sqlalchemy as sa

from ..outbox import OutboxMessage, OutboxSettled
from .sql_batch import sqlite_time

_T = TypeVar("_T")


def _oldest(sqlite: bool) -> str:
    """The claim's candidates: the payments of the oldest ``limit`` pending rows whose payment
    is neither leased by another owner nor backing off.

    The claim (``_PG_CLAIM``, ``_SQLITE_CLAIM``) leases them to ``owner``: a lease row that is
    expired (or ``owner``'s own) is taken over; one that another relay took meanwhile stays
    its (ON CONFLICT ... WHERE), and the payment is not returned. Rows are leased in payment
    id order, so concurrent claims never wait on each other in a cycle.

    Backing off: a message of the payment waits for its next attempt. The condition names
    ix_outbox_backoff's predicate (``next_attempt_at IS NOT NULL AND published_at IS NULL``),
    so the probe reads that index - empty while sinks are healthy - and never the pending
    rows. (Migration 0006. Before it, an aggregate over each row's payment; and before that,
    a pending test that let PostgreSQL AND in a bitmap scan of ix_outbox_pending - every
    pending row, once per row looked at: O(n^2).) The order is ix_outbox_pending's own
    (= ``seq`` order here): walked, not sorted, and never the primary key past every
    published row."""
    if sqlite:
        owner, now, limit, parked = ":owner", ":now", ":limit", "IS 0"
    else:
        owner, now, limit, parked = "$1::text", "$2::timestamptz", "$4::int", "IS false"
    return (
        f"SELECT o.payment_id FROM outbox AS o WHERE o.published_at IS NULL AND o.parked {parked}"
        " AND NOT EXISTS (SELECT 1 FROM outbox_leases AS l WHERE l.payment_id = o.payment_id"
        f" AND l.owner != {owner} AND l.expires_at > {now})"
        " AND NOT EXISTS (SELECT 1 FROM outbox AS b WHERE b.payment_id = o.payment_id"
        " AND b.next_attempt_at IS NOT NULL AND b.published_at IS NULL"
        f" AND b.parked {parked} AND b.next_attempt_at > {now})"
        f" ORDER BY o.published_at, o.parked, o.seq LIMIT {limit}"
    )


# PostgreSQL: the claim, then the fetch, each a statement of its own (each its own snapshot
# and commit: two round trips, where SQLAlchemy's transaction made four). Not one statement
# with the claim in a CTE: its fetch would read the snapshot taken before the INSERT waited
# for a lease row another relay held, and so deliver again - after later ones - messages that
# relay published meanwhile (several relays sharing a backlog did that within seconds).
_PG_CLAIM = f"""
INSERT INTO outbox_leases (payment_id, owner, expires_at)
SELECT oldest.payment_id, $1::text, $3::timestamptz FROM ({_oldest(False)}) AS oldest
GROUP BY oldest.payment_id ORDER BY oldest.payment_id
ON CONFLICT (payment_id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE outbox_leases.expires_at <= $2::timestamptz OR outbox_leases.owner = $1::text
RETURNING payment_id
"""
# A claimed payment's rows are found through ix_outbox_payment alone: ``OFFSET 0`` keeps the
# pending test out of that scan (given it, PostgreSQL - which cannot estimate how many
# payments the array holds - ANDed in a bitmap of ix_outbox_pending: every pending row, once
# per payment). The rows come out grouped by payment (ordered by each payment's oldest row),
# in ``sequence`` order within one: the order ``outbox_claim`` returns.
_PG_FETCH = """
SELECT message_id, payment_id, sequence, attempts FROM (
    SELECT m.seq, m.message_id, m.payment_id, m.sequence, m.attempts
    FROM json_array_elements_text($1::json) AS claimed(payment_id) CROSS JOIN LATERAL (
        SELECT o.seq, o.message_id, o.payment_id, o.sequence, o.attempts, o.published_at,
            o.parked
        FROM outbox AS o WHERE o.payment_id = claimed.payment_id OFFSET 0
    ) AS m
    WHERE m.published_at IS NULL AND m.parked IS false
    ORDER BY m.seq LIMIT $2::int
) AS batch ORDER BY min(seq) OVER (PARTITION BY payment_id), sequence
"""
# Settle without failures, one statement: lock our unexpired leases (in payment order, as
# claims take them), mark those payments' delivered rows published, drop the leases; returns
# the count published and the payments whose lease we no longer held. A relay taking over
# one of these leases waits for this statement, then finds the rows published. Each row is
# found through the message id's unique index, its payment checked against the locked
# leases first (matched with ``= ANY`` as a filter instead, PostgreSQL scanned the whole array
# per row, or walked the pending index). Id lists travel as JSON text (``_json_list``):
# asyncpg encodes an array parameter element by element in Python.
_PG_SETTLE = """
WITH delivered AS (
    SELECT * FROM ROWS FROM (
        json_array_elements_text($3::json), json_array_elements_text($4::json)
    ) AS m(message_id, payment_id)
), held AS (
    SELECT l.payment_id FROM (SELECT DISTINCT payment_id FROM delivered) AS d
    JOIN outbox_leases AS l ON l.payment_id = d.payment_id
    WHERE l.owner = $1::text AND l.expires_at > $2::timestamptz
    ORDER BY l.payment_id FOR UPDATE OF l
), published AS (
    UPDATE outbox SET published_at = $2::timestamptz
    FROM delivered JOIN held ON held.payment_id = delivered.payment_id
    WHERE outbox.message_id = delivered.message_id
    AND outbox.payment_id = delivered.payment_id
    AND outbox.published_at IS NULL AND outbox.parked IS false
    RETURNING 1
), released AS (
    DELETE FROM outbox_leases AS l USING held WHERE l.payment_id = held.payment_id
)
SELECT (SELECT count(*) FROM published),
    ARRAY(SELECT payment_id FROM delivered EXCEPT SELECT payment_id FROM held)
"""
_PG_NEXT_DUE = """
SELECT (SELECT min(next_attempt_at) FROM outbox WHERE published_at IS NULL
        AND parked IS false AND next_attempt_at > $2::timestamptz),
    (SELECT min(expires_at) FROM outbox_leases
        WHERE owner != $1::text AND expires_at > $2::timestamptz)
"""
# The JSON of events this process did not commit itself (outbox rows refer to their event).
_PG_EVENT_DATA = (
    "SELECT event_id, data FROM payment_events"
    " WHERE event_id IN (SELECT json_array_elements_text($1::json))"
)


async def _pg_claim(db: asyncpg.Connection, params: dict[str, Any]) -> list[Any]:
    limit = params["limit"]
    claimed = await db.fetch(
        _PG_CLAIM, params["owner"], params["now"], params["lease_until"], limit
    )
    if not claimed:
        return []
    return list(await db.fetch(_PG_FETCH, _json_list([row[0] for row in claimed]), limit))


async def _pg_settle(db: asyncpg.Connection, params: dict[str, Any]) -> tuple[int, list[str]]:
    messages, payments = _json_list(params["messages"]), _json_list(params["message_payments"])
    published, lost = await db.fetchrow(
        _PG_SETTLE, params["owner"], params["now"], messages, payments
    )
    return published, lost


async def _pg_settle_and_claim(
    db: asyncpg.Connection, params: dict[str, Any]
) -> tuple[tuple[int, list[str]], list[Any]]:
    return await _pg_settle(db, params), await _pg_claim(db, params)


async def _pg_next_due(db: asyncpg.Connection, params: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(await db.fetchrow(_PG_NEXT_DUE, params["owner"], params["after"]))


async def _pg_event_data(db: asyncpg.Connection, params: dict[str, Any]) -> list[Any]:
    return list(await db.fetch(_PG_EVENT_DATA, _json_list(params["messages"])))


# SQLite: each step is one transaction in aiosqlite's thread (one hand-off). Id lists travel
# as one JSON text (``json_each``): the statement text stays the same whatever the count.
# A unary ``+`` keeps a pending test from choosing ix_outbox_pending (every pending row,
# with a backlog) over the lookups by id that the lists make.
_SQLITE_CLAIM = f"""
INSERT INTO outbox_leases (payment_id, owner, expires_at)
SELECT oldest.payment_id, :owner, :lease_until FROM ({_oldest(True)}) AS oldest
WHERE 1 GROUP BY oldest.payment_id ORDER BY oldest.payment_id
ON CONFLICT (payment_id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE outbox_leases.expires_at <= :now OR outbox_leases.owner = :owner
RETURNING payment_id
"""
_SQLITE_FETCH = """
SELECT message_id, payment_id, sequence, attempts FROM (
    SELECT seq, message_id, payment_id, sequence, attempts FROM outbox
    WHERE payment_id IN (SELECT value FROM json_each(:payments))
    AND +published_at IS NULL AND +parked IS 0
    ORDER BY seq LIMIT :limit
) ORDER BY min(seq) OVER (PARTITION BY payment_id), sequence
"""
_SQLITE_PUBLISH = """
UPDATE outbox SET published_at = :now
WHERE message_id IN (SELECT value FROM json_each(:messages))
AND +published_at IS NULL AND +parked IS 0
AND EXISTS (SELECT 1 FROM outbox_leases AS l WHERE l.payment_id = outbox.payment_id
    AND l.owner = :owner AND l.expires_at > :now)
"""
_SQLITE_RELEASE = """
DELETE FROM outbox_leases WHERE payment_id IN (SELECT value FROM json_each(:payments))
AND owner = :owner AND expires_at > :now RETURNING payment_id
"""
_SQLITE_NEXT_DUE = """
SELECT (SELECT min(next_attempt_at) FROM outbox WHERE published_at IS NULL
        AND parked IS 0 AND next_attempt_at > :after),
    (SELECT min(expires_at) FROM outbox_leases WHERE owner != :owner AND expires_at > :after)
"""
_SQLITE_EVENT_DATA = (
    "SELECT event_id, data FROM payment_events WHERE event_id IN (SELECT value FROM json_each(?))"
)


def _settle_params(owner: str, now: datetime, delivered: Sequence[OutboxMessage]) -> dict[str, Any]:
    return {
        "owner": owner,
        "now": now,
        "payments": list(dict.fromkeys([m.payment_id for m in delivered])),
        "messages": [m.message_id for m in delivered],
        "message_payments": [m.payment_id for m in delivered],
    }


def _settled(
    delivered: Sequence[OutboxMessage], published: int, lost: Sequence[str]
) -> OutboxSettled:
    """A direct settle's result: ``lost``, the payments whose lease was no longer ours."""
    refused = 0
    if lost:
        gone = set(lost)
        refused = sum(1 for m in delivered if m.payment_id in gone)
    return OutboxSettled(published=published, refused=refused)


def _json_list(values: Sequence[str]) -> str:
    return orjson.dumps(list(values)).decode()


class SqliteExecutor(Protocol):
    """What the SQLite steps call: ``sqlite3.Connection.execute``'s shape."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...


def through_sqlalchemy(connection: sa.Connection) -> SqliteExecutor:
    """A SQLAlchemy (sync, in ``run_sync``) connection as a SQLite step's executor: the
    fallback where aiosqlite lacks the direct path runs the same statements through it,
    in SQLAlchemy's transaction."""
    return _ThroughSqlAlchemy(connection)


class _ThroughSqlAlchemy:
    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self._connection.exec_driver_sql(sql, parameters)


def _sqlite_write(db: sqlite3.Connection, step: Callable[[], _T]) -> _T:
    """``step`` in one write transaction (the write lock taken up front, as every writer)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = step()
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return result


def _sqlite_claim(db: sqlite3.Connection, params: dict[str, Any]) -> list[Any]:
    return _sqlite_write(db, lambda: _sqlite_claim_step(db, params))


def _sqlite_settle(db: sqlite3.Connection, params: dict[str, Any]) -> tuple[int, list[str]]:
    return _sqlite_write(db, lambda: _sqlite_settle_step(db, params))


def _sqlite_settle_and_claim(
    db: sqlite3.Connection, params: dict[str, Any]
) -> tuple[tuple[int, list[str]], list[Any]]:
    """Both in one write transaction: the relay waits for the write lock once, not twice,
    between two batches (under load, writers hold it most of the time)."""
    return _sqlite_write(
        db, lambda: (_sqlite_settle_step(db, params), _sqlite_claim_step(db, params))
    )


def _sqlite_claim_step(db: SqliteExecutor, params: dict[str, Any]) -> list[Any]:
    values = {
        "owner": params["owner"],
        "now": sqlite_time(params["now"]),
        "lease_until": sqlite_time(params["lease_until"]),
        "limit": params["limit"],
    }
    claimed = [row[0] for row in db.execute(_SQLITE_CLAIM, values).fetchall()]
    if not claimed:
        return []
    fetch = {"payments": _json_list(claimed), "limit": params["limit"]}
    rows: list[Any] = db.execute(_SQLITE_FETCH, fetch).fetchall()
    return rows


def _sqlite_settle_step(db: sqlite3.Connection, params: dict[str, Any]) -> tuple[int, list[str]]:
    payments = params["payments"]
    values = {
        "owner": params["owner"],
        "now": sqlite_time(params["now"]),
        "payments": _json_list(payments),
        "messages": _json_list(params["messages"]),
    }
    # Marked while the leases that guard it are still there, then the leases dropped.
    published = db.execute(_SQLITE_PUBLISH, values).rowcount
    held = {row[0] for row in db.execute(_SQLITE_RELEASE, values).fetchall()}
    return published, [p for p in payments if p not in held]


def _sqlite_next_due(db: sqlite3.Connection, params: dict[str, Any]) -> tuple[Any, ...]:
    values = {"owner": params["owner"], "after": sqlite_time(params["after"])}
    row = db.execute(_SQLITE_NEXT_DUE, values).fetchone()
    return tuple(_sqlite_datetime(value) for value in row)


def _sqlite_datetime(value: str | None) -> datetime | None:
    """A stored DATETIME (UTC, no zone: see ``_UtcDateTime``) as an aware datetime."""
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def _sqlite_event_data(db: SqliteExecutor, params: dict[str, Any]) -> list[Any]:
    rows: list[Any] = db.execute(_SQLITE_EVENT_DATA, (_json_list(params["messages"]),)).fetchall()
    return rows
