"""Alembic revisions, oldest first (``0001_initial`` creates the SQL store's tables)."""
