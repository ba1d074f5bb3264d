"""The fake Razorpay itself: documented validation, statuses, idempotency, webhooks, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

import httpx
import pytest
from aegispay.fake_server import FakeRequest, FakeResponse, LoopbackServer
from aegispay.webhooks import WebhookKind

from aegispay_razorpay.fake import FakeRazorpay
from aegispay_razorpay.signatures import verify_webhook_signature


def client(fake: FakeRazorpay, *, secret: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=fake.base_url, auth=(fake.key_id, secret or fake.key_secret), timeout=5.0
    )


def error_of(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert set(error) == {"code", "description", "field", "source", "step", "reason", "metadata"}
    return dict(error)


def order(http: httpx.Client, **fields: Any) -> httpx.Response:
    body = {"amount": 50_000, "currency": "INR", "receipt": "r-1", "payment_capture": False}
    body.update(fields)
    return http.post("/v1/orders", json=body)


def test_wrong_keys_get_razorpays_401(razorpay_fake: FakeRazorpay) -> None:
    with client(razorpay_fake, secret="wrong") as http:
        response = http.get("/v1/orders")
    assert response.status_code == 401
    assert error_of(response)["description"] == "The api key provided is invalid"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"amount": 99}, "amount"),
        ({"amount": 100.5}, "amount"),
        ({"amount": True}, "amount"),
        ({"currency": "XXX"}, "currency"),
        ({"currency": "KWD", "amount": 12_345}, "amount"),
        ({"receipt": "r" * 41}, "receipt"),
        ({"notes": {str(n): "v" for n in range(16)}}, "notes"),
    ],
)
def test_order_validation_names_the_field(
    razorpay_fake: FakeRazorpay, fields: dict[str, Any], field: str
) -> None:
    with client(razorpay_fake) as http:
        response = order(http, **fields)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "BAD_REQUEST_ERROR" and error["field"] == field


def test_orders_by_receipt_and_the_status_flow(razorpay_fake: FakeRazorpay) -> None:
    with client(razorpay_fake) as http:
        created = order(http).json()
        order(http, receipt="r-2")
        assert created["status"] == "created" and created["notes"] == []
        found = http.get("/v1/orders", params={"receipt": "r-1"}).json()
        assert [o["id"] for o in found["items"]] == [created["id"]]
        callback = razorpay_fake.pay_checkout(created["id"])
        payment = http.get(f"/v1/payments/{callback['razorpay_payment_id']}").json()
        assert payment["status"] == "authorized" and payment["order_id"] == created["id"]
        assert http.get(f"/v1/orders/{created['id']}").json()["status"] == "attempted"
        short = http.post(
            f"/v1/payments/{payment['id']}/capture", json={"amount": 100, "currency": "INR"}
        )
        assert short.status_code == 400 and error_of(short)["field"] == "amount"
        captured = http.post(
            f"/v1/payments/{payment['id']}/capture", json={"amount": 50_000, "currency": "INR"}
        ).json()
        assert captured["status"] == "captured" and captured["captured"] is True
        assert http.get(f"/v1/orders/{created['id']}").json()["status"] == "paid"
        twice = http.post(
            f"/v1/payments/{payment['id']}/capture", json={"amount": 50_000, "currency": "INR"}
        )
        assert "already been captured" in error_of(twice)["description"]
        missing = http.get("/v1/payments/pay_DoesNotExist00")
        assert missing.status_code == 400 and "does not exist" in error_of(missing)["description"]
    assert razorpay_fake.charges() == 1
    names = [json.loads(body)["event"] for _, body in razorpay_fake.events()]
    assert names == ["payment.authorized", "payment.captured", "order.paid"]


def test_refund_idempotency_replays_refuses_and_409s(razorpay_fake: FakeRazorpay) -> None:
    with client(razorpay_fake) as http:
        created = order(http, payment_capture=True).json()
        pay = razorpay_fake.pay_checkout(created["id"])["razorpay_payment_id"]
        path, key = f"/v1/payments/{pay}/refund", {"x-refund-idempotency": "refund-key-0001"}
        first = http.post(path, json={"amount": 1_000}, headers=key)
        assert first.status_code == 200 and first.json()["status"] == "processed"
        assert http.post(path, json={"amount": 1_000}, headers=key).json() == first.json()
        other = http.post(path, json={"amount": 2_000}, headers=key)
        assert other.status_code == 400
        assert "same idempotency key" in error_of(other)["description"]
        short = http.post(path, json={"amount": 1_000}, headers={"x-refund-idempotency": "short"})
        assert short.status_code == 400
        razorpay_fake.simulate_in_flight("refund-key-0002")
        busy = http.post(path, json={}, headers={"x-refund-idempotency": "refund-key-0002"})
        assert busy.status_code == 409
        over = http.post(path, json={"amount": 49_001})
        assert "greater than amount captured" in error_of(over)["description"]
        rest = http.post(path, json={}).json()  # no amount: the rest, in full
        assert rest["amount"] == 49_000
        assert http.get(f"/v1/payments/{pay}").json()["status"] == "refunded"
        assert http.get(f"/v1/payments/{pay}/refunds").json()["count"] == 2


def test_signed_webhooks_verify_with_the_webhook_secret_only(razorpay_fake: FakeRazorpay) -> None:
    headers, body = razorpay_fake.signed_webhook(
        WebhookKind.REFUND_SUCCEEDED, "order_X", amount_minor=2_500, currency="JPY", age_s=60
    )
    assert verify_webhook_signature(
        razorpay_fake.webhook_secret, body, headers["X-Razorpay-Signature"]
    )
    assert not verify_webhook_signature(
        razorpay_fake.key_secret, body, headers["X-Razorpay-Signature"]
    )
    event = json.loads(body)
    assert event["event"] == "refund.processed" and event["contains"] == ["refund", "payment"]
    assert event["payload"]["refund"]["entity"]["amount"] == 2_500
    assert headers["X-Razorpay-Event-Id"].startswith("evt_")
    with pytest.raises(ValueError, match="no webhook"):
        razorpay_fake.signed_webhook(
            WebhookKind.CANCELED, "order_X", amount_minor=1, currency="INR"
        )


def test_webhooks_are_delivered_to_the_configured_url() -> None:
    got: list[FakeRequest] = []
    arrived = threading.Condition()

    def receive(request: FakeRequest) -> FakeResponse:
        with arrived:
            got.append(request)
            arrived.notify_all()
        return FakeResponse(200)

    with LoopbackServer(receive) as receiver:
        fake = FakeRazorpay(webhook_url=f"{receiver.base_url}/webhooks/razorpay")
        with fake, client(fake) as http:
            created = order(http, payment_capture=True).json()
            fake.pay_checkout(created["id"])
            with arrived:
                assert arrived.wait_for(lambda: len(got) >= 3, timeout=10)
    assert [json.loads(r.body)["event"] for r in got[:3]] == [
        "payment.authorized",
        "payment.captured",
        "order.paid",
    ]
    for request in got:
        assert request.path == "/webhooks/razorpay"
        assert verify_webhook_signature(
            fake.webhook_secret, request.body, request.headers["x-razorpay-signature"]
        )


def test_close_leaves_no_thread_behind() -> None:
    before = set(threading.enumerate())
    fake = FakeRazorpay(webhook_url="http://127.0.0.1:9/unused").start()
    fake.close()
    fake.close()  # idempotent
    assert set(threading.enumerate()) <= before


def test_runs_as_a_module_and_answers() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "aegispay_razorpay.fake", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        base_url = line.split()[3]
        assert base_url.startswith("http://127.0.0.1:")
        with httpx.Client(
            base_url=base_url, auth=("rzp_test_fake", "fake_key_secret_0123456789")
        ) as http:
            assert order(http).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)
