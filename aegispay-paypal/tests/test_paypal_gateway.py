"""The adapter against the fake PayPal: the approval flow, headers on the wire, tokens, faults."""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
import httpx
import pytest
from aegispay.errors import ConfigError
from aegispay.fake_server import FakeRequest, Fault
from aegispay.gateways import (
    AuthorizeRequest,
    CaptureRequest,
    Operation,
    Outcome,
    RefundRequest,
    StatusRequest,
    VoidRequest,
)
from aegispay.money import Money
from aegispay.settings import PluginConfig

from aegispay_paypal import PayPalConfig, PayPalGateway, PayPalUnavailable
from aegispay_paypal.fake import FakePayPal


def request(
    amount: Money | None = None, *, capture: bool = True, key: str = "pay_1-1", **kw: object
) -> AuthorizeRequest:
    return AuthorizeRequest(
        payment_id=key.rsplit("-", 1)[0],
        attempt_no=1,
        idempotency_key=key,
        amount=amount or Money(1050, "USD"),
        capture=capture,
        description="order 7",
        **kw,  # type: ignore[arg-type]
    )


def status(req: AuthorizeRequest, reference: str | None) -> StatusRequest:
    return StatusRequest(req.payment_id, Operation.AUTHORIZE, req.idempotency_key, reference)


def posts(fake: FakePayPal, prefix: str = "/v2/") -> list[FakeRequest]:
    return [r for r in fake.received() if r.method == "POST" and r.path.startswith(prefix)]


def payer_approves(url: str) -> None:
    """The payer follows the approval link (the fake serves it) and approves."""
    assert httpx.get(url).status_code == 200


# -- the approval flow (no vaulted wallet) -------------------------------------------------------


@pytest.mark.anyio
async def test_order_waits_for_the_payer_then_the_lookup_captures_it(
    gateway: PayPalGateway, fake: FakePayPal
) -> None:
    req = request()
    created = await gateway.authorize(req)
    assert created.outcome is Outcome.REQUIRES_ACTION, created
    assert created.next_action is not None and created.reference is not None
    assert created.next_action["order_id"] == created.reference
    assert created.next_action["type"] == "paypal_approval"

    early = await gateway.get_status(status(req, created.reference))
    assert early.outcome is Outcome.REQUIRES_ACTION, "nothing is captured before approval"
    assert fake.charges() == 0

    payer_approves(created.next_action["approval_url"])
    done = await gateway.get_status(status(req, created.reference))
    assert (done.outcome, done.reference, done.captured) == (
        Outcome.SUCCEEDED,
        created.reference,
        True,
    )
    again = await gateway.get_status(status(req, created.reference))
    assert again.outcome is Outcome.SUCCEEDED
    assert fake.charges() == 1
    completes = [r for r in posts(fake) if r.path.endswith("/capture")]
    # The second lookup found the order COMPLETED and sent nothing.
    assert [r.headers["paypal-request-id"] for r in completes] == ["pay_1-1-capture"]


@pytest.mark.anyio
async def test_the_wire_format_of_a_create(gateway: PayPalGateway, fake: FakePayPal) -> None:
    await gateway.authorize(request(Money(100_000, "HUF"), capture=False, key="pay_9-2"))
    (create,) = posts(fake, "/v2/checkout/orders")
    body = json.loads(create.body)
    assert create.headers["paypal-request-id"] == "pay_9-2"
    assert create.headers["authorization"].startswith("Bearer A21AA")
    assert create.headers["content-type"] == "application/json"
    assert body["intent"] == "AUTHORIZE"
    unit = body["purchase_units"][0]
    assert unit["amount"] == {"currency_code": "HUF", "value": "1000"}  # whole forints
    assert (unit["custom_id"], unit["invoice_id"], unit["description"]) == (
        "pay_9",
        "pay_9-2",
        "order 7",
    )
    assert "payment_source" not in body  # no return URL configured: the JS SDK approves


