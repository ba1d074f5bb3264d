"""The shared gateway conformance suite, against the fake Razorpay.

Razorpay's authorize is two POSTs: the order (which moves no money) and the charge of a saved
token (``/v1/payments/create/recurring``). The suite's transport faults are about the call
that may move money, so ``charge_path_prefix`` aims them at the charge; ``test_gateway.py``
puts the same faults on the order POST as well.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aegispay.gateway_conformance import GatewayConformance

from aegispay_razorpay.fake import FakeRazorpay
from aegispay_razorpay.gateway import RazorpayGateway

from .conftest import CUSTOMER, TOKEN, make_config


class TestConformance(GatewayConformance):
    currencies = ("INR", "JPY", "KWD")
    webhook_timestamps = False  # X-Razorpay-Signature signs the body only
    payment_method = f"{CUSTOMER}:{TOKEN}"  # a saved card: charged without the customer
    decline_codes = ("card_declined", "insufficient_funds", "payment_risk_check_failed")
    charge_path_prefix = "/v1/payments/create/recurring"

    @pytest.fixture
    def conformance_fake(self) -> Iterator[FakeRazorpay]:
        with FakeRazorpay() as running:
            yield running
        assert running.handler_errors() == []

    @pytest.fixture
    def conformance_gateway(self, conformance_fake: FakeRazorpay) -> RazorpayGateway:
        return RazorpayGateway(make_config(conformance_fake))
