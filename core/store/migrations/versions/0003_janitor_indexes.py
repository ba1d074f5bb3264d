"""Indexes for the janitor: what waits on a gateway, and which keys were left in flight.

* ``payments.unsettled`` / ``payments.updated_at``, with the partial index
  ``ix_payments_unsettled`` (only rows waiting on a gateway): the periodic reconcile used to
  decode every projection whose JSON mentioned a pending operation; now an idle pass is one
  index lookup whatever the number of settled payments.
* ``ix_idempotency_in_flight``: the keys a crash left in flight, least recently touched first.

Existing rows are filled in from their stored projections (``pending`` and ``updated_at`` in
the JSON, ``state`` in its column), in chunks, so an upgrade of a large table does not hold
every row in memory.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

# The states in which a payment waits on a gateway (aegispay.store.base.UNSETTLED_STATES, as
# of this revision: a migration must not change meaning when the code later does).
_WAITING_STATES = ("processing", "requires_action")
_CHUNK = 1000


def upgrade() -> None:
    with op.batch_alter_table("payments") as table:
        table.add_column(
            sa.Column("unsettled", sa.Boolean, nullable=False, server_default=sa.false())
        )
        table.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    _backfill()
    op.create_index(
        "ix_payments_unsettled",
        "payments",
        ["updated_at"],
        postgresql_where=sa.text("unsettled"),
        sqlite_where=sa.text("unsettled"),
    )
    op.create_index(
        "ix_idempotency_in_flight",
        "idempotency_keys",
        ["locked_at"],
        postgresql_where=sa.text("state = 'in_flight'"),
        sqlite_where=sa.text("state = 'in_flight'"),
    )


def _backfill() -> None:
    conn = op.get_bind()
    payments = sa.table(
        "payments",
        sa.column("id", sa.String),
        sa.column("state", sa.String),
        sa.column("data", sa.Text),
        sa.column("unsettled", sa.Boolean),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    update = (
        payments.update()
        .where(payments.c.id == sa.bindparam("row_id"))
        .values(unsettled=sa.bindparam("flag"), updated_at=sa.bindparam("at"))
    )
    last = ""
    while True:  # keyset pagination by id: each chunk is one indexed range read
        rows = conn.execute(
            sa.select(payments.c.id, payments.c.state, payments.c.data)
            .where(payments.c.id > last)
            .order_by(payments.c.id)
            .limit(_CHUNK)
        ).all()
        if not rows:
            return
        values = []
        for row in rows:
            projection = json.loads(row.data)
            waiting = row.state in _WAITING_STATES or projection.get("pending") is not None
            at = datetime.fromisoformat(projection["updated_at"]).astimezone(UTC)
            values.append({"row_id": row.id, "flag": waiting, "at": at})
        conn.execute(update, values)
        last = rows[-1].id


def downgrade() -> None:
    op.drop_index("ix_idempotency_in_flight", table_name="idempotency_keys")
    op.drop_index("ix_payments_unsettled", table_name="payments")
    with op.batch_alter_table("payments") as table:
        table.drop_column("updated_at")
        table.drop_column("unsettled")
