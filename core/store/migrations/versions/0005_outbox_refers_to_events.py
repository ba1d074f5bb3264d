"""Outbox rows refer to their event instead of carrying a copy of its JSON.

Every outbox row is one event's message (``message_id`` is the event's id, unique in
``payment_events``), and carried the event's JSON a second time. That doubled the bytes each
state change wrote, and every update the relay makes to a row (its lease fetch, marking it
published) read or rewrote the copy too. The relay now takes the event from the events this
process committed (in memory) and otherwise reads ``payment_events.data`` by event id.

Before dropping the column the upgrade checks that every outbox row's event exists: one that
did not would lose its message. Downgrade puts the copies back from ``payment_events``.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from aegispay.errors import StoreError
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_ORPHANS = sa.text(
    "SELECT o.message_id FROM outbox AS o WHERE NOT EXISTS"
    " (SELECT 1 FROM payment_events AS e WHERE e.event_id = o.message_id) LIMIT 5"
)
_PENDING = sa.text("published_at IS NULL")


def upgrade() -> None:
    orphans = [row[0] for row in op.get_bind().execute(_ORPHANS)]
    if orphans:
        raise StoreError(
            "migration 0005: outbox messages without their event in payment_events "
            f"(first: {', '.join(orphans)}); their JSON would be lost - left unchanged"
        )
    if _sqlite_without_drop_column():
        _rebuild_outbox(drop=True)
        return
    op.drop_column("outbox", "data")  # native on PostgreSQL and SQLite >= 3.35: no rebuild


def downgrade() -> None:
    op.add_column("outbox", sa.Column("data", sa.Text, nullable=True))
    op.execute(
        "UPDATE outbox SET data = (SELECT e.data FROM payment_events AS e"
        " WHERE e.event_id = outbox.message_id)"
    )
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_outbox(drop=False)
    else:
        op.alter_column("outbox", "data", existing_type=sa.Text, nullable=False)


def _sqlite_without_drop_column() -> bool:
    # The SQLite library Python's sqlite3 (which aiosqlite wraps) is linked against.
    return op.get_bind().dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 35)


def _rebuild_outbox(*, drop: bool) -> None:
    """SQLite's way to drop a column (before 3.35) or make one NOT NULL: copy the table.
    The copy keeps the columns and plain indexes; ``ix_outbox_pending`` is made again after,
    as 0004 made it, rather than trusting reflection with its ``WHERE``."""
    with op.batch_alter_table("outbox", recreate="always") as outbox:
        if drop:
            outbox.drop_column("data")
        else:
            outbox.alter_column("data", existing_type=sa.Text, nullable=False)
    op.execute("DROP INDEX IF EXISTS ix_outbox_pending")
    op.create_index(
        "ix_outbox_pending",
        "outbox",
        ["published_at", "parked", "seq"],
        postgresql_where=_PENDING,
        sqlite_where=_PENDING,
    )
