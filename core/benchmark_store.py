"""``aegispay bench --store URL``: the full path on a durable store beside baselines of its SQL.

The baselines write what a payment writes (:func:`payment_transactions`): the same tables,
rows and indexes, one transaction per state change - the issue's "one transaction per payment"
ceiling, a payment being two changes here - and one for the relay's publish mark, with no
engine, no plugins, no leases. They run in the same process and minute as the full path, on
the same schema, so the ratios are what the figures mean:

* the raw driver from Python: asyncpg with 64 connections in flight; sqlite3 on one
  connection (SQLite has one writer);
* on PostgreSQL, ``pgbench`` (its C client, where it is on PATH) running the same SQL as a
  script: the server's own ceiling for that SQL, with no Python in the way;
* the same full path on the in-memory store: the engine's ceiling in one process, which a
  durable store can only lower.

Nothing asserts a target: the figures and the commands go into docs/benchmarks.md."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson
from sqlalchemy.engine import make_url

from .settings import Settings

# The sizes the simulation's rows have (measured: projections ~830 characters of JSON,
# events ~340, a key's stored response ~570).
_EVENT = orjson.dumps({"type": "x", "payload": "y" * 320}).decode()
_PROJECTION = orjson.dumps({"id": "p", "payload": "z" * 800}).decode()
_RESPONSE = orjson.dumps({"id": "p", "payload": "z" * 550}).decode()


class _Id(NamedTuple):
    """The payment's id, with ``suffix`` appended (event, message and attempt ids)."""

    suffix: str = ""


class _Now(NamedTuple):
    """The run's clock, ``days`` later (the key's expiry)."""

    days: int = 0


_Value = str | int | bool | None | _Id | _Now
Statement = tuple[str, tuple[_Value, ...]]

_KEY = ("INSERT INTO idempotency_keys (scope, key, fingerprint, payment_id, response,"
        " created_at, expires_at, state, recovery_point, locked_at)")  # fmt: skip
_PAYMENT = "INSERT INTO payments (id, version, state, fence, data, unsettled, updated_at)"
_EVENT_ROW = "INSERT INTO payment_events (payment_id, version, event_id, type, occurred_at, data)"
_MESSAGE = "INSERT INTO outbox (message_id, payment_id, sequence, attempts, parked)"
_ATTEMPT = ("INSERT INTO payment_attempts (payment_id, attempt_no, gateway, idempotency_key,"
            " outcome, gateway_reference, updated_at)")  # fmt: skip
_ATTEMPT_UPSERT = (" ON CONFLICT (payment_id, attempt_no) DO UPDATE SET outcome ="
                   " excluded.outcome, gateway_reference = excluded.gateway_reference,"
                   " updated_at = excluded.updated_at")  # fmt: skip
# UPDATEs: ``{}`` marks each placeholder, in the order of the values.
_UPDATE = ("UPDATE payments SET version = {}, state = {}, data = {}, unsettled = {},"
           " updated_at = {} WHERE id = {} AND version = {}")  # fmt: skip
_ADVANCE = ("UPDATE idempotency_keys SET recovery_point = {}, state = {}, locked_at = NULL"
            " WHERE scope = {} AND key = {} AND state = 'in_flight'")  # fmt: skip
# By message id, as the relay settles (through the unique index; by payment id, PostgreSQL
# ANDs in a bitmap of every pending row).
_PUBLISH = ("UPDATE outbox SET published_at = {} WHERE message_id IN ({}, {}, {}, {})"
            " AND published_at IS NULL")  # fmt: skip


