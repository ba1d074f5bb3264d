"""Where the real services are, and what a test does when one is unreachable."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis

POSTGRES_URL = os.environ.get(
    "AEGISPAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("AEGISPAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def service_unavailable(name: str, reason: str) -> None:
    """Skip (with the reason shown) when a real service is unreachable - or fail, in CI.

    ``.ci/run`` sets ``AEGISPAY_TEST_REQUIRE_SERVICES=1``: there PostgreSQL and Redis must be
    reachable, and a test that cannot reach them fails instead of quietly skipping.
    """
    message = f"{name} is not reachable: {reason}"
    if os.environ.get("AEGISPAY_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " (AEGISPAY_TEST_REQUIRE_SERVICES=1 makes this mandatory)")
    pytest.skip(message)


@asynccontextmanager
async def redis_client(**options: Any) -> AsyncIterator[aioredis.Redis]:
    """A client of the test Redis (skip or fail as above when it is unreachable)."""
    client = aioredis.from_url(REDIS_URL, socket_connect_timeout=2, **options)
    try:
        await client.ping()
    except Exception as error:  # any failure to reach it: skip locally, fail in CI
        await client.aclose()
        service_unavailable("Redis", str(error))
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def redis_key_prefix(client: aioredis.Redis, suffix: str = "") -> AsyncIterator[str]:
    """A random key prefix for one test; every key under it is deleted afterwards."""
    prefix = f"aegispay-test:{uuid.uuid4().hex}:{suffix}"
    try:
        yield prefix
    finally:
        await forget_keys(client, prefix)


async def keys_under(client: aioredis.Redis, prefix: str) -> list[bytes]:
    """Every key starting with ``prefix``. SCAN walks the whole keyspace whatever the MATCH:
    in big steps, or a Redis that other runs filled took ~10 s per call at 10 keys a step."""
    return [key async for key in client.scan_iter(match=f"{prefix}*", count=10_000)]


async def forget_keys(client: aioredis.Redis, prefix: str) -> int:
    """Delete every key starting with ``prefix``; how many there were."""
    keys = await keys_under(client, prefix)
    if keys:
        await client.delete(*keys)
    return len(keys)
