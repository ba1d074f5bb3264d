"""``ix_outbox_pending`` holds only what waits to be published.

The relay marks every message published. With ``published_at`` a key of a full index, each of
those updates also added an entry to the index for a row the relay never looks for again, and
the index grew with the whole history. As a partial index (``WHERE published_at IS NULL``) with
the same columns, the relay's queries - all of which ask for unpublished rows - use it as
before, a published row leaves it, and it stays as small as the backlog. Measured on
PostgreSQL + Redis, 10,000 payments: the relay's settle 15.4 -> 12.4 ms and its lease claim
6.6 -> 4.9 ms of server time per batch.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

_COLUMNS = ["published_at", "parked", "seq"]
_PENDING = sa.text("published_at IS NULL")


def upgrade() -> None:
    # IF EXISTS: a database adopted from before migrations (stamped 0001) may lack it.
    op.execute("DROP INDEX IF EXISTS ix_outbox_pending")
    op.create_index(
        "ix_outbox_pending",
        "outbox",
        _COLUMNS,
        postgresql_where=_PENDING,
        sqlite_where=_PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_pending", table_name="outbox")
    op.create_index("ix_outbox_pending", "outbox", _COLUMNS)