@pytest.mark.anyio
async def test_return_urls_ask_paypal_for_a_payer_action_link(
    fake: FakePayPal, config_for: Callable[..., PayPalConfig]
) -> None:
    gateway = PayPalGateway(
        config_for(fake, return_url="https://shop.test/ok", cancel_url="https://shop.test/no")
    )
    try:
        result = await gateway.authorize(request())
    finally:
        await gateway.aclose()
    assert result.outcome is Outcome.REQUIRES_ACTION
    assert result.next_action is not None
    assert "checkoutnow?token=" in result.next_action["approval_url"]
    (create,) = posts(fake, "/v2/checkout/orders")
    context = json.loads(create.body)["payment_source"]["paypal"]["experience_context"]
    assert context == {
        "return_url": "https://shop.test/ok",
        "cancel_url": "https://shop.test/no",
        "user_action": "PAY_NOW",
    }
    assert fake.order(str(result.reference))["status"] == "PAYER_ACTION_REQUIRED"


@pytest.mark.anyio
async def test_bank_decline_at_completion_is_declined(
    gateway: PayPalGateway, fake: FakePayPal
) -> None:
    req = request()
    created = await gateway.authorize(req)
    assert created.reference is not None
    fake.complete_action(created.reference)
    fake.decline_next("INSTRUMENT_DECLINED")
    result = await gateway.get_status(status(req, created.reference))
    assert result.outcome is Outcome.DECLINED, result
    assert result.decline_code == "INSTRUMENT_DECLINED"
    assert result.retryable_elsewhere is False
    assert fake.charges() == 0


@pytest.mark.anyio
async def test_a_lost_create_is_found_by_repeating_it(
    gateway: PayPalGateway, fake: FakePayPal
) -> None:
    await gateway.connect()
    req = request()
    fake.inject(Fault.DROP_AFTER_PROCESSING, method="POST")
    lost = await gateway.authorize(req)
    assert lost.outcome is Outcome.UNKNOWN, lost
    found = await gateway.get_status(status(req, None))
    assert found.outcome is Outcome.REQUIRES_ACTION, found
    creates = posts(fake, "/v2/checkout/orders")
    assert [r.headers["paypal-request-id"] for r in creates] == ["pay_1-1", "pay_1-1"]
    assert creates[0].body == creates[1].body, "the very same request, repeated"
    assert found.reference == fake.order(str(found.reference))["id"]


@pytest.mark.anyio
async def test_an_unknown_key_without_a_reference_is_unknown(gateway: PayPalGateway) -> None:
    req = request(key="pay_never-1", payment_method="VAULT-1")
    result = await gateway.get_status(status(req, None))
    assert result.outcome is Outcome.UNKNOWN, result


# -- money PayPal cannot take: refused before anything is sent ---------------------------------


@pytest.mark.parametrize(
    ("amount", "code"),
    [(Money(10_050, "KWD"), "CURRENCY_NOT_SUPPORTED"), (Money(10_050, "HUF"), "DECIMAL_PRECISION")],
)
@pytest.mark.anyio
async def test_unpayable_amounts_fail_over_without_a_call(
    gateway: PayPalGateway, fake: FakePayPal, amount: Money, code: str
) -> None:
    result = await gateway.authorize(request(amount))
    assert (result.outcome, result.decline_code, result.retryable_elsewhere) == (
        Outcome.DECLINED,
        code,
        True,
    )
    assert fake.received() == []


# -- capture, void, refund on an authorization -------------------------------------------------


async def authorized(gateway: PayPalGateway, fake: FakePayPal, key: str = "pay_1-1") -> str:
    req = request(Money(10_000, "USD"), capture=False, key=key, payment_method="VAULT-1")
    result = await gateway.authorize(req)
    assert result.outcome is Outcome.SUCCEEDED and not result.captured, result
    assert result.reference is not None
    return result.reference


