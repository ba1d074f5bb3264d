"""Whatever fails on the way, retrying one attempt's key charges exactly once."""

from __future__ import annotations

import pytest
from aegispay.fake_server import Fault
from aegispay.gateways import AuthorizeRequest, Outcome
from aegispay.money import Money
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegispay_razorpay.fake import FakeRazorpay
from aegispay_razorpay.gateway import RazorpayGateway

from .conftest import CUSTOMER, TOKEN, make_config

pytestmark = pytest.mark.anyio

FAULTS = [f for f in Fault if f is not Fault.LATENCY]
# Every request an authorize makes: the order look-up and create, the order's payments, the
# charge, the charge's status.
TARGETS = [
    ("GET", "/v1/orders"),
    ("POST", "/v1/orders"),
    ("POST", "/v1/payments/create/recurring"),
    ("GET", "/v1/payments/"),
]
plans = st.lists(st.tuples(st.sampled_from(FAULTS), st.sampled_from(TARGETS)), max_size=4)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(plan=plans, capture=st.booleans())
async def test_any_faults_then_retries_make_one_charge(
    plan: list[tuple[Fault, tuple[str, str]]], capture: bool
) -> None:
    request = AuthorizeRequest(
        payment_id="pay_h",
        attempt_no=1,
        idempotency_key="pay_h-1",
        amount=Money(10_050, "KWD"),
        capture=capture,
        payment_method=f"{CUSTOMER}:{TOKEN}",
    )
    with FakeRazorpay() as fake:
        gateway = RazorpayGateway(make_config(fake, read_timeout_s=0.25))
        try:
            for fault, (method, path) in plan:
                fake.inject(fault, method=method, path_prefix=path)
            outcomes = []
            # Each failed try uses up at least one fault, so this many tries must get through.
            for _ in range(len(plan) + 1):
                result = await gateway.authorize(request)
                outcomes.append(result.outcome)
                if result.outcome is not Outcome.SUCCEEDED:
                    assert result.outcome in (Outcome.NOT_SENT, Outcome.UNKNOWN), result
                    continue
                assert result.captured is capture
                break
        finally:
            await gateway.aclose()
        assert outcomes[-1] is Outcome.SUCCEEDED, (plan, outcomes)
        assert fake.charges() == (1 if capture else 0)
        (order_id,) = fake.order_ids("pay_h-1")  # one order, whatever the retries
        assert fake.amount_of(order_id) == (10_050, "KWD")
        assert fake.order(order_id)["attempts"] == 1  # one payment made on it: one authorization
        assert fake.handler_errors() == []
