"""A consumer for tests/test_outbox_relays.py: a sink that records every delivery in a
PostgreSQL table, in delivery order, from any number of relays and processes.

    deliveries(id bigserial, message_id, payment_id, sequence, relay)

Each batch is inserted (autocommit) before ``publish`` returns, so a delivery made later -
by any relay, in any process - gets a higher ``id``: ordering by ``id`` is the order in which
the consumer received the messages. ``ConsumerPlugin`` registers the sink; the test loads it
into ``python -m aegispay outbox relay`` subprocesses as an ``aegispay`` entry point, with the
database URL in ``AEGISPAY_TEST_DELIVERIES_URL``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]
from aegispay import hookimpl
from aegispay.outbox import EventSink, OutboxMessage

URL_VARIABLE = "AEGISPAY_TEST_DELIVERIES_URL"

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS deliveries (
    id bigserial PRIMARY KEY,
    message_id text NOT NULL,
    payment_id text NOT NULL,
    sequence integer NOT NULL,
    relay text NOT NULL
)
"""


class DeliveryLog:
    """An :class:`~aegispay.outbox.EventSink` writing each batch to ``deliveries``. Its own
    connection (asyncpg connections are not shared between tasks)."""

    name = "delivery_log"

    def __init__(self, url: str, relay: str, latency_per_message_s: float = 0.0) -> None:
        self.url = url
        self.relay = relay
        self.latency = latency_per_message_s  # a slow consumer: relays overlap more
        self._connection: Any = None

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        if self._connection is None:
            self._connection = await asyncpg.connect(self.url)
        if self.latency:
            await anyio.sleep(self.latency * len(messages))
        await self._connection.executemany(
            "INSERT INTO deliveries (message_id, payment_id, sequence, relay) "
            "VALUES ($1, $2, $3, $4)",
            [(m.message_id, m.payment_id, m.sequence, self.relay) for m in messages],
        )

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None


class ConsumerPlugin:
    """The entry-point plugin: one :class:`DeliveryLog` labelled with this process id."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.sink = DeliveryLog(
            os.environ[URL_VARIABLE], f"process-{os.getpid()}", latency_per_message_s=0.001
        )

    @hookimpl
    def aegispay_register_event_sinks(
        self, register: Callable[[EventSink], None], config: Any
    ) -> None:
        register(self.sink)
