"""The installed plugin: entry point, configuration, and payments through a real service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import httpx
import pytest
from aegispay.gateways import Gateway
from aegispay.money import Money
from aegispay.requests import PaymentRequest
from aegispay.settings import PluginConfig, Settings
from aegispay.states import PaymentState
from aegispay.testing import make_test_service
from aegispay.webhooks import WebhookKind, WebhookStatus

from aegispay_paypal import PayPalGateway, plugin
from aegispay_paypal.fake import FakePayPal


def test_the_entry_point_names_the_plugin_module() -> None:
    (found,) = [e for e in entry_points(group="aegispay") if e.name == "paypal"]
    assert found.load() is plugin
    assert found.dist is not None and found.dist.metadata["Name"] == "aegispay-paypal"


def registered(sections: dict[str, Any]) -> list[Gateway]:
    gateways: list[Gateway] = []
    plugin.aegispay_register_gateways(gateways.append, PluginConfig(sections))
    return gateways


def test_nothing_is_registered_until_paypal_is_configured() -> None:
    assert registered({}) == []
    (gateway,) = registered({"paypal": {"client_id": "id", "client_secret": "s"}})
    assert isinstance(gateway, PayPalGateway) and isinstance(gateway, Gateway)
    assert gateway.name == "paypal"
    assert gateway.config.api_url == "https://api-m.paypal.com"


def aegispay(*args: str, env: dict[str, str], cwd: Path) -> Any:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "aegispay"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout)


def test_aegispay_plugins_lists_the_installed_plugin(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEGISPAY_")}
    env["AEGISPAY_PLUGINS__PAYPAL__CLIENT_ID"] = "id"
    env["AEGISPAY_PLUGINS__PAYPAL__CLIENT_SECRET"] = "secret-not-printed"
    listed = aegispay("plugins", "--json", env=env, cwd=tmp_path)
    (paypal,) = [p for p in listed if p["name"] == "paypal"]
    assert paypal["distribution"] == "aegispay-paypal"
    assert paypal["hooks"] == ["aegispay_register_gateways"]
    assert paypal["error"] is None


def service_for(fake: FakePayPal, **extra: Any) -> Any:
    section = {
        "client_id": fake.client_id,
        "client_secret": "fake-client-secret",
        "webhook_id": fake.webhook_id,
        "base_url": fake.base_url,
        "read_timeout_s": 1.0,
        **extra,
    }
    settings = Settings(plugin_config=PluginConfig({"paypal": section}))
    return make_test_service(
        plugins=[plugin], gateways=[], builtins=("priority_routing",), settings=settings
    )


@pytest.mark.anyio
async def test_pay_approve_refund_and_webhooks_through_a_service(fake: FakePayPal) -> None:
    service = service_for(fake)
    try:
        payment = await service.pay(PaymentRequest(Money.of("19.99", "USD"), reference="o-7"))
        assert payment.state is PaymentState.REQUIRES_ACTION, payment
        action = payment.attempts[-1]
        assert payment.gateway_reference is not None
        approval = dict(service_next_action(payment))
        assert approval["order_id"] == payment.gateway_reference
        async with httpx.AsyncClient() as payer:  # the payer follows the link and approves
            assert (await payer.get(approval["approval_url"])).status_code == 200

        # PayPal says the order was approved (CHECKOUT.ORDER.APPROVED): the service syncs the
        # payment at once, and that status lookup captures the order. No reconcile needed.
        assert fake.charges() == 0
        headers, body = fake.signed_webhook(
            WebhookKind.REQUIRES_ACTION, payment.gateway_reference, amount_minor=1999,
            currency="USD",
        )  # fmt: skip
        approved = await service.handle_webhook("paypal", headers, body)
        assert approved.status is WebhookStatus.APPLIED, approved
        assert approved.state is PaymentState.COMPLETED and approved.payment_id == payment.id
        assert fake.charges() == 1 and action.gateway == "paypal"
        done = await service.get_payment(payment.id)
        assert done.state is PaymentState.COMPLETED and done.captured == payment.amount, done
        # The same delivery again: the payment is settled, nothing more happens.
        again = await service.handle_webhook("paypal", headers, body)
        assert again.status is WebhookStatus.IGNORED, again
        assert (await service.sync_payment(payment.id)).version == done.version
        assert fake.charges() == 1

        refunded = await service.refund(payment.id, Money.of("5.00", "USD"))
        assert refunded.refunds[-1].gateway_reference
        headers, body = fake.signed_webhook(
            WebhookKind.SUCCEEDED, payment.gateway_reference, amount_minor=1999, currency="USD"
        )
        late = await service.handle_webhook("paypal", headers, body)
        assert late.status in (WebhookStatus.IGNORED, WebhookStatus.DUPLICATE), late
        assert (await service.get_payment(payment.id)).version == refunded.version
    finally:
        await service.aclose()


@pytest.mark.anyio
async def test_an_approval_webhook_before_the_payer_approved_changes_nothing(
    fake: FakePayPal,
) -> None:
    """A CHECKOUT.ORDER.APPROVED the order does not bear out (PayPal still waits for the payer)
    syncs the payment, which stays waiting: nothing is captured, nothing recorded."""
    service = service_for(fake)
    try:
        payment = await service.pay(PaymentRequest(Money.of("7.50", "USD")))
        assert payment.state is PaymentState.REQUIRES_ACTION and payment.gateway_reference
        headers, body = fake.signed_webhook(
            WebhookKind.REQUIRES_ACTION, payment.gateway_reference, amount_minor=750,
            currency="USD",
        )  # fmt: skip
        early = await service.handle_webhook("paypal", headers, body)
        assert early.status is WebhookStatus.IGNORED, early
        assert early.state is PaymentState.REQUIRES_ACTION
        assert (await service.get_payment(payment.id)).version == payment.version
        assert fake.charges() == 0
        # The payer approves later; PayPal's next delivery (same event id) completes it.
        fake.complete_action(payment.gateway_reference)
        late = await service.handle_webhook("paypal", headers, body)
        assert (late.status, late.state) == (WebhookStatus.APPLIED, PaymentState.COMPLETED)
        assert fake.charges() == 1
    finally:
        await service.aclose()


@pytest.mark.anyio
async def test_approval_webhook_of_a_manual_capture_payment_authorizes_it(
    fake: FakePayPal,
) -> None:
    service = service_for(fake)
    try:
        payment = await service.pay(PaymentRequest(Money.of("30.00", "USD"), capture_mode="manual"))
        assert payment.state is PaymentState.REQUIRES_ACTION and payment.gateway_reference
        fake.complete_action(payment.gateway_reference)
        headers, body = fake.signed_webhook(
            WebhookKind.REQUIRES_ACTION, payment.gateway_reference, amount_minor=3000,
            currency="USD",
        )  # fmt: skip
        approved = await service.handle_webhook("paypal", headers, body)
        assert (approved.status, approved.state) == (
            WebhookStatus.APPLIED,
            PaymentState.AUTHORIZED,
        )
        assert fake.charges() == 0, "an authorization holds the money, captures nothing"
        captured = await service.capture(payment.id)
        assert captured.state is PaymentState.COMPLETED and fake.charges() == 1
    finally:
        await service.aclose()


def service_next_action(payment: Any) -> dict[str, str]:
    """The next action PayPal's answer carried (kept on the payment's events)."""
    action = getattr(payment, "next_action", None)
    if action:
        return dict(action)
    raise AssertionError(f"payment has no next_action: {payment!r}")


@pytest.mark.anyio
async def test_manual_capture_and_cancel_through_a_service(
    fake: FakePayPal, config_for: Callable[..., Any]
) -> None:
    service = service_for(fake)
    try:
        request = PaymentRequest(
            Money.of("1000", "JPY"), capture_mode="manual", payment_method="VAULT-1"
        )
        held = await service.pay(request)
        assert held.state is PaymentState.AUTHORIZED, held
        captured = await service.capture(held.id, Money.of("600", "JPY"))
        assert captured.state is PaymentState.COMPLETED, captured
        order = fake.order(str(held.gateway_reference))
        assert order["purchase_units"][0]["payments"]["captures"][0]["amount"] == {
            "currency_code": "JPY",
            "value": "600",
        }
        other = await service.pay(request)
        cancelled = await service.cancel(other.id, "out of stock")
        assert cancelled.state is PaymentState.CANCELLED, cancelled
        assert fake.order(str(other.gateway_reference))["status"] == "VOIDED"
        assert fake.charges() == 1
    finally:
        await service.aclose()
