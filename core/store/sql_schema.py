"""The SQL store's tables (SQLAlchemy Core), shared by the per-change and the batched write
paths. The Alembic migrations in :mod:`aegispay.store.migrations` create and upgrade them; a test
compares the migrated database with this metadata, so the two cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa


class _UtcDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware in, timezone-aware out: SQLite keeps no zone, so store and read UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


metadata = sa.MetaData()
payments = sa.Table(
    "payments",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("fence", sa.BigInteger, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    # Waiting on a gateway (``store.base.is_unsettled``) and since when: the janitor's
    # question, answered from a partial index instead of decoding every projection.
    sa.Column("unsettled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("updated_at", _UtcDateTime, nullable=True),
)
sa.Index(
    "ix_payments_unsettled",
    payments.c.updated_at,
    postgresql_where=payments.c.unsettled,
    sqlite_where=payments.c.unsettled,
)
payment_events = sa.Table(
    "payment_events",
    metadata,
    sa.Column("payment_id", sa.String(255), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("event_id", sa.String(300), nullable=False, unique=True),
    sa.Column("type", sa.String(100), nullable=False),
    sa.Column("occurred_at", _UtcDateTime, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
)
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("message_id", sa.String(300), nullable=False, unique=True),
    sa.Column("payment_id", sa.String(255), nullable=False),
    sa.Column("sequence", sa.Integer, nullable=False),
    # No copy of the event's JSON (migration 0005): message_id is the event's id.
    sa.Column("published_at", _UtcDateTime, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("parked", sa.Boolean, nullable=False, default=False),
    sa.Column("next_attempt_at", _UtcDateTime, nullable=True),
)
# The relay's query: unpublished, unparked, by seq. Partial (migration 0004): a published row
# leaves it, so marking a message published adds no entry and the index is the backlog's size.
sa.Index(
    "ix_outbox_pending",
    outbox.c.published_at,
    outbox.c.parked,
    outbox.c.seq,
    postgresql_where=outbox.c.published_at.is_(None),
    sqlite_where=outbox.c.published_at.is_(None),
)
sa.Index("ix_outbox_payment", outbox.c.payment_id, outbox.c.sequence)
# The payments whose delivery is backing off (migration 0006): the claim skips them by probing
# this, which holds no row at all while the sinks are healthy.
_WAITING = sa.and_(outbox.c.next_attempt_at.is_not(None), outbox.c.published_at.is_(None))
sa.Index(
    "ix_outbox_backoff",
    outbox.c.payment_id,
    postgresql_where=_WAITING,
    sqlite_where=_WAITING,
)
# A relay's lease on one payment's queue: several relays, per-payment order.
outbox_leases = sa.Table(
    "outbox_leases",
    metadata,
    sa.Column("payment_id", sa.String(255), primary_key=True),
    sa.Column("owner", sa.String(255), nullable=False),
    sa.Column("expires_at", _UtcDateTime, nullable=False),
)
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("scope", sa.String(255), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(255), nullable=False),
    sa.Column("payment_id", sa.String(255), nullable=False),
    sa.Column("response", sa.Text, nullable=False),
    sa.Column("created_at", _UtcDateTime, nullable=False),
    sa.Column("expires_at", _UtcDateTime, nullable=False),
    sa.Column("state", sa.String(32), nullable=False, server_default="completed"),
    sa.Column("recovery_point", sa.String(64), nullable=False, server_default="created"),
    sa.Column("locked_at", _UtcDateTime, nullable=True),
)
# Expired records, oldest first: what ``prune`` deletes (migration 0007).
sa.Index("ix_idempotency_expiry", idempotency_keys.c.expires_at)
# Keys left in flight (the janitor resumes them), least recently touched first.
sa.Index(
    "ix_idempotency_in_flight",
    idempotency_keys.c.locked_at,
    postgresql_where=idempotency_keys.c.state == "in_flight",
    sqlite_where=idempotency_keys.c.state == "in_flight",
)
payment_attempts = sa.Table(
    "payment_attempts",
    metadata,
    sa.Column("payment_id", sa.String(255), primary_key=True),
    sa.Column("attempt_no", sa.Integer, primary_key=True),
    sa.Column("gateway", sa.String(100), nullable=False),
    sa.Column("idempotency_key", sa.String(300), nullable=False, unique=True),
    sa.Column("outcome", sa.String(32), nullable=True),
    sa.Column("gateway_reference", sa.String(255), nullable=True),
    sa.Column("updated_at", _UtcDateTime, nullable=False),
)
sa.Index(
    "ix_payment_attempts_reference",
    payment_attempts.c.gateway,
    payment_attempts.c.gateway_reference,
)
