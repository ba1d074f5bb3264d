"""AegisPay gateway for PayPal (Orders v2 / Payments v2), and a loopback fake PayPal."""

from .amounts import PAYPAL_CURRENCIES, UnsupportedAmount, from_paypal, paypal_exponent, to_paypal
from .config import LIVE_URL, SANDBOX_URL, PayPalConfig
from .gateway import PayPalGateway, PayPalUnavailable, PayPalWebhookUnavailable

__all__ = [
    "LIVE_URL",
    "PAYPAL_CURRENCIES",
    "SANDBOX_URL",
    "PayPalConfig",
    "PayPalGateway",
    "PayPalUnavailable",
    "PayPalWebhookUnavailable",
    "UnsupportedAmount",
    "from_paypal",
    "paypal_exponent",
    "to_paypal",
]