def payment_transactions() -> list[list[Statement]]:
    """What one payment writes through the engine, as the baseline's transactions.

    A successful payment (the common case) is two state changes, each one transaction, as
    the engine commits them: the intent - the payment created PROCESSING with its first two
    events, their outbox rows, its attempt and its idempotency key claimed in flight - before
    the gateway call; then the result - the payment COMPLETED, two more events and outbox rows,
    the attempt's outcome, the key completed. The third is the relay's: the payment's four
    messages marked published. (The engine's relay also leases the payment and reads the
    rows; and the simulation refunds one payment in ten: both are left out, in the
    baseline's favour.)"""

    def events(*versions: int) -> list[Statement]:
        rows: list[Statement] = []
        for v in versions:
            rows.append((_EVENT_ROW, (_Id(), v, _Id(f"-e{v}"), "t", _Now(), _EVENT)))
            rows.append((_MESSAGE, (_Id(f"-e{v}"), _Id(), v, 0, False)))  # refers to its event
        return rows

    key = ("bench", _Id(), "f" * 64, _Id(), _RESPONSE, _Now(), _Now(1), "in_flight",
           "processing", _Now())  # fmt: skip
    attempt = (_Id(), 1, "sim", _Id("-1"))
    intent = [
        (_KEY, key),
        (_PAYMENT, (_Id(), 2, "processing", 0, _PROJECTION, True, _Now())),
        *events(1, 2),
        (_ATTEMPT, (*attempt, None, None, _Now())),
    ]
    result = [
        (_UPDATE, (4, "completed", _PROJECTION, False, _Now(), _Id(), 2)),
        *events(3, 4),
        (_ATTEMPT + _ATTEMPT_UPSERT, (*attempt, "succeeded", _Id("-ref"), _Now())),
        (_ADVANCE, ("finished", "completed", "bench", _Id())),
    ]
    messages: tuple[_Value, ...] = tuple(_Id(f"-e{v}") for v in range(1, 5))
    relay = [(_PUBLISH, (_Now(), *messages))]
    return [intent, result, relay]


def render(statement: str, count: int, marks: Sequence[str]) -> str:
    """The statement with ``marks`` as its ``count`` placeholders."""
    if statement.startswith("UPDATE"):
        return statement.format(*marks[:count])
    if _ATTEMPT_UPSERT in statement:
        head = statement.removesuffix(_ATTEMPT_UPSERT)
        return f"{head} VALUES ({', '.join(marks[:count])}){_ATTEMPT_UPSERT}"
    return f"{statement} VALUES ({', '.join(marks[:count])})"


def _bind(value: _Value, payment_id: str, now: datetime, sqlite: bool) -> Any:
    if isinstance(value, _Id):
        return payment_id + value.suffix
    if isinstance(value, _Now):
        at = now + timedelta(days=value.days)
        return at.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else at
    return value


def _literal(value: _Value) -> str:
    """A value as pgbench script text: the payment id from the script's ``:i``."""
    if isinstance(value, _Id):
        return f"('b' || :i || '{value.suffix}')" if value.suffix else "('b' || :i)"
    if isinstance(value, _Now):
        return f"(now() + interval '{value.days} days')" if value.days else "now()"
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def pgbench_script() -> str:
    """The baseline's transactions as a pgbench script: one run of it is one payment."""
    lines = ["\\set i random(1, 9000000000000000)"]  # ids: collisions are ~1e-8 likely
    for transaction in payment_transactions():
        lines.append("BEGIN;")
        for statement, values in transaction:
            lines.append(render(statement, len(values), [_literal(v) for v in values]) + ";")
        lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


def _templates(*, sqlite: bool) -> list[list[tuple[str, tuple[_Value, ...]]]]:
    """The transactions with their driver's placeholders, rendered once for the whole run."""
    return [
        [
            (render(statement, len(values),
                    ["?" if sqlite else f"${n}" for n in range(1, len(values) + 1)]), values)
            for statement, values in transaction
        ]
        for transaction in payment_transactions()
    ]  # fmt: skip


def _bound(
    templates: list[list[tuple[str, tuple[_Value, ...]]]],
    i: int,
    now: datetime,
    sqlite: bool,
    run: str = "bench",
) -> list[list[tuple[str, tuple[Any, ...]]]]:
    pid = f"{run}_{os.getpid()}_{i}"
    return [
        [(sql, tuple([_bind(v, pid, now, sqlite) for v in values])) for sql, values in rows]
        for rows in templates
    ]


