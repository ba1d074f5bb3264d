"""The AegisPay plugin: registers a Razorpay gateway from ``[plugins.razorpay]``.

Installed, the package is always loaded (entry point ``razorpay``); it registers a gateway only
when the section is configured, so installing it without keys changes nothing. A section with
a bad or missing value is a ConfigError naming the key (reported as this plugin's error).
"""

from __future__ import annotations

from collections.abc import Callable

from aegispay.gateways import Gateway
from aegispay.hookspecs import hookimpl
from aegispay.settings import PluginConfig

from .config import RazorpayConfig
from .gateway import RazorpayGateway

SECTION = "razorpay"


@hookimpl
def aegispay_register_gateways(register: Callable[[Gateway], None], config: PluginConfig) -> None:
    if not config.section(SECTION):
        return
    register(RazorpayGateway(config.structure(SECTION, RazorpayConfig)))
