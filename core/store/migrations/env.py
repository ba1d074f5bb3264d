"""Alembic environment: online only, on the connection the SQL store provides.

:meth:`aegispay.store.sql.SqlStore.upgrade_schema` calls ``AsyncConnection.run_sync`` and puts
the synchronous connection (and the PostgreSQL ``schema``, or ``None``) into
``config.attributes``; the migrations then run inside the store's own transaction.
"""

from __future__ import annotations

from aegispay.store.sql import metadata
from alembic import context

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "AegisPay migrations run through `aegispay db upgrade` (SqlStore.upgrade_schema), "
        "which provides the database connection"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table_schema=config.attributes.get("schema"),
)
with context.begin_transaction():
    context.run_migrations()
