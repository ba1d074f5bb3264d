"""Typed settings: attrs classes validated by cattrs, from TOML and ``AEGISPAY_*`` variables.

File (``aegispay.toml`` in the working directory, or ``--config PATH``)::

    store = "sqlite:///aegispay.db"      # the default; "memory://" keeps nothing

    [engine]
    gateway_timeout_s = 10.0

    [plugins]
    deny = ["some_plugin"]

    [plugins.fraud_rules]        # a plugin's own section, named after the plugin
    review_above = { USD = "5000.00" }

Environment variables override the file: ``AEGISPAY_STORE``, ``AEGISPAY_ENGINE__GATEWAY_TIMEOUT_S``,
``AEGISPAY_PLUGINS__DENY=a,b``, ``AEGISPAY_PLUGINS__FRAUD_RULES__REVIEW_ABOVE=...``; a double
underscore descends one table. Values are read as TOML literals when they parse as one (``10``,
``true``, ``[1, 2]``) and as strings otherwise.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.v import transform_error

from .errors import ConfigError
from .validators import not_negative, positive

T = TypeVar("T")
ENV_PREFIX = "AEGISPAY_"
# Variables with the prefix that are not settings: the config file's path, and the test
# suite's own switches (``AEGISPAY_TEST_*``). Any other AEGISPAY_* variable must be a setting,
# so a misspelt one is an error rather than silently ignored.
NOT_SETTINGS = frozenset({"AEGISPAY_CONFIG"})
TEST_PREFIX = "AEGISPAY_TEST_"
DEFAULT_FILE = "aegispay.toml"


# Shared with the plugins' configuration classes (aegispay.validators).
_positive = positive
_not_negative = not_negative


def _lock_lease(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 3:  # the Redis lease is renewed at a third of it, in whole milliseconds
        raise ValueError(f"{attribute.name}: must be at least 3 (ms), got {value!r}")


def _fence_retention(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    lease_ms = instance.lock_lease_ms
    if value * 1000 <= lease_ms:
        raise ValueError(
            f"{attribute.name}: must be longer than lock_lease_ms ({lease_ms} ms), got {value!r}"
        )


def _rate(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{attribute.name}: must be above 0 and at most 1, got {value!r}")


def _at_least_one(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name}: must be 1 or more, got {value!r}")


def _segment_dimensions(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    known = ("currency", "payment_method", "country")
    unknown = [v for v in value if v not in known]
    if unknown or len(set(value)) != len(value):
        raise ValueError(
            f"{attribute.name}: expected distinct names from {list(known)}, got {value!r}"
        )


@attrs.frozen
class BreakerSettings:
    """One gateway's circuit breaker (see docs/architecture.md, "Gateway health and circuit
    breakers").

    The circuit opens after ``failure_threshold`` consecutive failures (NOT_SENT, UNKNOWN,
    timeout), or when the failure rate over the health window reaches ``failure_rate`` once
    the window holds at least ``min_calls`` judged calls (declines are not judged). An open
    circuit fails calls fast as NOT_SENT for ``open_timeout_s`` seconds, then half-opens: up to
    ``half_open_max_probes`` calls at a time go through; ``success_threshold`` successes close
    it, one failure opens it again.
    """

    enabled: bool = True
    failure_threshold: int = attrs.field(default=10, validator=_at_least_one)
    failure_rate: float = attrs.field(default=0.5, validator=_rate)
    min_calls: int = attrs.field(default=100, validator=_at_least_one)
    open_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    half_open_max_probes: int = attrs.field(default=1, validator=_at_least_one)
    success_threshold: int = attrs.field(default=2, validator=_at_least_one)


@attrs.frozen
class SharedBreakerSettings:
    """Breaker state and health counters shared by a fleet of workers through Redis
    (``[engine.gateway_health.shared]``; see docs/architecture.md, "Shared breaker state").

    On when ``url`` is set (``redis://`` or ``rediss://``), or when ``enabled`` is true and no
    url is given: then the service's lock URL (``lock``) is used, and must be a Redis URL.
    Every ``refresh_s`` seconds a background task publishes this worker's circuit openings
    and closings and its window counters, and reads the others'. Keys start with ``prefix``;
    a worker's counters drop out of the fleet view ``stats_ttl_s`` after its last refresh.
    """

    enabled: bool = False
    url: str | None = attrs.field(default=None, repr=False)  # may hold a password
    prefix: str = "aegispay:breaker:"
    refresh_s: float = attrs.field(default=0.5, validator=_positive)
    stats_ttl_s: float = attrs.field(default=10.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("redis://", "rediss://")):
            raise ValueError("url: expected a redis:// or rediss:// URL")
        if self.stats_ttl_s < 2 * self.refresh_s:
            raise ValueError(
                f"stats_ttl_s: must be at least twice refresh_s ({self.refresh_s!r}), "
                f"got {self.stats_ttl_s!r}"
            )

    def resolve_url(self, lock_url: str | None) -> str | None:
        """The Redis URL to share state through, None when sharing is off."""
        if self.url is not None:
            return self.url
        if not self.enabled:
            return None
        if lock_url is None or not lock_url.startswith(("redis://", "rediss://")):
            raise ConfigError(
                "engine.gateway_health.shared: enabled = true needs a url, or a redis:// lock URL"
                " to share"
            )
        return lock_url


@attrs.frozen
class GatewayHealthSettings:
    """Health windows and circuit breakers, for every gateway (``[engine.gateway_health]``).

    The health window is the last ``window_calls`` calls no older than ``window_s`` seconds
    (0 switches a limit off; not both). ``latency_target_ms`` (0: off) lowers the health score
    of a gateway whose p95 latency is above it. ``breaker`` applies to every gateway unless
    ``overrides`` has a table for it by name (``[engine.gateway_health.overrides.NAME]``);
    keys left out of an override take BreakerSettings' built-in defaults.
    """

    window_calls: int = attrs.field(default=500, validator=_not_negative)
    window_s: float = attrs.field(default=60.0, validator=_not_negative)
    latency_target_ms: float = attrs.field(default=0.0, validator=_not_negative)
    breaker: BreakerSettings = BreakerSettings()
    overrides: dict[str, BreakerSettings] = attrs.field(factory=dict)
    # Per-segment windows (authorisations only): which dimensions, each window's call limit
    # (its time limit is window_s), and at most max_segments values per dimension and gateway.
    segments: tuple[str, ...] = attrs.field(
        default=("currency", "payment_method", "country"), validator=_segment_dimensions
    )
    segment_window_calls: int = attrs.field(default=200, validator=_at_least_one)
    max_segments: int = attrs.field(default=64, validator=_not_negative)
    # How stale a p95 routing may read (recomputing it walks the latency buckets).
    percentile_refresh_s: float = attrs.field(default=1.0, validator=_not_negative)
    # Fleet-wide breaker state and counters in Redis (aegispay.shared_breaker); off by default.
    shared: SharedBreakerSettings = SharedBreakerSettings()

    def __attrs_post_init__(self) -> None:
        if not self.window_calls and not self.window_s:
            raise ValueError("window_calls and window_s cannot both be 0")

    def breaker_for(self, gateway: str) -> BreakerSettings:
        return self.overrides.get(gateway, self.breaker)


def _retention_overrides(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    for gateway, seconds in value.items():
        if seconds <= 0:
            raise ValueError(
                f"{attribute.name}.{gateway}: must be greater than 0 (seconds), got {seconds!r}"
            )


@attrs.frozen
class RetrySettings:
    """Retries of gateway calls (``[engine.retry]``; see docs/architecture.md, "Retries").

    Only what is safe is repeated, on the same gateway with the same idempotency key: a call
    that was NOT_SENT (a 429's Retry-After is the least wait), an UNKNOWN authorisation at a
    gateway that declares ``idempotent_create``, an UNKNOWN capture, void or refund, and
    status lookups; never a DECLINED. ``max_attempts`` counts the calls of one sequence, the
    first included. The wait before retry ``n`` is uniform in [0, min(``max_delay_s``,
    ``base_delay_s`` * 2^(n-1))) ("full jitter"). No retry starts, and no wait is taken, that
    would end more than ``deadline_s`` after the operation began (per payment, per service
    call), nor a wait longer than ``max_delay_s`` (a longer Retry-After fails over instead).

    ``enabled`` is off by default: on, a NOT_SENT is retried before it fails over, which
    changes call counts and failover timing that deployments (and tests) rely on today.

    ``repeat_unknown_create`` is separate and on: when status lookups cannot settle an UNKNOWN
    authorisation (Stripe's search lags, PayPal has no lookup by request id), reconciliation
    repeats the create with the same key at a gateway that declares ``idempotent_create``, but
    only within ``retention_s`` of the attempt's intent (the gateway's own key retention,
    less a margin: Stripe keeps keys 24 h; PayPal orders only 6 h). A gateway that declares
    ``GatewayCapabilities.idempotency_retention_s`` caps it at 90 % of that whatever is
    configured here (the Stripe and PayPal packages declare theirs); ``retention_overrides =
    { name = seconds }`` shortens it further per gateway. Past it the payment waits for a
    webhook or an operator: a repeat there could charge again.
    """

    enabled: bool = False
    max_attempts: int = attrs.field(default=3, validator=_at_least_one)
    base_delay_s: float = attrs.field(default=0.1, validator=_positive)
    max_delay_s: float = attrs.field(default=2.0, validator=_positive)
    deadline_s: float = attrs.field(default=20.0, validator=_positive)
    repeat_unknown_create: bool = True
    retention_s: float = attrs.field(default=82_800.0, validator=_positive)
    retention_overrides: dict[str, float] = attrs.field(
        factory=dict, validator=_retention_overrides
    )

    def __attrs_post_init__(self) -> None:
        if self.base_delay_s > self.max_delay_s:
            raise ValueError(
                f"base_delay_s: must be at most max_delay_s ({self.max_delay_s!r}), "
                f"got {self.base_delay_s!r}"
            )

    def retention_for(self, gateway: str) -> float:
        return self.retention_overrides.get(gateway, self.retention_s)


@attrs.frozen
class EngineSettings:
    """How the engine treats gateways, locks and idempotency records."""

    gateway_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    lock_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    # Redis locks (a redis:// lock URL): the lease, renewed while its holder works, and how
    # long a payment's fencing counter outlives its last grant (aegispay.locks.redis).
    lock_lease_ms: int = attrs.field(default=10_000, validator=_lock_lease)
    lock_fence_retention_s: int = attrs.field(default=3600, validator=_fence_retention)
    # Immediate status lookups after an UNKNOWN outcome before leaving it to reconciliation.
    status_lookups: int = 3
    idempotency_ttl_s: int = attrs.field(default=86_400, validator=_positive)
    # The janitor (aegispay.janitor): every ``reconcile_interval_s`` seconds (0: never) a
    # running service settles payments and resumes idempotency keys that nobody has touched
    # for ``reconcile_after_s`` seconds. Keep the latter well above gateway_timeout_s, so a
    # request still running is rarely taken for a stuck one (harmless, but wasted work).
    reconcile_interval_s: float = attrs.field(default=30.0, validator=_not_negative)
    reconcile_after_s: float = attrs.field(default=60.0, validator=_positive)
    # Each pass also prunes: outbox messages published more than ``outbox_retention_s`` ago
    # (0: keep them all) and completed idempotency records past their expiry.
    outbox_retention_s: float = attrs.field(default=7 * 86_400, validator=_not_negative)
    # Per-gateway health windows and circuit breakers (aegispay.health, aegispay.breaker).
    gateway_health: GatewayHealthSettings = GatewayHealthSettings()
    # Retries of gateway calls and the repeat of unknown creates (aegispay.retry).
    retry: RetrySettings = RetrySettings()


@attrs.frozen
class PluginSelection:
    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()


class PluginConfig:
    """Every plugin's own section, by plugin name, as loaded (read-only)."""

    def __init__(self, sections: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._sections = {name: dict(values) for name, values in (sections or {}).items()}

    def section(self, name: str) -> Mapping[str, Any]:
        return MappingProxyType(self._sections.get(name, {}))

    def names(self) -> list[str]:
        return sorted(self._sections)

    def structure(self, name: str, cls: type[T]) -> T:
        """Section ``name`` as an attrs instance of ``cls``; a bad value is a ConfigError."""
        return structure_config(self.section(name), cls, f"plugins.{name}")

    def __repr__(self) -> str:  # sections may hold secrets: never print values
        return f"PluginConfig(sections={self.names()})"


# The embedded default: a SQLite file (WAL) in the working directory, created and migrated on
# first use. Durable out of the box; ``memory://`` is the opt-in for throwaway runs.
DEFAULT_STORE = "sqlite:///aegispay.db"


@attrs.frozen
class Settings:
    store: str = DEFAULT_STORE
    lock: str | None = None
    engine: EngineSettings = EngineSettings()
    plugins: PluginSelection = PluginSelection()
    plugin_config: PluginConfig = attrs.field(factory=PluginConfig, eq=False)


def _converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)

    def strict_float(value: Any, _: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("expected a number")
        return float(value)

    def strict_int(value: Any, _: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected an integer")
        return value

    def strict_str(value: Any, _: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value

    def strict_names(value: Any, _: Any) -> tuple[str, ...]:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of plugin names")
        return tuple(value)

    def strict_bool(value: Any, _: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value

    converter.register_structure_hook(float, strict_float)
    converter.register_structure_hook(int, strict_int)
    converter.register_structure_hook(str, strict_str)
    converter.register_structure_hook(bool, strict_bool)
    converter.register_structure_hook_func(lambda t: t == tuple[str, ...], strict_names)
    converter.register_structure_hook(PluginConfig, lambda value, _: PluginConfig(value))
    return converter


def _lookup(data: Any, relative: str) -> Any:
    """The value at ``relative`` ("engine.timeout", "gateways[0].name", "endpoints['a'].url")
    inside ``data``."""
    for part in relative.replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith(("['", '["')) and part.endswith(("']", '"]')):
            part = part[2:-2]  # a table's key, as cattrs quotes it
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list | tuple) and part.strip("[]").isdigit():
            data = data[int(part.strip("[]"))]
        else:
            return None
    return data


def _describe(exc: BaseException, expected: Any) -> str:
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown key(s) {sorted(exc.extra_fields)}"
    if isinstance(exc, KeyError):
        return "required key missing"
    if isinstance(exc, TypeError | AttributeError) and (
        "not iterable" in str(exc) or "mapping" in str(exc) or "items" in str(exc)
    ):
        return "expected a table"
    if isinstance(exc, ValueError | TypeError) and str(exc):
        return str(exc)
    name = getattr(expected, "__name__", str(expected))
    return f"expected {name}"


_SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "credential", "auth")


def _shown(path: str, value: Any) -> str:
    """The value for an error message, unless its key looks like it holds a secret."""
    leaf = path.rsplit(".", 1)[-1].lower()
    if any(word in leaf for word in _SECRET_WORDS):
        return "(value hidden)"
    return f"(got {value!r})"


def structure_config(data: Mapping[str, Any], cls: type[T], where: str) -> T:
    """``data`` as ``cls``; errors name the key, the value and what was expected."""
    try:
        return _converter().structure(dict(data), cls)
    except cattrs.BaseValidationError as exc:
        messages = []
        for line in transform_error(exc, path=where, format_exception=_describe):
            problem, _, path = line.rpartition(" @ ")
            value = _lookup(data, path[len(where) :])
            quiet = problem.startswith(("unknown key", "required")) or isinstance(value, Mapping)
            got = "" if quiet else f" {_shown(path, value)}"
            messages.append(f"{path}: {problem}{got}")
        raise ConfigError("invalid configuration: " + "; ".join(messages)) from None


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _merge_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS or name.startswith(TEST_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        target = data
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{name}: {'.'.join(path)} is not a table in the configuration")
        value = _env_value(raw)
        selection = len(path) == 2 and path[0] == "plugins" and path[1] in ("allow", "deny")
        if selection and isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        target[path[-1]] = value


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings from ``path`` (or ``aegispay.toml`` / ``$AEGISPAY_CONFIG`` if present), then env.

    ``overrides`` (e.g. command-line options) win over both.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    explicit = path or env.get("AEGISPAY_CONFIG")
    file = Path(explicit) if explicit else Path(DEFAULT_FILE)
    if explicit and not file.is_file():
        source = "--config" if path else "AEGISPAY_CONFIG"
        raise ConfigError(f"{source}: no such file {str(file)!r}")
    if file.is_file():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    _merge_env(data, env)
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    return settings_from_dict(data)


def settings_from_dict(data: Mapping[str, Any]) -> Settings:
    data = dict(data)
    plugins = data.pop("plugins", {}) or {}
    if not isinstance(plugins, Mapping):
        raise ConfigError(
            f"invalid configuration: plugins: expected a table (allow, deny and one "
            f"[plugins.<name>] section per plugin), got {plugins!r}"
        )
    plugins = dict(plugins)
    sections = {k: v for k, v in plugins.items() if isinstance(v, Mapping)}
    selection = {k: v for k, v in plugins.items() if not isinstance(v, Mapping)}
    settings = structure_config(data, Settings, "settings")
    return attrs.evolve(
        settings,
        plugins=structure_config(selection, PluginSelection, "plugins"),
        plugin_config=PluginConfig(sections),
    )
