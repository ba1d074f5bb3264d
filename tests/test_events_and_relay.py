"""Events after commit: listeners, sinks (at-least-once, parking) and replay == projection.

The relay is driven directly (``publish_pending`` / ``drain``) wherever timing would matter.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Generator, Sequence
from typing import Any

import anyio
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
from aegispay.outbox import EventSink, OutboxMessage, OutboxRelay, RelaySettings
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
    assert service.store.outbox_size() == 0  # type: ignore[attr-defined]
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


async def test_failing_sink_is_retried_with_the_same_message_ids() -> None:
    sink = FlakySink(failures=2)
    service, recorder = recorded_service(SinkPlugin(sink))
    payment = await service.pay(request())
    expected = [f"{payment.id}:{v}" for v in range(1, payment.version + 1)]

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await service.relay.publish_pending()
        # Not delivered to listeners, not marked published.
        assert recorder.events == []
        assert service.store.outbox_size() == payment.version  # type: ignore[attr-defined]

    assert await service.relay.publish_pending() == payment.version
    assert sink.deliveries == [expected, expected, expected]
    assert [e.event_id for e in recorder.events] == expected
    assert await service.store.outbox_parked() == []
    assert await service.relay.drain() == 0


async def test_messages_are_parked_after_max_attempts_and_later_ones_still_flow() -> None:
    sink = FlakySink(failures=3)
    service, recorder = recorded_service(SinkPlugin(sink))
    relay = OutboxRelay(service.store, [sink], service.hooks, RelaySettings(max_attempts=3))
    first = await service.pay(request())
    first_ids = [f"{first.id}:{v}" for v in range(1, first.version + 1)]

    for _ in range(3):
        with pytest.raises(ConnectionError):
            await relay.publish_pending()

    parked = await service.store.outbox_parked()
    assert [m.message_id for m, _ in parked] == first_ids
    assert all("broker unreachable" in error for _, error in parked)
    assert [m.sequence for m, _ in parked] == list(range(1, first.version + 1))
    assert sink.deliveries == [first_ids] * 3
    assert service.store.outbox_size() == 0  # type: ignore[attr-defined]
    assert await relay.publish_pending() == 0
    assert recorder.events == []  # parked messages never reached listeners

    # The queue is not blocked: the broker is back and new events go through.
    second = await service.pay(request(500))
    assert await relay.drain() == second.version
    assert sink.deliveries[-1] == [f"{second.id}:{v}" for v in range(1, second.version + 1)]
    assert {e.payment_id for e in recorder.events} == {second.id}


async def test_default_relay_parks_after_ten_attempts() -> None:
    sink = FlakySink(failures=1_000)
    service, _ = recorded_service(SinkPlugin(sink))
    payment = await service.pay(request())
    attempts = 0
    while service.store.outbox_size():  # type: ignore[attr-defined]
        with pytest.raises(ConnectionError):
            await service.relay.publish_pending()
        attempts += 1
        assert attempts <= RelaySettings().max_attempts
    assert attempts == RelaySettings().max_attempts
    assert len(await service.store.outbox_parked()) == payment.version


async def test_every_sink_gets_every_message_at_least_once() -> None:
    steady, flaky = FlakySink("steady"), FlakySink("flaky", failures=1)
    service, _ = recorded_service(SinkPlugin(steady, flaky))
    payment = await service.pay(request())
    with pytest.raises(ConnectionError):
        await service.relay.publish_pending()
    await service.relay.drain()
    expected = {f"{payment.id}:{v}" for v in range(1, payment.version + 1)}
    for sink in (steady, flaky):
        delivered = {message_id for batch in sink.deliveries for message_id in batch}
        assert delivered == expected


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
