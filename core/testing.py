"""A pytest plugin and test doubles for AegisPay plugin authors (and AegisPay's own tests).

Installed with aegispay as the ``pytest11`` entry point ``aegispay``, so in any project that has
aegispay installed these fixtures are available:

* ``aegispay_service`` - a factory: ``aegispay_service(plugins=[MyPlugin()], gateways=[...])``
  builds an in-memory service with no entry points loaded (tests stay hermetic).
* ``scripted_gateway`` - a factory for :class:`ScriptedGateway`.

Importing this module imports nothing heavy, so it costs other projects' test runs nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import pytest

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
