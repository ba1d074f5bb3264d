"""A typed, async facade over ``pm.hook``: what the engine calls instead of raw pluggy.

Implementations may be plain functions or ``async def``; results that are awaitable are
awaited here (datasette's ``await_me_maybe``). Observation hooks (lifecycle, events) never let a
plugin's exception escape into a payment: they are logged and dropped. Hooks with no
implementation are skipped without a call, which keeps the per-payment path cheap.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

import pluggy

from .decisions import FraudVerdict, HookContext, RouteDecision
from .errors import PaymentValidationError, PluginError, Problem
from .events import Event
from .gateways import GatewayResult
from .observe import GatewayCall, OperationRecord
from .payment import Payment
from .requests import PaymentRequest

log = logging.getLogger("aegispay.hooks")


async def await_me_maybe(value: Any) -> Any:
    """``value``, awaited first if it is awaitable (hook implementations may be async)."""
    if inspect.isawaitable(value):
        return await value
    return value


class Hooks:
    """The engine's view of the plugin manager's hooks."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._pm = pm
        self._hook = pm.hook
        self.refresh()

    def refresh(self) -> None:
        """Recompute which hooks have implementations (after registering a plugin)."""
        hook = self._hook

        def used(name: str) -> bool:
            return bool(getattr(hook, name).get_hookimpls())

        self._validate = used("aegispay_validate_payment")
        self._fraud = used("aegispay_check_fraud")
        self._before_call = used("aegispay_before_gateway_call")
        self._after_call = used("aegispay_after_gateway_call")
        self._operation = used("aegispay_operation_finished")
        self._on_event = used("aegispay_on_event")
        # firstresult + an async router: pluggy would stop at the coroutine object, so such
        # routers are called one by one here (wrappers still apply to all-sync routers).
        self._async_router = any(
            inspect.iscoroutinefunction(impl.function)
            for impl in hook.aegispay_select_gateway.get_hookimpls()
        )

    @property
    def has_event_listeners(self) -> bool:
        return self._on_event

    async def validate_payment(self, request: PaymentRequest, context: HookContext) -> None:
        """Raise PaymentValidationError with every problem all validators found."""
        if not self._validate:
            return
        problems: list[Problem] = []
        for result in self._hook.aegispay_validate_payment(request=request, context=context):
            found = await await_me_maybe(result)
            if found:
                for problem in found:
                    if not isinstance(problem, Problem):
                        raise PluginError(
                            f"aegispay_validate_payment returned {problem!r}; expected Problem"
                        )
                    problems.append(problem)
        if problems:
            raise PaymentValidationError(problems)

    async def check_fraud(self, payment: Payment, context: HookContext) -> list[FraudVerdict]:
        if not self._fraud:
            return []
        verdicts = []
        for result in self._hook.aegispay_check_fraud(payment=payment, context=context):
            verdict = await await_me_maybe(result)
            if verdict is None:
                continue
            if not isinstance(verdict, FraudVerdict):
                raise PluginError(
                    f"aegispay_check_fraud returned {verdict!r}; expected FraudVerdict"
                )
            verdicts.append(verdict)
        return verdicts

    async def select_gateway(
        self, payment: Payment, candidates: Sequence[str], context: HookContext
    ) -> RouteDecision | None:
        hook = self._hook.aegispay_select_gateway
        kwargs = {"payment": payment, "candidates": candidates, "context": context}
        if not self._async_router:
            decision = hook(**kwargs)
        else:
            decision = None
            for impl in reversed(hook.get_hookimpls()):
                if impl.wrapper or impl.hookwrapper:
                    continue
                decision = await await_me_maybe(
                    impl.function(*(kwargs[name] for name in impl.argnames))
                )
                if decision is not None:
                    break
        if decision is not None and not isinstance(decision, RouteDecision):
            raise PluginError(
                f"aegispay_select_gateway returned {decision!r}; expected RouteDecision"
            )
        return decision

    async def _observe(self, name: str, **kwargs: Any) -> None:
        try:
            for result in getattr(self._hook, name)(**kwargs):
                await await_me_maybe(result)
        except Exception:
            log.exception("%s implementation failed; ignored", name)

    async def before_gateway_call(self, call: GatewayCall) -> None:
        if self._before_call:
            await self._observe("aegispay_before_gateway_call", call=call)

    async def after_gateway_call(
        self, call: GatewayCall, result: GatewayResult, elapsed_ms: float
    ) -> None:
        if self._after_call:
            await self._observe(
                "aegispay_after_gateway_call", call=call, result=result, elapsed_ms=elapsed_ms
            )

    async def operation_finished(self, record: OperationRecord) -> None:
        if self._operation:
            await self._observe("aegispay_operation_finished", record=record)

    async def on_event(self, event: Event) -> None:
        if self._on_event:
            await self._observe("aegispay_on_event", event=event)

    @property
    def wants_gateway_calls(self) -> bool:
        return self._before_call or self._after_call

    @property
    def wants_operations(self) -> bool:
        return self._operation
