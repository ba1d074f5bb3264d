"""A typed, async facade over ``pm.hook``: what the engine calls instead of raw pluggy.

Implementations may be plain functions or ``async def``; results that are awaitable are
awaited here (datasette's ``await_me_maybe``). Observation hooks (lifecycle, events) never let a
plugin's exception escape into a payment: they are logged and dropped. Hooks with no
implementation are skipped without a call, which keeps the per-payment path cheap.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
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


_Call = Callable[[tuple[Any, ...]], Any]


def _direct(function: Any, indexes: tuple[int, ...], params: tuple[str, ...]) -> _Call:
    """Call ``function`` with the arguments it asks for (pluggy lets it take a subset)."""
    if indexes == tuple(range(len(params))):  # the usual case: every argument, in order
        return lambda args: function(*args)
    return lambda args: function(*[args[i] for i in indexes])


def _through_pluggy(subset: Any, params: tuple[str, ...], firstresult: bool) -> _Call:
    """Call one implementation through a pluggy subset caller, so wrappers run around it."""

    def call(args: tuple[Any, ...]) -> Any:
        results = subset(**dict(zip(params, args, strict=True)))
        if firstresult:
            return results
        return results[0] if results else None

    return call


class _Caller:
    """Calls one hook's implementations one by one, in pluggy's order, awaiting results.

    Without wrapper implementations each function is called directly (a fraction of pluggy's
    per-call cost, which matters several times per payment). When a new-style
    ``wrapper=True`` implementation exists, each implementation is called through a pluggy
    subset caller holding the wrappers and that one implementation, so wrappers apply (once
    per implementation) while results are still awaited one at a time - a firstresult hook
    passes on when an async implementation resolves to None, and an observer that raises
    cannot silence the others.
    """

    __slots__ = ("_calls", "empty", "name")

    def __init__(self, pm: pluggy.PluginManager, hook: pluggy.HookCaller) -> None:
        self.name = hook.name
        assert hook.spec is not None, hook.name
        params = tuple(hook.spec.argnames)
        firstresult = bool(hook.spec.opts.get("firstresult"))
        impls = hook.get_hookimpls()
        plain = [impl for impl in reversed(impls) if not (impl.wrapper or impl.hookwrapper)]
        self.empty = not plain
        calls: list[tuple[str, _Call]] = []
        wrapped = len(plain) != len(impls)
        for impl in plain:
            if wrapped:
                others = [i.plugin for i in plain if i is not impl]
                call = _through_pluggy(
                    pm.subset_hook_caller(hook.name, others), params, firstresult
                )
            else:
                call = _direct(impl.function, tuple(params.index(a) for a in impl.argnames), params)
            calls.append((impl.plugin_name, call))
        self._calls = tuple(calls)

    async def all(self, *args: Any) -> list[Any]:
        """Every non-None result (``args`` in the hookspec's parameter order)."""
        out = []
        for _, call in self._calls:
            result = call(args)
            if result is not None and inspect.isawaitable(result):
                result = await result
            if result is not None:
                out.append(result)
        return out

    async def first(self, *args: Any) -> Any:
        """The first non-None result; an async implementation resolving to None passes on."""
        for _, call in self._calls:
            result = call(args)
            if result is not None and inspect.isawaitable(result):
                result = await result
            if result is not None:
                return result
        return None

    async def each(self, *args: Any) -> None:
        """Call every implementation; one that raises is logged with its plugin's name and
        the others still run (observers must not silence each other)."""
        for owner, call in self._calls:
            try:
                result = call(args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("plugin %r: %s failed; ignored", owner, self.name)


class Hooks:
    """The engine's view of the plugin manager's hooks."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._pm = pm
        self._hook = pm.hook
        self.refresh()

    def refresh(self) -> None:
        """Recompute the callers (after a plugin is registered or unregistered)."""
        hook, pm = self._hook, self._pm
        self._validate = _Caller(pm, hook.aegispay_validate_payment)
        self._fraud = _Caller(pm, hook.aegispay_check_fraud)
        self._route = _Caller(pm, hook.aegispay_select_gateway)
        self._before_call = _Caller(pm, hook.aegispay_before_gateway_call)
        self._after_call = _Caller(pm, hook.aegispay_after_gateway_call)
        self._operation = _Caller(pm, hook.aegispay_operation_finished)
        self._on_event = _Caller(pm, hook.aegispay_on_event)

    async def validate_payment(self, request: PaymentRequest, context: HookContext) -> None:
        """Raise PaymentValidationError with every problem all validators found."""
        if self._validate.empty:
            return
        problems: list[Problem] = []
        for found in await self._validate.all(request, context):
            for problem in found:
                if not isinstance(problem, Problem):
                    raise PluginError(
                        f"aegispay_validate_payment returned {problem!r}; expected Problem"
                    )
                problems.append(problem)
        if problems:
            raise PaymentValidationError(problems)

    async def check_fraud(self, payment: Payment, context: HookContext) -> list[FraudVerdict]:
        if self._fraud.empty:
            return []
        verdicts = await self._fraud.all(payment, context)
        for verdict in verdicts:
            if not isinstance(verdict, FraudVerdict):
                raise PluginError(
                    f"aegispay_check_fraud returned {verdict!r}; expected FraudVerdict"
                )
        return verdicts

    async def select_gateway(
        self, payment: Payment, candidates: Sequence[str], context: HookContext
    ) -> RouteDecision | None:
        decision = await self._route.first(payment, candidates, context)
        if decision is not None and not isinstance(decision, RouteDecision):
            raise PluginError(
                f"aegispay_select_gateway returned {decision!r}; expected RouteDecision"
            )
        return decision

    async def _observe(self, caller: _Caller, *args: Any) -> None:
        await caller.each(*args)

    async def before_gateway_call(self, call: GatewayCall) -> None:
        if not self._before_call.empty:
            await self._observe(self._before_call, call)

    async def after_gateway_call(
        self, call: GatewayCall, result: GatewayResult, elapsed_ms: float
    ) -> None:
        if not self._after_call.empty:
            await self._observe(self._after_call, call, result, elapsed_ms)

    async def operation_finished(self, record: OperationRecord) -> None:
        if not self._operation.empty:
            await self._observe(self._operation, record)

    async def on_event(self, event: Event) -> None:
        if not self._on_event.empty:
            await self._observe(self._on_event, event)

    @property
    def wants_gateway_calls(self) -> bool:
        return not (self._before_call.empty and self._after_call.empty)

    @property
    def wants_operations(self) -> bool:
        return not self._operation.empty
