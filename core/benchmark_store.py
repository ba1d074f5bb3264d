"""``aegispay bench --store URL``: the full path on a durable store beside a raw-driver baseline.

The baseline writes what a payment writes - the same tables, the same rows and indexes, three
state changes per payment (create with its idempotency key; the intent; the result with its
two events), each one transaction as the issue's "one transaction per payment" ceiling -
through the bare driver (asyncpg with 64 connections in flight; sqlite3 on one connection,
SQLite having one writer), with no engine, no plugins, no relay. Both run in the same process
and minute, on a fresh schema, so their ratio is what the figures mean. Nothing asserts a
target: the figures and the commands go into docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.engine import make_url

from .settings import Settings

_EVENT = orjson.dumps({"type": "x", "payload": "y" * 300}).decode()
_PROJECTION = orjson.dumps({"id": "p", "payload": "z" * 700}).decode()


def _changes(i: int, now: datetime) -> list[list[tuple[str, tuple[Any, ...]]]]:
    """The statements of one payment's three state changes (one list per transaction)."""
    pid = f"bench_{os.getpid()}_{i}"
    later = now + timedelta(days=1)
    event = "INSERT INTO payment_events (payment_id, version, event_id, type, occurred_at, data)"
    box = "INSERT INTO outbox (message_id, payment_id, sequence, attempts, parked)"
    update = "UPDATE payments SET version = {v}, state = 's', data = {d} WHERE id = {i}"

    def events(*versions: int) -> list[tuple[str, tuple[Any, ...]]]:
        rows: list[tuple[str, tuple[Any, ...]]] = []
        for v in versions:
            rows.append((event, (pid, v, f"{pid}-{v}", "t", now, _EVENT)))
            rows.append((box, (f"{pid}-{v}", pid, v, 0, False)))  # refers to its event
        return rows

    key = "INSERT INTO idempotency_keys (scope, key, fingerprint, payment_id, response,"
    key += " created_at, expires_at, state, recovery_point)"
    create = [
        (key, ("bench", pid, "f", pid, _PROJECTION, now, later, "in_flight", "created")),
        (
            "INSERT INTO payments (id, version, state, fence, data)",
            (pid, 1, "initiated", 0, _PROJECTION),
        ),
        *events(1),
    ]
    intent = [(update.format(v=2, d="{d}", i="{i}"), (_PROJECTION, pid)), *events(2)]
    result = [(update.format(v=4, d="{d}", i="{i}"), (_PROJECTION, pid)), *events(3, 4)]
    return [create, intent, result]


def _render(statement: str, count: int, postgres: bool) -> str:
    """Fill in the placeholders: ``$n`` for asyncpg, ``?`` for sqlite3."""
    marks = [f"${n}" if postgres else "?" for n in range(1, count + 1)]
    if statement.startswith("UPDATE"):
        return statement.format(d=marks[0], i=marks[1])
    return f"{statement} VALUES ({', '.join(marks)})"


async def _postgres_baseline(url: str, schema: str, payments: int) -> float:
    import asyncpg  # type: ignore[import-untyped]

    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    pool = await asyncpg.create_pool(
        plain, min_size=64, max_size=64, server_settings={"search_path": schema}
    )
    now = datetime.now(UTC)
    queue = iter(range(payments))

    async def worker() -> None:
        async with pool.acquire() as connection:
            for i in queue:
                for change in _changes(i, now):
                    async with connection.transaction():
                        for statement, values in change:
                            sql = _render(statement, len(values), postgres=True)
                            await connection.execute(sql, *values)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(64)))
    finally:
        await pool.close()
    return payments / (time.perf_counter() - started)


def _sqlite_baseline(path: str, payments: int) -> float:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    started = time.perf_counter()
    for i in range(payments):
        for change in _changes(i, datetime.now(UTC)):
            connection.execute("BEGIN IMMEDIATE")
            for statement, values in change:
                bound = tuple(now if isinstance(v, datetime) else v for v in values)
                connection.execute(_render(statement, len(values), postgres=False), bound)
            connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return payments / elapsed


