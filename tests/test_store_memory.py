"""The memory store against the conformance suite (asyncio and trio)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aegispay.store.memory import MemoryStore
from store_conformance import StoreConformance, StoreFactory


class TestMemoryStore(StoreConformance):
    keeps_published = False  # published messages leave its queues at once

    @pytest.fixture
    async def make_store(self, anyio_backend: str) -> AsyncIterator[StoreFactory]:
        stores: list[MemoryStore] = []

        async def factory() -> MemoryStore:
            stores.append(MemoryStore())
            return stores[-1]

        yield factory
        for store in stores:
            await store.close()
