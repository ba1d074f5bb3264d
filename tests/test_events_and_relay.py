"""Events after commit: listeners, sinks (at-least-once, isolation, backoff, parking), several
relays on one store, and replay == projection.

The relay is driven directly (``publish_pending`` / ``drain``, with a fake clock) wherever timing
would matter. Relays on SQL stores, in tasks and processes: tests/test_outbox_relays.py.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Generator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from aegispay import (
    AegisPayError,
    GatewayResult,
    Money,
    Operation,
    Outcome,
    PaymentRequest,
    PaymentService,
    PaymentState,
    hookimpl,
)
from aegispay import events as ev
from aegispay.outbox import EventSink, OutboxMessage, OutboxRelay, RelaySettings, backoff_delay
from aegispay.settings import PluginConfig
from aegispay.store.base import PaymentStore
from aegispay.testing import ScriptedGateway, make_test_service

pytestmark = pytest.mark.anyio

S = PaymentState


def request(minor: int = 1000, **fields: object) -> PaymentRequest:
    return PaymentRequest(Money(minor, "USD"), **fields)  # type: ignore[arg-type]


# -- test plugins ------------------------------------------------------------------------------


class Recorder:
    """An async listener that records each event and whether it was committed on delivery."""

    def __init__(self) -> None:
        self.store: PaymentStore | None = None
        self.events: list[ev.Event] = []
        self.committed_on_delivery: list[bool] = []

    @hookimpl
    async def aegispay_on_event(self, event: ev.Event) -> None:
        assert self.store is not None
        history = await self.store.events(event.payment_id)
        self.committed_on_delivery.append(event in history)
        self.events.append(event)

    def by_payment(self) -> dict[str, list[ev.Event]]:
        grouped: dict[str, list[ev.Event]] = defaultdict(list)
        for event in self.events:
            grouped[event.payment_id].append(event)
        return grouped


class SyncRecorder:
    def __init__(self) -> None:
        self.event_ids: list[str] = []

    @hookimpl
    def aegispay_on_event(self, event: ev.Event) -> None:
        self.event_ids.append(event.event_id)


class ExplodingListener:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def aegispay_on_event(self, event: ev.Event) -> None:
        self.calls += 1
        raise RuntimeError("listener bug")


class AsyncExplodingListener:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    async def aegispay_on_event(self, event: ev.Event) -> None:
        self.calls += 1
        raise RuntimeError("async listener bug")


class AsyncSyncRecorder:
    """Like SyncRecorder, as an ``async def`` listener."""

    def __init__(self) -> None:
        self.event_ids: list[str] = []

    @hookimpl
    async def aegispay_on_event(self, event: ev.Event) -> None:
        self.event_ids.append(event.event_id)


class PassThroughWrapper:
    """A new-style wrapper around the event hook (e.g. for tracing): it changes nothing."""

    @hookimpl(wrapper=True)
    def aegispay_on_event(self, event: ev.Event) -> Generator[None, Any, Any]:
        return (yield)


class FlakySink:
    """Fails while ``failures_left`` > 0; records every delivery it was handed."""

    def __init__(self, name: str = "flaky", failures: int = 0) -> None:
        self.name = name
        self.failures_left = failures
        self.deliveries: list[list[str]] = []

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        self.deliveries.append([m.message_id for m in messages])
        if self.failures_left > 0:
            self.failures_left -= 1
            raise ConnectionError("broker unreachable")


class SinkPlugin:
    def __init__(self, *sinks: EventSink) -> None:
        self.sinks = sinks

    @hookimpl
    def aegispay_register_event_sinks(
        self, register: Callable[[EventSink], None], config: PluginConfig
    ) -> None:
        for sink in self.sinks:
            register(sink)


def recorded_service(
    *plugins: object, gateways: Sequence[ScriptedGateway] = ()
) -> tuple[PaymentService, Recorder]:
    recorder = Recorder()
    service = make_test_service(
        gateways=list(gateways) or [ScriptedGateway()], plugins=[recorder, *plugins]
    )
    recorder.store = service.store
    return service, recorder


# -- listeners -----------------------------------------------------------------------------------


async def test_listeners_get_nothing_until_the_relay_publishes_after_commit() -> None:
    service, recorder = recorded_service()
    # Not entered: no background relay, so nothing can be delivered from inside a commit.
    payment = await service.pay(request())
    assert recorder.events == []
    assert service.store.outbox_size() == payment.version  # type: ignore[attr-defined]

    published = await service.relay.drain()
    history = await service.payment_history(payment.id)

    assert published == len(history) == payment.version
    assert recorder.events == history
    assert all(recorder.committed_on_delivery)
    assert [e.event_id for e in recorder.events] == [
        f"{payment.id}:{v}" for v in range(1, payment.version + 1)
    ]
    assert service.store.outbox_size() == 0  # type: ignore[attr-defined]
    assert await service.relay.drain() == 0  # nothing delivered twice


async def test_background_relay_delivers_every_event_in_per_payment_order() -> None:
    service, recorder = recorded_service()
    async with service:
        async with anyio.create_task_group() as tg:
            for minor in range(100, 120):
                tg.start_soon(service.pay, request(minor))
        ids = await service.store.payment_ids()
    # Leaving the service drained the outbox.

    grouped = recorder.by_payment()
    assert sorted(grouped) == sorted(ids)
    for payment_id in ids:
        history = await service.payment_history(payment_id)
        delivered = grouped[payment_id]
        assert delivered == history
        assert [e.version for e in delivered] == list(range(1, len(history) + 1))
        assert [e.event_id for e in delivered] == [f"{payment_id}:{e.version}" for e in history]
    assert all(recorder.committed_on_delivery)
    assert len({e.event_id for e in recorder.events}) == len(recorder.events)


async def test_raising_listener_never_changes_state_and_the_relay_keeps_going() -> None:
    exploding = ExplodingListener()
    service, _ = recorded_service(exploding)
    async with service:
        first = await service.pay(request())
        refunded = await service.refund(first.id, Money(100, "USD"))
        second = await service.pay(request(2000))

    assert exploding.calls == refunded.version + second.version
    assert service.relay.published == exploding.calls
    # Delivered all the same: marked published, never retried, never parked.
    assert service.store.outbox_size() == 0  # type: ignore[attr-defined]
    assert await service.store.outbox_parked() == []
    assert service.relay.failed == 0
    assert await service.relay.drain() == 0
    # Nothing was written because of it: the histories end where the operations left them.
    assert len(await service.payment_history(first.id)) == refunded.version
    assert len(await service.payment_history(second.id)) == second.version
    assert await service.get_payment(first.id) == refunded
    assert await service.get_payment(second.id) == second
    assert refunded.state is S.PARTIALLY_REFUNDED
    assert second.state is S.COMPLETED
    for payment in (refunded, second):
        assert await service.replay(payment.id) == payment


@pytest.mark.parametrize(
    "exploding_first", [True, False], ids=["exploding-first", "exploding-last"]
)
@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "wrapped"])
async def test_raising_listener_does_not_silence_other_listeners(
    exploding_first: bool, flavour: str, wrapped: bool
) -> None:
    exploding = ExplodingListener() if flavour == "sync" else AsyncExplodingListener()
    quiet = SyncRecorder() if flavour == "sync" else AsyncSyncRecorder()
    # pluggy calls the plugin registered last first.
    plugins: list[object] = [quiet, exploding] if exploding_first else [exploding, quiet]
    if wrapped:
        plugins.append(PassThroughWrapper())
    service = make_test_service(gateways=[ScriptedGateway()], plugins=plugins)
    payment = await service.pay(request())
    await service.relay.drain()

    assert exploding.calls == payment.version
    # Every other listener still hears every event (they are independent observers).
    assert quiet.event_ids == [f"{payment.id}:{v}" for v in range(1, payment.version + 1)]


# -- sinks ---------------------------------------------------------------------------------------
# Relays built here get a fake clock: a payment backing off is retried by moving the clock to
# its retry time, never by waiting.


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def relay_for(
    service: PaymentService, sinks: Sequence[EventSink], clock: Clock, **settings: Any
) -> OutboxRelay:
    """A relay on the service's store and listeners; jitter fixed at half the cap."""
    return OutboxRelay(
        service.store,
        sinks,
        service.hooks,
        RelaySettings(**settings),
        clock=clock,
        rng=lambda: 0.5,
    )