def local_server_cpu_s(name: str = "postgres", proc: str = "/proc") -> float | None:
    """CPU seconds used so far by this machine's processes named ``name`` (``/proc``: Linux),
    exited children included (a server's exited backends count in their parent's), or None
    where that cannot be read. The difference over a run is the database server's CPU for it
    when the server runs here - alone, or the figure includes the other work it did."""
    try:
        entries = [entry for entry in os.listdir(proc) if entry.isdigit()]
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    total, found = 0, False
    for entry in entries:
        try:
            with open(os.path.join(proc, entry, "stat"), encoding="utf-8") as stat:
                text = stat.read()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        command = text[text.index("(") + 1 : text.rindex(")")]
        if command.startswith(name):
            fields = text[text.rindex(")") + 2 :].split()
            total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
            found = True
    return total / ticks if found else None


def store_benchmark(url: str, payments: int = 10_000, concurrency: int = 1000) -> dict[str, Any]:
    """The full create + process path on ``url`` (zero-latency gateways) and the baseline."""
    import secrets

    import anyio
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    from .cli import _simulation_settings
    from .simulation import SimulationOptions, run_simulation
    from .stack import build_service
    from .store.sql import SqlStore, normalise_url

    postgres = make_url(normalise_url(url)).get_backend_name() == "postgresql"
    schema = f"aegispay_bench_{secrets.token_hex(4)}" if postgres else None

    async def with_schema(statement: str) -> None:
        engine = create_async_engine(normalise_url(url))
        async with engine.begin() as conn:
            await conn.execute(sa.text(statement))
        await engine.dispose()

    async def full_path() -> dict[str, Any]:
        store = SqlStore(url, schema=schema)
        await store.upgrade_schema()
        settings = _simulation_settings(Settings(), 0, None, 0.0, url)
        service = build_service(settings, store=store)
        ledger = getattr(service.host.plugin("simulated_gateways"), "ledger", None)
        try:
            return await run_simulation(
                service, SimulationOptions(payments, concurrency, 0), ledger
            )
        finally:
            await service.aclose()

    async def baseline() -> float:
        if postgres:
            assert schema is not None
            return await _postgres_baseline(url, schema, payments)
        path = make_url(normalise_url(url)).database or ""
        return await anyio.to_thread.run_sync(_sqlite_baseline, path, payments)

    async def run() -> dict[str, Any]:
        if schema is not None:
            await with_schema(f'CREATE SCHEMA "{schema}"')
        try:
            server_started = local_server_cpu_s() if postgres else None
            report = await full_path()
            server_ended = local_server_cpu_s() if postgres else None
            raw = await baseline()
        finally:
            if schema is not None:
                await with_schema(f'DROP SCHEMA "{schema}" CASCADE')
        return {
            "store": make_url(url).render_as_string(hide_password=True),
            "command": f"aegispay bench --store {url} --payments {payments}",
            "full_path_per_s": report["throughput_per_s"],
            "full_path_latency_ms": report["latency_ms"],
            "duplicate_charges": report.get("duplicate_charges"),
            "replay_mismatches": report["replay_mismatches"],
            # CPU per payment: this process over the timed run; a PostgreSQL server on this
            # machine (if there is one to read; else null) over the whole full-path run, its
            # schema upgrade and the audit's reads included.
            "client_cpu_us_per_payment": report["cpu_us_per_payment"],
            "server_cpu_us_per_payment": (
                round((server_ended - server_started) / payments * 1e6, 1)
                if server_started is not None and server_ended is not None
                else None
            ),
            "raw_driver_baseline_per_s": round(raw, 1),
            "baseline": "the same rows, 3 transactions per payment, bare driver"
            + (" (asyncpg, 64 connections)" if postgres else " (sqlite3, WAL, synchronous=NORMAL)"),
            "ratio_to_baseline": round(report["throughput_per_s"] / raw, 3) if raw else None,
        }

    return anyio.run(run)
