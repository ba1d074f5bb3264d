"""AegisPay gateway plugin for Stripe (PaymentIntents API), with a loopback fake Stripe server.

``pip install aegispay-stripe``, configure ``[plugins.stripe]`` (see :mod:`aegispay_stripe.config`)
and the ``stripe`` gateway is registered through the ``aegispay`` entry point.
"""

from __future__ import annotations

from .amounts import from_stripe_amount, stripe_exponent, to_stripe_amount
from .config import StripeConfig
from .gateway import StripeGateway

__all__ = [
    "StripeConfig",
    "StripeGateway",
    "from_stripe_amount",
    "stripe_exponent",
    "to_stripe_amount",
]
__version__ = "0.1.0"
