"""Fault injection: wrap any registered gateway (simulated or a real package's) and make it
misbehave on a schedule, reproducibly. For chaos tests and ``aegispay simulate --scenario``.

Not a built-in: a production worker must never start injecting faults because a configuration
file says so. Register it explicitly, and it reads its own section::

    build_service(settings, plugins={"fault_injection": FaultInjectionPlugin})

Configuration (``[plugins.fault_injection]``)::

    seed = 7                            # omit: a different run every time
    [[plugins.fault_injection.faults]]
    gateway = "sim-alpha"               # a registered gateway, or "*" for every gateway
    kind = "outage"                     # latency | outage | error | timeout | lost_answer
    start_s = 10.0                      # window, seconds after the run started (service entered)
    end_s = 20.0                        # omit: until the end of the run
    rate = 1.0                          # share of the matching calls affected
    operations = ["authorize"]          # default: authorize, capture, void, refund and status

Kinds (per matching call, inside the window, with probability ``rate``):

* ``latency`` - waits ``latency_ms`` before the call (``latency_to_ms``: the added latency
  climbs linearly from ``latency_ms`` at ``start_s`` to ``latency_to_ms`` at ``end_s``, a
  brownout), times a factor drawn uniformly in ``[1 - jitter, 1 + jitter]``. Latency faults add
  up, and combine with one failure below.
* ``outage`` - the gateway is unreachable: the call raises ``GatewayNotSent`` and never reaches
  it (NOT_SENT, so the payment fails over; a status lookup that cannot be made is UNKNOWN).
* ``error`` - the gateway is not called and answers with ``outcome``: ``not_sent`` (connection
  refused), ``rate_limited`` (NOT_SENT with ``retry_after_s``), ``unknown`` (no answer, nothing
  done), ``server_error`` (an HTTP 5xx: UNKNOWN, nothing done) or ``declined`` (a
  gateway-specific decline, ``decline_code``, ``retryable_elsewhere``). A status lookup never
  gets an injected NOT_SENT or DECLINED (either would claim to know what happened to the
  original request): it is told the lookup could not be made, which the engine reads as UNKNOWN.
* ``timeout`` - the call stalls for ``hang_s`` seconds (omit: until the engine's gateway
  timeout cancels it) before reaching the gateway, or after it processed the request when
  ``after_processing = true`` (the charge happened; the answer is late). This wait is real
  (anyio), because the engine's timeout is a real timer. If the stall ends first, the call
  completes with the gateway's answer.
* ``lost_answer`` - the gateway IS called (the charge happens) and its answer is dropped:
  UNKNOWN. A status lookup with the same idempotency key finds the charge.

A wrapped gateway keeps the inner one's name, currencies, fees and capabilities; anything else
(``get_status`` aside, which goes through the faults like any call; ``aclose``, ``control()``,
``parse_webhook``) is the inner gateway's. Draws come from one ``random.Random`` per gateway,
made by ``rng_factory`` from the seed and the gateway's name, never the module-global one.
Time comes from ``clock`` (seconds) and latency waits use ``sleep``: both injectable, so tests
and the scenario runner use a fake or virtual clock instead of real waiting.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import attrs
from aegispay.errors import ConfigError
from aegispay.gateways import (
    AuthorizeRequest,
    CaptureRequest,
    Gateway,
    GatewayNotSent,
    GatewayResult,
    GatewayWrapper,
    Operation,
    Outcome,
    RefundRequest,
    StatusRequest,
    VoidRequest,
)
from aegispay.hookspecs import hookimpl
from aegispay.settings import structure_config

if TYPE_CHECKING:
    from aegispay.service import PaymentService

WHERE = "plugins.fault_injection"
KINDS = ("latency", "outage", "error", "timeout", "lost_answer")
ERROR_OUTCOMES = ("not_sent", "rate_limited", "unknown", "server_error", "declined")
OPERATIONS = tuple(op.value for op in Operation)


def _one_of(choices: tuple[str, ...]) -> Callable[[object, attrs.Attribute[Any], str], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            raise ValueError(
                f"{attribute.name}: must be one of {', '.join(choices)}; got {value!r}"
            )

    return check


def _operations(instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    unknown = [op for op in value if op not in OPERATIONS]
    if unknown or not value:
        raise ValueError(
            f"{attribute.name}: must be a non-empty list of {', '.join(OPERATIONS)}; got {value!r}"
        )


def _share(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name}: must be between 0 and 1, got {value!r}")


def _not_negative(instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name}: must be 0 or more, got {value!r}")


@attrs.frozen
class FaultConfig:
    """One scheduled fault on one gateway (or ``"*"``: every gateway)."""

    gateway: str
    kind: str = attrs.field(validator=_one_of(KINDS))
    start_s: float = attrs.field(default=0.0, validator=_not_negative)
    end_s: float | None = attrs.field(default=None, validator=_not_negative)
    rate: float = attrs.field(default=1.0, validator=_share)
    operations: tuple[str, ...] = attrs.field(default=OPERATIONS, validator=_operations)
    latency_ms: float = attrs.field(default=0.0, validator=_not_negative)
    latency_to_ms: float | None = attrs.field(default=None, validator=_not_negative)
    jitter: float = attrs.field(default=0.0, validator=_share)
    outcome: str = attrs.field(default="unknown", validator=_one_of(ERROR_OUTCOMES))
    decline_code: str = "gateway_unavailable_for_payment"
    retryable_elsewhere: bool = True
    retry_after_s: float = attrs.field(default=1.0, validator=_not_negative)
    hang_s: float | None = attrs.field(default=None, validator=_not_negative)
    after_processing: bool = False

    def __attrs_post_init__(self) -> None:
        if self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        if self.latency_to_ms is not None and self.end_s is None:
            raise ValueError("latency_to_ms needs end_s (the climb ends there)")
        if self.kind == "latency" and not (self.latency_ms or self.latency_to_ms):
            raise ValueError("a latency fault needs latency_ms or latency_to_ms above 0")

    def active(self, elapsed: float) -> bool:
        return self.start_s <= elapsed and (self.end_s is None or elapsed < self.end_s)

    def latency_at(self, elapsed: float) -> float:
        """The added latency (ms) ``elapsed`` seconds into the run (before jitter)."""
        if self.latency_to_ms is None or self.end_s is None:
            return self.latency_ms
        share = (elapsed - self.start_s) / (self.end_s - self.start_s)
        return self.latency_ms + (self.latency_to_ms - self.latency_ms) * min(1.0, share)

    @property
    def label(self) -> str:
        """How the fault is counted in :attr:`FaultInjectionPlugin.injected`."""
        return f"error:{self.outcome}" if self.kind == "error" else self.kind


@attrs.frozen
class FaultInjectionConfig:
    seed: int | None = None
    faults: tuple[FaultConfig, ...] = ()


class FaultyGateway(GatewayWrapper):
    """A gateway wrapped by :class:`FaultInjectionPlugin`: same name, currencies, fees and
    capabilities; every call passes through this gateway's scheduled faults."""

    def __init__(
        self,
        inner: Gateway,
        faults: tuple[FaultConfig, ...],
        plugin: FaultInjectionPlugin,
        rng: random.Random,
    ) -> None:
        super().__init__(inner)
        self.faults = faults
        self._plugin = plugin
        self._rng = rng

    def __repr__(self) -> str:
        return f"FaultyGateway({self.inner!r}, faults={len(self.faults)})"

    def plan(self, operation: Operation) -> tuple[float, FaultConfig | None]:
        """(added latency in ms, the failure to inject or None) for one call now."""
        elapsed = self._plugin.elapsed()
        rng = self._rng
        delay = 0.0
        failure = None
        op = operation.value
        for fault in self.faults:
            if op not in fault.operations or not fault.active(elapsed):
                continue
            if fault.kind == "latency":
                if fault.rate >= 1.0 or rng.random() < fault.rate:
                    factor = 1.0 + fault.jitter * (2 * rng.random() - 1) if fault.jitter else 1.0
                    delay += fault.latency_at(elapsed) * factor
            elif failure is None and (fault.rate >= 1.0 or rng.random() < fault.rate):
                failure = fault
        return delay, failure

    async def _call(
        self, operation: Operation, invoke: Callable[[], Awaitable[GatewayResult]]
    ) -> GatewayResult:
        delay, fault = self.plan(operation)
        if delay:
            await self._plugin.sleep(delay / 1000)
        if fault is None:
            return await invoke()
        self._plugin.injected[(self.name, fault.label)] += 1
        kind = fault.kind
        if kind == "outage":
            raise GatewayNotSent(f"{self.name}: connection refused (injected outage)")
        if kind == "error":
            return self._error(fault, operation)
        if kind == "lost_answer":
            await invoke()  # the gateway acts; its answer never comes back
            return GatewayResult(Outcome.UNKNOWN, message="answer lost (injected)")
        # timeout: a real stall, so the engine's (real) gateway timeout fires
        if fault.after_processing:
            result = await invoke()
            await _stall(fault.hang_s)
            return result
        await _stall(fault.hang_s)
        return await invoke()

    def _error(self, fault: FaultConfig, operation: Operation) -> GatewayResult:
        outcome = fault.outcome
        lookup = operation is Operation.STATUS
        if outcome == "not_sent" or (lookup and outcome in ("rate_limited", "declined")):
            # For a lookup: "could not ask", never "no such request" (which would let the
            # engine route a payment that may have been charged to another gateway).
            raise GatewayNotSent(f"{self.name}: connection refused (injected {outcome})")
        if outcome == "rate_limited":
            return GatewayResult(
                Outcome.NOT_SENT,
                message="rate limited (injected 429)",
                retry_after_s=fault.retry_after_s,
            )
        if outcome == "declined":
            return GatewayResult(
                Outcome.DECLINED,
                decline_code=fault.decline_code,
                message="declined (injected)",
                retryable_elsewhere=fault.retryable_elsewhere,
            )
        message = "HTTP 500 (injected)" if outcome == "server_error" else "no answer (injected)"
        return GatewayResult(Outcome.UNKNOWN, message=message)

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        return await self._call(Operation.AUTHORIZE, lambda: self.inner.authorize(request))

    async def capture(self, request: CaptureRequest) -> GatewayResult:
        return await self._call(Operation.CAPTURE, lambda: self.inner.capture(request))

    async def void(self, request: VoidRequest) -> GatewayResult:
        return await self._call(Operation.VOID, lambda: self.inner.void(request))

    async def refund(self, request: RefundRequest) -> GatewayResult:
        return await self._call(Operation.REFUND, lambda: self.inner.refund(request))

    async def get_status(self, request: StatusRequest) -> GatewayResult:
        return await self._call(Operation.STATUS, lambda: self.inner.get_status(request))


