"""The routing strategy interface, and the strict reader for ``[plugins.routing]`` options.

A strategy is a small class constructed from its options (an :class:`Options` reader) that
ranks the candidates of one payment. It gets everything a router gets: the candidates (already
filtered by currency, by elimination and by the routing rules), the payment, and the hook
context (registered gateways, clock). A strategy that needs live gateway health reads it from
``self.monitor`` (the service's :class:`aegispay.breaker.GatewayMonitor`), which the routing
plugin hands to :meth:`Strategy.bind` when the service starts; until then it is None and the
strategy must still decide (every gateway then looks equally healthy).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
from aegispay.decisions import HookContext
from aegispay.errors import ConfigError, InvalidMoney
from aegispay.money import Money, currency_exponent
from aegispay.payment import Payment

if TYPE_CHECKING:
    from aegispay.breaker import GatewayMonitor

_MISSING: Any = object()


def config_error(path: str, problem: str, value: Any = _MISSING) -> ConfigError:
    got = "" if value is _MISSING else f" (got {value!r})"
    return ConfigError(f"invalid configuration: {path}: {problem}{got}")


@attrs.frozen
class Ranking:
    """A strategy's answer: ``ordered`` first choice first; ``eliminated`` candidates must not
    be tried at all (compliance). Candidates in neither are appended by the plugin as fallbacks,
    in candidate order. ``label`` names the strategy in the decision (``ab_test:control``)."""

    ordered: tuple[str, ...]
    reason: str
    label: str
    eliminated: frozenset[str] = frozenset()


class Strategy(abc.ABC):
    """One routing strategy. Subclasses set ``name`` (the value of ``strategy = "..."``), take
    their options in ``__init__(options)`` (raising ConfigError through ``options``) and keep
    any state (counters) on the instance."""

    name: ClassVar[str]
    monitor: GatewayMonitor | None = None  # live health and breakers, once bound

    @abc.abstractmethod
    def __init__(self, options: Options) -> None:
        """Read the options (``options.finish()`` refuses unknown keys)."""

    def bind(self, monitor: GatewayMonitor) -> None:
        """Called when the service starts, with its gateway health and breakers. A strategy
        that holds other strategies passes it on."""
        self.monitor = monitor

    @abc.abstractmethod
    def rank(self, candidates: Sequence[str], payment: Payment, context: HookContext) -> Ranking:
        """Order (and possibly eliminate) ``candidates`` for ``payment``."""


class Options:
    """A strict reader for one configuration table: every value is checked as it is read, and
    :meth:`finish` refuses keys nobody read. Gateway names read with :meth:`gateway` are
    remembered with their field (``refs``) so they can be checked once gateways are known."""

    def __init__(
        self,
        data: Any,
        where: str,
        refs: list[tuple[str, str]],
        root: Options | None = None,
        registry: Mapping[str, type[Strategy]] | None = None,
    ) -> None:
        if not isinstance(data, Mapping):
            raise config_error(where, "expected a table", data)
        self.data: dict[str, Any] = dict(data)
        self.where = where
        self.refs = refs
        self.root: Options = root or self  # the [plugins.routing] table
        # The strategies ``strategy = "..."`` may name (kept on the root table).
        self.registry: Mapping[str, type[Strategy]] = (
            registry if registry is not None else root.registry if root is not None else {}
        )
        self._read: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}"

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str) -> Any:
        self._read.add(key)
        return self.data.get(key, _MISSING)

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self._get(key)
        if value is _MISSING:
            return default
        if not isinstance(value, str) or not value:
            raise config_error(self.path(key), "expected a non-empty string", value)
        return value

    def strings(self, key: str) -> tuple[str, ...] | None:
        """A string or a list of strings (``currency = "USD"`` or ``["USD", "EUR"]``)."""
        value = self._get(key)
        if value is _MISSING:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
            raise config_error(self.path(key), "expected a string or a list of strings", value)
        return tuple(value)

    def gateway(self, name: Any, path: str) -> str:
        if not isinstance(name, str) or not name:
            raise config_error(path, "expected a gateway name", name)
        self.refs.append((path, name))
        return name

    def gateways(self, key: str) -> tuple[str, ...] | None:
        """A list of distinct gateway names."""
        value = self._get(key)
        if value is _MISSING:
            return None
        if not isinstance(value, list | tuple):
            raise config_error(self.path(key), "expected a list of gateway names", value)
        names = tuple(self.gateway(v, f"{self.path(key)}[{i}]") for i, v in enumerate(value))
        if len(set(names)) != len(names):
            raise config_error(self.path(key), "names a gateway twice", list(value))
        return names

    def integer(self, key: str, default: int | None = None, minimum: int = 0) -> int | None:
        value = self._get(key)
        if value is _MISSING:
            return default
        return check_int(value, self.path(key), minimum)

    def number(
        self, key: str, default: float, minimum: float = 0.0, maximum: float | None = None
    ) -> float:
        """A number (integer or float: a weight, a ratio, milliseconds; never money)."""
        value = self._get(key)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise config_error(self.path(key), f"expected a number >= {minimum:g}", value)
        if maximum is not None and value > maximum:
            raise config_error(self.path(key), f"expected a number <= {maximum:g}", value)
        return float(value)

    def choice(self, key: str, allowed: Sequence[str]) -> str | None:
        value = self.string(key)
        if value is not None and value not in allowed:
            raise config_error(self.path(key), f"expected one of {list(allowed)}", value)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise config_error(self.path(key), "expected true or false", value)
        return value

    def table(self, key: str) -> Options | None:
        value = self._get(key)
        if value is _MISSING:
            return None
        return Options(value, self.path(key), self.refs, self.root)

    def tables(self, key: str) -> list[Options]:
        value = self._get(key)
        if value is _MISSING:
            return []
        if not isinstance(value, list | tuple):
            raise config_error(self.path(key), "expected a list of tables", value)
        where = self.path(key)
        return [Options(v, f"{where}[{i}]", self.refs, self.root) for i, v in enumerate(value)]

    def money(self, key: str, currency: str) -> int | None:
        """A decimal string in ``currency``'s major units, as integer minor units."""
        value = self._get(key)
        if value is _MISSING:
            return None
        return parse_money(value, currency, self.path(key))

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            raise config_error(self.where, f"unknown key(s) {unknown}")


def check_int(value: Any, path: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise config_error(path, f"expected an integer >= {minimum}", value)
    return value


def parse_money(value: Any, currency: str, path: str) -> int:
    """``"500.00"`` in ``currency`` as minor units; never from a float."""
    if not isinstance(value, str):
        raise config_error(path, 'expected a decimal string such as "10.00"', value)
    try:
        return Money.of(value, currency, path).minor
    except InvalidMoney as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None


def check_currency(value: Any, path: str) -> str:
    try:
        currency_exponent(value, path)
    except InvalidMoney as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    assert isinstance(value, str)
    return value
