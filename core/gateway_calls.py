"""One gateway call: guarded by the gateway's circuit breaker, under a timeout, observed by
the lifecycle hooks, mapped onto the outcome taxonomy and recorded in the gateway's health.
Whatever an adapter does (answers, times out, raises), the engine gets a GatewayResult and
decides from its outcome alone. An open circuit answers NOT_SENT without calling the gateway,
so routing fails over to the next gateway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from .breaker import REJECTED, GatewayMonitor
from .gateways import Gateway, GatewayNotSent, GatewayResult, Operation, Outcome
from .health import CallClass
from .hooks import Hooks
from .observe import GatewayCall
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


class GatewayCaller:
    def __init__(
        self,
        gateways: Mapping[str, Gateway],
        hooks: Hooks,
        timeout_s: float,
        monitor: GatewayMonitor | None = None,
    ) -> None:
        self._gateways = gateways
        self._hooks = hooks
        self._timeout_s = timeout_s
        self.monitor = monitor if monitor is not None else GatewayMonitor(gateways)

    async def __call__(
        self,
        gateway_name: str,
        operation: Operation,
        request: Any,
        attempt_no: int | None,
        country: str | None = None,
    ) -> GatewayResult:
        """Call ``operation`` on gateway ``gateway_name``; never raises for the gateway.

        An authorisation is also recorded in the gateway's segment windows: the request's
        currency and payment method, and ``country`` (the customer's, when the caller knows
        it; requests do not carry it)."""
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
        return result
