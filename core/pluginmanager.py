"""Building a plugin manager: built-ins from an explicit list, then ``aegispay`` entry points.

There is no module-global manager: :func:`make_plugin_host` builds one per service or command.
A third-party plugin that fails to import, to construct, or that implements a hook nobody
specified is reported with its name and the error, and left out; it never takes the process
down. Allow / deny lists come from arguments or ``AEGISPAY_PLUGINS__ALLOW`` / ``__DENY``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .settings import PluginConfig

log = logging.getLogger("aegispay.plugins")

ENTRY_POINT_GROUP = "aegispay"


@attrs.frozen
class PluginInfo:
    """One plugin as ``aegispay plugins --json`` shows it."""

    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]
    error: str | None = None
    builtin: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": list(self.hooks),
            "error": self.error,
        }


class _Manager(pluggy.PluginManager):
    """Accepts unmarked ``aegispay_*`` functions as implementations, as pytest does for
    ``pytest_*``: a forgotten ``@hookimpl`` must not silently disable a fraud check."""

    def parse_hookimpl_opts(self, plugin: object, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("aegispay_") and callable(getattr(plugin, name, None)):
            return {}
        return opts


def _instantiate(obj: Any, config: PluginConfig, name: str) -> Any:
    """A class plugin is constructed with its own configuration section; anything else is used
    as it is (a module, or an object already built)."""
    if inspect.isclass(obj):
        factory: Any = obj
        return factory(config.section(name))
    return obj


class PluginHost:
    """A plugin manager plus what was loaded, what failed, and who owns each plugin."""

    def __init__(self, config: PluginConfig | None = None) -> None:
        self.config = config or PluginConfig()
        self.pm = _Manager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self._infos: dict[str, PluginInfo] = {}
        self._failures: list[PluginInfo] = []

    # -- registration ------------------------------------------------------------------------

    def register(
        self,
        plugin: Any,
        name: str | None = None,
        *,
        distribution: str | None = None,
        version: str | None = None,
        builtin: bool = False,
    ) -> Any:
        """Register a plugin object (module, class or instance) directly; returns the object.

        Raises :class:`aegispay.errors.PluginError` when it cannot be registered. Use this for
        in-house plugins and tests; installed packages come in through entry points.
        """
        from .errors import PluginError

        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self._infos:
            raise PluginError(f"plugin {name!r}: a plugin with this name is already registered")
        try:
            instance = _instantiate(plugin, self.config, name)
            self.pm.register(instance, name=name)
        except Exception as exc:
            raise PluginError(f"plugin {name!r}: {type(exc).__name__}: {exc}") from exc
        unknown = self._unknown_hooks(instance)
        if unknown:
            self.pm.unregister(instance)
            raise PluginError(
                f"plugin {name!r}: implements hooks that do not exist: {', '.join(unknown)} "
                f"(known hooks: see 'aegispay plugins --hooks')"
            )
        self._infos[name] = PluginInfo(
            name, distribution, version, self._hooks_of(instance), None, builtin
        )
        return instance

    def unregister(self, name: str) -> None:
        """Remove the plugin registered as ``name`` (its hooks stop being called, the name is
        free again). Unknown names are ignored, so teardown code may call it unconditionally."""
        instance = self.pm.get_plugin(name)
        if instance is not None:
            self.pm.unregister(instance)
        self._infos.pop(name, None)

    def load_builtins(self, entries: Iterable[tuple[str, Any]]) -> None:
        """Register built-in plugins (name, object) in order; a failure here is a bug: raise."""
        from importlib.metadata import version as dist_version

        core_version = dist_version("aegispay")
        for name, obj in entries:
            self.register(obj, name, distribution="aegispay", version=core_version, builtin=True)

    def load_entry_points(
        self, allow: Sequence[str] | None = None, deny: Sequence[str] = ()
    ) -> None:
        """Load every ``aegispay`` entry point, one by one; report failures, never raise."""
        for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if allow is not None and entry_point.name not in allow:
                continue
            if entry_point.name in deny:
                continue
            self._load_one(entry_point)
        self.pm.check_pending()

    def _load_one(self, entry_point: EntryPoint) -> None:
        dist = getattr(entry_point, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        dist_version = dist.version if dist is not None else None
        try:
            obj = entry_point.load()
            self.register(obj, entry_point.name, distribution=dist_name, version=dist_version)
        except Exception as exc:  # a broken plugin must not take the host down
            error = (
                str(exc)
                if type(exc).__name__ == "PluginError"
                else (f"{type(exc).__name__}: {exc}")
            )
            log.warning("plugin %r (%s) failed to load: %s", entry_point.name, dist_name, error)
            self._failures.append(PluginInfo(entry_point.name, dist_name, dist_version, (), error))

    # -- inspection --------------------------------------------------------------------------

    def _hooks_of(self, instance: object) -> tuple[str, ...]:
        callers = self.pm.get_hookcallers(instance) or []
        return tuple(sorted(caller.name for caller in callers))

    def _unknown_hooks(self, instance: object) -> list[str]:
        callers = self.pm.get_hookcallers(instance) or []
        return sorted(caller.name for caller in callers if caller.spec is None)

    def infos(self) -> list[PluginInfo]:
        """Loaded plugins in registration order, then the ones that failed."""
        return [*self._infos.values(), *self._failures]

    @property
    def failures(self) -> list[PluginInfo]:
        return list(self._failures)

    def plugin(self, name: str) -> Any:
        return self.pm.get_plugin(name)


def make_plugin_host(
    *,
    config: PluginConfig | None = None,
    plugins: Iterable[Any] | Mapping[str, Any] = (),
    builtins: bool = True,
    entry_points: bool = True,
    allow: Sequence[str] | None = None,
    deny: Sequence[str] = (),
) -> PluginHost:
    """A ready plugin host: built-ins, then entry points, then ``plugins`` given directly.

    ``allow`` / ``deny`` filter built-ins and entry points by name (direct plugins are always
    registered: the caller chose them explicitly).
    """
    from aegispay.plugins import BUILTIN_PLUGINS

    host = PluginHost(config)
    if builtins:
        host.load_builtins(
            (name, obj)
            for name, obj in BUILTIN_PLUGINS()
            if (allow is None or name in allow) and name not in deny
        )
    if entry_points:
        host.load_entry_points(allow, deny)
    items = plugins.items() if isinstance(plugins, Mapping) else ((None, p) for p in plugins)
    for name, plugin in items:
        host.register(plugin, name)
    host.pm.check_pending()
    return host
