"""``ix_idempotency_expiry``: idempotency records by expiry, for ``prune``.

The janitor (and ``aegispay db prune``) deletes completed records whose expiry has passed,
oldest first, a batch at a time. Without an index on ``expires_at`` each batch scanned the
whole table; with it a batch is a range of the index. It costs one index entry per record.

On a large PostgreSQL table ``CREATE INDEX`` blocks writes to the table while it builds: run
this upgrade when traffic is low (or build the same index ``CONCURRENTLY`` by hand first).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_idempotency_expiry", "idempotency_keys", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_expiry", table_name="idempotency_keys")
