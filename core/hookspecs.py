"""Every AegisPay hook, and the only place hooks are specified.

Implement hooks with ``aegispay.hookimpl``; the name of an implementation function must match the
specification. Pipeline hooks may be ``async def`` or return an awaitable: the engine awaits
results. Built-in plugins are registered ``trylast``, so a third-party implementation of a
firstresult hook (routing) wins, and runs first for the others.

Hooks are grouped as: registration (called once while a service is built), the payment pipeline
(called per payment), lifecycle observation (around gateway calls and service operations), and
events (after commit). Plugins may also wrap any synchronous hook with pluggy's new-style
``@hookimpl(wrapper=True)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from .decisions import FraudVerdict, HookContext, RouteDecision
    from .errors import Problem
    from .events import Event
    from .gateways import Gateway, GatewayResult
    from .observe import GatewayCall, OperationRecord
    from .outbox import EventSink
    from .payment import Payment
    from .plugins.routing_base import Strategy
    from .requests import PaymentRequest
    from .service import PaymentService
    from .settings import PluginConfig

PROJECT_NAME = "aegispay"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --- Registration: called once per service, while it is being built -------------------------


@hookspec
def aegispay_register_gateways(register: Callable[[Gateway], None], config: PluginConfig) -> None:
    """Register gateway adapters.

    :param register: call ``register(gateway)`` once per adapter. ``gateway`` implements
        :class:`aegispay.gateways.Gateway`; its ``name`` must be unique across all plugins
        (a duplicate is reported as a plugin error naming both owners).
    :param config: every plugin's configuration; read yours with ``config.section("name")``.

    The return value is ignored. Called once when a service is built, before any payment.
    """


@hookspec
def aegispay_register_event_types(register: Callable[[type[Event]], None]) -> None:
    """Register a plugin's own event classes so stores can serialize and load them.

    :param register: call ``register(EventClass)``; the class subclasses
        :class:`aegispay.events.Event` (frozen attrs, ``kw_only=True``) and sets a unique
        ``type_name`` class variable.

    The return value is ignored. Called once when a service is built.
    """


@hookspec
def aegispay_register_event_sinks(
    register: Callable[[EventSink], None], config: PluginConfig
) -> None:
    """Register destinations for committed events (message brokers, webhooks, logs).

    :param register: call ``register(sink)``; ``sink.name`` is unique and
        ``await sink.publish(messages)`` receives batches of
        :class:`aegispay.outbox.OutboxMessage` in per-payment order. A sink that raises gets
        the batch again later (at-least-once delivery: deduplicate on ``message.message_id``).
    :param config: every plugin's configuration.

    The JSON form of an event is ``service.event_types.to_dict(event)``, plugin event types
    included. The service is not passed here: take it from ``aegispay_startup``, which runs
    before its relay publishes anything. Before that (or without it),
    ``aegispay.serialization.EventTypes().to_dict(event)`` gives the same dict: turning an event
    into a dict depends only on its class; the registry is needed to load events back.

    There is no shutdown hook: a sink holding connections should open them on its first
    ``publish`` and offer an idempotent ``aclose()`` for its owner to call.

    The return value is ignored. Called once when a service is built.
    """


@hookspec
def aegispay_register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``aegispay`` command line.

    :param cli: the top-level click group; decorate functions with ``@cli.command()``.

    The return value is ignored. Called once when the command line starts.
    """


@hookspec
def aegispay_startup(service: PaymentService) -> Awaitable[None] | None:
    """The service has been built and is starting; set up connections or background state.

    :param service: the service being started.

    The return value is ignored (awaited if it is awaitable). Called once from
    ``async with service:`` before the first payment.
    """


@hookspec
def aegispay_register_routing_strategies(register: Callable[[type[Strategy]], None]) -> None:
    """Add routing strategies that ``[plugins.routing] strategy = "<name>"`` can select.

    :param register: call ``register(StrategyClass)`` once per strategy. The class subclasses
        :class:`aegispay.plugins.routing_base.Strategy`: a unique ``name`` (a clash with a
        built-in strategy or another plugin's is a ConfigError naming both), an
        ``__init__(options)`` reading its ``[plugins.routing.<name>]`` table, and
        ``rank(candidates, payment, context)`` returning a ``Ranking``. Live gateway health is
        on ``self.monitor`` once the service has started.

    The return value is ignored. Called once, when a service with a configured ``routing``
    plugin starts (from its ``aegispay_startup``), before the first payment; a strategy so
    registered can also be an A/B test variant.
    """


