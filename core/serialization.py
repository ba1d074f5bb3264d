"""Events and payments to and from plain dicts (JSON-ready), with cattrs.

An :class:`EventTypes` registry maps explicit type names to classes; it is per service (no
module-global registry), filled with the core events and whatever plugins register.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import cattrs

from .errors import InvalidInput, PluginError
from .events import CORE_EVENT_TYPES, Event
from .money import Money


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
        data: dict[str, Any] = self._converter.unstructure(event)
        data["type"] = event.type_name
        data["event_id"] = event.event_id
        return data

    def from_dict(self, data: Mapping[str, Any]) -> Event:
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


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for sub in error.exceptions for leaf in _leaves(sub)]
    return [error]
