"""The ``paypal`` plugin: registers a PayPalGateway configured from ``[plugins.paypal]``.

Nothing is registered while the section is absent, so installing the package changes nothing
until PayPal is configured. Credentials are best given as environment variables
(``AEGISPAY_PLUGINS__PAYPAL__CLIENT_SECRET``) rather than in a shared file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aegispay.gateways import Gateway
from aegispay.hookspecs import hookimpl
from aegispay.settings import PluginConfig

from .config import PayPalConfig
from .gateway import PayPalGateway

PLUGIN_NAME = "paypal"
log = logging.getLogger("aegispay_paypal")


@hookimpl
def aegispay_register_gateways(register: Callable[[Gateway], None], config: PluginConfig) -> None:
    if not config.section(PLUGIN_NAME):
        log.debug("plugin paypal: no [plugins.paypal] section, no gateway registered")
        return
    register(PayPalGateway(config.structure(PLUGIN_NAME, PayPalConfig)))
