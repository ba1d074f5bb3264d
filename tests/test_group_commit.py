"""The Coalescer behind group commit: batches, per-item answers, and batches in flight at once."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest
from aegispay.store.group_commit import Coalescer
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the Coalescer is asyncio only, like the SQL store


class Recorder:
    """A batch function that records which batches ran at the same time, and the order in
    which each key's items ran. ``gate`` holds every batch until it is set."""

    def __init__(self, *, fail: frozenset[int] = frozenset()) -> None:
        self.running: list[list[tuple[int, str]]] = []
        self.max_running = 0
        self.overlaps: list[tuple[set[str], set[str]]] = []
        self.order: dict[str, list[int]] = {}
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = fail

    async def run(self, batch: Sequence[tuple[int, str]]) -> list[int | BaseException]:
        mine = list(batch)
        keys = {key for _, key in mine}
        for other in self.running:
            self.overlaps.append((keys, {key for _, key in other}))
        self.running.append(mine)
        self.max_running = max(self.max_running, len(self.running))
        for number, key in mine:
            self.order.setdefault(key, []).append(number)
        await self.gate.wait()
        await asyncio.sleep(0)  # let others queue and start meanwhile
        self.running.remove(mine)
        return [ValueError(n) if n in self.fail else n * 10 for n, _ in mine]


def _key(item: tuple[int, str]) -> tuple[str]:
    return (item[1],)


@pytest.mark.anyio
async def test_two_batches_run_at_once_and_each_caller_gets_its_own_answer() -> None:
    recorder = Recorder(fail=frozenset({3}))
    recorder.gate.clear()
    coalescer = Coalescer(recorder.run, max_batch=2, keys=_key, in_flight=2)
    items = [(n, f"k{n}") for n in range(6)]
    calls = [asyncio.ensure_future(coalescer.submit(item)) for item in items]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert recorder.max_running == 2  # a second batch started while the first waited
    recorder.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert [r if not isinstance(r, BaseException) else "error" for r in results] == [
        0, 10, 20, "error", 40, 50,
    ]  # fmt: skip
    await coalescer.wait_idle()
    assert coalescer.items == 6


@pytest.mark.anyio
async def test_a_key_held_by_a_running_batch_waits_for_it() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    coalescer = Coalescer(recorder.run, max_batch=10, keys=_key, in_flight=2)
    first = asyncio.ensure_future(coalescer.submit((1, "same")))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(coalescer.submit((2, "same")))
    other = asyncio.ensure_future(coalescer.submit((3, "other")))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # The second drainer took "other" but left "same" for after the running batch.
    assert [[n for n, _ in batch] for batch in recorder.running] == [[1], [3]]
    recorder.gate.set()
    assert await asyncio.gather(first, second, other) == [10, 20, 30]
    assert recorder.order["same"] == [1, 2]
    assert not any(a & b for a, b in recorder.overlaps)


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=60),
    in_flight=st.integers(1, 4),
    max_batch=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_no_two_running_batches_share_a_key_and_every_item_is_answered_in_key_order(
    keys: list[str], in_flight: int, max_batch: int, seed: int
) -> None:
    async def scenario() -> None:
        rng = random.Random(seed)
        recorder = Recorder()
        coalescer = Coalescer(recorder.run, max_batch=max_batch, keys=_key, in_flight=in_flight)
        calls = []
        for number, key in enumerate(keys):
            calls.append(asyncio.ensure_future(coalescer.submit((number, key))))
            if rng.random() < 0.3:
                await asyncio.sleep(0)
        assert await asyncio.gather(*calls) == [n * 10 for n in range(len(keys))]
        await coalescer.wait_idle()
        assert recorder.max_running <= in_flight
        assert not any(a & b for a, b in recorder.overlaps)  # never a key in two at once
        for key, numbers in recorder.order.items():
            assert numbers == sorted(numbers), key  # arrival order within a key
        assert coalescer.items == len(keys)

    asyncio.run(scenario())


def test_in_flight_must_be_positive() -> None:
    async def nothing(batch: Sequence[int]) -> list[int]:
        return list(batch)

    with pytest.raises(ValueError, match="in_flight"):
        Coalescer(nothing, in_flight=0)