async def next_retry(service: PaymentService, clock: Clock) -> datetime | None:
    return (await service.store.outbox_counts(clock())).next_retry_at


def ids(payment: Any) -> list[str]:
    return [f"{payment.id}:{v}" for v in range(1, payment.version + 1)]


class PoisonSink:
    """Refuses every batch holding a message of a payment in ``poisoned`` (a consumer that
    chokes on those payments); records every batch it was handed and what it accepted."""

    def __init__(self, name: str = "poison") -> None:
        self.name = name
        self.poisoned: set[str] = set()
        self.batches: list[list[str]] = []
        self.accepted: list[str] = []

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        self.batches.append([m.message_id for m in messages])
        if any(m.payment_id in self.poisoned for m in messages):
            raise ValueError("cannot decode")
        self.accepted.extend(m.message_id for m in messages)


async def test_failing_sink_is_retried_with_the_same_message_ids_after_backoff() -> None:
    sink, clock = FlakySink(failures=2), Clock()
    service, recorder = recorded_service()
    relay = relay_for(service, [sink], clock)
    payment = await service.pay(request())
    expected = ids(payment)

    for failures in (1, 2):
        started = clock()
        assert await relay.publish_pending() == 0  # recorded, not raised
        # Not delivered to listeners, not marked published; the attempt is counted.
        assert recorder.events == []
        assert service.store.outbox_size() == payment.version  # type: ignore[attr-defined]
        pending = await service.store.outbox_pending(100)
        assert [m.attempts for m in pending] == [failures] * payment.version
        # Backing off: exponential (base 0.05 s doubled per failure), full jitter (rng 0.5).
        due = await next_retry(service, clock)
        assert due == started + timedelta(seconds=0.05 * 2 ** (failures - 1) * 0.5)
        assert await relay.drain() == 0  # not due yet: nothing is tried
        assert len(sink.deliveries) == failures
        clock.now = due

    assert await relay.publish_pending() == payment.version
    assert sink.deliveries == [expected, expected, expected]
    assert [e.event_id for e in recorder.events] == expected
    assert await service.store.outbox_parked() == []
    assert await relay.drain() == 0
    assert (relay.published, relay.failed, relay.parked) == (payment.version, 2 * len(expected), 0)


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    settings = RelaySettings(base_backoff_s=0.1, max_backoff_s=1.0)
    assert backoff_delay(settings, 1, lambda: 0.0) == pytest.approx(0.1)
    assert backoff_delay(settings, 3, lambda: 0.0) == pytest.approx(0.4)
    assert backoff_delay(settings, 3, lambda: 0.75) == pytest.approx(0.1)
    assert backoff_delay(settings, 30, lambda: 0.0) == pytest.approx(1.0)  # capped
    # Never zero: a failed payment is never due again at the same instant.
    assert 0 < backoff_delay(settings, 1, lambda: 0.999999) < 1e-6
    jittered = {backoff_delay(settings, 4, random.Random(seed).random) for seed in range(50)}
    assert len(jittered) == 50 and all(0 < d <= 0.8 for d in jittered)


