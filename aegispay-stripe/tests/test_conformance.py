"""The shared gateway conformance suite, against the fake Stripe."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aegispay.gateway_conformance import GatewayConformance

from aegispay_stripe.fake import FakeStripe
from aegispay_stripe.gateway import StripeGateway

from .conftest import make_config


class TestConformance(GatewayConformance):
    currencies = ("USD", "JPY", "KWD")
    payment_method = "pm_card_visa"
    decline_codes = ("card_declined", "insufficient_funds", "do_not_honor")

    @pytest.fixture
    def conformance_fake(self) -> Iterator[FakeStripe]:
        with FakeStripe() as running:
            yield running
        assert running.handler_errors() == []

    @pytest.fixture
    def conformance_gateway(self, conformance_fake: FakeStripe) -> StripeGateway:
        return StripeGateway(make_config(conformance_fake))