@pytest.mark.anyio
async def test_partial_capture_then_partial_refunds(
    gateway: PayPalGateway, fake: FakePayPal
) -> None:
    order_id = await authorized(gateway, fake)
    capture = CaptureRequest("pay_1", "pay_1-capture", order_id, Money(6_000, "USD"))
    result = await gateway.capture(capture)
    assert (result.outcome, result.captured, result.reference) == (
        Outcome.SUCCEEDED,
        True,
        order_id,
    )
    (sent,) = posts(fake, "/v2/payments/authorizations/")
    assert json.loads(sent.body) == {
        "amount": {"currency_code": "USD", "value": "60.00"},
        "final_capture": True,
        "invoice_id": "pay_1-capture",
    }
    refund = RefundRequest("pay_1", "pay_1-refund-1", order_id, Money(2_500, "USD"), "damaged")
    refunded = await gateway.refund(refund)
    assert refunded.outcome is Outcome.SUCCEEDED and refunded.reference, refunded
    looked_up = await gateway.get_status(
        StatusRequest("pay_1", Operation.REFUND, "pay_1-refund-1", order_id)
    )
    assert (looked_up.outcome, looked_up.reference) == (Outcome.SUCCEEDED, refunded.reference)
    too_much = RefundRequest("pay_1", "pay_1-refund-2", order_id, Money(3_501, "USD"))
    refused = await gateway.refund(too_much)
    assert (refused.outcome, refused.decline_code) == (Outcome.DECLINED, "REFUND_AMOUNT_EXCEEDED")
    never = await gateway.get_status(
        StatusRequest("pay_1", Operation.REFUND, "pay_1-refund-9", order_id)
    )
    assert never.outcome is Outcome.NOT_SENT, "the order lists every refund: this one is not"
    assert fake.charges() == 1


@pytest.mark.anyio
async def test_a_capture_whose_answer_is_lost_is_repeated_safely(
    gateway: PayPalGateway, fake: FakePayPal
) -> None:
    order_id = await authorized(gateway, fake)
    capture = CaptureRequest("pay_1", "pay_1-capture", order_id, Money(10_000, "USD"))
    fake.inject(Fault.TIMEOUT_AFTER_PROCESSING, method="POST", path_prefix="/v2/payments/")
    lost = await gateway.capture(capture)
    assert lost.outcome is Outcome.UNKNOWN, lost
    assert fake.charges() == 1
    seen = await gateway.get_status(
        StatusRequest("pay_1", Operation.CAPTURE, "pay_1-capture", order_id)
    )
    assert (seen.outcome, seen.captured) == (Outcome.SUCCEEDED, True)
    again = await gateway.capture(capture)
    assert again.outcome is Outcome.SUCCEEDED, again
    assert fake.charges() == 1


@pytest.mark.anyio
async def test_capture_is_not_sent_when_the_order_cannot_be_read(
    gateway: PayPalGateway, fake: FakePayPal
) -> None:
    order_id = await authorized(gateway, fake)
    fake.inject(Fault.ERROR_500, method="GET", path_prefix="/v2/checkout/orders/")
    result = await gateway.capture(
        CaptureRequest("pay_1", "pay_1-capture", order_id, Money(10_000, "USD"))
    )
    assert result.outcome is Outcome.NOT_SENT, result
    assert posts(fake, "/v2/payments/") == []


