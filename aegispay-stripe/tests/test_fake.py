"""The fake Stripe's own contract, over raw HTTP (what any client, not only ours, would see)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from aegispay.errors import InvalidMoney
from aegispay.webhooks import WebhookKind

from aegispay_stripe.fake import FakeStripe
from aegispay_stripe.signature import verify_signature

CREATE = {
    "amount": "2000",
    "currency": "usd",
    "confirm": "true",
    "payment_method": "pm_card_visa",
    "metadata[order]": "1",
}


@pytest.fixture
def client(stripe_fake: FakeStripe) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {stripe_fake.secret_key}"}
    with httpx.Client(base_url=stripe_fake.base_url, headers=headers, timeout=5) as http:
        yield http


def test_replay_is_byte_identical_and_marked(client: httpx.Client, stripe_fake: FakeStripe) -> None:
    first = client.post("/v1/payment_intents", data=CREATE, headers={"Idempotency-Key": "k1"})
    again = client.post("/v1/payment_intents", data=CREATE, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 200
    assert first.content == again.content
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert first.headers["request-id"].startswith("req_")
    assert again.headers["original-request"] == first.headers["request-id"]
    assert again.headers["request-id"] != first.headers["request-id"]
    assert stripe_fake.charges() == 1


def test_same_key_other_parameters_is_an_idempotency_error(client: httpx.Client) -> None:
    client.post("/v1/payment_intents", data=CREATE, headers={"Idempotency-Key": "k1"})
    other = client.post(
        "/v1/payment_intents", data={**CREATE, "amount": "2001"}, headers={"Idempotency-Key": "k1"}
    )
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"


def test_a_key_in_flight_is_409(client: httpx.Client, stripe_fake: FakeStripe) -> None:
    with stripe_fake.hold_key("k1"):
        busy = client.post("/v1/payment_intents", data=CREATE, headers={"Idempotency-Key": "k1"})
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "idempotency_key_in_use"
    after = client.post("/v1/payment_intents", data=CREATE, headers={"Idempotency-Key": "k1"})
    assert after.status_code == 200  # nothing was saved for the refused request


def test_validation_errors_are_not_saved_under_the_key(client: httpx.Client) -> None:
    bad = client.post(
        "/v1/payment_intents", data={**CREATE, "currency": "xts"}, headers={"Idempotency-Key": "k"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "currency"
    fixed = client.post("/v1/payment_intents", data=CREATE, headers={"Idempotency-Key": "k"})
    assert fixed.status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer sk_test_wrong_0123456789"}, 401),
        ({"Authorization": "Basic abc"}, 401),
    ],
)
def test_authentication(stripe_fake: FakeStripe, headers: dict[str, str], status: int) -> None:
    answer = httpx.get(f"{stripe_fake.base_url}/v1/payment_intents/pi_x", headers=headers)
    assert answer.status_code == status
    assert "sk_test_wrong_0123456789" not in answer.text  # Stripe masks the key it echoes


def test_json_bodies_are_refused(client: httpx.Client) -> None:
    answer = client.post("/v1/payment_intents", json={"amount": 100, "currency": "usd"})
    assert answer.status_code == 400


def test_three_decimal_amounts_must_end_in_zero(client: httpx.Client) -> None:
    answer = client.post(
        "/v1/payment_intents", data={**CREATE, "currency": "kwd", "amount": "5125"}
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_charge_amount"
    ok = client.post("/v1/payment_intents", data={**CREATE, "currency": "kwd", "amount": "5120"})
    assert ok.json()["status"] == "succeeded"


def test_status_flow_manual_capture_cancel(client: httpx.Client) -> None:
    held = client.post("/v1/payment_intents", data={**CREATE, "capture_method": "manual"}).json()
    assert (held["status"], held["amount_capturable"]) == ("requires_capture", 2000)
    too_much = client.post(
        f"/v1/payment_intents/{held['id']}/capture", data={"amount_to_capture": "2001"}
    )
    assert too_much.status_code == 400
    captured = client.post(
        f"/v1/payment_intents/{held['id']}/capture", data={"amount_to_capture": "1500"}
    ).json()
    assert (captured["status"], captured["amount_received"]) == ("succeeded", 1500)
    late = client.post(f"/v1/payment_intents/{held['id']}/cancel")
    assert late.json()["error"]["code"] == "payment_intent_unexpected_state"
    uncaptured = client.post("/v1/payment_intents", data={**CREATE, "capture_method": "manual"})
    refund = client.post("/v1/refunds", data={"payment_intent": uncaptured.json()["id"]})
    assert refund.json()["error"]["code"] == "charge_not_captured"


def test_search_and_unknown_routes(client: httpx.Client) -> None:
    made = client.post("/v1/payment_intents", data={**CREATE, "metadata[k]": "it's"}).json()
    found = client.get(
        "/v1/payment_intents/search", params={"query": "metadata['k']:'it\\'s'"}
    ).json()
    assert [i["id"] for i in found["data"]] == [made["id"]]
    none = client.get("/v1/payment_intents/search", params={"query": "metadata['k']:'x'"})
    assert none.json()["data"] == []
    assert client.get("/v1/charges").status_code == 404
    assert client.get("/v1/payment_intents/pi_nope").json()["error"]["code"] == "resource_missing"


def test_events_are_signed_like_stripe(client: httpx.Client, stripe_fake: FakeStripe) -> None:
    client.post("/v1/payment_intents", data=CREATE)
    types = [e["type"] for e in stripe_fake.events()]
    assert types == ["payment_intent.created", "payment_intent.succeeded"]
    headers, body = stripe_fake.deliveries("payment_intent.succeeded")[0]
    assert json.loads(body)["data"]["object"]["metadata"] == {"order": "1"}
    stamp = verify_signature(
        headers["Stripe-Signature"], body, [stripe_fake.webhook_secret], now=time.time()
    )
    assert stamp > 0


def test_signed_webhook_converts_amounts(stripe_fake: FakeStripe) -> None:
    _, body = stripe_fake.signed_webhook(
        WebhookKind.SUCCEEDED, "pi_unknown", amount_minor=7, currency="ISK"
    )
    obj = json.loads(body)["data"]["object"]
    assert (obj["amount_received"], obj["currency"]) == (700, "isk")
    with pytest.raises(InvalidMoney, match="end in 0"):
        stripe_fake.signed_webhook(
            WebhookKind.SUCCEEDED, "pi_unknown", amount_minor=5125, currency="KWD"
        )


def test_runnable_as_a_module() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "aegispay_stripe.fake", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("fake Stripe listening on http://127.0.0.1:")
        base_url = first.rsplit(" ", 1)[1].strip()
        answer = httpx.get(
            f"{base_url}/v1/payment_intents/pi_x",
            headers={"Authorization": "Bearer sk_test_aegispay_fake"},
        )
        assert answer.json()["error"]["code"] == "resource_missing"
    finally:
        process.terminate()
        process.wait(timeout=10)