async def test_a_failing_payment_never_blocks_the_others() -> None:
    sink, clock = PoisonSink(), Clock()
    service, recorder = recorded_service()
    relay = relay_for(service, [sink], clock, max_attempts=3)
    poisoned = await service.pay(request(100))
    sink.poisoned.add(poisoned.id)
    healthy = await service.pay(request(200))

    assert await relay.drain() == healthy.version
    # The mixed batch failed; delivered again payment by payment, only the poisoned failed.
    assert sink.batches == [ids(poisoned) + ids(healthy), ids(poisoned), ids(healthy)]
    assert sink.accepted == ids(healthy)
    assert {e.payment_id for e in recorder.events} == {healthy.id}

    # While the poisoned payment backs off, new payments flow at once.
    for attempt in (2, 3):
        later = await service.pay(request(300 + attempt))
        assert await relay.drain() == later.version
        assert sink.accepted[-later.version :] == ids(later)
        clock.now = await next_retry(service, clock) or clock.now
        assert await relay.drain() == 0
        assert sink.batches[-1] == ids(poisoned)  # alone: nothing to isolate
    # Third failure: parked with its error; listeners never saw it.
    parked = await service.store.outbox_parked()
    assert [m.message_id for m, _ in parked] == ids(poisoned)
    assert all(m.attempts == 3 for m, _ in parked)
    assert all(error == "poison: ValueError('cannot decode')" for _, error in parked)
    assert poisoned.id not in {e.payment_id for e in recorder.events}
    assert relay.parked == poisoned.version
    assert service.store.outbox_size() == 0  # type: ignore[attr-defined]

    # The payment's later messages continue (consumers see the gap), once the sink copes.
    sink.poisoned.clear()
    refunded = await service.refund(poisoned.id, Money(10, "USD"))
    assert await relay.drain() == refunded.version - poisoned.version
    assert sink.accepted[poisoned.version - refunded.version :] == ids(refunded)[poisoned.version :]
    # Requeued, the parked ones arrive late, in their own order.
    assert await service.store.outbox_requeue() == ids(poisoned)
    assert await relay.drain() == poisoned.version
    assert sink.accepted[-poisoned.version :] == ids(poisoned)
    assert await service.store.outbox_parked() == []


