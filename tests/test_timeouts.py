"""Gateway-call timeouts (``aegispay.timeouts.run_with_timeout``) on asyncio and trio, alone and
through the service: adapters may open their own cancel scopes, a deadline becomes TimeoutError,
somebody else's cancellation stays a cancellation, and a status lookup that could not be made is
UNKNOWN (never a reason to route the payment elsewhere)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import pytest
from aegispay import (
    AuthorizeRequest,
    CaptureRequest,
    GatewayNotSent,
    GatewayResult,
    Money,
    Operation,
    Outcome,
    PaymentRequest,
    PaymentService,
    PaymentState,
    RefundRequest,
    Settings,
    StatusRequest,
    VoidRequest,
)
from aegispay import events as ev
from aegispay.plugins.simulated_gateways import SimulatedGatewaysPlugin
from aegispay.settings import EngineSettings, PluginConfig
from aegispay.testing import ScriptedGateway, make_test_service
from aegispay.timeouts import run_with_timeout

pytestmark = pytest.mark.anyio

S = PaymentState
T = TypeVar("T")
SHORT = 0.05  # a deadline that is meant to pass
LONG = 30.0  # a deadline that is never meant to pass
GUARD = 10.0  # a test that hangs fails instead


def usd(minor: int) -> Money:
    return Money(minor, "USD")


def no_pending_cancellation() -> bool:
    """On asyncio, the task carries no cancellation request that a timeout left behind."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not on asyncio
        return True
    return task is None or task.cancelling() == 0


# -- coroutines with every shape of first step -------------------------------------------------


async def never_suspends() -> str:
    return "immediate"


async def suspends_once() -> str:
    await anyio.lowlevel.checkpoint()
    return "after one step"


async def own_fail_after_first() -> str:
    with anyio.fail_after(LONG):
        await anyio.lowlevel.checkpoint()
        await anyio.lowlevel.checkpoint()
        return "own fail_after"


async def own_cancel_scope_first() -> str:
    with anyio.CancelScope():
        await anyio.lowlevel.checkpoint()
    return "own cancel scope"


async def own_scope_without_awaiting() -> str:
    with anyio.fail_after(LONG):  # noqa: ASYNC100 - the point: a scope, then no await
        return "scope, no await"


async def own_nested_scopes() -> str:
    with anyio.CancelScope(), anyio.fail_after(LONG), anyio.move_on_after(LONG):
        await anyio.lowlevel.checkpoint()
    await anyio.lowlevel.checkpoint()
    return "nested scopes"


async def own_scope_that_expires_inside() -> str:
    """The adapter's own, shorter deadline passes: its own scope absorbs it."""
    with anyio.move_on_after(SHORT) as scope:
        await anyio.sleep_forever()
    assert scope.cancelled_caught
    return "own deadline absorbed"


async def own_scope_cancelled_inside() -> str:
    with anyio.CancelScope() as scope:
        scope.cancel()
        await anyio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    return "own cancel absorbed"


async def task_group_inside() -> str:
    results: list[int] = []

    async def child(n: int) -> None:
        await anyio.lowlevel.checkpoint()
        results.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(child, n)
    return f"children {sorted(results)}"


SHAPES: list[tuple[Callable[[], Coroutine[Any, Any, str]], str]] = [
    (never_suspends, "immediate"),
    (suspends_once, "after one step"),
    (own_fail_after_first, "own fail_after"),
    (own_cancel_scope_first, "own cancel scope"),
    (own_scope_without_awaiting, "scope, no await"),
    (own_nested_scopes, "nested scopes"),
    (own_scope_that_expires_inside, "own deadline absorbed"),
    (own_scope_cancelled_inside, "own cancel absorbed"),
    (task_group_inside, "children [0, 1, 2]"),
]


