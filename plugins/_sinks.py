"""What the built-in event sinks share: reading their configuration, the JSON form of a message,
the safe summary for logs, the error they raise, and the payment -> merchant directory used to
route events per merchant.

Serializing: ``service.event_types.to_dict`` is the service's own JSON form of an event. The
sinks take it from ``aegispay_startup``; until then they use a fresh
:class:`aegispay.serialization.EventTypes`, which gives the same result for every event class,
plugin ones included (turning an event into a dict depends on its class, not on the registry;
the registry is needed to *load* events back).
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from aegispay.errors import AegisPayError, ConfigError
from aegispay.events import Event
from aegispay.hookspecs import hookimpl
from aegispay.money import Money
from aegispay.outbox import OutboxMessage
from aegispay.serialization import EventTypes
from aegispay.settings import structure_config

from .event_log import _SAFE_FIELDS

if TYPE_CHECKING:
    from aegispay.service import PaymentService

T = TypeVar("T")
Serializer = Callable[[Event], dict[str, Any]]
MerchantLookup = Callable[[str], Awaitable[str | None]]


class EventSinkError(AegisPayError):
    """A sink could not publish a batch. Raised from ``publish``: the relay retries the batch
    later and parks it after its attempts run out.

    ``permanent``: the destination refused the message itself (an HTTP 400, say), so retrying
    the same message will not help. ``retry_after``: seconds the destination asked to wait, when
    it said. The message never carries a password or a signing secret.
    """

    def __init__(
        self, message: str, *, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


def config_error(path: str, problem: str) -> ConfigError:
    return ConfigError(f"invalid configuration: {path}: {problem}")


def read_config(section: Mapping[str, Any], cls: type[T], where: str) -> T | None:
    """``section`` as ``cls``, or None when the sink is not configured (an empty or absent
    section) or is turned off with ``enabled = false``. A bad value is a ConfigError."""
    if not section:
        return None
    settings = structure_config(section, cls, where)
    return settings if getattr(settings, "enabled", True) else None


def require_positive(where: str, **values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise config_error(f"{where}.{key}", f"must be greater than 0 (got {value!r})")


@functools.cache
def _default_types() -> EventTypes:
    return EventTypes()


def default_serializer(event: Event) -> dict[str, Any]:
    """``EventTypes().to_dict(event)``: the JSON-ready form of any event (see the module doc)."""
    return _default_types().to_dict(event)


def dumps(data: Any) -> str:
    """Compact, key-sorted JSON; an unserializable value (a plugin event's field of a type JSON
    does not know) is a permanent sink error naming the event type, not a bare TypeError."""
    try:
        return json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        kind = data.get("type") if isinstance(data, dict) else None
        raise EventSinkError(
            f"event {kind or '?'}: cannot be written as JSON: {error}", permanent=True
        ) from None


def safe_summary(event: Event) -> dict[str, Any]:
    """The fields of ``event`` that may go to a log: ids, type, time, amount, outcome codes.
    Never metadata, payment-method tokens, customer ids, idempotency keys or free text."""
    record: dict[str, Any] = {"at": event.occurred_at.isoformat()}
    amount = getattr(event, "amount", None)
    if isinstance(amount, Money):
        record["amount"] = amount.minor
        record["currency"] = amount.currency
    for field in _SAFE_FIELDS:
        value = getattr(event, field, None)
        if value is not None:
            record[field] = getattr(value, "value", value)
    return record


class MerchantDirectory:
    """Which merchant a payment belongs to, for routing events per merchant.

    Only ``PaymentInitiated`` carries the merchant; later events carry the payment id. The
    directory learns from every event with a ``merchant_id`` and remembers up to ``capacity``
    payments (least recently used first out). A payment it has not seen (after a restart, say)
    is looked up with the function bound by :meth:`bind_service` (the service's store).
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._known: OrderedDict[str, str] = OrderedDict()
        self._lookup: MerchantLookup | None = None

    def bind(self, lookup: MerchantLookup | None) -> None:
        self._lookup = lookup

    def bind_service(self, service: PaymentService) -> None:
        store = service.store

        async def lookup(payment_id: str) -> str | None:
            payment = await store.load(payment_id)
            return None if payment is None else payment.merchant_id

        self.bind(lookup)

    def learn(self, payment_id: str, merchant_id: str) -> None:
        self._known[payment_id] = merchant_id
        self._known.move_to_end(payment_id)
        while len(self._known) > self._capacity:
            self._known.popitem(last=False)

    async def resolve(self, messages: Sequence[OutboxMessage]) -> dict[str, str]:
        """payment id -> merchant id for every payment in ``messages``; raises EventSinkError
        (the batch is retried) when a payment's merchant cannot be found."""
        for message in messages:
            merchant = getattr(message.event, "merchant_id", None)
            if isinstance(merchant, str) and merchant:
                self.learn(message.payment_id, merchant)
        found: dict[str, str] = {}
        for message in messages:
            payment_id = message.payment_id
            if payment_id in found:
                continue
            merchant = self._known.get(payment_id)
            if merchant is None:
                if self._lookup is None:
                    raise EventSinkError(
                        f"payment {payment_id}: merchant unknown (its PaymentInitiated is not in "
                        "this batch, and the store can be asked only once the service has "
                        "started: use 'async with service')"
                    )
                merchant = await self._lookup(payment_id)
                if merchant is None:
                    raise EventSinkError(
                        f"payment {payment_id}: not in the store; merchant unknown"
                    )
                self.learn(payment_id, merchant)
            else:
                self._known.move_to_end(payment_id)
            found[payment_id] = merchant
        return found


def by_payment(messages: Sequence[OutboxMessage]) -> list[list[OutboxMessage]]:
    """``messages`` grouped per payment, each group in the order given (per-payment order)."""
    groups: dict[str, list[OutboxMessage]] = {}
    for message in messages:
        groups.setdefault(message.payment_id, []).append(message)
    return list(groups.values())


class _ClosableSink(Protocol):
    serializer: Serializer

    async def aclose(self) -> None: ...


SinkT = TypeVar("SinkT", bound=_ClosableSink)


class SinkPlugin(Generic[SinkT]):
    """What the sink plugins share: their config section, the merchant directory, the sinks
    they registered, binding those to the service at start-up, and closing them.

    There is no shutdown hook: sinks open their connections on first publish; call
    :meth:`aclose` when the service is done (``service.host.plugin(name)``).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._section = dict(config)
        self._directory = MerchantDirectory()
        self.sinks: list[SinkT] = []

    @hookimpl(trylast=True)
    def aegispay_startup(self, service: PaymentService) -> None:
        """Serialize with the service's event registry; look merchants up in its store."""
        self._directory.bind_service(service)
        for sink in self.sinks:
            sink.serializer = service.event_types.to_dict

    async def aclose(self) -> None:
        for sink in self.sinks:
            await sink.aclose()
