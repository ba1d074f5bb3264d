"""The ``stripe`` entry point: registers a Stripe gateway when ``[plugins.stripe]`` is configured.

With no ``[plugins.stripe]`` section (and no ``AEGISPAY_PLUGINS__STRIPE__*`` variables) the plugin
is loaded but registers nothing, so installing the package never breaks a deployment that has
not configured Stripe yet. A section with a bad value is a ConfigError naming the key (secret
values are never shown).
"""

from __future__ import annotations

from collections.abc import Callable

from aegispay.gateways import Gateway
from aegispay.hookspecs import hookimpl
from aegispay.settings import PluginConfig

from .config import StripeConfig
from .gateway import StripeGateway

SECTION = "stripe"


@hookimpl
def aegispay_register_gateways(register: Callable[[Gateway], None], config: PluginConfig) -> None:
    if not config.section(SECTION):
        return
    register(StripeGateway(config.structure(SECTION, StripeConfig)))