async def test_messages_are_parked_after_max_attempts_and_later_ones_still_flow() -> None:
    sink, clock = FlakySink(failures=3), Clock()
    service, recorder = recorded_service()
    relay = relay_for(service, [sink], clock, max_attempts=3)
    first = await service.pay(request())
    first_ids = ids(first)

    for _ in range(3):
        assert await relay.publish_pending() == 0
        clock.now = await next_retry(service, clock) or clock.now

    parked = await service.store.outbox_parked()
    assert [m.message_id for m, _ in parked] == first_ids
    assert all("broker unreachable" in error for _, error in parked)
    assert [m.sequence for m, _ in parked] == list(range(1, first.version + 1))
    assert sink.deliveries == [first_ids] * 3
    assert service.store.outbox_size() == 0  # type: ignore[attr-defined]
    assert await relay.publish_pending() == 0
    assert recorder.events == []  # parked messages never reached listeners

    # Nothing is blocked: the broker is back and new events go through.
    second = await service.pay(request(500))
    assert await relay.drain() == second.version
    assert sink.deliveries[-1] == ids(second)
    assert {e.payment_id for e in recorder.events} == {second.id}


async def test_default_relay_parks_after_ten_attempts() -> None:
    sink, clock = FlakySink(failures=1_000), Clock()
    service, _ = recorded_service()
    relay = relay_for(service, [sink], clock)
    payment = await service.pay(request())
    attempts = 0
    waits = []
    while service.store.outbox_size():  # type: ignore[attr-defined]
        assert await relay.publish_pending() == 0
        attempts += 1
        assert attempts <= RelaySettings().max_attempts
        due = await next_retry(service, clock)
        if due is not None:
            waits.append((due - clock()).total_seconds())
            clock.now = due
    assert attempts == RelaySettings().max_attempts
    assert len(await service.store.outbox_parked()) == payment.version
    # 0.025, 0.05, ... doubling (half the cap, rng 0.5), capped at 5 s * 0.5.
    assert waits == pytest.approx([min(0.05 * 2**n, 5.0) * 0.5 for n in range(9)])


