"""Issue #5's "Done when", as a program a machine checks: a new user installs the core and ONE
gateway package with pip (wheels, not editable) into a fresh virtualenv, configures the keys in
environment variables, and processes, captures, refunds and receives webhooks for payments
against the package's fake server. Every step's result is asserted; a failed step exits 1 and
names the step. docs/gateways.md walks through the same steps by hand.

    python tests/new_user_flow.py --wheels DIR     # DIR holds the aegispay and aegispay-razorpay
                                                   # wheels (``nox -s wheels`` builds and runs it)

The gateway is Razorpay: its fake (``python -m aegispay_razorpay.fake --webhook-url ...``)
POSTs signed webhooks to a URL as Razorpay does, so the user's ASGI app really receives them.
The file has two halves: ``main`` (standard library only) sets up the virtualenv, the fake and
the environment; ``shop`` is the user's program, run by the fresh virtualenv's Python.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GATEWAY = "razorpay"
# The fake's default test credentials (aegispay-razorpay's README, "The fake Razorpay").
KEY_ID = "rzp_test_fake"
KEY_SECRET = "fake_key_secret_0123456789"
WEBHOOK_SECRET = "fake_webhook_secret_0123456789"
# A saved card (Razorpay recurring payments): the fake accepts any cust_ / token_ ids.
SAVED_CARD = "cust_NewUser00001:token_NewUser00001"
TIMEOUT_S = 600.0  # pip may download the dependencies


class StepFailed(Exception):
    pass


def check(condition: object, message: str) -> None:
    """An assertion that survives ``python -O``."""
    if not condition:
        raise StepFailed(message)


# -- the orchestrator (standard library only) ----------------------------------------------------


def _wheel(dist: Path, distribution: str) -> Path:
    """The one wheel of ``distribution`` in ``dist`` (wheel names use ``_`` for ``-``)."""
    prefix = distribution.replace("-", "_") + "-"
    found = sorted(w for w in dist.glob("*.whl") if w.name.startswith(prefix))
    check(len(found) == 1, f"expected one {distribution} wheel in {dist}, found {found}")
    return found[0]


def _run(command: Sequence[str], *, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    check(
        result.returncode == 0,
        f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}",
    )
    return result.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _first_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    """The process's first line of output: the fake prints its address once it listens."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        check(selector.select(timeout_s), f"no output from the fake within {timeout_s} s")
    return process.stdout.readline()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, required=True, help="folder with the wheels")
    args = parser.parse_args(argv)
    step = "find the wheels"
    try:
        core = _wheel(args.wheels, "aegispay")
        package = _wheel(args.wheels, f"aegispay-{GATEWAY}")
        with tempfile.TemporaryDirectory(prefix="aegispay-new-user-") as tmp:
            home = Path(tmp)
            app = home / "shop"  # the user's project: no aegispay.toml, no checkout around
            app.mkdir()
            venv = home / "venv"
            python = venv / "bin" / "python"
            # Only what a user's shell would have: no AEGISPAY_* from this process, no
            # PYTHONPATH pointing into a checkout.
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("AEGISPAY_", "PYTHON", "VIRTUAL_ENV"))
            }

            step = "1. install the core and one gateway package from wheels"
            _run([sys.executable, "-m", "venv", str(venv)], cwd=home, env=env)
            _run(
                [str(python), "-m", "pip", "install", "--quiet", f"{core}[asgi]", str(package),
                 "uvicorn"],
                cwd=app, env=env,
            )  # fmt: skip
            probe = (
                "import json, aegispay, aegispay_razorpay as p; "
                "print(json.dumps([aegispay.__file__, p.__file__]))"
            )
            where = json.loads(_run([str(python), "-c", probe], cwd=app, env=env))
            site = str(venv / "lib")
            check(
                all(f.startswith(site) and "site-packages" in f for f in where),
                f"not imported from the virtualenv's site-packages (editable?): {where}",
            )
            print(f"ok  {step}: {core.name}, {package.name}")

            step = "2. `aegispay plugins --json` lists the gateway from its entry point"
            listed = json.loads(
                _run([str(venv / "bin" / "aegispay"), "plugins", "--json"], cwd=app, env=env)
            )
            by_name = {p["name"]: p for p in listed}
            found = by_name.get(GATEWAY)
            check(found is not None, f"{GATEWAY} not listed: {sorted(by_name)}")
            assert found is not None
            check(found["distribution"] == f"aegispay-{GATEWAY}", f"distribution: {found}")
            check(found["error"] is None, f"{GATEWAY} failed to load: {found['error']}")
            check("aegispay_register_gateways" in found["hooks"], f"hooks: {found['hooks']}")
            others = {"stripe", "paypal"} & set(by_name)
            check(not others, f"gateway packages that were not installed are listed: {others}")
            print(f"ok  {step}")

            step = "3. start the fake Razorpay, posting its webhooks to the shop"
            webhook_port = _free_port()
            fake = subprocess.Popen(
                [str(python), "-m", "aegispay_razorpay.fake", "--port", "0",
                 "--webhook-url", f"http://127.0.0.1:{webhook_port}/webhooks/{GATEWAY}"],
                cwd=app, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                line = _first_line(fake, 60.0)
                address = re.search(r"http://127\.0\.0\.1:\d+", line)
                check(address is not None, f"the fake did not print its address: {line!r}")
                assert address is not None
                fake_url = address.group(0)
                print(f"ok  {step}: {fake_url}")

                step = "4. configure the keys (environment) and run the shop"
                shop_env = {
                    **env,
                    # The one gateway this shop uses; the built-in simulated gateways are
                    # for demos and must not be fallbacks of a real gateway.
                    "AEGISPAY_PLUGINS__DENY": "simulated_gateways",
                    "AEGISPAY_PLUGINS__RAZORPAY__KEY_ID": KEY_ID,
                    "AEGISPAY_PLUGINS__RAZORPAY__KEY_SECRET": KEY_SECRET,
                    "AEGISPAY_PLUGINS__RAZORPAY__WEBHOOK_SECRET": WEBHOOK_SECRET,
                    "AEGISPAY_PLUGINS__RAZORPAY__BASE_URL": fake_url,
                    # No janitor: what completes the Checkout payment can only be the webhook.
                    "AEGISPAY_ENGINE__RECONCILE_INTERVAL_S": "0",
                }
                output = _run(
                    [str(python), str(Path(__file__).resolve()), "shop",
                     "--webhook-port", str(webhook_port), "--fake-url", fake_url],
                    cwd=app, env=shop_env,
                )  # fmt: skip
                for line in output.splitlines()[:-1]:
                    print(f"    {line}")
                summary = json.loads(output.splitlines()[-1])
                _check_summary(summary)
                print(f"ok  {step}: paid, captured, refunded; webhooks handled (state after "
                      f"each): {summary['webhooks_handled']}")  # fmt: skip
            finally:
                # Deliveries still queued in the fake now fail (Razorpay would retry them).
                fake.terminate()
                fake.wait(timeout=30)
    except (StepFailed, OSError, subprocess.SubprocessError, ValueError, KeyError) as error:
        print(f"FAILED  {step}: {error}", file=sys.stderr)
        return 1
    print("new user flow: every step passed")
    return 0


def _check_summary(summary: dict[str, Any]) -> None:
    """The shop's own checks passed; check its report from outside as well."""
    manual, checkout = summary["manual_capture"], summary["checkout"]
    check(manual["states"] == ["authorized", "completed", "partially_refunded", "refunded"],
          f"saved-card payment went {manual['states']}")  # fmt: skip
    check(manual["captured"] == "499.00 INR" and manual["refunded"] == "499.00 INR", manual)
    check(checkout["states"] == ["requires_action", "completed", "partially_refunded"],
          f"Checkout payment went {checkout['states']}")  # fmt: skip
    # The janitor is off and nothing synced the payment: Razorpay's webhook completed it.
    check(checkout["completed_by"] == "webhook", f"completed by {checkout['completed_by']}")
    check(checkout["refunded"] == "50.00 INR", checkout)
    check(summary["webhook_answers"] == {"bad_signature": 400, "unknown_gateway": 404}, summary)
    handled = summary["webhooks_handled"]
    check(handled["saved_card"] >= 1, f"no webhook about the saved-card payment: {handled}")
    check("completed" in handled["checkout"], f"Checkout payment's webhooks: {handled}")
    check(handled["checkout"][-1] == "partially_refunded", f"after the refund: {handled}")


# -- the user's program (runs in the fresh virtualenv) ----------------------------------------


def shop(webhook_port: int, fake_url: str) -> int:
    """Take payments with Razorpay, and receive its webhooks through the ASGI app."""
    import asyncio

    summary = asyncio.run(_shop(webhook_port, fake_url))
    print(json.dumps(summary, sort_keys=True))
    return 0


async def _shop(webhook_port: int, fake_url: str) -> dict[str, Any]:
    import asyncio

    import httpx
    import uvicorn
    from aegispay import (
        Money,
        PaymentRequest,
        PaymentState,
        build_service,
        hookimpl,
        load_settings,
    )
    from aegispay.asgi import create_app

    completed: dict[str, asyncio.Event] = {}
    completed_by: dict[str, str] = {}  # payment id -> the operation that completed it
    webhooks: dict[str, list[str]] = {}  # payment id -> its state after each webhook handled
    refund_webhook: dict[str, asyncio.Event] = {}

    class Completions:
        """Two observers: each finished operation (``pay``, ``capture``, ``webhook``...: which
        one completed a payment, which webhooks arrived), and each committed event (told after
        the commit, by the outbox)."""

        @hookimpl
        def aegispay_operation_finished(self, record: Any) -> None:
            payment = record.payment
            if payment is None:
                return
            if payment.state.value == "completed":
                completed_by.setdefault(payment.id, record.operation)
            if record.operation == "webhook":
                webhooks.setdefault(payment.id, []).append(payment.state.value)
                if payment.refunds and payment.id in refund_webhook:
                    refund_webhook[payment.id].set()

        @hookimpl
        def aegispay_on_event(self, event: Any) -> None:
            if type(event).__name__ == "PaymentCompleted" and event.payment_id in completed:
                completed[event.payment_id].set()

    service = build_service(load_settings(), plugins=[Completions()])  # env vars + defaults
    check(list(service.gateways) == [GATEWAY], f"gateways: {list(service.gateways)}")
    # The webhook endpoint: POST /webhooks/razorpay. The socket listens before the server
    # starts, so a delivery that comes early waits in the backlog instead of being refused.
    listener = socket.socket()
    listener.bind(("127.0.0.1", webhook_port))
    listener.listen(64)
    config = uvicorn.Config(create_app(service), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    summary: dict[str, Any] = {}
    async with service:  # the outbox relay runs while the shop is open
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        try:
            summary["manual_capture"] = await _saved_card(service, Money, PaymentRequest)
            summary["checkout"] = await _checkout(
                service, Money, PaymentRequest, PaymentState, completed, fake_url
            )
            checkout_id = summary["checkout"]["id"]
            summary["checkout"]["completed_by"] = completed_by.get(checkout_id)
            # Razorpay's refund webhooks follow the refund: wait for one to be handled (the
            # fake delivers in order, one at a time) before the shop closes.
            refund_webhook[checkout_id] = asyncio.Event()
            if any(state != "completed" for state in webhooks.get(checkout_id, [])):
                refund_webhook[checkout_id].set()
            try:
                await asyncio.wait_for(refund_webhook[checkout_id].wait(), timeout=30)
            except TimeoutError:
                raise StepFailed("no webhook arrived after the refund within 30 s") from None
            summary["webhooks_handled"] = {
                "saved_card": len(webhooks.get(summary["manual_capture"]["id"], [])),
                "checkout": webhooks.get(checkout_id, []),
            }
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{webhook_port}") as http:
                forged = await http.post(
                    f"/webhooks/{GATEWAY}",
                    content=b'{"event": "payment.captured", "payload": {}}',
                    headers={"X-Razorpay-Signature": "0" * 64},
                )
                unknown = await http.post("/webhooks/nope", content=b"{}")
            summary["webhook_answers"] = {
                "bad_signature": forged.status_code,
                "unknown_gateway": unknown.status_code,
            }
        finally:
            server.should_exit = True
            await serving
    await service.aclose()
    return summary


async def _saved_card(service: Any, Money: Any, PaymentRequest: Any) -> dict[str, Any]:
    """Authorize a saved card, capture it, refund it in two parts."""
    request = PaymentRequest(
        Money.of("499.00", "INR"),
        capture_mode="manual",
        payment_method=SAVED_CARD,
        customer_id="cust_NewUser00001",
        reference="order-1001",
    )
    payment = await service.pay(request, idempotency_key="order-1001")
    states = [payment.state.value]
    check(payment.gateway == GATEWAY and payment.gateway_reference, f"authorize: {payment}")
    again = await service.pay(request, idempotency_key="order-1001")  # a client's retry
    check(again.id == payment.id, "the same idempotency key made a second payment")
    captured = await service.capture(payment.id)
    states.append(captured.state.value)
    check(captured.captured == Money.of("499.00", "INR"), f"capture: {captured}")
    part = await service.refund(payment.id, Money.of("99.00", "INR"), reason="damaged item")
    states.append(part.state.value)
    rest = await service.refund(payment.id)
    states.append(rest.state.value)
    check(rest.refunded == Money.of("499.00", "INR"), f"refunds: {rest}")
    check(await service.replay(payment.id) == rest, "the history does not replay to the payment")
    print(f"saved card: {payment.id} {' -> '.join(states)}")
    return {
        "id": payment.id,
        "states": states,
        "captured": str(rest.captured),
        "refunded": str(rest.refunded),
    }


async def _checkout(
    service: Any,
    Money: Any,
    PaymentRequest: Any,
    PaymentState: Any,
    completed: dict[str, Any],
    fake_url: str,
) -> dict[str, Any]:
    """A Checkout payment: the customer pays at Razorpay, the webhook completes it here."""
    import asyncio

    import httpx

    payment = await service.pay(
        PaymentRequest(Money.of("250.00", "INR"), reference="order-1002"),
        idempotency_key="order-1002",
    )
    states = [payment.state.value]
    check(payment.state is PaymentState.REQUIRES_ACTION, f"Checkout payment: {payment}")
    action = dict(payment.next_action or {})
    check(action.get("type") == "razorpay_checkout", f"next action: {action}")
    check(action.get("order_id") == payment.gateway_reference, f"next action: {action}")
    completed[payment.id] = asyncio.Event()
    async with httpx.AsyncClient() as customer:  # the customer pays in Razorpay Checkout
        answer = await customer.post(f"{fake_url}/_fake/checkout/{action['order_id']}")
    check(answer.status_code == 200, f"Checkout: {answer.status_code} {answer.text}")
    callback = answer.json()
    gateway = service.gateways[GATEWAY]
    check(
        gateway.verify_checkout(
            payment.gateway_reference,
            callback["razorpay_payment_id"],
            callback["razorpay_signature"],
        ),
        "Checkout's callback signature does not verify",
    )
    # Razorpay's payment.authorized / payment.captured webhooks reach POST /webhooks/razorpay.
    try:
        await asyncio.wait_for(completed[payment.id].wait(), timeout=30)
    except TimeoutError:
        raise StepFailed("no webhook completed the Checkout payment within 30 s") from None
    done = await service.get_payment(payment.id)
    states.append(done.state.value)
    check(done.captured == Money.of("250.00", "INR"), f"after the webhook: {done}")
    history = [type(e).__name__ for e in await service.payment_history(payment.id)]
    check("PaymentCompleted" in history, f"history: {history}")
    refunded = await service.refund(payment.id, Money.of("50.00", "INR"))
    states.append(refunded.state.value)
    print(f"checkout: {payment.id} {' -> '.join(states)}")
    return {"id": payment.id, "states": states, "refunded": str(refunded.refunded)}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "shop":
        shop_args = argparse.ArgumentParser(prog="new_user_flow.py shop")
        shop_args.add_argument("--webhook-port", type=int, required=True)
        shop_args.add_argument("--fake-url", required=True)
        parsed = shop_args.parse_args(sys.argv[2:])
        raise SystemExit(shop(parsed.webhook_port, parsed.fake_url))
    raise SystemExit(main())
