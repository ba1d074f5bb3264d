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


class _ClosingGateway(ScriptedGateway):
    """Holds a connection pool (as an HTTP gateway does): must be closed with the service."""

    def __init__(self, name: str, fail: bool = False) -> None:
        super().__init__(name=name)
        self.fail = fail
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1
        if self.fail:
            raise RuntimeError("pool already gone")


@pytest.mark.anyio
async def test_aclose_closes_every_gateway_even_when_one_fails() -> None:
    broken, healthy = _ClosingGateway("a", fail=True), _ClosingGateway("b")
    service = make_test_service(gateways=[broken, healthy])
    await service.aclose()
    assert (broken.closed, healthy.closed) == (1, 1)
