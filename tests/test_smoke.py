import pytest
from aegispay import Money, PaymentRequest, PaymentState
from aegispay.testing import ScriptedGateway, make_test_service

pytestmark = pytest.mark.anyio


async def test_pay_completes() -> None:
    gw = ScriptedGateway()
    service = make_test_service(gateways=[gw])
    async with service:
        payment = await service.pay(PaymentRequest(Money.of("10.00", "USD")))
    assert payment.state is PaymentState.COMPLETED
    assert gw.charge_count(payment.id) == 1