@pytest.mark.parametrize(("make", "expected"), SHAPES, ids=[m.__name__ for m, _ in SHAPES])
async def test_returns_the_result_of_every_shape_of_coroutine(
    make: Callable[[], Coroutine[Any, Any, str]], expected: str
) -> None:
    with anyio.fail_after(GUARD):
        result = await run_with_timeout(make(), LONG)
        # The task is left as it was: it can await and open scopes again.
        await anyio.lowlevel.checkpoint()
        with anyio.CancelScope():
            await anyio.lowlevel.checkpoint()
    assert result == expected
    assert no_pending_cancellation()


async def test_an_asyncio_timeout_opened_by_the_adapter_is_fine(anyio_backend: str) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("asyncio.timeout exists only on asyncio")

    async def adapter() -> str:
        async with asyncio.timeout(LONG):
            await asyncio.sleep(0)
            return "asyncio.timeout"

    with anyio.fail_after(GUARD):
        assert await run_with_timeout(adapter(), LONG) == "asyncio.timeout"
    assert no_pending_cancellation()


async def test_waits_for_a_coroutine_that_suspends_until_an_event() -> None:
    event = anyio.Event()
    results: list[str] = []

    async def waits() -> str:
        await event.wait()
        return "woken"

    async def call() -> None:
        results.append(await run_with_timeout(waits(), LONG))

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            assert results == []
            event.set()
    assert results == ["woken"]


async def test_exceptions_from_the_coroutine_pass_through_unchanged() -> None:
    class AdapterBug(Exception):
        pass

    async def raises_at_once() -> None:
        raise AdapterBug("at once")

    async def raises_after_waiting() -> None:
        with anyio.fail_after(LONG):
            await anyio.lowlevel.checkpoint()
        raise AdapterBug("later")

    with pytest.raises(AdapterBug, match="at once"):
        await run_with_timeout(raises_at_once(), LONG)
    with pytest.raises(AdapterBug, match="later"):
        await run_with_timeout(raises_after_waiting(), LONG)
    assert no_pending_cancellation()


# -- the deadline ------------------------------------------------------------------------------


async def test_raises_timeout_error_when_the_deadline_passes() -> None:
    cleaned_up: list[bool] = []

    async def hangs() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cleaned_up.append(True)

    with anyio.fail_after(GUARD), pytest.raises(TimeoutError):
        await run_with_timeout(hangs(), SHORT)
    assert cleaned_up == [True]  # the call was interrupted, not abandoned
    assert no_pending_cancellation()
    # The task is not left cancelled: it can wait again.
    assert await run_with_timeout(suspends_once(), LONG) == "after one step"


async def test_times_out_an_adapter_that_opened_its_own_longer_scope() -> None:
    async def hangs_in_own_scope() -> None:
        with anyio.fail_after(LONG), anyio.CancelScope():
            await anyio.sleep_forever()

    with anyio.fail_after(GUARD), pytest.raises(TimeoutError):
        await run_with_timeout(hangs_in_own_scope(), SHORT)
    assert no_pending_cancellation()
    with anyio.CancelScope():
        await anyio.lowlevel.checkpoint()


