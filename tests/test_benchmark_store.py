"""``aegispay bench --store``'s baselines: they must write what the engine writes for a payment,
or their ratio to the full path means nothing."""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from aegispay import Money, PaymentRequest
from aegispay.benchmark_store import (
    _sqlite_baseline,
    pgbench_baseline,
    pgbench_script,
    sqlite_batched_floor,
)
from aegispay.store.sql import SqlStore
from aegispay.testing import make_test_service

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite and asyncpg are asyncio libraries


_TABLES = ("payments", "payment_events", "outbox", "idempotency_keys", "payment_attempts")


def _shape(db: Path) -> dict[str, Any]:
    """Rows per table, and the state each row of a paid payment ends in."""
    with sqlite3.connect(db) as connection:

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return sorted(connection.execute(sql).fetchall())

        return {
            "counts": {t: rows(f"SELECT count(*) FROM {t}")[0][0] for t in _TABLES},
            "payments": rows("SELECT version, state, unsettled FROM payments"),
            "events": rows("SELECT version FROM payment_events"),
            "outbox": rows("SELECT sequence, published_at IS NOT NULL, parked FROM outbox"),
            "keys": rows("SELECT state, recovery_point, locked_at IS NULL FROM idempotency_keys"),
            "attempts": rows("SELECT attempt_no, outcome FROM payment_attempts"),
        }


async def test_the_baseline_writes_what_a_paid_payment_writes(tmp_path: Path) -> None:
    """One keyed payment through the engine (auto capture, the gateway approves) and published
    by its relay, against one payment of the baseline: the same rows in every table, ending in
    the same states. If the engine starts writing more (or less), this fails until the
    baseline follows."""
    engine_db, baseline_db = tmp_path / "engine.db", tmp_path / "baseline.db"
    for path in (engine_db, baseline_db):
        await SqlStore(f"sqlite:///{path}").upgrade_schema()
    service = make_test_service(store=SqlStore(f"sqlite:///{engine_db}"))
    async with service:
        paid = await service.pay(
            PaymentRequest(Money(2500, "USD"), merchant_id="m_1"), idempotency_key="k_1"
        )
        await service.relay.drain()
    assert paid.state.value == "completed"
    assert _sqlite_baseline(str(baseline_db), 1) > 0
    engine, baseline = _shape(engine_db), _shape(baseline_db)
    assert engine["counts"] == baseline["counts"] == {
        "payments": 1, "payment_events": 4, "outbox": 4, "idempotency_keys": 1,
        "payment_attempts": 1,
    }  # fmt: skip
    for part in ("payments", "events", "outbox", "keys", "attempts"):
        assert engine[part] == baseline[part], part


def test_the_pgbench_script_runs_the_same_sql(tmp_path: Path) -> None:
    """The script pgbench runs is the baseline's SQL, valid on PostgreSQL: a few payments of
    it leave the same rows per payment as the SQLite baseline did (where pgbench and the
    test PostgreSQL are here)."""
    from _services import POSTGRES_URL, service_unavailable

    if shutil.which("pgbench") is None:
        pytest.skip("pgbench is not on PATH")
    import anyio
    import asyncpg  # type: ignore[import-untyped]

    schema = f"bench_test_{uuid.uuid4().hex[:8]}"

    async def run(sql: str) -> Any:
        try:
            connection = await asyncpg.connect(POSTGRES_URL, timeout=5)
        except (OSError, asyncpg.PostgresError) as error:
            service_unavailable("PostgreSQL", str(error))
        try:
            await connection.execute(f"SET search_path = {schema}")
            return await connection.fetch(sql)
        finally:
            await connection.close()

    async def scenario() -> None:
        await run(f"CREATE SCHEMA {schema}")
        try:
            await SqlStore(POSTGRES_URL, schema=schema).upgrade_schema()
            result = await anyio.to_thread.run_sync(
                lambda: pgbench_baseline(POSTGRES_URL, schema, seconds=1, clients=(2,))
            )
            assert result["per_s"] is not None and result["per_s"] > 0, result
            server = result["server_cpu_us_per_payment"]  # None only where /proc is unreadable
            assert server is None or server > 0
            counts = {t: (await run(f"SELECT count(*) FROM {t}"))[0][0] for t in _TABLES}
            paid = counts["payments"]
            assert paid > 0
            assert counts == {"payments": paid, "payment_events": 4 * paid, "outbox": 4 * paid,
                              "idempotency_keys": paid, "payment_attempts": paid}  # fmt: skip
            pending = await run("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            assert pending[0][0] == 0
            states = await run("SELECT DISTINCT version, state FROM payments")
            assert [tuple(row) for row in states] == [(4, "completed")]
        finally:
            await run(f"DROP SCHEMA {schema} CASCADE")

    anyio.run(scenario)


def test_a_pgbench_that_fails_is_reported_not_raised(tmp_path: Path) -> None:
    """No server at that address: the figure is null with pgbench's reason, not a crash."""
    if shutil.which("pgbench") is None:
        pytest.skip("pgbench is not on PATH")
    result = pgbench_baseline("postgresql://nobody@127.0.0.1:1/none", "public", seconds=1,
                              clients=(1,))  # fmt: skip
    assert result["per_s"] is None
    assert result["why"].startswith("pgbench failed:")


def test_the_pgbench_script_is_one_payment_of_three_transactions() -> None:
    script = pgbench_script()
    assert script.count("BEGIN;") == script.count("COMMIT;") == 3
    # Values are literals or the script's ``:i``: no driver placeholders left in it.
    assert ":i" in script and "$1" not in script and "?" not in script


async def test_the_batched_floor_ends_where_the_baseline_does(tmp_path: Path) -> None:
    """The floor writes the same SQL batched and pipelined (5 payments, 2 per transaction:
    intents, results and publish marks of different payments share transactions): every
    payment ends as the per-change baseline's does."""
    floor_db, baseline_db = tmp_path / "floor.db", tmp_path / "baseline.db"
    for path in (floor_db, baseline_db):
        await SqlStore(f"sqlite:///{path}").upgrade_schema()
    figures = sqlite_batched_floor(str(floor_db), 5, batch=2)
    assert figures["per_s"] > 0 and figures["cpu_us_per_payment"] > 0
    _sqlite_baseline(str(baseline_db), 5)
    assert _shape(floor_db) == _shape(baseline_db)
    assert _shape(floor_db)["counts"]["payment_events"] == 20
