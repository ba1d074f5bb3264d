"""One gateway call: guarded by the gateway's circuit breaker, under a timeout, observed by
the lifecycle hooks, mapped onto the outcome taxonomy, recorded in the gateway's health, and
repeated when that is safe (:mod:`aegispay.retry`). Whatever an adapter does (answers, times
out, raises), the engine gets a GatewayResult and decides from its outcome alone. An open
circuit answers NOT_SENT without calling the gateway, so routing fails over to the next
gateway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import attrs

from .breaker import REJECTED, CircuitState, GatewayMonitor
from .gateways import (
    Gateway,
    GatewayCapabilities,
    GatewayNotSent,
    GatewayResult,
    Operation,
    Outcome,
    capabilities_of,
)
from .health import CallClass
from .hooks import Hooks
from .observe import GatewayCall
from .retry import Retrier, may_repeat
from .timeouts import run_with_timeout

log = logging.getLogger("aegispay.service")
_gateway_log = logging.getLogger("aegispay.gateway")
_METHODS = {
    Operation.AUTHORIZE: "authorize",
    Operation.CAPTURE: "capture",
    Operation.VOID: "void",
    Operation.REFUND: "refund",
    Operation.STATUS: "get_status",
}
# The health class of an answer (a timeout or a raising adapter is classified where caught).
_CLASSES = {
    Outcome.SUCCEEDED: CallClass.SUCCESS,
    Outcome.PENDING: CallClass.SUCCESS,
    Outcome.REQUIRES_ACTION: CallClass.SUCCESS,
    Outcome.DECLINED: CallClass.DECLINED,
    Outcome.NOT_SENT: CallClass.NOT_SENT,
    Outcome.UNKNOWN: CallClass.UNKNOWN,
}
_FAILED = (False, False, True, True, True)  # by CallClass


_NOT_SENT = Outcome.NOT_SENT
_UNKNOWN = Outcome.UNKNOWN


class GatewayCaller:
    """Makes the engine's gateway calls. ``retrier`` decides and paces repeats;
    ``retries`` counts the repeated calls made, per gateway (``service.gateway_health()``
    reports them)."""

    def __init__(
        self,
        gateways: Mapping[str, Gateway],
        hooks: Hooks,
        timeout_s: float,
        monitor: GatewayMonitor | None = None,
        retrier: Retrier | None = None,
    ) -> None:
        self._gateways = gateways
        self._hooks = hooks
        self._timeout_s = timeout_s
        self.monitor = monitor if monitor is not None else GatewayMonitor(gateways)
        self.retrier = retrier if retrier is not None else Retrier()
        self.retries: dict[str, int] = {}

    async def __call__(
        self,
        gateway_name: str,
        operation: Operation,
        request: Any,
        attempt_no: int | None,
        country: str | None = None,
        *,
        attempts: int | None = None,
    ) -> GatewayResult:
        """Call ``operation`` on gateway ``gateway_name``, repeating it while that is safe;
        never raises for the gateway.

        One call: breaker, hooks, timeout, outcome, health. A NOT_SENT or UNKNOWN answer then
        goes to :meth:`_repeat`: with retries enabled a sequence makes at most ``attempts``
        calls (default ``max_attempts``); with them off, one, unless ``attempts`` asks for
        more (status lookups: repeated at once, as the engine always did). An authorisation
        is also recorded in the gateway's segment windows: the request's currency and payment
        method, and ``country`` (the customer's, when the caller knows it; requests do not
        carry it)."""
        # A status lookup that could not be made says nothing about the original request:
        # only the gateway's own "no such request" answer may come back as NOT_SENT, because
        # NOT_SENT after a lookup lets the engine route the payment elsewhere.
        unreachable = Outcome.UNKNOWN if operation is Operation.STATUS else Outcome.NOT_SENT
        gateway = self._gateways.get(gateway_name)
        if gateway is None:
            # The gateway's plugin is gone (uninstalled, denied). Nothing was sent.
            return GatewayResult(unreachable, message=f"gateway {gateway_name!r} is not registered")
        monitor = self.monitor
        pair = monitor.pairs.get(gateway_name)
        health, breaker = pair if pair is not None else monitor.add(gateway_name)
        clock = monitor.clock
        began = clock()
        token = breaker.allow(began)
        if token == REJECTED:
            return GatewayResult(
                unreachable,
                message=f"circuit open for gateway {gateway_name!r} ({breaker.state.value}): "
                "not called",
            )
        call = None
        if self._hooks.wants_gateway_calls:
            call = GatewayCall(
                gateway_name, operation, request.payment_id, request.idempotency_key, attempt_no
            )
        timeout = self._timeout_s
        cls = CallClass.UNKNOWN
        try:
            if call is not None:
                await self._hooks.before_gateway_call(call)
            hooked = time.perf_counter() if call is not None else 0.0
            try:
                result = await run_with_timeout(
                    getattr(gateway, _METHODS[operation])(request), timeout
                )
            except TimeoutError:
                cls = CallClass.TIMEOUT
                result = GatewayResult(Outcome.UNKNOWN, message=f"no answer within {timeout:g}s")
            except GatewayNotSent as exc:
                cls = CallClass.NOT_SENT
                result = GatewayResult(unreachable, message=str(exc))
            except Exception as exc:  # it may have been sent: only a status lookup can tell
                log.warning(
                    "gateway %s %s raised %s", gateway_name, operation.value, type(exc).__name__
                )
                result = GatewayResult(
                    Outcome.UNKNOWN, message=f"adapter raised {type(exc).__name__}"
                )
            else:
                if not isinstance(result, GatewayResult):
                    result = GatewayResult(
                        Outcome.UNKNOWN, message=f"adapter returned {type(result).__name__}"
                    )
                elif operation is Operation.STATUS and result.outcome is Outcome.NOT_SENT:
                    cls = CallClass.SUCCESS  # the gateway answered "no such request"
                else:
                    cls = _CLASSES[result.outcome]
        except BaseException:  # cancelled: the call never finished, give a probe slot back
            breaker.release(token)
            raise
        ended = clock()
        latency_ms = (ended - began) * 1000
        health.record(cls, latency_ms, ended)
        breaker.record(token, _FAILED[cls], ended)
        if operation is Operation.AUTHORIZE:
            values = (request.amount.currency, request.payment_method, country)
            monitor.record_segments(gateway_name, cls, latency_ms, ended, values)
        if call is not None:
            await self._hooks.after_gateway_call(
                call, result, (time.perf_counter() - hooked) * 1000
            )
        if _gateway_log.isEnabledFor(logging.DEBUG):
            _gateway_log.debug(
                "gateway=%s operation=%s payment_id=%s attempt=%s outcome=%s",
                gateway_name,
                operation.value,
                request.payment_id,
                attempt_no,
                result.outcome.value,
            )
        outcome = result.outcome
        if outcome is not _NOT_SENT and outcome is not _UNKNOWN:
            return result  # the hot path: two identity tests on top of the call
        return await self._repeat(
            result, gateway_name, operation, request, attempt_no, country, attempts
        )

    async def _repeat(
        self,
        first: GatewayResult,
        gateway_name: str,
        operation: Operation,
        request: Any,
        attempt_no: int | None,
        country: str | None,
        attempts: int | None,
    ) -> GatewayResult:
        """The rest of a sequence whose first call ended NOT_SENT or UNKNOWN."""
        retrier = self.retrier
        paced = retrier.enabled
        limit = attempts if attempts is not None else retrier.settings.max_attempts if paced else 1
        gateway = self._gateways.get(gateway_name)
        if limit <= 1 or gateway is None:
            return first
        capabilities = declared_capabilities(gateway)
        if not may_repeat(operation, first.outcome, capabilities):
            return first
        maybe_sent = [first.outcome is _UNKNOWN]

        async def again() -> GatewayResult:
            self.retries[gateway_name] = self.retries.get(gateway_name, 0) + 1
            result = await self(gateway_name, operation, request, attempt_no, country, attempts=1)
            if result.outcome is _UNKNOWN:
                maybe_sent[0] = True
            return result

        result = await retrier.run(
            first,
            again,
            repeatable=lambda r: may_repeat(operation, r.outcome, capabilities),
            max_attempts=limit,
            paced=paced,
            blocked=lambda: self._rejects(gateway_name),
            describe=(
                f"gateway {gateway_name} {operation.value} payment {request.payment_id} "
                f"attempt {attempt_no}"
            ),
        )
        if maybe_sent[0] and operation is not Operation.STATUS:
            # An earlier call of this sequence may have reached the gateway: a later "not
            # sent" or a gateway-specific decline must not let the engine fail over.
            if result.outcome is _NOT_SENT:
                message = f"{result.message}; an earlier try may have been processed"
                result = GatewayResult(_UNKNOWN, message=message.lstrip("; "))
            elif result.retryable_elsewhere:
                result = attrs.evolve(result, retryable_elsewhere=False)
        return result

    def _rejects(self, gateway_name: str) -> bool:
        """True when the gateway's circuit would fail the next call fast (or it is gone)."""
        if gateway_name not in self._gateways:
            return True
        pair = self.monitor.pairs.get(gateway_name)
        if pair is None:
            return False
        breaker = pair[1]
        if breaker.state is CircuitState.CLOSED or not breaker.settings.enabled:
            return False
        return not breaker.wants_probe(self.monitor.clock())


def declared_capabilities(gateway: Gateway) -> GatewayCapabilities:
    """What the gateway declares; a malformed declaration claims nothing (so nothing UNKNOWN
    is repeated there) rather than failing the payment."""
    try:
        return capabilities_of(gateway)
    except TypeError as error:
        log.warning("%s", error)
        return GatewayCapabilities(currencies=gateway.supported_currencies)