@pytest.mark.anyio
async def test_void_then_capture_is_refused(gateway: PayPalGateway, fake: FakePayPal) -> None:
    order_id = await authorized(gateway, fake)
    voided = await gateway.void(VoidRequest("pay_1", "pay_1-void", order_id))
    assert voided.outcome is Outcome.SUCCEEDED, voided
    assert fake.order(order_id)["status"] == "VOIDED"
    seen = await gateway.get_status(StatusRequest("pay_1", Operation.VOID, "pay_1-void", order_id))
    assert seen.outcome is Outcome.SUCCEEDED
    late = await gateway.capture(
        CaptureRequest("pay_1", "pay_1-capture", order_id, Money(10_000, "USD"))
    )
    assert (late.outcome, late.decline_code) == (Outcome.DECLINED, "AUTHORIZATION_VOIDED")
    twice = await gateway.void(VoidRequest("pay_1", "pay_1-void-2", order_id))
    assert (twice.outcome, twice.decline_code) == (Outcome.DECLINED, "PREVIOUSLY_VOIDED")


@pytest.mark.anyio
async def test_a_request_still_in_progress_is_unknown_not_declined(
    gateway: PayPalGateway, fake: FakePayPal
) -> None:
    fake.mark_in_progress("pay_1-1")
    result = await gateway.authorize(request())
    assert result.outcome is Outcome.UNKNOWN, result
    fake.finish_in_progress("pay_1-1")
    assert (await gateway.authorize(request())).outcome is Outcome.REQUIRES_ACTION


# -- the OAuth token -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_one_token_serves_many_calls(gateway: PayPalGateway, fake: FakePayPal) -> None:
    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(gateway.authorize, request(key=f"pay_{n}-1"))
    assert (gateway.token_fetches, fake.token_requests) == (1, 1)
    basic = [r for r in fake.received() if r.path == "/v1/oauth2/token"]
    assert basic[0].body == b"grant_type=client_credentials"
    assert basic[0].headers["authorization"].startswith("Basic ")


@pytest.mark.anyio
async def test_a_revoked_token_is_refreshed_once_under_concurrency(
    gateway: PayPalGateway, fake: FakePayPal
) -> None:
    await gateway.connect()
    fake.expire_tokens()
    results = []

    async def pay(n: int) -> None:
        results.append(await gateway.authorize(request(key=f"pay_{n}-1")))

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(pay, n)
    assert all(r.outcome is Outcome.REQUIRES_ACTION for r in results), results
    assert (gateway.token_fetches, fake.token_requests) == (2, 2), "exactly one refresh"
    creates = posts(fake, "/v2/checkout/orders")
    rejected = len(creates) - 8  # each call refused with the old token was repeated once
    assert 1 <= rejected <= 8


@pytest.mark.anyio
async def test_a_token_near_expiry_is_renewed_before_use(
    fake: FakePayPal, config_for: Callable[..., PayPalConfig]
) -> None:
    # PayPal says the token lives 30 s; with a 60 s margin every call needs a fresh one.
    with FakePayPal(token_ttl_s=30) as short:
        gateway = PayPalGateway(config_for(short, token_refresh_margin_s=60.0))
        try:
            await gateway.authorize(request(key="pay_1-1"))
            await gateway.authorize(request(key="pay_2-1"))
        finally:
            await gateway.aclose()
        assert short.token_requests == 2


@pytest.mark.anyio
async def test_wrong_credentials_are_not_sent_and_never_echoed(
    fake: FakePayPal, config_for: Callable[..., PayPalConfig]
) -> None:
    secret = "s3cr3t-value-never-shown"
    gateway = PayPalGateway(config_for(fake, client_secret=secret))
    try:
        result = await gateway.authorize(request())
        with pytest.raises(PayPalUnavailable) as caught:
            await gateway.connect()
    finally:
        await gateway.aclose()
    assert result.outcome is Outcome.NOT_SENT, result
    assert "invalid_client" in result.message
    for text in (result.message, str(caught.value), repr(gateway), repr(gateway.config)):
        assert secret not in text
    assert posts(fake) == [], "no payment call without a token"


