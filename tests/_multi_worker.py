"""One of several worker processes hammering the same payments (tests/test_multi_process.py).

    python _multi_worker.py POSTGRES_URL SCHEMA REDIS_URL LOCK_PREFIX LEDGER_PATH WORKER KEYS

Every worker creates a payment for each of the KEYS idempotency keys (all workers use the
same keys, so they collide) and processes it, in its own order, with 8 tasks at once.
"""

from __future__ import annotations

import random
import sys

import anyio
from _crash_worker import CrashPlugin, request
from aegispay import build_service, make_plugin_host
from aegispay.errors import AegisPayError
from aegispay.locks.redis import RedisLockManager
from aegispay.settings import Settings
from aegispay.store.sql import SqlStore


async def main(
    url: str, schema: str, redis_url: str, prefix: str, ledger: str, worker: int, keys: int
) -> None:
    host = make_plugin_host(
        plugins=[CrashPlugin(ledger, ledger + ".delivered", "", 0)],
        entry_points=False,
        deny=["simulated_gateways"],
    )
    service = build_service(
        Settings(),
        host=host,
        store=SqlStore(url, schema=schema),
        locks=RedisLockManager(redis_url, prefix=prefix),
    )
    order = list(range(keys))
    random.Random(worker).shuffle(order)
    errors: list[str] = []

    async def pay(i: int) -> None:
        try:
            payment = await service.pay(request(i), idempotency_key=f"o{i}")
            print(f"PAID {i} {payment.id} {payment.state.value}", flush=True)
        except AegisPayError as error:  # a conflict is fine; anything else is reported
            errors.append(f"{i}: {type(error).__name__}: {error}")

    async with service:
        limiter = anyio.CapacityLimiter(8)

        async def limited(i: int) -> None:
            async with limiter:
                await pay(i)

        async with anyio.create_task_group() as group:
            for i in order:
                group.start_soon(limited, i)
    await service.aclose()
    for error in errors:
        print(f"ERROR {error}", flush=True)


if __name__ == "__main__":
    url, schema, redis_url, prefix, ledger, worker, keys = sys.argv[1:8]
    anyio.run(main, url, schema, redis_url, prefix, ledger, int(worker), int(keys))
