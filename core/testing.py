"""A pytest plugin and test doubles for AegisPay plugin authors (and AegisPay's own tests).

Installed with aegispay as the ``pytest11`` entry point ``aegispay``, so in any project that has
aegispay installed these fixtures are available:

* ``aegispay_service`` - a factory: ``aegispay_service(plugins=[MyPlugin()], gateways=[...])``
  builds an in-memory service with no entry points loaded (tests stay hermetic).
* ``scripted_gateway`` - a factory for :class:`ScriptedGateway`.
* ``fake_clock`` - a :class:`FakeClock` (a service ``clock=`` that moves only when told).
* ``register_plugin`` - ``register_plugin(service, MyPlugin())`` registers a plugin on a built
  service's plugin manager for the test; it is unregistered on teardown.
* ``hook_recorder`` - ``hook_recorder(service)`` returns a :class:`HookRecorder` that records
  every runtime hook call (validation, fraud, routing, gateway calls, operations, events).

For gateway adapters, :mod:`aegispay.gateway_conformance` holds the conformance suite and
:mod:`aegispay.fake_server` the loopback HTTP server for fakes (both imported only when used).

Importing this module imports nothing heavy, so it costs other projects' test runs nothing.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest

from . import hookspecs
from .gateways import (
    AuthorizeRequest,
    CaptureRequest,
    FeeModel,
    Gateway,
    GatewayResult,
    Operation,
    Outcome,
    RefundRequest,
    StatusRequest,
    VoidRequest,
)
from .hookspecs import hookimpl
from .settings import DEFAULT_STORE, PluginConfig, Settings
from .store.memory import MemoryStore


@attrs.frozen
class RecordedCall:
    operation: Operation
    payment_id: str
    idempotency_key: str
    amount_minor: int | None


class ScriptedGateway:
    """A gateway whose answers you script, that remembers what it really did.

    ``script`` maps an operation to a queue of outcomes (or full GatewayResults) consumed one per
    call; when a queue is empty the call succeeds. Like a real gateway it is idempotent: a
    repeated idempotency key gets the first answer and charges nothing new. An UNKNOWN answer
    still performs the operation (the answer was lost, not the request), so a status lookup
    reports SUCCEEDED. ``charges`` counts real authorisations per payment.
    """

    def __init__(
        self,
        name: str = "scripted",
        *,
        currencies: Iterable[str] | None = None,
        script: dict[Operation, Sequence[Outcome | GatewayResult]] | None = None,
        capture_on_authorize: bool = True,
        lose_answers: dict[Operation, int] | None = None,
    ) -> None:
        self.name = name
        self.supported_currencies = frozenset(currencies) if currencies is not None else None
        self.fees = FeeModel()
        self.script = {op: deque(items) for op, items in (script or {}).items()}
        self.capture_on_authorize = capture_on_authorize
        # The first N answers to captures / refunds are lost after the gateway acted (a read
        # timeout): exactly the case where a retry with a new key would move money twice.
        self.lose_answers = dict(lose_answers or {})
        self.calls: list[RecordedCall] = []
        self.answers: dict[str, GatewayResult] = {}
        self.charges: dict[str, int] = {}
        self.captured: dict[str, int] = {}
        self.refunded: dict[str, int] = {}
        self.voided: set[str] = set()

    def __repr__(self) -> str:
        return f"ScriptedGateway({self.name!r})"

    def _next(self, operation: Operation) -> GatewayResult | None:
        queue = self.script.get(operation)
        if not queue:
            return None
        item = queue.popleft()
        return item if isinstance(item, GatewayResult) else GatewayResult(item)

    def _record(self, op: Operation, payment_id: str, key: str, amount: int | None) -> None:
        self.calls.append(RecordedCall(op, payment_id, key, amount))

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        self._record(
            Operation.AUTHORIZE, request.payment_id, request.idempotency_key, request.amount.minor
        )
        if request.idempotency_key in self.answers:
            return self.answers[request.idempotency_key]
        scripted = self._next(Operation.AUTHORIZE)
        outcome = scripted.outcome if scripted else Outcome.SUCCEEDED
        if outcome is Outcome.NOT_SENT:
            return scripted or GatewayResult(Outcome.NOT_SENT)
        reference = f"{self.name}-{request.idempotency_key}"
        if outcome in (Outcome.SUCCEEDED, Outcome.UNKNOWN):
            captured = request.capture and self.capture_on_authorize
            self.charges[request.payment_id] = self.charges.get(request.payment_id, 0) + 1
            if captured:
                self.captured[request.payment_id] = request.amount.minor
            answer = GatewayResult(Outcome.SUCCEEDED, reference=reference, captured=captured)
        elif outcome in (Outcome.REQUIRES_ACTION, Outcome.PENDING):
            answer = GatewayResult(outcome, reference=reference, next_action={"type": "redirect"})
        else:
            answer = scripted or GatewayResult(Outcome.DECLINED, decline_code="card_declined")
        self.answers[request.idempotency_key] = answer
        if outcome is Outcome.UNKNOWN:
            return GatewayResult(Outcome.UNKNOWN, message="scripted: answer lost")
        return answer

    def _maybe_lose(self, operation: Operation, answer: GatewayResult) -> GatewayResult:
        if self.lose_answers.get(operation, 0) > 0:
            self.lose_answers[operation] -= 1
            return GatewayResult(Outcome.UNKNOWN, message="scripted: answer lost")
        return answer

    async def capture(self, request: CaptureRequest) -> GatewayResult:
        self._record(
            Operation.CAPTURE, request.payment_id, request.idempotency_key, request.amount.minor
        )
        if request.idempotency_key in self.answers:  # idempotent, as real gateways are
            return self.answers[request.idempotency_key]
        scripted = self._next(Operation.CAPTURE)
        if scripted and scripted.outcome is not Outcome.SUCCEEDED:
            return scripted
        self.captured[request.payment_id] = request.amount.minor
        answer = GatewayResult(
            Outcome.SUCCEEDED, reference=request.gateway_reference, captured=True
        )
        self.answers[request.idempotency_key] = answer
        return self._maybe_lose(Operation.CAPTURE, answer)

    async def void(self, request: VoidRequest) -> GatewayResult:
        self._record(Operation.VOID, request.payment_id, request.idempotency_key, None)
        scripted = self._next(Operation.VOID)
        if scripted and scripted.outcome is not Outcome.SUCCEEDED:
            return scripted
        self.voided.add(request.payment_id)
        return GatewayResult(Outcome.SUCCEEDED, reference=request.gateway_reference)

    async def refund(self, request: RefundRequest) -> GatewayResult:
        self._record(
            Operation.REFUND, request.payment_id, request.idempotency_key, request.amount.minor
        )
        if request.idempotency_key in self.answers:
            return self.answers[request.idempotency_key]
        scripted = self._next(Operation.REFUND)
        if scripted and scripted.outcome is not Outcome.SUCCEEDED:
            return scripted
        self.refunded[request.payment_id] = (
            self.refunded.get(request.payment_id, 0) + request.amount.minor
        )
        answer = GatewayResult(Outcome.SUCCEEDED, reference=f"re-{request.idempotency_key}")
        self.answers[request.idempotency_key] = answer
        return self._maybe_lose(Operation.REFUND, answer)

    async def get_status(self, request: StatusRequest) -> GatewayResult:
        self._record(Operation.STATUS, request.payment_id, request.idempotency_key, None)
        scripted = self._next(Operation.STATUS)
        if scripted is not None:
            return scripted
        return self.answers.get(request.idempotency_key) or GatewayResult(
            Outcome.NOT_SENT, message="scripted: no such request"
        )

    def charge_count(self, payment_id: str) -> int:
        return self.charges.get(payment_id, 0)


class GatewaysPlugin:
    """Registers given gateway objects: ``GatewaysPlugin([ScriptedGateway("a")])``."""

    def __init__(self, gateways: Iterable[Gateway]) -> None:
        self.gateways = list(gateways)

    @hookimpl
    def aegispay_register_gateways(
        self, register: Callable[[Gateway], None], config: PluginConfig
    ) -> None:
        for gateway in self.gateways:
            register(gateway)


def make_test_service(
    *,
    plugins: Iterable[Any] = (),
    gateways: Iterable[Gateway] | None = None,
    builtins: bool | Sequence[str] = ("validation", "fraud_rules", "priority_routing"),
    settings: Settings | None = None,
    **kwargs: Any,
) -> Any:
    """A service for tests: on the in-memory store (unless ``store=`` or a configured store is
    given), no entry points; ``gateways`` registered directly (default: one ScriptedGateway),
    built-ins as listed (``True`` for all)."""
    from .pluginmanager import make_plugin_host
    from .stack import build_service

    if "store" not in kwargs and (settings is None or settings.store == DEFAULT_STORE):
        kwargs["store"] = MemoryStore()  # not the embedded SQLite default: tests keep nothing
    settings = settings or Settings()
    extra: list[Any] = list(plugins)
    extra.append(GatewaysPlugin([ScriptedGateway()] if gateways is None else gateways))
    allow = None if builtins is True else tuple(builtins or ())
    host = make_plugin_host(
        config=settings.plugin_config,
        plugins=extra,
        builtins=bool(builtins),
        entry_points=False,
        allow=allow,
    )
    return build_service(settings, host=host, **kwargs)


@pytest.fixture
def aegispay_service() -> Callable[..., Any]:
    """Factory fixture: ``aegispay_service(plugins=[...], gateways=[...])`` -> PaymentService."""
    return make_test_service


@pytest.fixture
def scripted_gateway() -> Callable[..., ScriptedGateway]:
    """Factory fixture: ``scripted_gateway("name", script={Operation.AUTHORIZE: [...]})``."""
    return ScriptedGateway


# -- time ------------------------------------------------------------------------------------


class FakeClock:
    """A clock for ``build_service(clock=...)`` / ``aegispay_service(clock=...)``: it returns
    the same aware UTC time until :meth:`advance` or :meth:`set` moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2024, 1, 1, tzinfo=UTC)
        self._check(self.now)

    @staticmethod
    def _check(value: datetime) -> None:
        if value.tzinfo is None:
            raise ValueError(f"FakeClock: {value!r} has no time zone; use an aware datetime")

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move forward by ``seconds`` (and/or timedelta keywords: minutes=, hours=, days=)."""
        step = timedelta(seconds=seconds, **delta)
        if step < timedelta(0):
            raise ValueError(f"FakeClock: cannot go back in time ({step})")
        self.now += step
        return self.now

    def set(self, value: datetime) -> None:
        self._check(value)
        self.now = value


@pytest.fixture
def fake_clock() -> FakeClock:
    """A :class:`FakeClock` at 2024-01-01T00:00Z."""
    return FakeClock()


# -- plugins on a built service ----------------------------------------------------------------


def _host_of(target: Any) -> Any:
    """The PluginHost of a service (or the host itself)."""
    return getattr(target, "host", target)


def _refresh(target: Any) -> None:
    hooks = getattr(target, "hooks", None)
    if hooks is not None:
        hooks.refresh()


@pytest.fixture
def register_plugin() -> Iterator[Callable[..., Any]]:
    """``register_plugin(service, plugin, name=None)``: register ``plugin`` on a built service
    (or a PluginHost) for this test; unregistered on teardown. Returns the registered object.

    Runtime hooks (validation, fraud, routing, observers, events) take effect at once.
    Registration hooks (gateways, event sinks, event types) are collected when a service is
    built: pass such plugins to ``aegispay_service(plugins=[...])`` instead.
    """
    registered: list[tuple[Any, Any, str]] = []

    def register(target: Any, plugin: Any, name: str | None = None) -> Any:
        host = _host_of(target)
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        instance = host.register(plugin, name)
        registered.append((target, instance, name))
        _refresh(target)
        return instance

    yield register
    for target, _instance, name in reversed(registered):
        _host_of(target).unregister(name)
        _refresh(target)


# -- recording hook calls ------------------------------------------------------------------------

#: The hooks called while payments are processed (not the registration hooks).
RUNTIME_HOOKS = (
    "aegispay_startup",
    "aegispay_validate_payment",
    "aegispay_check_fraud",
    "aegispay_select_gateway",
    "aegispay_before_gateway_call",
    "aegispay_after_gateway_call",
    "aegispay_operation_finished",
    "aegispay_on_event",
)


@attrs.frozen
class HookCall:
    hook: str
    arguments: Mapping[str, Any]


class HookRecorder:
    """A plugin implementing runtime hooks that only records its calls, in order.

    It runs first (``tryfirst``) and returns None, so it never changes a decision: a routing
    hook still gets to choose, validators and fraud checks still decide.
    """

    def __init__(self, hooks: Iterable[str] = RUNTIME_HOOKS) -> None:
        self.calls: list[HookCall] = []
        for hook in hooks:
            spec = getattr(hookspecs, hook, None)
            if spec is None or not hook.startswith("aegispay_"):
                raise ValueError(f"hook_recorder: {hook!r} is not an AegisPay hook")
            setattr(self, hook, hookimpl(tryfirst=True)(self._recording(hook, spec)))

    def _recording(self, hook: str, spec: Any) -> Callable[..., None]:
        names = tuple(inspect.signature(spec).parameters)
        assert all(name.isidentifier() for name in names), names
        calls = self.calls

        def record(arguments: tuple[Any, ...]) -> None:
            calls.append(HookCall(hook, dict(zip(names, arguments, strict=True))))

        # pluggy (and the engine's direct calls) pass arguments by the implementation's own
        # parameter names, read from its code object: so build a function with exactly the
        # spec's parameters. The names are the hookspec's identifiers, never user input.
        namespace: dict[str, Any] = {"_record": record}
        params = ", ".join(names)
        exec(f"def {hook}({params}):\n    _record(({params}{',' if names else ''}))", namespace)
        function: Callable[..., None] = namespace[hook]
        return function

    def names(self) -> list[str]:
        """The hooks called, in order, without the ``aegispay_`` prefix."""
        return [call.hook.removeprefix("aegispay_") for call in self.calls]

    def of(self, hook: str) -> list[Mapping[str, Any]]:
        """The arguments of every call of ``hook`` (with or without the prefix)."""
        full = hook if hook.startswith("aegispay_") else f"aegispay_{hook}"
        return [call.arguments for call in self.calls if call.hook == full]

    def clear(self) -> None:
        self.calls.clear()


@pytest.fixture
def hook_recorder(register_plugin: Callable[..., Any]) -> Callable[..., HookRecorder]:
    """``hook_recorder(service, hooks=RUNTIME_HOOKS)``: a :class:`HookRecorder` registered on
    ``service`` for this test."""
    count = 0

    def attach(target: Any, hooks: Iterable[str] = RUNTIME_HOOKS) -> HookRecorder:
        nonlocal count
        count += 1
        recorder = HookRecorder(hooks)
        register_plugin(target, recorder, f"aegispay-hook-recorder-{count}")
        return recorder

    return attach
