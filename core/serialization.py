"""Events and payments to and from plain dicts (JSON-ready) and JSON.

An :class:`EventTypes` registry maps explicit type names to classes; it is per service (no
module-global registry), filled with the core events and whatever plugins register.

cattrs defines the format (:func:`make_converter`, ``to_dict``). The stores' JSON goes
through the functions :mod:`aegispay.codec` generates per class (``to_json``/``from_json``,
``payment_to_json``/``payment_from_json``; ``from_dict`` decodes with them too): the same
content, several times cheaper, for every core event, :class:`~aegispay.payment.Payment` and
plugin events whose fields are of the usual types. Decoding falls back to cattrs for what
they cannot read exactly (a stored row without a field added later, malformed data, which
then raises as before).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import cattrs
import orjson

from .codec import Codec, compile_codec
from .errors import InvalidInput, PluginError
from .events import CORE_EVENT_TYPES, Event
from .money import Money
from .payment import Payment


def make_converter() -> cattrs.Converter:
    """A converter that knows Money (``{"minor": 1999, "currency": "USD"}``) and datetimes."""
    converter = cattrs.Converter()
    converter.register_unstructure_hook(Money, lambda m: {"minor": m.minor, "currency": m.currency})
    converter.register_structure_hook(Money, lambda d, _: Money(d["minor"], d["currency"]))
    converter.register_unstructure_hook(datetime, datetime.isoformat)
    converter.register_structure_hook(datetime, lambda s, _: datetime.fromisoformat(s))
    return converter


class EventTypes:
    """Type name <-> event class, for one service."""

    def __init__(self, types: Iterable[type[Event]] = CORE_EVENT_TYPES) -> None:
        self._by_name: dict[str, type[Event]] = {}
        self._converter = make_converter()
        # Each class's generated codec (None: cattrs), compiled on first use: a plain dict by
        # class, as compile_codec's own cache hashes its arguments on every call.
        self._codecs: dict[type, Codec | None] = {}
        for event_type in types:
            self.register(event_type)

    def register(self, event_type: type[Event]) -> None:
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise PluginError(f"event type {event_type!r} is not a subclass of aegispay Event")
        name = event_type.type_name
        if name == Event.type_name or "type_name" not in event_type.__dict__:
            raise PluginError(f"event type {event_type.__qualname__} must set its own type_name")
        existing = self._by_name.get(name)
        if existing is not None and existing is not event_type:
            raise PluginError(
                f"event type name {name!r} is taken by {existing.__module__}."
                f"{existing.__qualname__}"
            )
        self._by_name[name] = event_type

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def to_dict(self, event: Event) -> dict[str, Any]:
        # cattrs: the generated ``plain`` measured no faster here (the stores use to_json).
        data: dict[str, Any] = self._converter.unstructure(event)
        data["type"] = event.type_name
        data["event_id"] = event.event_id
        return data

    def to_json(self, event: Event) -> bytes:
        """``to_dict`` as compact JSON (orjson), without building the dict where it can."""
        codec = self._codec(type(event))
        if codec is not None:
            try:
                return codec.dumps(event)
            except TypeError:  # a value not of its field's declared type: as cattrs does
                pass
        data: dict[str, Any] = self._converter.unstructure(event)
        data["type"] = event.type_name
        data["event_id"] = event.event_id
        return orjson.dumps(data)

    def _codec(self, event_type: type) -> Codec | None:
        try:
            return self._codecs[event_type]
        except KeyError:
            codec = self._codecs[event_type] = compile_codec(event_type, _EVENT_EXTRA)
            return codec

    def from_json(self, text: str | bytes) -> Event:
        """The event that ``to_json`` (or ``to_dict`` then any JSON encoder) wrote."""
        data = orjson.loads(text)
        if type(data) is dict:
            name = data.get("type")
            event_type = self._by_name.get(name) if type(name) is str else None
            if event_type is None:
                return self.from_dict(data)  # which names the problem
            codec = self._codec(event_type)
            if codec is not None:
                try:
                    return codec.decode_owned(data)  # type: ignore[no-any-return]
                except Exception:
                    data = orjson.loads(text)  # partly converted: cattrs reads it afresh
        return self.from_dict(data)

    def from_dict(self, data: Mapping[str, Any]) -> Event:
        name = data.get("type") if type(data) is dict else None
        event_type = self._by_name.get(name) if type(name) is str else None
        codec = self._codec(event_type) if event_type is not None else None
        if codec is not None:
            try:
                return codec.decode(data)  # type: ignore[no-any-return]
            except Exception:
                pass  # cattrs decides: defaults for missing keys, or its precise errors
        payload = dict(data)
        name = payload.pop("type", None)
        payload.pop("event_id", None)
        try:
            event_type = self._by_name[str(name)]
        except KeyError:
            raise PluginError(
                f"unknown event type {name!r}: is the plugin that defines it installed?"
            ) from None
        try:
            return self._converter.structure(payload, event_type)
        except (cattrs.BaseValidationError, KeyError, TypeError, ValueError) as exc:
            # Surface our own error (it names the field) when one caused the failure.
            for leaf in _leaves(exc):
                if isinstance(leaf, InvalidInput):
                    raise leaf from None
            raise InvalidInput(f"event {name}", f"malformed stored event: {exc!r}") from None


_EVENT_EXTRA = (("type", "o.type_name"), ("event_id", "o.event_id"))


_payment_codec = compile_codec(Payment)
assert _payment_codec is not None  # every Payment field type has a generated form
# For what the codec cannot read or write exactly (rows older than a field, odd values).
_PAYMENT_CONVERTER = make_converter()


def payment_to_json(payment: Payment) -> bytes:
    """A payment as compact JSON: ``make_converter().unstructure(payment)``'s content."""
    assert _payment_codec is not None
    try:
        return _payment_codec.dumps(payment)
    except TypeError:  # a value not of its field's declared type: as cattrs does
        return orjson.dumps(_PAYMENT_CONVERTER.unstructure(payment))


def payment_from_json(text: str | bytes) -> Payment:
    """The payment that ``payment_to_json`` (or the former cattrs encoding) wrote."""
    assert _payment_codec is not None
    data = orjson.loads(text)
    try:
        payment: Payment = _payment_codec.decode_owned(data)
    except Exception:
        # A row from before a field existed (cattrs applies its default), or malformed data
        # (cattrs raises as it always did).
        return _PAYMENT_CONVERTER.structure(orjson.loads(text), Payment)
    return payment


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for sub in error.exceptions for leaf in _leaves(sub)]
    return [error]
