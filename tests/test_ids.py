"""Payment ids: unique, unpredictable in form, and never shared across a fork or threads."""

from __future__ import annotations

import os
import re
import threading

import pytest
from aegispay import build_service
from aegispay.ids import PaymentIds
from aegispay.store.memory import MemoryStore

_ID = re.compile(r"pay_[0-9a-f]{24}")


def test_ids_are_well_formed_and_unique_across_refills() -> None:
    ids = PaymentIds()
    drawn = [ids() for _ in range(2_000)]  # several 256-id batches
    assert all(_ID.fullmatch(i) for i in drawn)
    assert len(set(drawn)) == len(drawn)
    # Two sources draw independently.
    assert not set(drawn) & {PaymentIds()() for _ in range(300)}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_reuse_the_parents_buffered_ids() -> None:
    ids = PaymentIds()
    ids()  # the parent now holds 255 buffered ids
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write, " ".join(ids() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        childs = set(pipe.read().split())
    os.waitpid(child, 0)
    parents = {ids() for _ in range(10)}
    assert len(childs) == 10 and not childs & parents


def test_threads_drawing_at_once_never_get_the_same_id() -> None:
    ids = PaymentIds()
    results: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(len(results))

    def draw(mine: list[str]) -> None:
        start.wait()
        mine.extend(ids() for _ in range(3_000))

    threads = [threading.Thread(target=draw, args=(r,)) for r in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [i for r in results for i in r]
    assert len(set(everything)) == len(everything) == 8 * 3_000


def test_a_service_uses_its_own_source_unless_given_one() -> None:
    assert isinstance(build_service(store=MemoryStore(), entry_points=False)._ids, PaymentIds)
    counter = iter(range(100))
    service = build_service(
        store=MemoryStore(), entry_points=False, ids=lambda: f"pay_{next(counter)}"
    )
    assert service._ids() == "pay_0"
