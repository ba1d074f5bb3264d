from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from aegispay_razorpay.config import RazorpayConfig
from aegispay_razorpay.fake import FakeRazorpay
from aegispay_razorpay.gateway import RazorpayGateway

# A saved card on a Razorpay customer: what the token flow charges without the customer present.
TOKEN = "token_Conformance01"
CUSTOMER = "cust_Conformance01"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on both backends."""
    return str(request.param)


def make_config(fake: FakeRazorpay, **overrides: Any) -> RazorpayConfig:
    values: dict[str, Any] = {
        "key_id": fake.key_id,
        "key_secret": fake.key_secret,
        "webhook_secret": fake.webhook_secret,
        "base_url": fake.base_url,
        "read_timeout_s": 1.0,
        "connect_timeout_s": 1.0,
    }
    values.update(overrides)
    return RazorpayConfig(**values)


@pytest.fixture
def razorpay_fake() -> Iterator[FakeRazorpay]:
    with FakeRazorpay() as running:
        yield running
    assert running.handler_errors() == [], "the fake itself failed"


@pytest.fixture
async def razorpay_gateway(razorpay_fake: FakeRazorpay) -> AsyncIterator[RazorpayGateway]:
    adapter = RazorpayGateway(make_config(razorpay_fake))
    try:
        yield adapter
    finally:
        await adapter.aclose()