# --- The payment pipeline: called for every payment -----------------------------------------


@hookspec
def aegispay_validate_payment(
    request: PaymentRequest, context: HookContext
) -> Sequence[Problem] | Awaitable[Sequence[Problem] | None] | None:
    """Check a payment request before anything is stored.

    :param request: the :class:`aegispay.requests.PaymentRequest` being created (already
        well-formed: a real Money amount, known currency, valid capture mode).
    :param context: merchant, operation, clock, and the registered gateways by name.

    Return a list of :class:`aegispay.errors.Problem` (field + message), or None / an empty list
    when you have nothing to say. Every implementation is called; all problems are gathered
    into one :class:`aegispay.errors.PaymentValidationError`, and nothing is written. Called by
    ``create_payment`` once per new request (not for an idempotent replay).
    """


@hookspec
def aegispay_check_fraud(
    payment: Payment, context: HookContext
) -> FraudVerdict | Awaitable[FraudVerdict | None] | None:
    """Assess the risk of a payment before it is sent to any gateway.

    :param payment: the payment, still INITIATED.
    :param context: merchant, operation, clock, and the registered gateways.

    Return an :class:`aegispay.decisions.FraudVerdict` (allow / review / deny, a risk score
    0-100 and a reason), or None to abstain. Every implementation is asked; the verdicts are
    combined: any DENY fails the payment (code ``fraud_denied``), else any REVIEW flags it and
    forces manual capture. Called by ``process_payment`` once per payment.
    """


@hookspec(firstresult=True)
def aegispay_select_gateway(
    payment: Payment, candidates: Sequence[str], context: HookContext
) -> RouteDecision | Awaitable[RouteDecision | None] | None:
    """Decide which gateways to try for a payment, in order.

    :param payment: the payment about to be processed.
    :param candidates: names of registered gateways that support the payment's currency, in
        registration order.
    :param context: merchant, operation, clock, and the registered gateways (for fees, etc.).

    Return an :class:`aegispay.decisions.RouteDecision`: the first choice, then fallbacks that
    are tried only after a NOT_SENT outcome or a DECLINED marked ``retryable_elsewhere``
    (never after UNKNOWN). Return None to let the next
    router decide. The first non-None result wins (the built-in priority router runs last).
    Names not among ``candidates`` are dropped. Called by ``process_payment`` once per payment.
    """


# --- Lifecycle observation: logging, metrics, tracing ---------------------------------------


@hookspec
def aegispay_before_gateway_call(call: GatewayCall) -> Awaitable[None] | None:
    """A gateway call is about to be made.

    :param call: gateway name, operation, payment id, attempt number and idempotency key.

    The return value is ignored (awaited if awaitable); an exception is logged and ignored.
    Called right before every authorize / capture / void / refund / status call.
    """


@hookspec
def aegispay_after_gateway_call(
    call: GatewayCall, result: GatewayResult, elapsed_ms: float
) -> Awaitable[None] | None:
    """A gateway call has finished.

    :param call: the same value ``aegispay_before_gateway_call`` received.
    :param result: the outcome (a timeout or an escaped exception appears as UNKNOWN, an
        adapter's ``GatewayNotSent`` as NOT_SENT).
    :param elapsed_ms: wall time of the call.

    The return value is ignored; an exception is logged and ignored. Called after every call.
    """


@hookspec
def aegispay_operation_finished(record: OperationRecord) -> Awaitable[None] | None:
    """A service operation (create, process, sync, capture, cancel, refund) has finished.

    :param record: operation name, payment id, the resulting payment (None on error), the
        error (None on success) and the elapsed time in ms.

    The return value is ignored; an exception is logged and ignored. Called once per operation.
    """


# --- Events: after commit --------------------------------------------------------------------


@hookspec
def aegispay_on_event(event: Event) -> Awaitable[None] | None:
    """React to a committed payment event.

    :param event: an :class:`aegispay.events.Event`, e.g. ``PaymentCompleted``.

    The return value is ignored (awaited if awaitable). Called by the outbox relay only after
    the event's transaction committed, never inside the write, in per-payment order, at least
    once (deduplicate on ``event.event_id``). An exception is logged and never changes the
    payment's state.
    """


def hook_names() -> list[str]:
    """Every hook specified here, in file order."""
    return [name for name in globals() if name.startswith("aegispay_")]