@pytest.mark.anyio
async def test_connection_refused_is_not_sent_and_a_lost_lookup_is_unknown(
    fake: FakePayPal, config_for: Callable[..., PayPalConfig]
) -> None:
    gateway = PayPalGateway(config_for(fake))
    fake.close()
    try:
        sent = await gateway.authorize(request())
        looked = await gateway.get_status(status(request(), "ORDER1"))
    finally:
        await gateway.aclose()
    assert sent.outcome is Outcome.NOT_SENT, sent
    assert looked.outcome is Outcome.UNKNOWN, "a lookup that could not be made is no answer"


@pytest.mark.anyio
async def test_a_lookup_refused_by_paypal_is_unknown_not_declined(
    gateway: PayPalGateway, fake: FakePayPal
) -> None:
    order_id = await authorized(gateway, fake)
    fake.expire_tokens()
    fake.inject(Fault.RATE_LIMITED, path_prefix="/v1/oauth2/token")
    result = await gateway.get_status(status(request(), order_id))
    assert result.outcome is Outcome.UNKNOWN, result
    missing = await gateway.get_status(status(request(), "NOSUCHORDER"))
    assert (missing.outcome, missing.decline_code) == (Outcome.DECLINED, "INVALID_RESOURCE_ID")


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"client_id": "id", "client_secret": ""}, "client_secret: must not be empty"),
        ({"client_id": "id", "client_secret": 98765432}, "client_secret"),
        ({"client_id": "id", "client_secret": "s", "base_url": "ftp:x"}, "base_url"),
        ({"client_id": "id", "client_secret": "s", "base_url": "http://api.example"}, "loopback"),
        ({"client_id": "id", "client_secret": "s", "read_timeout_s": 0}, "read_timeout_s"),
        ({"client_id": "id"}, "client_secret"),
        ({"client_id": "id", "client_secret": "s", "colour": "red"}, "colour"),
    ],
)
def test_config_errors_name_the_key_and_hide_credentials(
    section: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        PluginConfig({"paypal": section}).structure("paypal", PayPalConfig)
    message = str(caught.value)
    assert named in message and "plugins.paypal" in message
    assert "98765432" not in message


def test_named_base_urls_and_a_repr_without_credentials() -> None:
    live = PayPalConfig(client_id="client-XYZ", client_secret="secret-XYZ")
    sandbox = PayPalConfig(client_id="client-XYZ", client_secret="secret-XYZ", base_url="sandbox")
    assert live.api_url == "https://api-m.paypal.com"
    assert sandbox.api_url == "https://api-m.sandbox.paypal.com"
    assert "XYZ" not in repr(sandbox) and "XYZ" not in repr(PayPalGateway(sandbox))


class BrowserCapturesFirst(httpx.AsyncHTTPTransport):
    """Just before the adapter's capture of an approved order reaches PayPal, the payer's
    browser (PayPal's JS SDK, ``actions.order.capture()``) captures it with its own request."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/capture"):
            browser = httpx.Request(
                "POST",
                request.url,
                headers={
                    "Authorization": request.headers["Authorization"],
                    "PayPal-Request-Id": "browser-1",
                    "Content-Type": "application/json",
                },
                content=b"{}",
            )
            answer = await super().handle_async_request(browser)
            await answer.aread()
        return await super().handle_async_request(request)


@pytest.mark.anyio
async def test_an_order_captured_by_the_payers_browser_is_success_not_refusal(
    fake: FakePayPal, config_for: Callable[..., PayPalConfig]
) -> None:
    gateway = PayPalGateway(config_for(fake), transport=BrowserCapturesFirst())
    req = request()
    try:
        created = await gateway.authorize(req)
        assert created.reference is not None
        fake.complete_action(created.reference)
        result = await gateway.get_status(status(req, created.reference))
    finally:
        await gateway.aclose()
    assert (result.outcome, result.captured) == (Outcome.SUCCEEDED, True), result
    ids = [r.headers.get("paypal-request-id") for r in posts(fake) if r.path.endswith("capture")]
    assert ids == ["browser-1", "pay_1-1-capture"], "ours came second and was refused"
    assert fake.charges() == 1