async def test_outer_cancel_scope_cancellation_is_not_a_timeout() -> None:
    event = anyio.Event()
    outcomes: list[str] = []

    async def waits() -> None:
        await event.wait()

    async def call(scopes: list[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            try:
                await run_with_timeout(waits(), LONG)
            except TimeoutError:
                outcomes.append("timeout")
                raise
            outcomes.append("returned")  # pragma: no cover - the scope is cancelled first
        outcomes.append("cancelled" if scope.cancelled_caught else "not cancelled")

    scopes: list[anyio.CancelScope] = []
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, scopes)
            await anyio.wait_all_tasks_blocked()
            scopes[0].cancel()
    assert outcomes == ["cancelled"]


async def test_outer_move_on_after_propagates_as_cancellation() -> None:
    with anyio.fail_after(GUARD):
        with anyio.move_on_after(SHORT) as outer:
            await run_with_timeout(anyio.sleep_forever(), LONG)
            pytest.fail("the outer deadline did not interrupt the call")  # pragma: no cover
    assert outer.cancelled_caught
    assert no_pending_cancellation()


async def test_outer_cancellation_of_an_adapter_with_its_own_scope() -> None:
    async def own_scope() -> None:
        with anyio.fail_after(LONG):
            await anyio.sleep_forever()

    with anyio.fail_after(GUARD):
        with anyio.move_on_after(SHORT) as outer:
            await run_with_timeout(own_scope(), LONG)
    assert outer.cancelled_caught
    assert no_pending_cancellation()


async def test_fifty_concurrent_calls_in_a_task_group() -> None:
    """Every other call waits for an event and must return; the others hang and must time out.
    The event is set only once every hanging call has timed out, so the timers of the ones
    that time out do not disturb the ones that do not."""
    release = anyio.Event()
    all_timed_out = anyio.Event()
    results: dict[int, str] = {}
    hanging = [n for n in range(50) if n % 2]

    async def waits(n: int) -> str:
        with anyio.fail_after(LONG):  # half of them open their own scope first
            await release.wait()
        return f"done {n}"

    async def waits_plain(n: int) -> str:
        await release.wait()
        return f"done {n}"

    async def call(n: int) -> None:
        if n in hanging:
            try:
                await run_with_timeout(anyio.sleep_forever(), SHORT)
            except TimeoutError:
                results[n] = "timeout"
                if sum(r == "timeout" for r in results.values()) == len(hanging):
                    all_timed_out.set()
            return
        coro = waits(n) if n % 4 == 0 else waits_plain(n)
        results[n] = await run_with_timeout(coro, LONG)

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(call, n)
            await all_timed_out.wait()
            assert len(results) == len(hanging)  # nobody else finished early
            release.set()
    assert results == {n: "timeout" if n in hanging else f"done {n}" for n in range(50)}


# -- through the service -----------------------------------------------------------------------


class ScopedGateway(ScriptedGateway):
    """An adapter that, like an HTTP client with its own timeouts, opens a cancel scope before
    its first await on every call."""

    async def _scoped(self, call: Callable[[], Awaitable[T]]) -> T:
        with anyio.fail_after(5):
            await anyio.sleep(0)  # noqa: ASYNC115 - what adapters write
            with anyio.CancelScope():
                await anyio.lowlevel.checkpoint()
            return await call()

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        return await self._scoped(lambda: super(ScopedGateway, self).authorize(request))

    async def capture(self, request: CaptureRequest) -> GatewayResult:
        return await self._scoped(lambda: super(ScopedGateway, self).capture(request))

    async def void(self, request: VoidRequest) -> GatewayResult:
        return await self._scoped(lambda: super(ScopedGateway, self).void(request))

    async def refund(self, request: RefundRequest) -> GatewayResult:
        return await self._scoped(lambda: super(ScopedGateway, self).refund(request))

    async def get_status(self, request: StatusRequest) -> GatewayResult:
        return await self._scoped(lambda: super(ScopedGateway, self).get_status(request))


async def test_adapter_opening_its_own_scopes_completes_payments() -> None:
    gateway = ScopedGateway(
        capture_on_authorize=False,
        script={Operation.AUTHORIZE: [Outcome.SUCCEEDED, Outcome.UNKNOWN]},
    )
    service = make_test_service(gateways=[gateway])
    async with service:
        with anyio.fail_after(GUARD):
            paid = await service.pay(PaymentRequest(usd(1000)))  # authorize, then capture
            # An UNKNOWN answer is settled by a status lookup through the same adapter.
            looked_up = await service.pay(PaymentRequest(usd(300)))
            manual = await service.pay(PaymentRequest(usd(500), capture_mode="manual"))
            cancelled = await service.cancel(manual.id)
            refunded = await service.refund(paid.id, usd(400))

    assert paid.state is S.COMPLETED
    assert [a.outcome for a in paid.attempts] == [Outcome.SUCCEEDED]
    assert looked_up.state is S.COMPLETED
    assert looked_up.captured_amount == usd(300) == usd(gateway.captured[looked_up.id])
    assert cancelled.state is S.CANCELLED
    assert manual.id in gateway.voided
    assert refunded.refunded_amount == usd(400) == usd(gateway.refunded[paid.id])
    assert {c.operation for c in gateway.calls} == set(Operation)


async def test_many_concurrent_payments_through_a_scoped_adapter() -> None:
    gateway = ScopedGateway(capture_on_authorize=False)
    service = make_test_service(gateways=[gateway])
    payments: list[Any] = []

    async def pay(minor: int) -> None:
        payments.append(await service.pay(PaymentRequest(usd(minor))))

    async with service:
        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                for minor in range(100, 130):
                    tg.start_soon(pay, minor)

    assert len(payments) == 30
    assert all(p.state is S.COMPLETED for p in payments)
    assert all(a.outcome is Outcome.SUCCEEDED for p in payments for a in p.attempts)
    assert all(gateway.captured[p.id] == p.amount.minor for p in payments)


def simulated(**gateway: Any) -> tuple[PaymentService, SimulatedGatewaysPlugin]:
    """A service whose only gateway is one simulated gateway named "g" that always succeeds
    (unless overridden), with real (1 ms) latency, so every call suspends."""
    config = {"name": "g", "latency_ms": 1.0, "decline_rate": 0, "not_sent_rate": 0}
    config |= {"unknown_rate": 0, **gateway}
    plugin = SimulatedGatewaysPlugin({"seed": 1, "gateways": [config]})
    service: PaymentService = make_test_service(plugins=[plugin], gateways=[])
    return service, plugin


async def test_simulated_gateways_with_latency_complete_every_payment() -> None:
    service, plugin = simulated()
    assert list(service.gateways) == ["g"]
    results: list[Any] = []

    async def pay(n: int) -> None:
        mode = "manual" if n % 3 == 0 else "automatic"
        payment = await service.pay(PaymentRequest(usd(100 + n), capture_mode=mode))
        if mode == "manual":
            payment = await service.capture(payment.id)
        if n % 2 == 0:
            payment = await service.refund(payment.id, usd(50))
        results.append(payment)

    async with service:
        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                for n in range(30):
                    tg.start_soon(pay, n)

    ledger = plugin.ledger
    assert len(results) == 30
    assert ledger.unknown_keys == set()
    assert ledger.duplicate_charges() == 0
    for payment in results:
        assert [a.outcome for a in payment.attempts] == [Outcome.SUCCEEDED]
        assert payment.pending is None
        [reference] = ledger.by_payment[payment.id]
        charge = ledger.charges[reference]
        assert charge.captured_minor == payment.captured_amount.minor == payment.amount.minor
        assert charge.refunded_minor == payment.refunded_amount.minor
        expected = S.PARTIALLY_REFUNDED if payment.refunded_amount.minor else S.COMPLETED
        assert payment.state is expected


async def test_simulated_unknowns_come_only_from_the_outcome_draw() -> None:
    """With UNKNOWN drawn for some authorisations: every UNKNOWN the engine recorded is one the
    gateway drew (none comes from a disturbed cancel scope), and all are settled."""
    service, plugin = simulated(unknown_rate=0.3)
    results: list[Any] = []

    async def pay(n: int) -> None:
        results.append(await service.pay(PaymentRequest(usd(100 + n), reference=f"order-{n}")))

    async with service:
        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                for n in range(40):
                    tg.start_soon(pay, n)

    ledger = plugin.ledger
    recorded: dict[str, str] = {}  # idempotency key -> the message the engine recorded
    for payment in results:
        for event in await service.payment_history(payment.id):
            if isinstance(event, ev.PaymentOutcomeUnknown):
                recorded[f"{payment.id}-{event.attempt_no}"] = event.message
    assert ledger.unknown_keys, "the draw should have made some answers UNKNOWN"
    assert set(recorded) == ledger.unknown_keys
    assert set(recorded.values()) == {"read timeout (simulated)"}
    assert ledger.duplicate_charges() == 0
    assert all(p.state in (S.COMPLETED, S.FAILED) for p in results)
    for payment in results:
        live = ledger.by_payment.get(payment.id, [])
        if payment.state is S.COMPLETED:
            assert len(live) == 1
            assert ledger.charges[live[0]].captured_minor == payment.amount.minor
        else:
            assert live == []


# -- a status lookup that cannot be made -------------------------------------------------------


class LookupUnreachableGateway(ScriptedGateway):
    """Charges, loses the answer, and then cannot be reached for the status lookup (the adapter
    raises GatewayNotSent: the *lookup* never left, which says nothing about the charge)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, script={Operation.AUTHORIZE: [Outcome.UNKNOWN]})
        self.reachable = False

    async def get_status(self, request: StatusRequest) -> GatewayResult:
        if not self.reachable:
            self._record(Operation.STATUS, request.payment_id, request.idempotency_key, None)
            raise GatewayNotSent("connection refused")
        return await super().get_status(request)


def routed(gateways: list[ScriptedGateway], **kwargs: Any) -> PaymentService:
    config = PluginConfig({"priority_routing": {"order": [g.name for g in gateways]}})
    settings = Settings(engine=EngineSettings(status_lookups=2), plugin_config=config)
    service: PaymentService = make_test_service(
        gateways=list(reversed(gateways)), settings=settings, **kwargs
    )
    return service


async def test_status_lookup_raising_gateway_not_sent_is_unknown_not_a_reroute() -> None:
    first = LookupUnreachableGateway("first")
    backup = ScriptedGateway("backup")
    service = routed([first, backup])
    async with service:
        payment = await service.pay(PaymentRequest(usd(1000)))
        synced = await service.sync_payment(payment.id)
        first.reachable = True
        settled = await service.sync_payment(payment.id)

    key = f"{payment.id}-1"
    # The lookups failed: the attempt stays UNKNOWN at its own gateway, nothing is re-routed.
    assert payment.state is S.PROCESSING
    assert [(a.gateway, a.outcome) for a in payment.attempts] == [("first", Outcome.UNKNOWN)]
    assert synced == payment
    assert backup.calls == []
    assert [c.idempotency_key for c in first.calls if c.operation is Operation.STATUS] == [key] * 5
    # Once the lookup can be made, it finds the one charge.
    assert settled.state is S.COMPLETED
    assert [(a.gateway, a.outcome) for a in settled.attempts] == [("first", Outcome.SUCCEEDED)]
    assert first.charge_count(payment.id) == 1
    assert backup.charge_count(payment.id) == 0


async def test_status_lookup_at_an_unregistered_gateway_is_unknown_not_a_reroute() -> None:
    """The gateway that holds the attempt is no longer registered (its plugin was removed):
    the lookup cannot be made, so the payment waits; it is not sent to another gateway."""
    gone = ScriptedGateway("gone", script={Operation.AUTHORIZE: [Outcome.UNKNOWN]})
    gone.script[Operation.STATUS] = deque([Outcome.UNKNOWN] * 2)
    first_service = routed([gone])
    async with first_service:
        payment = await first_service.pay(PaymentRequest(usd(1000)))
    assert payment.state is S.PROCESSING

    other = ScriptedGateway("other")
    service = routed([other], store=first_service.store)
    async with service:
        synced = await service.sync_payment(payment.id)
        processed = await service.process_payment(payment.id)

    assert synced == processed == payment
    assert other.calls == []
    assert gone.charge_count(payment.id) == 1
