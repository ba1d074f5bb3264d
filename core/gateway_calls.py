"""One gateway call: under a timeout, observed by the lifecycle hooks, mapped onto the
outcome taxonomy. Whatever an adapter does (answers, times out, raises), the engine gets a
GatewayResult and decides from its outcome alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from .gateways import Gateway, GatewayNotSent, GatewayResult, Operation, Outcome
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


class GatewayCaller:
    def __init__(self, gateways: Mapping[str, Gateway], hooks: Hooks, timeout_s: float) -> None:
        self._gateways = gateways
        self._hooks = hooks
        self._timeout_s = timeout_s

    async def __call__(
        self, gateway_name: str, operation: Operation, request: Any, attempt_no: int | None
    ) -> GatewayResult:
        """Call ``operation`` on gateway ``gateway_name``; never raises for the gateway."""
        # A status lookup that could not be made says nothing about the original request:
        # only the gateway's own "no such request" answer may come back as NOT_SENT, because
        # NOT_SENT after a lookup lets the engine route the payment elsewhere.
        unreachable = Outcome.UNKNOWN if operation is Operation.STATUS else Outcome.NOT_SENT
        gateway = self._gateways.get(gateway_name)
        if gateway is None:
            # The gateway's plugin is gone (uninstalled, denied). Nothing was sent.
            return GatewayResult(unreachable, message=f"gateway {gateway_name!r} is not registered")
        call = None
        if self._hooks.wants_gateway_calls:
            call = GatewayCall(
                gateway_name, operation, request.payment_id, request.idempotency_key, attempt_no
            )
            await self._hooks.before_gateway_call(call)
        began = time.perf_counter() if call is not None else 0.0
        timeout = self._timeout_s
        try:
            result = await run_with_timeout(getattr(gateway, _METHODS[operation])(request), timeout)
        except TimeoutError:
            result = GatewayResult(Outcome.UNKNOWN, message=f"no answer within {timeout:g}s")
        except GatewayNotSent as exc:
            result = GatewayResult(unreachable, message=str(exc))
        except Exception as exc:  # it may have been sent: only a status lookup can tell
            log.warning(
                "gateway %s %s raised %s", gateway_name, operation.value, type(exc).__name__
            )
            result = GatewayResult(Outcome.UNKNOWN, message=f"adapter raised {type(exc).__name__}")
        if not isinstance(result, GatewayResult):
            result = GatewayResult(
                Outcome.UNKNOWN, message=f"adapter returned {type(result).__name__}"
            )
        if call is not None:
            await self._hooks.after_gateway_call(call, result, (time.perf_counter() - began) * 1000)
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
