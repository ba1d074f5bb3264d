from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from aegispay_paypal import PayPalConfig, PayPalGateway
from aegispay_paypal.fake import FakePayPal


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on both backends."""
    return str(request.param)


@pytest.fixture
def fake() -> Iterator[FakePayPal]:
    with FakePayPal() as running:
        yield running
    assert running.handler_errors() == [], "the fake itself failed"


def paypal_config(fake: FakePayPal, **overrides: object) -> PayPalConfig:
    """A configuration pointing at ``fake`` (read timeout 1 s)."""
    values: dict[str, object] = {
        "client_id": fake.client_id,
        "client_secret": "fake-client-secret",
        "webhook_id": fake.webhook_id,
        "base_url": fake.base_url,
        "connect_timeout_s": 1.0,
        "read_timeout_s": 1.0,
    }
    values.update(overrides)
    return PayPalConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def config_for() -> Callable[..., PayPalConfig]:
    return paypal_config


@pytest.fixture
async def gateway(fake: FakePayPal) -> AsyncIterator[PayPalGateway]:
    adapter = PayPalGateway(paypal_config(fake))
    try:
        yield adapter
    finally:
        await adapter.aclose()
