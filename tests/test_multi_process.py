"""Four worker processes on one PostgreSQL and one Redis, hammering the same payments and
idempotency keys: exactly one payment per key, exactly one charge per payment, no lost
update, and every history replays to its projection."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest
from _services import (
    POSTGRES_URL,
    REDIS_URL,
    forget_keys,
    keys_under,
    redis_client,
    service_unavailable,
)
from aegispay.payment import replay
from aegispay.states import PaymentState
from aegispay.store.sql import SqlStore

WORKER = Path(__file__).with_name("_multi_worker.py")
WORKERS = 4
KEYS = 24


async def _schema(schema: str, create: bool) -> None:
    import asyncpg  # type: ignore[import-untyped]

    dsn = POSTGRES_URL.replace("postgresql://", "postgres://", 1)
    connection = await asyncpg.connect(dsn)
    try:
        if create:
            await connection.execute(f'create schema "{schema}"')
        else:
            await connection.execute(f'drop schema if exists "{schema}" cascade')
    finally:
        await connection.close()


async def _redis_ok() -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    finally:
        await client.aclose()


def _redis_keys(prefix: str, *, forget: bool = False) -> int:
    """How many keys the workers left under ``prefix``; with ``forget``, deleted (CI reuses
    this Redis)."""

    async def run() -> int:
        async with redis_client() as client:
            if forget:
                return await forget_keys(client, prefix)
            return len(await keys_under(client, prefix))

    return anyio.run(run, backend="asyncio")


def _prefix(schema: str) -> str:
    return f"aegispay:test:{schema}:"


@pytest.fixture
def schema() -> str:
    name = f"aegispay_mp_{uuid.uuid4().hex[:12]}"
    try:
        anyio.run(_schema, name, True, backend="asyncio")
        anyio.run(_redis_ok, backend="asyncio")
    except Exception as error:  # unreachable service: skip locally, fail in CI
        service_unavailable("PostgreSQL/Redis", repr(error))
    yield name
    anyio.run(_schema, name, False, backend="asyncio")
    _redis_keys(_prefix(name), forget=True)


async def _upgrade(schema: str) -> None:
    store = SqlStore(POSTGRES_URL, schema=schema)
    await store.upgrade_schema()
    await store.close()


async def _load(schema: str) -> dict[str, tuple[object, list[object]]]:
    store = SqlStore(POSTGRES_URL, schema=schema)
    try:
        out = {}
        for payment_id in await store.payment_ids():
            out[payment_id] = (await store.load(payment_id), await store.events(payment_id))
        return out
    finally:
        await store.close()


def test_four_workers_one_payment_and_one_charge_per_key(schema: str, tmp_path: Path) -> None:
    anyio.run(_upgrade, schema, backend="asyncio")
    ledger = tmp_path / "ledger.db"
    prefix = _prefix(schema)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                POSTGRES_URL,
                schema,
                REDIS_URL,
                prefix,
                str(ledger),
                str(n),
                str(KEYS),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(WORKERS)
    ]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (stdout, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr[-3000:]
        assert "ERROR" not in stdout, stdout
    # Every worker got the same payment for the same key.
    paid: dict[str, set[str]] = {}
    for stdout, _ in outputs:
        for line in stdout.splitlines():
            _, index, payment_id, state = line.split()
            paid.setdefault(index, set()).add(payment_id)
            assert state == "completed", line
    assert len(paid) == KEYS
    assert all(len(ids) == 1 for ids in paid.values()), paid

    stored = anyio.run(_load, schema, backend="asyncio")
    assert len(stored) == KEYS, "exactly one payment per idempotency key"
    for payment, events in stored.values():
        assert payment is not None
        assert payment.state is PaymentState.COMPLETED  # type: ignore[attr-defined]
        assert replay(events) == payment  # type: ignore[arg-type]
    charges = (
        sqlite3.connect(ledger)
        .execute("select payment_id, count(*) from charges group by payment_id")
        .fetchall()
    )
    assert len(charges) == KEYS
    assert all(count == 1 for _, count in charges), charges
    # The workers' fencing counters are there (and the fixture deletes them afterwards).
    assert _redis_keys(prefix) > 0
