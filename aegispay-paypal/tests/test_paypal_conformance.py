"""The shared gateway conformance suite, against the fake PayPal.

The suite's payments use a vaulted PayPal wallet (``payment_method`` = a vault id): PayPal then
completes the order at creation, as a card gateway does, and declines there. The approval flow
(no vault id: every order waits for the payer) has its own tests in test_gateway.py. The
first POST of a fresh adapter is the OAuth token request; ``charge_path_prefix`` aims the
suite's transport faults at the order create, the call that moves money.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest
from aegispay.gateway_conformance import GatewayConformance

from aegispay_paypal import PayPalConfig, PayPalGateway
from aegispay_paypal.fake import FakePayPal


class TestConformance(GatewayConformance):
    # PayPal takes no three-decimal currency (no KWD, BHD, JOD...): a two- and a zero-decimal.
    currencies: ClassVar[tuple[str, ...]] = ("USD", "JPY")
    payment_method: ClassVar[str | None] = "VAULT-conformance-wallet"
    decline_codes: ClassVar[tuple[str, ...]] = ("INSTRUMENT_DECLINED", "card_declined")
    charge_path_prefix: ClassVar[str] = "/v2/checkout/orders"

    @pytest.fixture
    def conformance_fake(self) -> Iterator[FakePayPal]:
        with FakePayPal() as fake:
            yield fake

    @pytest.fixture
    def conformance_gateway(
        self, conformance_fake: FakePayPal, config_for: Callable[..., PayPalConfig]
    ) -> PayPalGateway:
        return PayPalGateway(config_for(conformance_fake))
