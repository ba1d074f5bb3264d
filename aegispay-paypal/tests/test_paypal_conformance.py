"""The shared gateway conformance suite, against the fake PayPal.

The suite's payments use a vaulted PayPal wallet (``payment_method`` = a vault id): PayPal then
completes the order at creation, as a card gateway does, and declines there. The approval flow
(no vault id: every order waits for the payer) has its own tests in test_gateway.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
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

    @pytest.fixture
    def conformance_fake(self) -> Iterator[FakePayPal]:
        with FakePayPal() as fake:
            yield fake

    @pytest.fixture
    async def conformance_gateway(
        self, conformance_fake: FakePayPal, config_for: Callable[..., PayPalConfig]
    ) -> AsyncIterator[PayPalGateway]:
        gateway = PayPalGateway(config_for(conformance_fake))
        # A running service holds a token already: fetch it now, so an injected fault meets
        # the payment call itself rather than the token request (a POST too).
        await gateway.connect()
        yield gateway
