"""aegispay-razorpay: a Razorpay gateway for AegisPay, and a loopback fake Razorpay to test it.

``RazorpayGateway`` speaks Razorpay's Orders, Payments and Refunds API over httpx; the plugin
(entry point ``razorpay``) registers it from ``[plugins.razorpay]``. ``FakeRazorpay`` (module
``aegispay_razorpay.fake``) reproduces the API on 127.0.0.1 for tests.
"""

from __future__ import annotations

from .amounts import SUPPORTED_CURRENCIES, from_razorpay, to_razorpay
from .config import RazorpayConfig
from .gateway import RazorpayGateway
from .signatures import checkout_signature, verify_checkout_signature, webhook_signature

__all__ = [
    "SUPPORTED_CURRENCIES",
    "RazorpayConfig",
    "RazorpayGateway",
    "checkout_signature",
    "from_razorpay",
    "to_razorpay",
    "verify_checkout_signature",
    "webhook_signature",
]

__version__ = "0.1.0"