async def _stall(seconds: float | None) -> None:
    if seconds is None:
        await anyio.sleep_forever()
    else:
        await anyio.sleep(seconds)


class FaultInjectionPlugin:
    """Wraps the service's gateways in :class:`FaultyGateway` when the service starts.

    ``clock`` gives seconds (any origin); windows are measured from :meth:`start` (called at
    service start if not before). ``sleep`` waits for injected latency. ``rng_factory`` makes
    each gateway's generator from ``"<seed>/<gateway>"`` (or None without a seed).
    ``injected`` counts the faults injected, by (gateway, kind or ``error:<outcome>``).
    """

    def __init__(
        self,
        config: Mapping[str, Any] | FaultInjectionConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        rng_factory: Callable[[str | None], random.Random] = random.Random,
    ) -> None:
        self.config = (
            config
            if isinstance(config, FaultInjectionConfig)
            else structure_config(config, FaultInjectionConfig, WHERE)
        )
        self.clock = clock
        self.sleep = sleep
        self.rng_factory = rng_factory
        self.started_at: float | None = None
        self.injected: Counter[tuple[str, str]] = Counter()
        self.wrapped: dict[str, FaultyGateway] = {}

    def start(self, now: float | None = None) -> None:
        """Start the run's time (fault windows are relative to it)."""
        self.started_at = self.clock() if now is None else now

    def elapsed(self) -> float:
        if self.started_at is None:
            self.start()
        assert self.started_at is not None
        return self.clock() - self.started_at

    def check(self, known: Mapping[str, Any]) -> None:
        """ConfigError naming the first fault whose gateway is not registered."""
        for i, fault in enumerate(self.config.faults):
            if fault.gateway != "*" and fault.gateway not in known:
                raise ConfigError(
                    f"{WHERE}.faults[{i}].gateway: unknown gateway {fault.gateway!r}; "
                    f"registered: {sorted(known)}"
                )

    def wrap(self, gateway: Gateway) -> Gateway:
        """``gateway`` behind its scheduled faults (itself when none applies to it)."""
        if isinstance(gateway, FaultyGateway):
            return gateway  # a service entered twice: wrap once
        faults = tuple(f for f in self.config.faults if f.gateway in ("*", gateway.name))
        if not faults:
            return gateway
        seed = self.config.seed
        rng = self.rng_factory(None if seed is None else f"{seed}/{gateway.name}")
        wrapped = FaultyGateway(gateway, faults, self, rng)
        self.wrapped[gateway.name] = wrapped
        return wrapped

    def install(self, service: PaymentService) -> None:
        """Wrap ``service``'s registered gateways in place and start the run's time.

        Must run before the first payment: ``aegispay_startup`` does it."""
        self.check(service.gateways)
        service.wrap_gateways(self.wrap)
        if self.started_at is None:
            self.start()

    @hookimpl
    def aegispay_startup(self, service: PaymentService) -> None:
        self.install(service)
