"""Per-payment outbox delivery, idempotency recovery points, and the attempts table.

* ``outbox.next_attempt_at``: a failing message waits (backoff) without blocking other payments.
* ``outbox_leases``: a relay leases a payment's queue, so several relays keep per-payment order.
* ``idempotency_keys.state`` / ``recovery_point`` / ``locked_at``: where a keyed request got to,
  so one left in flight by a crash is resumed from there.
* ``payment_attempts``: one row per gateway attempt, queryable by gateway idempotency key and by
  the gateway's own reference (webhooks name payments that way).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as outbox:
        outbox.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_outbox_payment", "outbox", ["payment_id", "sequence"])
    op.create_table(
        "outbox_leases",
        sa.Column("payment_id", sa.String(255), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("idempotency_keys") as keys:
        keys.add_column(
            sa.Column("state", sa.String(32), nullable=False, server_default="completed")
        )
        keys.add_column(
            sa.Column("recovery_point", sa.String(64), nullable=False, server_default="created")
        )
        keys.add_column(sa.Column("locked_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "payment_attempts",
        sa.Column("payment_id", sa.String(255), primary_key=True),
        sa.Column("attempt_no", sa.Integer, primary_key=True),
        sa.Column("gateway", sa.String(100), nullable=False),
        sa.Column("idempotency_key", sa.String(300), nullable=False, unique=True),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("gateway_reference", sa.String(255), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_payment_attempts_reference", "payment_attempts", ["gateway", "gateway_reference"]
    )


def downgrade() -> None:
    op.drop_index("ix_payment_attempts_reference", table_name="payment_attempts")
    op.drop_table("payment_attempts")
    with op.batch_alter_table("idempotency_keys") as keys:
        keys.drop_column("locked_at")
        keys.drop_column("recovery_point")
        keys.drop_column("state")
    op.drop_table("outbox_leases")
    op.drop_index("ix_outbox_payment", table_name="outbox")
    with op.batch_alter_table("outbox") as outbox:
        outbox.drop_column("next_attempt_at")
