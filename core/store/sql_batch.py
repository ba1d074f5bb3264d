"""The batched write path: many payments' changes in one transaction, decided per change.

:class:`~aegispay.store.group_commit.Coalescer` hands :func:`write_batch` the changes that
queued while the previous transaction ran (distinct payments, distinct idempotency keys). It
writes them with a handful of multi-row statements and reports which changes it could not
settle itself; the store runs those through the per-change path, which raises the precise
error (IdempotencyClaimed, ConcurrencyConflict, FencingTokenRejected) or, for an expired
idempotency key, replaces it. So a conflict in one payment never fails another, and the rare
cases keep one implementation.

Why the checks are sound without per-row guards: the projection rows a batch updates are read
``FOR UPDATE`` on PostgreSQL (held to commit), and a SQLite writer holds the database's write
lock from ``BEGIN IMMEDIATE``; the version and fencing checks are therefore made on rows nobody
else can change before this transaction ends. The UPDATE keeps its version guard and the
history's ``(payment_id, version)`` key backs it: if anything slipped through, the insert of
the events fails and the whole batch is redone change by change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ..events import Event
from .base import Change, IdempotencyRecord
from .sql_schema import idempotency_keys, outbox, payment_attempts, payment_events, payments


class RedoAll(Exception):
    """Roll the batch back and run every change through the per-change path."""


class Rows(Protocol):
    """The store's row builders (shared with the per-change path)."""

    def _claim_row(self, record: IdempotencyRecord) -> dict[str, Any]: ...

    def _projection_row(self, change: Change) -> dict[str, Any]: ...

    def _event_rows(
        self, events: Sequence[Event]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]: ...

    def _attempt_rows(self, change: Change) -> list[dict[str, Any]]: ...


_UPDATE = (
    payments.update()
    .where(payments.c.id == sa.bindparam("b_id"))
    .where(payments.c.version == sa.bindparam("b_expected"))
    .values(
        version=sa.bindparam("b_version"),
        state=sa.bindparam("b_state"),
        data=sa.bindparam("b_data"),
        fence=sa.bindparam("b_fence"),
    )
)


async def write_batch(
    conn: AsyncConnection, changes: Sequence[Change], rows: Rows, *, postgres: bool
) -> set[int]:
    """Write what can be decided here; return the indexes left to the per-change path.

    Raises :class:`RedoAll` (after which the caller rolls back) when the batch cannot be
    trusted as a whole.
    """
    insert: Callable[[sa.Table], Any] = postgresql.insert if postgres else sqlite.insert
    deferred: set[int] = set()
    update_rows: list[tuple[int, int]] = []  # (change index, its new fence)

    # 1. Updates: read the current versions and fences (locked) and decide, before any
    # write, so a change that fails here leaves nothing behind (not even its claim).
    updates = [i for i, c in enumerate(changes) if c.expected_version > 0]
    if updates:
        ids = sorted({changes[i].payment.id for i in updates})  # a fixed lock order
        query = (
            sa.select(payments.c.id, payments.c.version, payments.c.fence)
            .where(payments.c.id.in_(ids))
            .order_by(payments.c.id)
        )
        if postgres:
            query = query.with_for_update()
        current = {row.id: (row.version, row.fence) for row in await conn.execute(query)}
        for i in updates:
            change = changes[i]
            version, fence = current.get(change.payment.id, (0, 0))
            token = change.fencing_token
            if version != change.expected_version or (token is not None and token < fence):
                deferred.add(i)  # the per-change path names the conflict
                continue
            update_rows.append((i, fence if token is None else max(fence, token)))

    # 2. Idempotency claims: a taken (or expired) key goes to the per-change path.
    claims = [
        (i, c.idempotency)
        for i, c in enumerate(changes)
        if c.idempotency is not None and i not in deferred
    ]
    if claims:
        keys = idempotency_keys.c
        statement = (
            insert(idempotency_keys)
            .on_conflict_do_nothing(index_elements=[keys.scope, keys.key])
            .returning(keys.scope, keys.key)
        )
        claim_rows = [rows._claim_row(record) for _, record in claims if record is not None]
        won = {(row.scope, row.key) for row in await conn.execute(statement, claim_rows)}
        for i, record in claims:
            assert record is not None
            if (record.scope, record.key) not in won:
                deferred.add(i)

    # 3. New payments. A taken id is next to impossible (random ids); its claim, inserted
    # above, would have to be undone, so the whole batch is redone instead.
    new = [i for i, c in enumerate(changes) if c.expected_version == 0 and i not in deferred]
    if new:
        statement = (
            insert(payments)
            .on_conflict_do_nothing(index_elements=[payments.c.id])
            .returning(payments.c.id)
        )
        projections = [rows._projection_row(changes[i]) for i in new]
        created = {row.id for row in await conn.execute(statement, projections)}
        if len(created) != len(new):
            raise RedoAll

    # 4. The updates decided in 1 whose claims (if any) were won in 2.
    update_values = []
    for i, fence in update_rows:
        if i in deferred:
            continue
        change = changes[i]
        row = rows._projection_row(change)
        update_values.append(
            {
                "b_id": change.payment.id,
                "b_expected": change.expected_version,
                "b_version": row["version"],
                "b_state": row["state"],
                "b_data": row["data"],
                "b_fence": fence,
            }
        )
    if update_values:
        await conn.execute(_UPDATE, update_values)

    # 5. The history and the outbox of every change written above, and its attempts.
    written = [c for i, c in enumerate(changes) if i not in deferred]
    events = [event for change in written for event in change.events]
    if events:
        history, messages = rows._event_rows(events)
        try:
            await conn.execute(payment_events.insert(), history)
        except exc.IntegrityError:
            raise RedoAll from None
        # Inserted in commit order within the batch: seq order is commit order.
        await conn.execute(outbox.insert(), messages)
    attempts = [row for change in written for row in rows._attempt_rows(change)]
    if attempts:
        await conn.execute(upsert_attempts(insert), attempts)
    return deferred


def upsert_attempts(insert: Callable[[sa.Table], Any]) -> Any:
    """INSERT ... ON CONFLICT (payment_id, attempt_no) DO UPDATE: the attempt's latest view."""
    statement = insert(payment_attempts)
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[payment_attempts.c.payment_id, payment_attempts.c.attempt_no],
        set_={
            "outcome": excluded.outcome,
            "gateway_reference": excluded.gateway_reference,
            "updated_at": excluded.updated_at,
        },
    )
