"""The payment service: the operations users call, orchestrating plugins, store and gateways.

Rules that hold in every method:

* A state change is one atomic ``store.commit`` of the new projection, its events and their
  outbox messages, checked against the expected version (and the lock's fencing token).
* No store write waits on a gateway: the intent (PROCESSING with the attempt and its
  idempotency key) is committed *before* the gateway is called.
* NOT_SENT may fail over to the next routed gateway; UNKNOWN never does - it is settled by a
  status lookup with the same idempotency key.
* Idempotency keys on capture, void and refund are derived from persisted state, so repeating
  an operation whose outcome was lost reuses the same key.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import MappingProxyType, TracebackType
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup

from . import events as ev
from .breaker import GatewayMonitor
from .decisions import FraudVerdict, HookContext, RouteDecision, Verdict, combine_verdicts
from .errors import (
    AegisPayError,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    InvalidInput,
    LockTimeout,
    PaymentNotFound,
    PluginError,
)
from .gateway_calls import GatewayCaller, declared_capabilities
from .gateways import (
    AuthorizeRequest,
    Gateway,
    GatewayResult,
    Operation,
    Outcome,
    StatusRequest,
    explicit_capabilities,
    supports_currency,
)
from .hooks import Hooks
from .ids import PaymentIds
from .janitor import Janitor
from .locks.base import Lease, LockManager
from .observe import OperationRecord
from .outbox import EventSink, OutboxRelay
from .payment import Attempt, Payment, apply, replay
from .pluginmanager import PluginHost
from .post_authorization import PostAuthorizationOperations
from .requests import PaymentRequest
from .retry import Retrier, operation_deadline
from .serialization import EventTypes
from .settings import EngineSettings
from .states import PaymentState
from .store.base import (
    COMPLETED,
    IN_FLIGHT,
    Change,
    IdempotencyClaimed,
    IdempotencyProgress,
    IdempotencyRecord,
    IdempotencyState,
    PaymentStore,
    RecoveryPoint,
    is_unsettled,
)
from .webhooks import WebhookResult, handle_webhook

log = logging.getLogger("aegispay.service")
S = PaymentState
# A create is repeated with its key only within this share of the key retention a gateway
# declares (clocks differ, and a repeat after the gateway forgot the key could charge again).
_RETENTION_MARGIN = 0.9
# How long leaving a service waits for its relay and janitor to finish their current step.
_STOP_GRACE_S = 30.0


def _can_take(
    gateway: Gateway, currency: str, manual_capture: bool, method_type: str | None
) -> bool:
    """What a gateway's declared ``GatewayCapabilities`` rule out before routing: a currency
    it lists as unsupported, a manual-capture payment where it cannot authorise only, a
    payment method family (when the payment names one) it does not list. A gateway that
    declares no capabilities is judged by its ``supported_currencies`` alone."""
    declared = explicit_capabilities(gateway)
    if declared is None:
        return True
    if declared.currencies is not None and currency not in declared.currencies:
        return False
    if method_type is not None and method_type not in declared.methods:
        return False
    return declared.manual_capture or not manual_capture


def _drop_demo_gateways(gateways: dict[str, Gateway]) -> None:
    """Demo gateways (``demo = True``: the simulated ones, registered by default so a fresh
    install can run ``aegispay simulate``) step aside as soon as a real gateway is registered.
    Otherwise a real gateway's NOT_SENT would fail over to a gateway that charges nobody and
    the payment would be reported paid."""
    demo = [name for name, gateway in gateways.items() if getattr(gateway, "demo", False)]
    if demo and len(demo) < len(gateways):
        for name in demo:
            del gateways[name]
        log.info("demo gateways %s not used: real gateways are registered", sorted(demo))


@attrs.frozen
class ReconcileReport:
    """What :meth:`PaymentService.reconcile` did.

    ``examined`` payments were open past the cutoff; ``settled`` counts those no longer open
    afterwards, by their state; ``still_open`` those still waiting on a gateway's answer (an
    UNKNOWN outcome, an unreachable gateway...); ``errors`` counts the errors raised while
    syncing, by type name (a payment that raised is still counted as settled or open).
    """

    examined: int = 0
    settled: Mapping[str, int] = attrs.field(factory=dict)
    still_open: int = 0
    errors: Mapping[str, int] = attrs.field(factory=dict)
    still_open_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "examined": self.examined,
            "settled": dict(self.settled),
            "settled_total": sum(self.settled.values()),
            "still_open": self.still_open,
            "still_open_ids": list(self.still_open_ids),
            "errors": dict(self.errors),
        }


@attrs.frozen
class ResumeReport:
    """What :meth:`PaymentService.resume_idempotency_keys` did.

    ``examined`` keyed requests were in flight and untouched past the cutoff; ``completed``
    counts those whose record is now completed, by their payment's state (``resumed`` of
    them were processed from ``created`` by this pass); ``still_in_flight`` those left in
    flight (their payment still open at a gateway, for ``reconcile`` to settle; or an error);
    ``errors`` counts the errors raised, by type name.
    """

    examined: int = 0
    completed: Mapping[str, int] = attrs.field(factory=dict)
    resumed: int = 0
    still_in_flight: int = 0
    errors: Mapping[str, int] = attrs.field(factory=dict)
    still_in_flight_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "examined": self.examined,
            "completed": dict(self.completed),
            "completed_total": sum(self.completed.values()),
            "resumed": self.resumed,
            "still_in_flight": self.still_in_flight,
            "still_in_flight_ids": list(self.still_in_flight_ids),
            "errors": dict(self.errors),
        }


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_payment_id() -> str:
    """One new payment id (the service's own :class:`~aegispay.ids.PaymentIds` draws them in
    batches: this is the unbuffered form, for callers outside a service)."""
    return "pay_" + os.urandom(12).hex()


@attrs.define
class _KeyedRequest:
    """The keyed ``pay`` request a task is processing, if any: its changes carry the key's
    recovery point. ``recorded``: (payment version, point, state) last written that way."""

    scope: str
    key: str
    payment_id: str
    recorded: tuple[int, RecoveryPoint, IdempotencyState] | None = None


# Per task (asyncio and trio copy the context into each task): a contextvar rather than a
# parameter threaded through every operation that may commit.
_KEYED: contextvars.ContextVar[_KeyedRequest | None] = contextvars.ContextVar(
    "aegispay_keyed_request", default=None
)


@attrs.define
class _Draft:
    """A payment ``pay`` has built but not stored yet: it is stored by the first commit of its
    processing (the intent before the gateway call, or the failure that ends it), creation and
    first decision in one transaction. ``record``: the key to claim with it (keyed ``pay``);
    ``started``: when the create began (for ``aegispay_operation_finished``)."""

    payment: Payment
    event: ev.Event
    record: IdempotencyRecord | None
    started: float
    written: bool = False


_DRAFT: contextvars.ContextVar[_Draft | None] = contextvars.ContextVar(
    "aegispay_draft", default=None
)


def progress(payment: Payment) -> tuple[RecoveryPoint, IdempotencyState]:
    """Where a keyed ``pay`` request stands, judged by its payment (the source of truth):
    ``created`` while INITIATED; ``processing`` while open at a gateway (an attempt in flight
    or UNKNOWN, a pending capture); ``finished`` and completed once settled or waiting on the
    customer (REQUIRES_ACTION: the customer's action, not this request, comes next)."""
    if payment.state is S.INITIATED:
        return "created", IN_FLIGHT
    if payment.state is not S.REQUIRES_ACTION and is_unsettled(payment):
        return "processing", IN_FLIGHT
    return "finished", COMPLETED


class PaymentService(PostAuthorizationOperations):
    """Create, process, capture, cancel and refund payments.

    Build one with :func:`aegispay.build_service`; use it as ``async with service:`` so the
    outbox relay runs (event listeners and sinks are called after commit).
    """

    def __init__(
        self,
        *,
        store: PaymentStore,
        locks: LockManager,
        host: PluginHost,
        engine: EngineSettings | None = None,
        clock: Callable[[], datetime] = utc_now,
        ids: Callable[[], str] | None = None,
    ) -> None:
        self.store = store
        self.locks = locks
        self.host = host
        self.engine = engine or EngineSettings()
        self.clock = clock
        self._ids = ids or PaymentIds()
        self.hooks = Hooks(host.pm)
        self.event_types = EventTypes()
        self._gateways: dict[str, Gateway] = {}
        sinks: dict[str, EventSink] = {}
        self._collect("aegispay_register_gateways", self._gateways, Gateway, config=True)
        _drop_demo_gateways(self._gateways)
        self._collect("aegispay_register_event_sinks", sinks, EventSink, config=True)
        self._collect_event_types()
        self.gateways: Mapping[str, Gateway] = MappingProxyType(self._gateways)
        # (currency, manual capture, method family) -> the gateways that can take such a payment
        self._candidates: dict[tuple[str, bool, str | None], list[str]] = {}
        store.use_event_types(self.event_types)
        self.relay = OutboxRelay(store, list(sinks.values()), self.hooks)
        # Health window and circuit breaker per gateway, fed by every gateway call.
        self.gateway_monitor = GatewayMonitor(self._gateways, self.engine.gateway_health)
        # Paces and bounds repeats of gateway calls (aegispay.retry); its ``rng``, ``sleep``
        # and ``clock`` are attributes a test may replace.
        self.retrier = Retrier(self.engine.retry)
        self._call = GatewayCaller(
            self._gateways,
            self.hooks,
            self.engine.gateway_timeout_s,
            self.gateway_monitor,
            self.retrier,
        )
        store.on_commit(self.relay.notify)
        # Always built (``run_once`` works even when the periodic loop is off); the loop runs
        # only while the service is entered and ``engine.reconcile_interval_s`` is not 0.
        self.janitor = Janitor(
            self, self.engine.reconcile_interval_s, self.engine.reconcile_after_s
        )
        self._task_group: TaskGroup | None = None
        self._shared_scope: anyio.CancelScope | None = None

    # -- building -------------------------------------------------------------------------

    def _collect(self, hook_name: str, into: dict[str, Any], kind: type, config: bool) -> None:
        """Call a registration hook plugin by plugin, so a clash names both owners."""
        from .errors import PluginError

        owners: dict[str, str] = {}
        for impl in reversed(getattr(self.host.pm.hook, hook_name).get_hookimpls()):
            if impl.wrapper or impl.hookwrapper:
                continue  # registration is called plugin by plugin; wrappers do not apply

            def register(obj: Any, _plugin: str = impl.plugin_name) -> None:
                name = getattr(obj, "name", None)
                if not isinstance(name, str) or not name or not isinstance(obj, kind):
                    raise PluginError(
                        f"plugin {_plugin!r}: {hook_name} registered {obj!r}, which is not a "
                        f"{kind.__name__} with a name"
                    )
                if name in into:
                    raise PluginError(
                        f"plugin {_plugin!r}: {kind.__name__} name {name!r} is already "
                        f"registered by plugin {owners[name]!r}"
                    )
                into[name] = obj
                owners[name] = _plugin

            kwargs = {"register": register, "config": self.host.config}
            impl.function(*(kwargs[arg] for arg in impl.argnames))

    def _collect_event_types(self) -> None:
        for impl in reversed(self.host.pm.hook.aegispay_register_event_types.get_hookimpls()):
            if not (impl.wrapper or impl.hookwrapper):
                impl.function(self.event_types.register)

    # -- running --------------------------------------------------------------------------

    async def __aenter__(self) -> PaymentService:
        for result in self.host.pm.hook.aegispay_startup(service=self):
            if hasattr(result, "__await__"):
                await result
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self.relay.run, name="aegispay outbox relay")
        if self.janitor.enabled:
            self._task_group.start_soon(self.janitor.run, name="aegispay janitor")
        self._shared_scope = None
        if self.gateway_monitor.shared is not None:  # fleet breaker state (aegispay.stack)
            self._shared_scope = anyio.CancelScope()
            self._task_group.start_soon(
                self._run_in, self._shared_scope, self.gateway_monitor.shared.run,
                name="aegispay shared breaker",
            )  # fmt: skip
        return self

    @staticmethod
    async def _run_in(scope: anyio.CancelScope, run: Callable[[], Awaitable[None]]) -> None:
        with scope:
            await run()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._task_group is None:
            return None
        # Stop the background relay first, then publish what is left from this task, so no
        # batch is handed to listeners twice by two relays racing. The relay and the janitor
        # finish the step they are in (no database call is cancelled halfway); past
        # _STOP_GRACE_S they are cancelled all the same.
        self.relay.stop()
        self.janitor.stop()
        if self._shared_scope is not None:
            self._shared_scope.cancel()
        self._task_group.cancel_scope.deadline = anyio.current_time() + _STOP_GRACE_S
        task_group, self._task_group = self._task_group, None
        suppress = await task_group.__aexit__(exc_type, exc, tb)
        if exc_type is None:
            await self.relay.drain()
        return suppress

    def wrap_gateways(self, wrap: Callable[[Gateway], Gateway]) -> None:
        """Replace each registered gateway by ``wrap(gateway)`` (same name): for plugins that
        put something around every gateway, such as fault injection. Call it before the first
        payment (from ``aegispay_startup``); the caller, health and routing see the wrapped
        gateways, as they all read this one table."""
        for name, gateway in list(self._gateways.items()):
            wrapped = wrap(gateway)
            if getattr(wrapped, "name", None) != name:
                raise PluginError(
                    f"wrap_gateways: wrapping gateway {name!r} must keep its name, "
                    f"got {getattr(wrapped, 'name', None)!r}"
                )
            self._gateways[name] = wrapped
        self._candidates.clear()  # currencies are re-read from the wrapped gateways

    async def aclose(self) -> None:
        """Close the store, the lock manager and every gateway that holds resources (an HTTP
        gateway's connection pool: ``aclose()``), each even if another fails to close."""
        try:
            for name, gateway in self.gateways.items():
                close = getattr(gateway, "aclose", None)
                if close is None:
                    continue
                try:
                    await close()
                except Exception as error:  # one gateway must not keep the others open
                    log.warning("closing gateway %r failed: %s", name, error)
        finally:
            try:
                await self.store.close()
            finally:
                await self.locks.close()

    # -- reading --------------------------------------------------------------------------

    def gateway_health(self) -> dict[str, dict[str, Any]]:
        """Per gateway: health score, success rate, latency p50/p95/p99, volume, circuit state,
        and ``retries``: the repeated calls made to it (each also counted in its window)."""
        report = self.gateway_monitor.snapshot()
        retries = self._call.retries
        for name, entry in report.items():
            entry["retries"] = retries.get(name, 0)
        return report

    async def get_payment(self, payment_id: str) -> Payment:
        payment = await self.store.load(payment_id)
        if payment is None:
            raise PaymentNotFound(payment_id)
        return payment

    async def payment_history(self, payment_id: str) -> list[ev.Event]:
        history = await self.store.events(payment_id)
        if not history:
            raise PaymentNotFound(payment_id)
        return history

    async def replay(self, payment_id: str) -> Payment:
        """The payment rebuilt from its events alone (compare with :meth:`get_payment`)."""
        payment = replay(await self.payment_history(payment_id))
        assert payment is not None
        return payment

    def _context(self, operation: str, merchant_id: str, key: str | None = None) -> HookContext:
        return HookContext(merchant_id, operation, self.clock, self.gateways, key)

    # -- create ---------------------------------------------------------------------------

    async def create_payment(
        self, request: PaymentRequest, *, idempotency_key: str | None = None
    ) -> Payment:
        """Validate and store a new payment (INITIATED). Nothing is sent to a gateway.

        With ``idempotency_key`` (scoped per merchant, kept ``engine.idempotency_ttl_s``
        seconds): the same key and the same request return the first result, the payment as
        it was created - also while a :meth:`pay` that claimed the key is still processing
        it, since the creation asked for here was done with the claim, in one transaction.
        The same key with any difference raises IdempotencyKeyReused; concurrent duplicates
        create one payment. The key is claimed *completed*: nothing is left to resume. An
        expired key is a new key (its old record is replaced).
        """
        payment, _ = await self._create_observed(request, idempotency_key, COMPLETED)
        return payment

    async def _create_observed(
        self, request: PaymentRequest, key: str | None, state: IdempotencyState
    ) -> tuple[Payment, IdempotencyRecord | None]:
        started = time.perf_counter() if self.hooks.wants_operations else 0.0
        payment: Payment | None = None
        try:
            payment, existing = await self._create(request, key, state)
            return payment, existing
        except BaseException as error:
            await self._finished("create", None, None, error, started)
            raise
        finally:
            if payment is not None:
                await self._finished("create", payment.id, payment, None, started)

    async def _create(
        self, request: PaymentRequest, key: str | None, state: IdempotencyState
    ) -> tuple[Payment, IdempotencyRecord | None]:
        """The payment, and with it the key's existing record when this is a replay (None:
        this call created the payment, claiming ``key`` as ``state`` in the same commit)."""
        payment, existing, draft = await self._draft(request, key, state, 0.0)
        if draft is None:
            return payment, existing
        try:
            await self.store.commit(Change(payment, 0, (draft.event,), idempotency=draft.record))
        except IdempotencyClaimed as claimed:  # a concurrent duplicate won the claim
            return self._replay_claimed(request, claimed.existing), claimed.existing
        return payment, None

    async def _draft(
        self, request: PaymentRequest, key: str | None, state: IdempotencyState, started: float
    ) -> tuple[Payment, IdempotencyRecord | None, _Draft | None]:
        """A new payment, validated and built but not stored, as (payment, None, draft); or
        the key's earlier payment, as (payment, its record, None)."""
        if not isinstance(request, PaymentRequest):
            raise InvalidInput("request", f"expected PaymentRequest, got {type(request).__name__}")
        fingerprint = None
        if key is not None:
            if not isinstance(key, str) or not key:
                raise InvalidInput("idempotency_key", "must be a non-empty string")
            fingerprint = request.fingerprint()
            existing = await self.store.find_idempotency(request.merchant_id, key, self.clock())
            if existing is not None:
                return self._idempotent_replay(existing, fingerprint), existing, None
        await self.hooks.validate_payment(
            request, self._context("create", request.merchant_id, key)
        )
        now = self.clock()
        payment_id = self._ids()
        event = ev.PaymentInitiated(
            payment_id=payment_id,
            version=1,
            occurred_at=now,
            merchant_id=request.merchant_id,
            amount=request.amount,
            capture_mode=request.capture_mode,
            customer_id=request.customer_id,
            payment_method=request.payment_method,
            reference=request.reference,
            description=request.description,
            country=request.country,
            metadata=request.metadata,
            payment_method_type=request.payment_method_type,
        )
        payment = apply(None, event)
        record = None
        if key is not None and fingerprint is not None:
            ttl = timedelta(seconds=self.engine.idempotency_ttl_s)
            record = IdempotencyRecord(
                request.merchant_id, key, fingerprint, payment_id, payment, now, now + ttl,
                state=state, recovery_point="created",
                locked_at=now if state == IN_FLIGHT else None,
            )  # fmt: skip
        return payment, None, _Draft(payment, event, record, started)

    @staticmethod
    def _replay_claimed(request: PaymentRequest, existing: IdempotencyRecord) -> Payment:
        return PaymentService._idempotent_replay(existing, request.fingerprint())

    @staticmethod
    def _idempotent_replay(existing: IdempotencyRecord, fingerprint: str) -> Payment:
        if existing.fingerprint != fingerprint:
            raise IdempotencyKeyReused(existing.key, existing.scope)
        return existing.response

    # -- process --------------------------------------------------------------------------

    async def pay(self, request: PaymentRequest, *, idempotency_key: str | None = None) -> Payment:
        """``create_payment`` then ``process_payment``.

        The new payment is stored together with its first decision, in one transaction: with
        the intent (PROCESSING, before the gateway is called), or with the failure that ends it
        (fraud denial, no gateway). Until then nothing is stored and nothing was sent, so a
        crash before it leaves nothing behind - the request was never acknowledged - and the
        plugins that decide (fraud checks, routing) see the payment before it is stored.

        With ``idempotency_key``, the key is claimed *in flight* in that same transaction, at
        recovery point ``processing`` (or completed at ``finished`` when the first decision
        ends the payment), and moves with each later change to the payment, in that change's
        transaction; once
        processing leaves the payment settled, or waiting on the customer (REQUIRES_ACTION),
        the key is completed (``finished``); while the payment is still open at a gateway (an
        UNKNOWN outcome) it stays in flight at ``processing``. A crash in between leaves the
        key in flight: the janitor (:meth:`resume_idempotency_keys`, also run by
        ``aegispay reconcile``) or the client's retry resumes it.

        A duplicate (same key, same request) gets the one payment, charged at most once:

        * key completed - the payment is processed again, which changes nothing (it is
          idempotent), and returned as it is now;
        * key in flight (the first request still running, or crashed) - the duplicate joins
          it: ``process_payment`` waits for the payment's lock, then does only what is left,
          and the result is returned (and the key completed, if the first request died).
          If the lock is not granted within ``engine.lock_timeout_s``, because another
          caller is still at work on the payment, IdempotencyKeyInProgress is raised
          (HTTP 409: retry later with the same key) instead of LockTimeout.

        The same key with a different request raises IdempotencyKeyReused. An expired key is
        a new key.
        """
        key, scope = idempotency_key, request.merchant_id
        started = time.perf_counter() if self.hooks.wants_operations else 0.0
        try:
            payment, existing, draft = await self._draft(request, key, IN_FLIGHT, started)
        except BaseException as error:
            await self._finished("create", None, None, error, started)
            raise
        if draft is None:  # the key's payment, created by an earlier request
            assert existing is not None and key is not None
            await self._finished("create", payment.id, payment, None, started)
            return await self._join(scope, key, existing)
        token = _DRAFT.set(draft)
        try:
            if key is None:
                return await self._locked("process", payment.id, self._process, draft)
            return await self._process_keyed(scope, key, payment.id, draft)
        except IdempotencyClaimed as claimed:
            # Only the draft's own commit claims a key: a concurrent duplicate claimed it
            # first, and nothing of this request was stored. Join the winner's payment, as
            # a duplicate arriving a moment later would.
            assert key is not None and not draft.written
            payment = self._replay_claimed(request, claimed.existing)
            await self._finished("create", payment.id, payment, None, started)
            return await self._join(scope, key, claimed.existing)
        except BaseException as error:
            if not draft.written:
                await self._finished("create", None, None, error, started)
            raise
        finally:
            _DRAFT.reset(token)

    async def _join(self, scope: str, key: str, existing: IdempotencyRecord) -> Payment:
        """A duplicate of a keyed ``pay``: process the key's payment (see :meth:`pay`)."""
        if existing.state == COMPLETED:
            return await self.process_payment(existing.payment_id)
        return await self._process_keyed(scope, key, existing.payment_id)

    async def _process_keyed(
        self, scope: str, key: str, payment_id: str, draft: _Draft | None = None
    ) -> Payment:
        """Process the payment of an in-flight key, then record how far it got.

        While it runs, every change to the payment carries the key's new recovery point
        (``_commit``), so the record moves in the same transaction as the payment; the
        separate advance afterwards is only needed when no change was made (a duplicate
        finding the work done) or the last one did not carry it."""
        request = _KeyedRequest(scope, key, payment_id)
        token = _KEYED.set(request)
        try:
            payment = await self._locked("process", payment_id, self._process, draft)
        except LockTimeout as error:
            # Another caller (the key's first request, a duplicate, the janitor) holds the
            # payment and is still at work on it: the honest answer is "in progress".
            raise IdempotencyKeyInProgress(key, scope) from error
        finally:
            _KEYED.reset(token)
        if request.recorded != (payment.version, *progress(payment)):
            await self._record_progress(scope, key, payment, quiet=True)
        return payment

    async def _record_progress(
        self, scope: str, key: str, payment: Payment, *, quiet: bool = False
    ) -> bool:
        """Advance the key's record to where ``payment`` is (see :func:`progress`).

        A separate write after the payment's own commit, not part of it, and that is safe:
        the payment's state machine is the source of truth and ``process_payment`` is
        idempotent, so the record is only a hint of where to resume. Written after the
        payment changed, it can lag behind the payment (a crash between the two writes) but
        never run ahead of it, and a lagging hint costs nothing: resuming calls
        ``process_payment``, which reads the payment's state and does only what is left,
        never anything twice. The record is completed only once the payment it names is
        settled or waits on the customer, so a completed record never hides unfinished work;
        and the store never moves a record backwards, so a slow duplicate cannot reopen it.

        ``quiet``: log a store error instead of raising it. ``pay`` uses it: the payment's
        outcome is durable and is what the caller needs; the janitor completes the record.
        """
        point, state = progress(payment)
        try:
            return await self.store.idempotency_advance(
                IdempotencyProgress(scope, key, payment.id, point, state, self.clock())
            )
        except AegisPayError as error:
            if not quiet:
                raise
            log.warning("idempotency key %r (%s): not advanced to %s: %s", key, scope, point, error)
            return False

    async def process_payment(self, payment_id: str) -> Payment:
        """Run fraud checks and routing, then authorise (and capture, in automatic mode).

        Idempotent: on a payment past INITIATED it changes nothing, except that an attempt whose
        outcome is unknown is looked up at its gateway. Concurrent calls charge at most once.
        """
        return await self._locked("process", payment_id, self._process)

    async def _process(self, payment: Payment, lease: Lease) -> Payment:
        # A pending operation first: a void asked for while a 3-D Secure attempt was open
        # must be settled before that attempt is, or the two would race to the final state.
        if payment.pending is not None:
            return await self._run_pending(payment, lease)
        if payment.unresolved_attempt is not None:
            return await self._resolve(payment, lease, repeat_create=True)
        if payment.state is S.AUTHORIZED and payment.capture_mode == "automatic":
            # An automatic capture that did not happen (not sent, declined): try it again.
            return await self._capture(payment, lease, None)
        if payment.state is not S.INITIATED:
            return payment
        context = self._context("process", payment.merchant_id)
        verdict = combine_verdicts(await self.hooks.check_fraud(payment, context))
        pending: list[ev.Event] = []
        if verdict.verdict is Verdict.DENY:
            return await self._commit(
                payment, lease, [self._failed(payment, "fraud_denied", verdict.reason)]
            )
        if verdict.verdict is Verdict.REVIEW:
            pending.append(self._review_event(payment, verdict))
        route = await self._route(payment, context, excluded=())
        if not route.gateways:
            failed = self._failed(payment, "no_gateway", route.reason, offset=len(pending))
            return await self._commit(payment, lease, [*pending, failed])
        return await self._authorize(payment, lease, route, pending)

    def _review_event(self, payment: Payment, verdict: FraudVerdict) -> ev.Event:
        return ev.PaymentFlaggedForReview(
            payment_id=payment.id,
            version=payment.version + 1,
            occurred_at=self.clock(),
            risk_score=verdict.risk_score,
            reasons=tuple(r for r in verdict.reason.split("; ") if r),
        )

    async def _route(
        self, payment: Payment, context: HookContext, excluded: Sequence[str]
    ) -> RouteDecision:
        currency, manual = payment.amount.currency, payment.capture_mode == "manual"
        method_type = payment.payment_method_type
        candidates = self._candidates.get((currency, manual, method_type))
        if candidates is None:  # gateways are fixed once the service is built: cache
            candidates = self._candidates[currency, manual, method_type] = [
                name
                for name, gateway in self._gateways.items()
                if supports_currency(gateway, currency)
                and _can_take(gateway, currency, manual, method_type)
            ]
        if excluded:
            candidates = [name for name in candidates if name not in excluded]
        if not candidates:
            needs = f"{currency} with manual capture" if manual else currency
            if method_type is not None:
                needs += f" paid by {method_type}"
            return RouteDecision((), f"no registered gateway supports {needs}")
        # Routers get their own copy: what they do to it must not leak into the cache.
        decision = await self.hooks.select_gateway(payment, list(candidates), context)
        if decision is None:
            return RouteDecision(tuple(candidates), "registration order", "default")
        chosen = decision.gateways
        allowed = set(candidates)
        if len(set(chosen)) != len(chosen) or not allowed.issuperset(chosen):
            chosen = tuple(dict.fromkeys(name for name in chosen if name in allowed))
        else:
            return decision  # the common case: a valid decision, used as it is
        if not chosen:
            return RouteDecision((), f"router chose none of {candidates}: {decision.reason}")
        return RouteDecision(chosen, decision.reason, decision.strategy)

    async def _authorize(
        self, payment: Payment, lease: Lease, route: RouteDecision, pending: list[ev.Event]
    ) -> Payment:
        for index, gateway_name in enumerate(route.gateways):
            attempt_no = len(payment.attempts) + 1
            key = f"{payment.id}-{attempt_no}"
            started = ev.PaymentProcessingStarted(
                payment_id=payment.id,
                version=payment.version + len(pending) + 1,
                occurred_at=self.clock(),
                attempt_no=attempt_no,
                gateway=gateway_name,
                idempotency_key=key,
                route_reason=route.reason,
            )
            # The intent is durable before the gateway hears of it.
            payment = await self._commit(payment, lease, [*pending, started])
            pending = []
            request = self._authorize_request(payment, attempt_no, key)
            # Repeated on this gateway with this key while that is safe (aegispay.retry);
            # NOT_SENT after the last repeat moves on to the next gateway, as a new attempt.
            result = await self._call(
                gateway_name, Operation.AUTHORIZE, request, attempt_no, country=payment.country
            )
            last = index == len(route.gateways) - 1
            if result.outcome is Outcome.NOT_SENT or (
                result.outcome is Outcome.DECLINED and result.retryable_elsewhere
            ):
                pending = [self._attempt_failed(payment, attempt_no, result)]
                if not last:
                    continue
                code = (
                    "gateways_unavailable"
                    if result.outcome is Outcome.NOT_SENT
                    else (result.decline_code or "declined")
                )
                pending.append(self._failed(payment, code, result.message, offset=1))
                return await self._commit(payment, lease, pending)
            return await self._settle(payment, lease, payment.attempts[-1], result)
        raise AssertionError("route had no gateways")  # pragma: no cover - checked by caller

    @staticmethod
    def _authorize_request(payment: Payment, attempt_no: int, key: str) -> AuthorizeRequest:
        """The authorisation of attempt ``attempt_no``: built from the payment's immutable
        fields only, so a repeat with the same key sends exactly the same request."""
        return AuthorizeRequest(
            payment_id=payment.id,
            attempt_no=attempt_no,
            idempotency_key=key,
            amount=payment.amount,
            capture=payment.capture_mode == "automatic",
            customer_id=payment.customer_id,
            payment_method=payment.payment_method,
            reference=payment.reference,
            description=payment.description,
            metadata=payment.metadata,
            payment_method_type=payment.payment_method_type,
        )

    async def _settle(
        self, payment: Payment, lease: Lease, attempt: Attempt, result: GatewayResult
    ) -> Payment:
        """Record what the gateway said about ``attempt`` (from the call or a status lookup)."""
        now = self.clock()
        version = payment.version + 1
        pid = payment.id
        outcome = result.outcome
        if outcome is Outcome.SUCCEEDED:
            events: list[ev.Event] = [
                ev.PaymentAuthorized(
                    payment_id=pid,
                    version=version,
                    occurred_at=now,
                    attempt_no=attempt.number,
                    amount=payment.amount,
                    gateway_reference=result.reference,
                )
            ]
            if result.captured:
                events.append(
                    ev.PaymentCompleted(
                        payment_id=pid,
                        version=version + 1,
                        occurred_at=now,
                        amount=payment.amount,
                        idempotency_key=attempt.idempotency_key,
                        gateway_reference=result.reference,
                    )
                )
            payment = await self._commit(payment, lease, events)
            if payment.state is S.AUTHORIZED and payment.capture_mode == "automatic":
                # The gateway authorised but did not capture in the same call.
                payment = await self._capture(payment, lease, None)
            return payment
        if outcome in (Outcome.PENDING, Outcome.REQUIRES_ACTION):
            if payment.state is S.REQUIRES_ACTION:
                return payment
            return await self._commit(
                payment,
                lease,
                [
                    ev.PaymentRequiresAction(
                        payment_id=pid,
                        version=version,
                        occurred_at=now,
                        attempt_no=attempt.number,
                        gateway_reference=result.reference,
                        next_action=dict(result.next_action or {}),
                    )
                ],
            )
        if outcome is Outcome.DECLINED:
            failed = self._attempt_failed(payment, attempt.number, result)
            final = self._failed(payment, result.decline_code or "declined", result.message, 1)
            return await self._commit(payment, lease, [failed, final])
        if outcome is Outcome.NOT_SENT:
            # Only reachable from a status lookup: the gateway answered that it never
            # received the attempt, so a fresh attempt with a new key is safe. Avoid gateways
            # that failed to receive earlier attempts, and this one if it lost a request we
            # sent (the answer was UNKNOWN); but an attempt still in flight (a process died
            # between the intent and the call) never reached its gateway at all: that gateway
            # stays eligible, or a single-gateway set-up could never recover the payment.
            tried = [a.gateway for a in payment.attempts if a.outcome is Outcome.NOT_SENT]
            if attempt.outcome is Outcome.UNKNOWN:
                tried.append(attempt.gateway)
            failed = self._attempt_failed(payment, attempt.number, result)
            payment = await self._commit(payment, lease, [failed])
            context = self._context("process", payment.merchant_id)
            route = await self._route(payment, context, excluded=tried)
            if not route.gateways:
                return await self._commit(
                    payment, lease, [self._failed(payment, "gateways_unavailable", route.reason)]
                )
            return await self._authorize(payment, lease, route, [])
        # UNKNOWN: record it once, then look it up.
        if attempt.outcome is not Outcome.UNKNOWN:
            payment = await self._commit(
                payment,
                lease,
                [
                    ev.PaymentOutcomeUnknown(
                        payment_id=pid,
                        version=version,
                        occurred_at=now,
                        attempt_no=attempt.number,
                        message=result.message,
                    )
                ],
            )
            return await self._resolve(payment, lease)
        return payment

    async def _resolve(
        self, payment: Payment, lease: Lease, repeat_create: bool = False
    ) -> Payment:
        """Ask the gateway what happened to the unresolved attempt (same idempotency key):
        up to ``engine.status_lookups`` status lookups (spaced by the retry backoff when
        retries are on). With ``repeat_create`` (reconciliation, a repeated process or
        sync; not right after the call), an attempt the lookups leave UNKNOWN is then
        created again with the same key where the gateway dedupes creates
        (:meth:`_repeat_create`). Never another gateway."""
        attempt = payment.unresolved_attempt
        assert attempt is not None
        result: GatewayResult | None = None
        if self.engine.status_lookups > 0:
            request = StatusRequest(
                payment.id, Operation.AUTHORIZE, attempt.idempotency_key, attempt.gateway_reference
            )
            result = await self._call(
                attempt.gateway,
                Operation.STATUS,
                request,
                attempt.number,
                attempts=self.engine.status_lookups,
            )
        if repeat_create and (result is None or result.outcome is Outcome.UNKNOWN):
            result = await self._repeat_create(payment, attempt) or result
        if result is not None and result.outcome is not Outcome.UNKNOWN:
            if result.outcome in (Outcome.PENDING, Outcome.REQUIRES_ACTION) and (
                attempt.outcome in (Outcome.PENDING, Outcome.REQUIRES_ACTION)
            ):
                return payment
            return await self._settle(payment, lease, attempt, result)
        if attempt.outcome is None:  # in flight when a process crashed: mark it unknown
            event = ev.PaymentOutcomeUnknown(
                payment_id=payment.id,
                version=payment.version + 1,
                occurred_at=self.clock(),
                attempt_no=attempt.number,
                message="status lookups did not settle it",
            )
            return await self._commit(payment, lease, [event])
        return payment

    async def _repeat_create(self, payment: Payment, attempt: Attempt) -> GatewayResult | None:
        """Create ``attempt`` again at its own gateway with its own key, when status lookups
        cannot settle it: for gateways whose lookup cannot see a create that never arrived
        (Stripe's search lags, PayPal has no lookup by request id). Safe only because the
        gateway declares ``idempotent_create``: it answers with the original result, or makes
        the one charge if the original never arrived. None when not allowed: the attempt is
        not in flight or UNKNOWN, the gateway does not dedupe creates, or the key is older
        than the gateway keeps keys (``engine.retry.retention_s``, capped at 90 % of the
        ``idempotency_retention_s`` its capabilities declare; a repeat could then charge
        twice, so the payment waits for a webhook or an operator).

        The repeat's NOT_SENT says only that the repeat did not arrive: it comes back as
        UNKNOWN, so the payment never moves to another gateway from here."""
        settings = self.engine.retry
        if not settings.repeat_unknown_create or attempt.outcome not in (None, Outcome.UNKNOWN):
            return None
        gateway = self._gateways.get(attempt.gateway)
        if gateway is None or not declared_capabilities(gateway).idempotent_create:
            return None
        retention = settings.retention_for(attempt.gateway)
        declared = declared_capabilities(gateway).idempotency_retention_s
        if declared is not None:  # the adapter knows its gateway: never trust a longer window
            retention = min(retention, declared * _RETENTION_MARGIN)
        age = await self._intent_age_s(payment, attempt, retention)
        if age is None or age >= retention:
            log.warning(
                "payment %s: attempt %d at %s is unknown and its key is %s: not created "
                "again (settle it by webhook or by hand)",
                payment.id, attempt.number, attempt.gateway,
                f"older than the {retention:g}s the gateway keeps it" if age is not None
                else "of unknown age (no intent in the history)",
            )  # fmt: skip
            return None
        log.info(
            "payment %s: status lookups did not settle attempt %d: creating it again at %s "
            "with the same idempotency key",
            payment.id, attempt.number, attempt.gateway,
        )  # fmt: skip
        request = self._authorize_request(payment, attempt.number, attempt.idempotency_key)
        result = await self._call(
            attempt.gateway, Operation.AUTHORIZE, request, attempt.number, country=payment.country
        )
        if result.outcome is Outcome.NOT_SENT:
            return GatewayResult(
                Outcome.UNKNOWN, message=f"the repeated create was not sent: {result.message}"
            )
        if result.retryable_elsewhere:  # the payment stays with this gateway regardless
            return attrs.evolve(result, retryable_elsewhere=False)
        return result

    async def _intent_age_s(
        self, payment: Payment, attempt: Attempt, retention_s: float
    ) -> float | None:
        """Seconds since ``attempt``'s intent was committed (its key first used), None if
        its intent is not in the history. The payment's own age bounds it from above, so
        the history is read only for payments older than ``retention_s``."""
        now = self.clock()
        age = (now - payment.created_at).total_seconds()
        if age < retention_s:
            return age
        for event in reversed(await self.store.events(payment.id)):
            if (
                isinstance(event, ev.PaymentProcessingStarted)
                and event.attempt_no == attempt.number
            ):
                return (now - event.occurred_at).total_seconds()
        return None

    async def sync_payment(self, payment_id: str) -> Payment:
        """Settle what is left open: an in-flight, UNKNOWN or REQUIRES_ACTION attempt (by a
        status lookup), or a capture, refund or void whose answer was lost (by repeating
        exactly the recorded call, same idempotency key and amount)."""
        return await self._locked("sync", payment_id, self._sync)

    async def _sync(self, payment: Payment, lease: Lease) -> Payment:
        if payment.pending is not None:  # first, as in _process
            return await self._run_pending(payment, lease)
        if payment.unresolved_attempt is not None:
            return await self._resolve(payment, lease, repeat_create=True)
        return payment

    async def handle_webhook(
        self, gateway_name: str, headers: Mapping[str, str], raw_body: bytes
    ) -> WebhookResult:
        """Verify, dedupe and apply one gateway webhook (see :mod:`aegispay.webhooks`)."""
        return await handle_webhook(self, gateway_name, headers, raw_body)

    async def reconcile(self, older_than_s: float = 60.0) -> ReconcileReport:
        """Settle every payment left open (PROCESSING, REQUIRES_ACTION, or with a pending
        capture, refund or void) whose last change is older than ``older_than_s`` seconds:
        :meth:`sync_payment` asks its gateway with the same idempotency key. An UNKNOWN
        answer never fails a payment over; it stays open for the next run. An error about one
        payment is counted and logged, and the run goes on; a store that cannot list the
        payments raises."""
        cutoff = self.clock() - timedelta(seconds=older_than_s)
        settled: dict[str, int] = {}
        errors: dict[str, int] = {}
        still_open: list[str] = []
        ids = await self.store.unsettled_payment_ids(cutoff)
        for payment_id in ids:
            payment: Payment | None
            try:
                payment = await self.sync_payment(payment_id)
            except Exception as error:  # one bad payment must not stop the others
                name = type(error).__name__
                errors[name] = errors.get(name, 0) + 1
                log.warning(
                    "reconcile %s: %s", payment_id, error,
                    exc_info=not isinstance(error, AegisPayError),
                )  # fmt: skip
                try:
                    payment = await self.store.load(payment_id)
                except AegisPayError:
                    payment = None
            if payment is None or is_unsettled(payment):
                still_open.append(payment_id)
            else:
                state = payment.state.value
                settled[state] = settled.get(state, 0) + 1
        return ReconcileReport(len(ids), settled, len(still_open), errors, tuple(still_open))

    async def resume_idempotency_keys(
        self, older_than_s: float = 60.0, limit: int = 500
    ) -> ResumeReport:
        """Finish the keyed :meth:`pay` requests a crash left in flight: those whose record
        nobody has touched for ``older_than_s`` seconds (at most ``limit`` of them, least
        recently touched first). Expired keys are left alone: the client's retry would create
        a new payment, so processing the old one could charge twice for one order.

        The payment's state decides, not the record's recovery point (a hint that may lag):

        * INITIATED (the request stopped at ``created``): process it, as the request would
          have - ``process_payment`` is idempotent and locked, so a request that is in fact
          still running makes this wait, never charge twice - then complete the key;
        * settled, or waiting on the customer: complete the key;
        * still open at a gateway (``processing``): that is for :meth:`reconcile`'s status
          lookup (the janitor and ``aegispay reconcile`` run it first); the record is
          touched, so it is looked at again after ``older_than_s``, not at every pass.

        A record whose resumption raised is touched too, and counted in ``errors``; a store
        that cannot list the records raises.
        """
        now = self.clock()
        cutoff = now - timedelta(seconds=older_than_s)
        records = await self.store.idempotency_in_flight(cutoff, now=now, limit=limit)
        completed: dict[str, int] = {}
        errors: dict[str, int] = {}
        still: list[str] = []
        resumed = 0
        for record in records:
            payment: Payment | None = None
            try:
                payment = await self.store.load(record.payment_id)
                if payment is None:
                    raise PaymentNotFound(record.payment_id)
                if payment.state is S.INITIATED:
                    payment = await self.process_payment(payment.id)
                    resumed += 1
                await self._record_progress(record.scope, record.key, payment)
            except Exception as error:  # one bad record (a plugin's bug...) must not stop
                # the others: counted, logged, and touched so that it goes to the back of
                # the queue instead of heading every pass's batch.
                name = type(error).__name__
                errors[name] = errors.get(name, 0) + 1
                log.warning(
                    "resume idempotency key %r (%s): %s", record.key, record.scope, error,
                    exc_info=not isinstance(error, AegisPayError),
                )  # fmt: skip
                payment = None
                await self._touch(record)
            if payment is not None and progress(payment)[1] == COMPLETED:
                state = payment.state.value
                completed[state] = completed.get(state, 0) + 1
            else:
                still.append(record.payment_id)
        return ResumeReport(len(records), completed, resumed, len(still), errors, tuple(still))

    async def _touch(self, record: IdempotencyRecord) -> None:
        """Refresh ``locked_at`` of an in-flight record at its point (best effort)."""
        try:
            step = IdempotencyProgress(
                record.scope, record.key, record.payment_id, record.recovery_point,
                IN_FLIGHT, self.clock(),
            )  # fmt: skip
            await self.store.idempotency_advance(step)
        except AegisPayError as error:
            log.warning("idempotency key %r (%s): not touched: %s", record.key, record.scope, error)

    # -- plumbing ---------------------------------------------------------------------------

    async def _locked(
        self,
        operation: str,
        payment_id: str,
        body: Callable[[Payment, Lease], Awaitable[Payment]],
        draft: _Draft | None = None,
    ) -> Payment:
        """Run ``body`` on the payment under its lock. ``draft``: the payment is ``pay``'s,
        not stored yet (the first commit of ``body`` stores it; see :class:`_Draft`)."""
        started = time.perf_counter() if self.hooks.wants_operations else 0.0
        try:
            async with self.locks.hold(payment_id, self.engine.lock_timeout_s) as lease:
                # The retry deadline of this operation counts from the lock's grant (with
                # retries on only: it costs a clock read).
                deadline = (
                    operation_deadline.set(self.retrier.deadline())
                    if self.retrier.enabled
                    else None
                )
                try:
                    if draft is not None:
                        payment = draft.payment
                    else:
                        loaded = await self.store.load(payment_id)
                        if loaded is None:
                            raise PaymentNotFound(payment_id)
                        payment = loaded
                    result: Payment = await body(payment, lease)
                    if draft is not None and not draft.written:
                        # Processing decided nothing to store (no path does so today): the
                        # payment must exist all the same once pay() answers.
                        result = await self._commit(result, lease, [])
                finally:
                    if deadline is not None:
                        operation_deadline.reset(deadline)
        except BaseException as error:
            if draft is None or draft.written:  # else nothing happened: pay() reports it
                await self._finished(operation, payment_id, None, error, started)
            raise
        await self._finished(operation, payment_id, result, None, started)
        return result

    async def _finished(
        self,
        operation: str,
        payment_id: str | None,
        payment: Payment | None,
        error: BaseException | None,
        started: float,
    ) -> None:
        if self.hooks.wants_operations:
            elapsed = (time.perf_counter() - started) * 1000
            await self.hooks.operation_finished(
                OperationRecord(operation, payment_id, payment, error, elapsed)
            )

    async def _commit(
        self, payment: Payment, lease: Lease | None, events: list[ev.Event]
    ) -> Payment:
        new = payment
        for event in events:
            new = apply(new, event)
        expected, written = payment.version, tuple(events)
        claim: IdempotencyRecord | None = None
        step = None
        keyed = _KEYED.get()
        draft = _DRAFT.get()
        if draft is not None and not draft.written and draft.payment.id == new.id:
            # pay()'s payment is stored now, with this first decision (see _Draft); its key
            # is claimed at the point this change reaches, in the same transaction.
            expected, written = 0, (draft.event, *written)
            claim = draft.record
            if claim is not None:
                point, state = progress(new)
                locked_at = claim.locked_at if state == IN_FLIGHT else None
                claim = attrs.evolve(claim, state=state, recovery_point=point, locked_at=locked_at)
        elif keyed is not None and keyed.payment_id == new.id:
            point, state = progress(new)
            step = IdempotencyProgress(keyed.scope, keyed.key, new.id, point, state, self.clock())
        await self.store.commit(
            Change(new, expected, written, lease.token if lease else None, claim, step)
        )
        if keyed is not None and keyed.payment_id == new.id:
            if step is not None:
                keyed.recorded = (new.version, step.recovery_point, step.state)
            elif claim is not None:
                keyed.recorded = (new.version, claim.recovery_point, claim.state)
        if expected == 0 and draft is not None:
            draft.written = True
            await self._finished("create", new.id, draft.payment, None, draft.started)
        return new

    def _failed(self, payment: Payment, code: str, message: str, offset: int = 0) -> ev.Event:
        return ev.PaymentFailed(
            payment_id=payment.id,
            version=payment.version + offset + 1,
            occurred_at=self.clock(),
            code=code,
            message=message,
        )

    def _attempt_failed(self, payment: Payment, attempt_no: int, result: GatewayResult) -> ev.Event:
        return ev.PaymentAttemptFailed(
            payment_id=payment.id,
            version=payment.version + 1,
            occurred_at=self.clock(),
            attempt_no=attempt_no,
            outcome=result.outcome,
            decline_code=result.decline_code,
            message=result.message,
        )