async def _postgres_baseline(url: str, schema: str, payments: int) -> float:
    import asyncpg  # type: ignore[import-untyped]

    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    pool = await asyncpg.create_pool(
        plain, min_size=64, max_size=64, server_settings={"search_path": schema}
    )
    now = datetime.now(UTC)
    queue = iter(range(payments))
    templates = _templates(sqlite=False)

    async def worker() -> None:
        async with pool.acquire() as connection:
            for i in queue:
                for transaction in _bound(templates, i, now, False):
                    async with connection.transaction():
                        for sql, values in transaction:
                            await connection.execute(sql, *values)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(64)))
    finally:
        await pool.close()
    return payments / (time.perf_counter() - started)


def pgbench_baseline(
    url: str, schema: str, seconds: int = 10, clients: Sequence[int] = (4, 8, 16)
) -> dict[str, Any]:
    """pgbench (PostgreSQL's C client) running :func:`pgbench_script` for ``seconds`` at each
    client count; the best rate is the ceiling of one transaction per state change here.
    ``server_cpu_us_per_payment``: a local server's CPU over all the runs, per payment they
    made (null where /proc cannot tell). ``{"per_s": None, "why": ...}`` where pgbench is
    not on PATH or fails."""
    import shutil
    import subprocess
    import tempfile

    program = shutil.which("pgbench")
    if program is None:
        return {"per_s": None, "why": "pgbench is not on PATH"}
    parsed = make_url(url)
    environment = {**os.environ, "PGOPTIONS": f"-c search_path={schema}"}
    if parsed.password is not None:
        environment["PGPASSWORD"] = str(parsed.password)
    target = []
    for flag, value in (("-h", parsed.host), ("-p", parsed.port), ("-U", parsed.username)):
        if value is not None:
            target += [flag, str(value)]
    rates: dict[int, float] = {}
    made = 0
    server_started = local_server_cpu_s()
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        script.write(pgbench_script())
        script.flush()
        for count in clients:
            command = [program, "-n", "-M", "prepared", "-f", script.name, "-c", str(count),
                       "-j", "2", "-T", str(seconds), *target,
                       parsed.database or "postgres"]  # fmt: skip
            done = subprocess.run(command, env=environment, capture_output=True, text=True)
            found = re.search(r"tps = ([0-9.]+) \(without initial", done.stdout)
            if done.returncode != 0 or found is None:
                why = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                return {"per_s": None, "why": f"pgbench failed: {why[0]}"}
            rates[count] = round(float(found.group(1)), 1)
            processed = re.search(r"actually processed: (\d+)", done.stdout)
            made += int(processed.group(1)) if processed else 0
    server_ended = local_server_cpu_s()
    server = None
    if server_started is not None and server_ended is not None and made:
        server = round((server_ended - server_started) / made * 1e6, 1)
    return {"per_s": max(rates.values()), "by_clients": rates, "server_cpu_us_per_payment": server}


def _sqlite_connection(path: str) -> sqlite3.Connection:
    """A connection set up as the store sets up its own (WAL, synchronous=NORMAL, its cache and
    checkpoint sizes)."""
    from .store.sql import _SQLITE_FILE_TUNING

    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    for pragma in _SQLITE_FILE_TUNING:
        connection.execute(pragma)
    return connection


def _sqlite_baseline(path: str, payments: int) -> float:
    connection = _sqlite_connection(path)
    now = datetime.now(UTC)
    templates = _templates(sqlite=True)
    started = time.perf_counter()
    for i in range(payments):
        for transaction in _bound(templates, i, now, True):
            connection.execute("BEGIN IMMEDIATE")
            for sql, values in transaction:
                connection.execute(sql, values)
            connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return payments / elapsed