async def test_every_sink_gets_every_message_at_least_once() -> None:
    steady, flaky, clock = FlakySink("steady"), FlakySink("flaky", failures=1), Clock()
    service, _ = recorded_service()
    relay = relay_for(service, [steady, flaky], clock)
    payment = await service.pay(request())
    assert await relay.publish_pending() == 0
    clock.now = await next_retry(service, clock) or clock.now
    assert await relay.drain() == payment.version
    for sink in (steady, flaky):
        delivered = {message_id for batch in sink.deliveries for message_id in batch}
        assert delivered == set(ids(payment))
    assert len(steady.deliveries) == 2  # the steady sink saw the batch again: dedupe on id


async def test_a_sink_failing_for_one_payment_stops_later_sinks_for_it_only() -> None:
    first, second, clock = PoisonSink("first"), PoisonSink("second"), Clock()
    service, recorder = recorded_service()
    relay = relay_for(service, [first, second], clock)
    bad = await service.pay(request(100))
    good = await service.pay(request(200))
    second.poisoned.add(bad.id)
    assert await relay.drain() == good.version
    assert first.accepted == ids(bad) + ids(good)  # the first sink took both
    assert second.accepted == ids(good)
    assert {e.payment_id for e in recorder.events} == {good.id}
    pending = await service.store.outbox_pending(100)
    assert [(m.message_id, m.attempts) for m in pending] == [(i, 1) for i in ids(bad)]


async def test_a_hanging_sink_fails_the_batch_within_the_lease() -> None:
    class HangingSink:
        name = "hanging"

        async def publish(self, messages: Sequence[OutboxMessage]) -> None:
            await anyio.sleep_forever()

    clock = Clock()
    service, recorder = recorded_service()
    relay = relay_for(service, [HangingSink()], clock, lease_s=0.2)
    payment = await service.pay(request())
    with anyio.fail_after(30):
        assert await relay.publish_pending() == 0  # gave up after 80% of the lease
    assert recorder.events == []
    pending = await service.store.outbox_pending(100)
    assert [m.attempts for m in pending] == [1] * payment.version
    counts = await service.store.outbox_counts(clock())
    assert counts.backing_off == payment.version and counts.leased_payments == 0


async def test_cancelling_a_relay_mid_batch_still_settles_the_batch() -> None:
    class GateSink:
        name = "gate"

        def __init__(self) -> None:
            self.entered, self.release = anyio.Event(), anyio.Event()
            self.calls = 0

        async def publish(self, messages: Sequence[OutboxMessage]) -> None:
            self.calls += 1
            self.entered.set()
            await self.release.wait()

    sink, clock = GateSink(), Clock()
    service, recorder = recorded_service()
    relay = relay_for(service, [sink], clock)
    payment = await service.pay(request())
    async with anyio.create_task_group() as group:
        group.start_soon(relay.publish_pending)
        await sink.entered.wait()
        group.cancel_scope.cancel()  # e.g. the service shutting down mid-delivery
        sink.release.set()
    # The batch was seen through: delivered once, marked published, nothing to redeliver.
    assert relay.published == payment.version
    assert [e.event_id for e in recorder.events] == ids(payment)
    assert service.store.outbox_size() == 0  # type: ignore[attr-defined]
    assert await relay.drain() == 0 and sink.calls == 1


