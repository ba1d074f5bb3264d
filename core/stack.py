"""Composing a payment stack: choose store, locks, plugins and settings; get a service.

    service = build_service(plugins=[MyFraudCheck()], settings=load_settings())
    async with service:
        payment = await service.pay(PaymentRequest(Money.of("10.00", "USD")))

Nothing here reaches for a global: every call builds its own plugin manager, store and locks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .locks.base import LockManager
from .locks.memory import MemoryLockManager
from .pluginmanager import PluginHost, make_plugin_host
from .service import PaymentService, utc_now
from .settings import DEFAULT_STORE, EngineSettings, Settings
from .store.base import PaymentStore
from .store.memory import MemoryStore
from .urls import safe_url


def open_store(url: str, *, migrate: bool = False) -> PaymentStore:
    """A store for ``url``: ``memory://`` (one process, nothing kept), ``sqlite:///path.db`` or
    ``postgresql://user@host/db`` (SQLAlchemy; create the tables with ``aegispay db upgrade``,
    or pass ``migrate=True`` to have the store do it on first use - what the embedded default
    store does)."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryStore()
    if scheme.split("+")[0] in ("sqlite", "postgresql", "postgres"):
        from .store.sql import SqlStore

        return SqlStore(url, migrate=migrate)
    raise ConfigError(
        f"store: unsupported URL scheme {scheme!r} in {safe_url(url)!r} "
        "(supported: memory://, sqlite:///path.db, postgresql://user@host/db)"
    )


def open_locks(url: str | None, engine: EngineSettings | None = None) -> LockManager:
    """In-process locks when ``url`` is unset or ``memory://``; Redis for ``redis://`` and
    ``rediss://`` (many workers on one Redis, with fencing tokens; asyncio only), with the
    lease and fencing-counter retention of ``engine`` (``[engine] lock_lease_ms``,
    ``lock_fence_retention_s``)."""
    scheme = urlsplit(url).scheme if url else ""
    if scheme in ("memory", ""):
        return MemoryLockManager()
    if scheme in ("redis", "rediss"):
        from .locks.redis import RedisLockManager

        engine = engine or EngineSettings()
        return RedisLockManager(
            url or "",
            lease_ms=engine.lock_lease_ms,
            fence_retention_s=engine.lock_fence_retention_s,
        )
    raise ConfigError(
        f"lock: unsupported URL {safe_url(url or '')!r} (supported: memory://, redis://, "
        "or leave unset)"
    )


def build_service(
    settings: Settings | None = None,
    *,
    plugins: Iterable[Any] | Mapping[str, Any] = (),
    store: PaymentStore | None = None,
    locks: LockManager | None = None,
    host: PluginHost | None = None,
    builtins: bool = True,
    entry_points: bool = True,
    clock: Callable[[], datetime] = utc_now,
    ids: Callable[[], str] | None = None,
) -> PaymentService:
    """A ready :class:`PaymentService`.

    :param settings: from :func:`aegispay.load_settings`; defaults apply when None.
    :param plugins: in-house plugin objects (or ``{name: plugin}``) registered directly, after
        the built-ins and installed entry points.
    :param store: a store object; default: opened from ``settings.store`` (when that is the
        embedded default, a SQLite file in the working directory, it is created and migrated
        on first use; any other database is migrated with ``aegispay db upgrade``).
    :param locks: a lock manager; default: from ``settings.lock`` (in-process when unset).
    :param host: a prepared plugin host (then ``plugins``/``builtins``/``entry_points`` are
        not used).
    :param builtins: register the built-in plugins (simulated gateways, validation, fraud
        rules, priority routing, event log).
    :param entry_points: load installed ``aegispay`` entry points.
    """
    settings = settings or Settings()
    if host is None:
        host = make_plugin_host(
            config=settings.plugin_config,
            plugins=plugins,
            builtins=builtins,
            entry_points=entry_points,
            allow=settings.plugins.allow,
            deny=settings.plugins.deny,
        )
    shared = settings.engine.gateway_health.shared
    shared_url = shared.resolve_url(settings.lock)  # a ConfigError before anything opens
    service = PaymentService(
        store=store
        if store is not None
        else open_store(settings.store, migrate=settings.store == DEFAULT_STORE),
        locks=locks if locks is not None else open_locks(settings.lock, settings.engine),
        host=host,
        engine=settings.engine,
        clock=clock,
        ids=ids,
    )
    if shared_url is not None:
        # Fleet-wide breaker state; its refresh task runs while the service is entered.
        from .shared_breaker import SharedBreakerState

        monitor = service.gateway_monitor
        monitor.shared = SharedBreakerState(monitor, shared_url, shared)
    return service
