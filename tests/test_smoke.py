import pytest
from aegispay import Money, PaymentRequest, PaymentState, Settings
from aegispay.settings import PluginConfig
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


def test_default_simulated_gateways_step_aside_for_a_real_gateway() -> None:
    # Unconfigured, the simulated gateways are demo gateways: with a real one registered, a
    # NOT_SENT there must not fail over to a gateway that charges nobody.
    real = ScriptedGateway("real")
    alone = make_test_service(gateways=[], builtins=["simulated_gateways"])
    assert sorted(alone.gateways) == ["sim-alpha", "sim-beta", "sim-gamma"]
    mixed = make_test_service(gateways=[real], builtins=["simulated_gateways"])
    assert list(mixed.gateways) == ["real"]
    configured = make_test_service(
        gateways=[real],
        builtins=["simulated_gateways"],
        settings=Settings(
            store="memory://", plugin_config=PluginConfig({"simulated_gateways": {"seed": 1}})
        ),
    )
    assert sorted(configured.gateways) == ["real", "sim-alpha", "sim-beta", "sim-gamma"]


def test_wrap_gateways_replaces_each_gateway_and_keeps_names() -> None:
    service = make_test_service(gateways=[ScriptedGateway("a"), ScriptedGateway("b")])
    originals = dict(service.gateways)

    class Wrapped(ScriptedGateway):
        def __init__(self, inner: ScriptedGateway) -> None:
            super().__init__(name=inner.name)
            self.inner = inner

    service.wrap_gateways(Wrapped)
    assert [type(g) for g in service.gateways.values()] == [Wrapped, Wrapped]
    assert {n: g.inner for n, g in service.gateways.items()} == originals  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="must keep its name"):
        service.wrap_gateways(lambda g: ScriptedGateway("renamed"))