async def test_drain_settles_each_batch_and_claims_the_next_in_one_store_step() -> None:
    class Counting:
        """The store, counting the relay's calls."""

        def __init__(self, store: PaymentStore) -> None:
            self.store, self.calls = store, defaultdict[str, int](int)

        def __getattr__(self, name: str) -> Any:
            if name.startswith("outbox_"):
                self.calls[name] += 1
            return getattr(self.store, name)

    sink, clock = FlakySink("recorder"), Clock()
    service, recorder = recorded_service()
    payments = [await service.pay(request(100 + i)) for i in range(3)]
    store = Counting(service.store)
    relay = OutboxRelay(store, [sink], service.hooks, RelaySettings(batch_size=2), clock=clock)  # type: ignore[arg-type]
    assert await relay.drain() == sum(p.version for p in payments)
    assert [e.event_id for e in recorder.events] == [i for p in payments for i in ids(p)]
    batches = len(sink.deliveries)
    assert batches > 3  # several batches: each settled together with the next claim
    assert store.calls["outbox_claim"] == 1  # the first only
    assert store.calls["outbox_settle_and_claim"] == batches
    assert store.calls["outbox_settle"] == 0


async def test_a_drain_cancelled_between_batches_hands_the_next_batch_back() -> None:
    class CancellingSink:
        """Cancels the relay's task while it delivers the first batch."""

        name = "cancelling"

        def __init__(self) -> None:
            self.scope: anyio.CancelScope | None = None
            self.deliveries: list[list[str]] = []

        async def publish(self, messages: Sequence[OutboxMessage]) -> None:
            self.deliveries.append([m.message_id for m in messages])
            assert self.scope is not None
            self.scope.cancel()

    sink, clock = CancellingSink(), Clock()
    service, recorder = recorded_service()
    first, second = await service.pay(request(100)), await service.pay(request(200))
    relay = relay_for(service, [sink], clock, batch_size=first.version)
    with anyio.CancelScope() as scope:
        sink.scope = scope
        await relay.drain()
    # The batch in hand was seen through; the one claimed with its settle was never
    # delivered, and its payment is not left leased: another relay takes it at once.
    assert sink.deliveries == [ids(first)]
    assert [e.event_id for e in recorder.events] == ids(first)
    assert (await service.store.outbox_counts(clock())).leased_payments == 0
    other = relay_for(service, [FlakySink("other")], clock)
    assert await other.drain() == second.version


async def test_relay_does_not_raise_on_exit_while_a_sink_is_down() -> None:
    sink = FlakySink(failures=1_000)
    service, recorder = recorded_service(SinkPlugin(sink))
    async with service:
        payment = await service.pay(request())
    # Leaving drained what was deliverable; the failing payment backs off, still pending.
    assert recorder.events == []
    assert service.store.outbox_size() == payment.version  # type: ignore[attr-defined]
    assert sink.deliveries and service.relay.failed > 0


async def test_background_relay_wakes_when_a_backoff_is_due() -> None:
    class BrokenUntilToldSink:
        name = "broken"

        def __init__(self) -> None:
            self.broken = True
            self.failed = anyio.Event()
            self.delivered = anyio.Event()
            self.calls = 0

        async def publish(self, messages: Sequence[OutboxMessage]) -> None:
            self.calls += 1
            if self.broken:
                self.failed.set()
                raise ConnectionError("down")
            self.delivered.set()

    sink = BrokenUntilToldSink()
    service, recorder = recorded_service(SinkPlugin(sink))
    with anyio.fail_after(30):
        async with service:
            payment = await service.pay(request())  # its last commit is the last wake-up
            await sink.failed.wait()
            sink.broken = False
            # No commit, no notify: only the payment's backoff ending can wake the relay.
            await sink.delivered.wait()
            await wait_until(lambda: len(recorder.events) == payment.version)
    assert [e.event_id for e in recorder.events] == ids(payment)
    assert sink.calls < 20  # woken by deadlines, not spinning


