"""The webhook ASGI app (aegispay.asgi): status codes a gateway's retry policy relies on."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from aegispay import Money, PaymentRequest, PaymentState
from aegispay.asgi import create_app
from aegispay.errors import StoreUnavailable
from aegispay.plugins.simulated_gateways import Ledger, SimulatedGateway, SimulatedGatewayConfig
from aegispay.store.memory import MemoryStore
from aegispay.testing import ScriptedGateway, make_test_service
from aegispay.webhooks import WebhookKind

pytestmark = pytest.mark.anyio

SECRET = "whsec_asgi_test_secret_0123456789"
GW = "sim-asgi"


class _Store(MemoryStore):
    down = False

    async def find_idempotency(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            raise StoreUnavailable("store down")
        return await super().find_idempotency(*args, **kwargs)


def _setup() -> tuple[Any, SimulatedGateway, _Store]:
    config = SimulatedGatewayConfig(
        GW, None, decline_rate=0.0, not_sent_rate=0.0, unknown_rate=0.0, webhook_secret=SECRET
    )
    gateway = SimulatedGateway(config, Ledger(), seed=5, latency_ms=0.0)
    store = _Store()
    service = make_test_service(
        gateways=[gateway, ScriptedGateway("plain", currencies=["EUR"])],
        builtins=("priority_routing",),
        store=store,
    )
    return service, gateway, store


def _client(service: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(service)), base_url="http://aegispay.test"
    )


async def test_status_codes() -> None:
    service, gateway, store = _setup()
    control = gateway.control()
    control.require_action_next()
    payment = await service.pay(PaymentRequest(Money(1200, "USD")))
    assert payment.state is PaymentState.REQUIRES_ACTION
    reference = payment.gateway_reference or ""
    control.complete_action(reference)
    headers, body = control.signed_webhook(
        WebhookKind.SUCCEEDED, reference, amount_minor=1200, currency="USD", event_id="evt_a"
    )
    async with _client(service) as client:
        assert (await client.post("/webhooks/nope", content=body)).status_code == 404
        assert (await client.post("/webhooks/plain", content=body)).status_code == 404
        assert (await client.get(f"/webhooks/{GW}")).status_code == 405

        bad = await client.post(f"/webhooks/{GW}", content=body + b" ", headers=headers)
        assert bad.status_code == 400
        assert "signature" in bad.json()["error"] and SECRET not in bad.text
        missing = await client.post(f"/webhooks/{GW}", content=body)
        assert missing.status_code == 400

        store.down = True
        down = await client.post(f"/webhooks/{GW}", content=body, headers=headers)
        assert down.status_code == 503
        assert (await service.get_payment(payment.id)).state is PaymentState.REQUIRES_ACTION

        store.down = False
        ok = await client.post(f"/webhooks/{GW}", content=body, headers=headers)
        assert ok.status_code == 200, ok.text
        assert ok.json()["status"] == "applied" and ok.json()["state"] == "completed"
        # 200 came after the commit: the payment is completed in the store already.
        assert (await service.get_payment(payment.id)).state is PaymentState.COMPLETED
        again = await client.post(f"/webhooks/{GW}", content=body, headers=headers)
        assert (again.status_code, again.json()["status"]) == (200, "duplicate")


async def test_oversized_body_is_refused() -> None:
    service, _, _ = _setup()
    async with _client(service) as client:
        response = await client.post(f"/webhooks/{GW}", content=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413


async def test_managed_lifespan_runs_and_closes_the_service() -> None:
    service, _, _ = _setup()
    closed: list[bool] = []
    original = service.aclose

    async def aclose() -> None:
        closed.append(True)
        await original()

    object.__setattr__(service, "aclose", aclose)
    app = create_app(service, manage_service=True)
    async with app.router.lifespan_context(app):
        assert service._task_group is not None  # entered: the outbox relay runs
    assert service._task_group is None and closed == [True]
    unmanaged = create_app(service)
    async with unmanaged.router.lifespan_context(unmanaged):
        assert service._task_group is None
    assert closed == [True]
