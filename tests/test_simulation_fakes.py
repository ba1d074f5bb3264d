"""aegispay.simulation_fakes: the simulation over the gateway packages' fake servers (real HTTP).

Needs aegispay-stripe, aegispay-razorpay and aegispay-paypal installed (skipped otherwise, with
the reason shown): ``pip install -e ./aegispay-stripe -e ./aegispay-razorpay -e ./aegispay-paypal``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from aegispay import Money, PaymentRequest, PaymentState
from aegispay.errors import ConfigError
from aegispay.settings import PluginConfig, Settings
from aegispay.simulation import SimulationOptions
from aegispay.simulation_fakes import (
    SAVED_INSTRUMENTS,
    parse_gateways,
    running_fakes,
    simulate_with_fakes,
    simulation_failed,
)
from aegispay.stack import build_service
from aegispay.webhooks import WebhookStatus

for _package in ("aegispay_stripe", "aegispay_razorpay", "aegispay_paypal"):
    pytest.importorskip(f"{_package}.fake", reason=f"{_package} is not installed")

pytestmark = pytest.mark.anyio
ALL = "stripe,razorpay,paypal"


def _memory() -> Settings:
    return Settings(store="memory://")


async def test_the_simulation_runs_over_the_three_fakes_without_a_double_charge() -> None:
    options = SimulationOptions(45, concurrency=6, seed=7)
    report = await simulate_with_fakes(_memory(), ALL, options)

    assert report["payments"] == 45 and report["errors"].keys() <= {"GatewayDeclined"}
    # Every payment is audited, those no gateway saw (refused by fraud checks) included.
    assert sum(report["outcomes"].values()) == 45
    # Round-robin: every gateway took payments, each completed by its saved instrument.
    for name in ("stripe", "razorpay", "paypal"):
        attempts = report["by_gateway"][name]["attempts"]
        assert report["by_gateway"][name]["first_choice"] >= 10, report["by_gateway"]
        assert attempts.get("succeeded", 0) >= 10, (name, attempts)
        assert "requires_action" not in attempts, (name, attempts)
    audit = report["fakes"]["audit"]
    assert audit["ok"] is True, audit
    assert report["duplicate_charges"] == 0 and report["unrecorded_charges"] == 0
    charged = sum(g["charges_at_gateway"] for g in audit["by_gateway"].values())
    completed = sum(
        n for state, n in report["outcomes"].items()
        if state in ("completed", "partially_refunded", "refunded")
    )  # fmt: skip
    assert charged == completed > 30
    assert report["replay_mismatches"] == 0 and report["unsettled_attempts"] == 0
    assert report["outbox_pending"] == 0
    # The fakes' signed webhooks went through handle_webhook; none contradicted a payment.
    webhooks = report["fakes"]["webhooks"]
    for name in ("stripe", "razorpay"):
        assert webhooks[name]["delivered"] > 0 and webhooks[name]["errors"] == {}, webhooks
        assert "rejected" not in webhooks[name]["results"], webhooks
    assert "paypal" not in webhooks
    assert "no event log" in report["fakes"]["webhook_support"]["paypal"]
    assert report["fakes"]["fake_errors"] == {}
    assert simulation_failed(report) is False


async def test_a_forwarded_webhook_completes_a_payment_waiting_on_the_customer() -> None:
    async with running_fakes("stripe") as fakes:
        service = build_service(fakes.settings(_memory()), plugins=[fakes.plugin()])
        try:
            stripe = fakes.fakes["stripe"]
            stripe.require_action_next()  # 3-D Secure
            payment = await service.pay(PaymentRequest(Money.of("12.00", "USD")))
            assert payment.state is PaymentState.REQUIRES_ACTION
            assert await fakes.forward_webhooks(service) > 0  # created, requires_action
            assert (await service.get_payment(payment.id)).version == payment.version
            stripe.complete_action(payment.gateway_reference)  # the customer passes 3DS
            assert await fakes.forward_webhooks(service) >= 1
            done = await service.get_payment(payment.id)
            assert done.state is PaymentState.COMPLETED, done
            assert fakes.webhooks.by_status["stripe"][WebhookStatus.APPLIED.value] == 1
            assert await fakes.forward_webhooks(service) == 0  # nothing new to deliver
            assert (await fakes.audit(service))["ok"] is True
        finally:
            await service.aclose()


async def test_the_audit_finds_a_charge_the_store_does_not_know() -> None:
    async with running_fakes("stripe,paypal") as fakes:
        service = build_service(fakes.settings(_memory()), plugins=[fakes.plugin()])
        try:
            paid = await service.pay(PaymentRequest(Money.of("20.00", "USD")))
            assert paid.state is PaymentState.COMPLETED
            assert (await fakes.audit(service))["ok"] is True
            # Money moved at Stripe behind AegisPay's back (a second charge for the order).
            section = fakes.sections["stripe"]
            async with httpx.AsyncClient(base_url=section["base_url"]) as client:
                answer = await client.post(
                    "/v1/payment_intents",
                    data={"amount": "2000", "currency": "usd", "confirm": "true",
                          "payment_method": "pm_card_visa"},
                    headers={"Authorization": f"Bearer {section['secret_key']}"},
                )  # fmt: skip
            assert answer.status_code == 200, answer.text
            audit = await fakes.audit(service)
            assert audit["ok"] is False
            assert audit["charges_not_matched"] == 1 and audit["payments_not_charged"] == 0
            assert audit["by_gateway"]["stripe"]["charges_not_matched"] == 1
            assert audit["by_gateway"]["paypal"]["charges_not_matched"] == 0
            report: dict[str, Any] = {"fakes": {"audit": audit}, "duplicate_charges": 1}
            assert simulation_failed(report) is True
        finally:
            await service.aclose()


async def test_each_gateway_charges_the_customers_instrument_saved_there() -> None:
    async with running_fakes(ALL) as fakes:
        service = build_service(fakes.settings(_memory()), plugins=[fakes.plugin()])
        try:
            for name in ("stripe", "razorpay", "paypal"):
                gateway = service.gateways[name]
                assert gateway.instrument == SAVED_INSTRUMENTS[name]  # type: ignore[attr-defined]
            payments = [
                await service.pay(PaymentRequest(Money.of("15.00", "USD"), payment_method=m))
                for m in ("pm_card_visa", None, "pm_card_visa")
            ]
            assert [p.state for p in payments] == [PaymentState.COMPLETED] * 3
            assert sorted(p.gateway or "" for p in payments) == ["paypal", "razorpay", "stripe"]
            assert all(fake.charges() == 1 for fake in fakes.fakes.values())
        finally:
            await service.aclose()


async def test_payments_no_gateway_saw_are_audited_too() -> None:
    async with running_fakes("stripe") as fakes:
        service = build_service(fakes.settings(_memory()), plugins=[fakes.plugin()])
        try:
            # The demo's fraud rules deny this customer: no gateway is called.
            denied = await service.pay(
                PaymentRequest(Money.of("5.00", "USD"), customer_id="cus_blocked_0")
            )
            assert denied.state is PaymentState.FAILED and not denied.attempts
            assert denied.id in fakes.payment_ids
            audit = await fakes.audit(service)
            assert audit["ok"] is True and audit["by_gateway"]["stripe"]["charges_at_gateway"] == 0
        finally:
            await service.aclose()


def test_gateway_names_are_checked() -> None:
    assert parse_gateways(" Stripe, paypal,stripe ") == ("stripe", "paypal")
    with pytest.raises(ConfigError, match=r"no fake server for \['adyen'\]"):
        parse_gateways("stripe,adyen")
    with pytest.raises(ConfigError, match="name at least one"):
        parse_gateways(" , ")


async def test_settings_point_at_the_fakes_and_keep_the_users_choices() -> None:
    user = Settings(
        store="memory://",
        plugin_config=PluginConfig(
            {
                "stripe": {"secret_key": "sk_live_users_real_key_0000"},
                "routing": {"strategy": "weighted", "weighted": {"weights": {"stripe": 1}}},
            }
        ),
    )
    async with running_fakes("stripe") as fakes:
        config = fakes.settings(user).plugin_config
        assert "stripe" not in config.names()  # the fake stands in for the user's account
        assert config.section("routing")["strategy"] == "weighted"
        assert config.section("simulated_gateways")["gateways"] == []
        assert fakes.sections["stripe"]["base_url"] == fakes.fakes["stripe"].base_url
        assert fakes.sections["stripe"]["base_url"].startswith("http://127.0.0.1:")
        secret = fakes.sections["stripe"]["secret_key"]
        assert secret not in repr(fakes) and secret not in repr(fakes.plugin())
        assert fakes.settings(_memory()).plugin_config.section("routing") == {
            "strategy": "round_robin"
        }


def test_the_cli_runs_the_simulation_over_the_fakes(tmp_path: Any) -> None:
    import json
    import subprocess
    import sys

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "aegispay",
            "simulate",
            "--with-fakes",
            "--payments",
            "60",
            "--concurrency",
            "20",
            "--store",
            "memory://",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["payments"] == 60
    assert report["duplicate_charges"] == 0 and report["replay_mismatches"] == 0
    assert report["fakes"]["audit"]["ok"]
    assert {"stripe", "razorpay", "paypal"} <= set(report["by_gateway"])
    rejected = subprocess.run(
        [sys.executable, "-m", "aegispay", "simulate", "--with-fakes", "--latency-ms", "5"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert rejected.returncode == 2 and "--with-fakes cannot be combined" in rejected.stderr