def sqlite_batched_floor(path: str, payments: int, batch: int = 500) -> dict[str, float]:
    """The same SQL written as group commit writes it, with nothing else: each transaction
    holds ``batch`` payments' intents, the results of the ``batch`` before them and the
    publish marks of the ones before those, one ``executemany`` per statement. Its CPU per
    payment (rows bound from prepared tuples, SQLite's own work) is what storing a payment
    costs at the least in this process, whatever the engine does around it."""
    connection = _sqlite_connection(path)
    now = datetime.now(UTC)
    templates = _templates(sqlite=True)
    bound = [_bound(templates, i, now, True, "floor") for i in range(payments)]  # untimed
    starts = range(0, payments, batch)
    started, cpu_started = time.perf_counter(), time.process_time()
    for step in range(len(starts) + len(templates) - 1):
        statements: dict[str, list[tuple[Any, ...]]] = {}
        for stage in range(len(templates)):  # intents, results, publish marks
            if 0 <= step - stage < len(starts):
                first = starts[step - stage]
                for payment in bound[first : first + batch]:
                    for sql, values in payment[stage]:
                        statements.setdefault(sql, []).append(values)
        connection.execute("BEGIN IMMEDIATE")
        for sql, rows in statements.items():
            connection.executemany(sql, rows)
        connection.execute("COMMIT")
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    connection.close()
    return {
        "per_s": round(payments / elapsed, 1),
        "cpu_us_per_payment": round(cpu / payments * 1e6, 1),
    }


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

    from .cli import _simulation_settings, _tune_gc
    from .simulation import SimulationOptions, run_simulation
    from .stack import build_service
    from .store.sql import SqlStore, normalise_url

    postgres = make_url(normalise_url(url)).get_backend_name() == "postgresql"
    schema = f"aegispay_bench_{secrets.token_hex(4)}" if postgres else None

    async def execute(statement: str) -> None:
        engine = create_async_engine(normalise_url(url))
        async with engine.begin() as conn:
            await conn.execute(sa.text(statement))
        await engine.dispose()

    async def checkpoint() -> None:
        """Start each PostgreSQL run with the previous run's writes flushed, so that no run
        pays for another's checkpoint (best effort: it needs superuser or pg_checkpoint)."""
        with contextlib.suppress(sa.exc.DBAPIError):
            await execute("CHECKPOINT")

    async def full_path(store_url: str) -> dict[str, Any]:
        settings = _simulation_settings(Settings(), 0, None, 0.0, store_url)
        if store_url == "memory://":
            service = build_service(settings)
        else:
            store = SqlStore(store_url, schema=schema)
            await store.upgrade_schema()
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
        _tune_gc()  # as ``aegispay simulate`` runs: the figures are that command's
        if schema is not None:
            await execute(f'CREATE SCHEMA "{schema}"')
        try:
            if postgres:
                await checkpoint()
            server_started = local_server_cpu_s() if postgres else None
            report = await full_path(url)
            server_ended = local_server_cpu_s() if postgres else None
            raw = await baseline()
            if postgres:
                await checkpoint()
            pgbench = (
                await anyio.to_thread.run_sync(pgbench_baseline, url, schema)
                if schema is not None
                else None
            )
            floor = (
                None
                if postgres
                else await anyio.to_thread.run_sync(
                    sqlite_batched_floor, make_url(normalise_url(url)).database or "", payments
                )
            )
            in_memory = await full_path("memory://")
        finally:
            if schema is not None:
                await execute(f'DROP SCHEMA "{schema}" CASCADE')
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
            "baseline": "the same SQL, one transaction per state change (2) and one for the"
            " relay's publish, bare driver"
            + (" (asyncpg, 64 connections)" if postgres else " (sqlite3, WAL, synchronous=NORMAL)"),
            "ratio_to_baseline": round(report["throughput_per_s"] / raw, 3) if raw else None,
            **(
                {
                    "pgbench_per_s": pgbench["per_s"],
                    "pgbench": pgbench.get("by_clients") or pgbench.get("why"),
                    "pgbench_server_cpu_us_per_payment": pgbench.get("server_cpu_us_per_payment"),
                    "ratio_to_pgbench": (
                        round(report["throughput_per_s"] / pgbench["per_s"], 3)
                        if pgbench["per_s"]
                        else None
                    ),
                }
                if pgbench is not None
                else {}
            ),
            **(
                {
                    "raw_batched_floor_per_s": floor["per_s"],
                    "raw_batched_floor_cpu_us_per_payment": floor["cpu_us_per_payment"],
                }
                if floor is not None
                else {}
            ),
            # The same run on the in-memory store, in this process: the engine's own ceiling,
            # which no durable store can raise (one process is one core's worth of Python).
            "in_memory_per_s": in_memory["throughput_per_s"],
            "in_memory_cpu_us_per_payment": in_memory["cpu_us_per_payment"],
        }

    return anyio.run(run)