async def wait_until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until ``condition`` holds (they only need the event loop)."""
    while not condition():
        await anyio.lowlevel.checkpoint()


async def test_several_relays_on_one_store_deliver_each_payment_in_order() -> None:
    class SlowRecorder:
        """Suspends inside every publish, so relays interleave."""

        name = "recorder"

        def __init__(self) -> None:
            self.log: list[tuple[str, int]] = []

        async def publish(self, messages: Sequence[OutboxMessage]) -> None:
            for message in messages:
                await anyio.lowlevel.checkpoint()
                self.log.append((message.payment_id, message.sequence))

    sink = SlowRecorder()
    service = make_test_service(gateways=[ScriptedGateway()])
    relays = [
        OutboxRelay(service.store, [sink], service.hooks, RelaySettings(batch_size=5))
        for _ in range(3)
    ]
    for relay in relays:
        service.store.on_commit(relay.notify)

    async def pay(minor: int) -> None:
        payment = await service.pay(request(minor))
        if minor % 3 == 0:
            await service.refund(payment.id, Money(10, "USD"))

    async with anyio.create_task_group() as relays_group:
        for relay in relays:
            relays_group.start_soon(relay.run)
        async with anyio.create_task_group() as payers:
            for minor in range(100, 160):
                payers.start_soon(pay, minor)
        with anyio.fail_after(30):
            await wait_until(lambda: service.store.outbox_size() == 0)  # type: ignore[attr-defined]
            for relay in relays:
                await relay.drain()
        relays_group.cancel_scope.cancel()

    ids_ = await service.store.payment_ids()
    total = 0
    for payment_id in ids_:
        versions = [v for p, v in sink.log if p == payment_id]
        history = await service.payment_history(payment_id)
        assert versions == list(range(1, len(history) + 1))  # once each, in order
        total += len(history)
    assert len(sink.log) == total
    assert sum(relay.published for relay in relays) == total
    assert all(relay.published > 0 for relay in relays)  # they really shared the work


# -- replay ----------------------------------------------------------------------------------------


async def test_replay_equals_projection_after_a_mixed_workload() -> None:
    declined = GatewayResult(Outcome.DECLINED, decline_code="card_declined")
    first = ScriptedGateway(
        "first",
        script={
            Operation.AUTHORIZE: [
                Outcome.SUCCEEDED,
                declined,
                Outcome.UNKNOWN,
                Outcome.REQUIRES_ACTION,
                Outcome.NOT_SENT,
                Outcome.SUCCEEDED,
                Outcome.UNKNOWN,
                declined,
            ]
            * 3,
            Operation.STATUS: [Outcome.UNKNOWN] * 4,
            Operation.REFUND: [declined, Outcome.SUCCEEDED, Outcome.UNKNOWN],
            Operation.CAPTURE: [Outcome.NOT_SENT],
        },
    )
    second = ScriptedGateway("second")
    service, recorder = recorded_service(gateways=[first, second])
    errors: list[AegisPayError] = []

    async def attempt(operation: str, *args: object) -> None:
        try:
            await getattr(service, operation)(*args)
        except AegisPayError as error:
            errors.append(error)

    async with service:
        for i in range(24):
            mode = "manual" if i % 3 == 0 else "automatic"
            await attempt("pay", request(1000 + i, capture_mode=mode, metadata={"i": str(i)}))
        for payment_id in await service.store.payment_ids():
            payment = await service.get_payment(payment_id)
            if payment.state is S.AUTHORIZED:
                await attempt("capture", payment_id, Money(600, "USD"))
                await attempt("capture", payment_id)
            elif payment.state is S.PROCESSING:
                await attempt("sync_payment", payment_id)
            elif payment.state is S.REQUIRES_ACTION:
                await attempt("cancel", payment_id, "abandoned")
            payment = await service.get_payment(payment_id)
            if payment.state is S.COMPLETED:
                await attempt("refund", payment_id, Money(100, "USD"))
                await attempt("refund", payment_id, Money(100, "USD"))
                await attempt("refund", payment_id)
        ids = await service.store.payment_ids()

    states = {(await service.get_payment(pid)).state for pid in ids}
    assert {S.FAILED, S.CANCELLED, S.REFUNDED} <= states  # the workload really was mixed
    assert errors  # and some operations were refused along the way
    grouped = recorder.by_payment()
    for payment_id in ids:
        stored = await service.get_payment(payment_id)
        assert await service.replay(payment_id) == stored
        assert grouped[payment_id] == await service.payment_history(payment_id)
