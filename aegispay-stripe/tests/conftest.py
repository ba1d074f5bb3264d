from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import settings

from aegispay_stripe.config import StripeConfig
from aegispay_stripe.fake import FakeStripe
from aegispay_stripe.gateway import StripeGateway

# The machine running the tests may be loaded: no per-example deadline (a flaky timing failure
# says nothing about conversions or encodings).
settings.register_profile("aegispay-stripe", deadline=None)
settings.load_profile("aegispay-stripe")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on both backends."""
    return str(request.param)


@pytest.fixture
def stripe_fake() -> Iterator[FakeStripe]:
    with FakeStripe() as running:
        yield running
    assert running.handler_errors() == [], "the fake itself failed"


def make_config(fake: FakeStripe, **overrides: Any) -> StripeConfig:
    values: dict[str, Any] = {
        "secret_key": fake.secret_key,
        "webhook_secret": fake.webhook_secret,
        "base_url": fake.base_url,
        "read_timeout_s": 1.0,
        "connect_timeout_s": 1.0,
        "default_payment_method": "pm_card_visa",
    }
    values.update(overrides)
    return StripeConfig(**values)


@pytest.fixture
async def stripe_gateway(stripe_fake: FakeStripe) -> AsyncIterator[StripeGateway]:
    adapter = StripeGateway(make_config(stripe_fake))
    try:
        yield adapter
    finally:
        await adapter.aclose()
