"""Simulated gateways: several named fake processors with latency, failures and fees.

Outcomes are drawn from a hash of (seed, gateway, request key), so a run is reproducible
whatever the task scheduling, and a repeated idempotency key gets the first answer back, as
real gateways promise. A shared :class:`Ledger` records every charge the gateways really made,
so a test or the simulation report can prove that no payment was charged twice and that every
UNKNOWN outcome was settled by a status lookup.

Configuration (``[plugins.simulated_gateways]``)::

    seed = 7
    [[plugins.simulated_gateways.gateways]]
    name = "sim-alpha"
    currencies = ["USD", "EUR"]    # omit for every currency
    latency_ms = 20.0              # mean; each call takes 0.5x to 1.5x of it
    decline_rate = 0.05
    not_sent_rate = 0.02
    unknown_rate = 0.01
    requires_action_rate = 0.0
    fixed_fee_minor = 30
    fee_bps = 290
    webhook_secret = "whsec_..."   # optional: the gateway then verifies signed webhooks

Each gateway also has an in-process control for tests (:meth:`SimulatedGateway.control`,
implementing :class:`aegispay.gateway_conformance.FakeGatewayControl`): force the next decline
or customer action, inject the transport faults of :class:`aegispay.fake_server.Fault` (mapped to
what the adapter would report: no HTTP is involved), and sign webhooks as the gateway would.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import attrs
from aegispay.errors import InvalidInput
from aegispay.fake_server import Fault
from aegispay.gateways import (
    AuthorizeRequest,
    CaptureRequest,
    FeeModel,
    Gateway,
    GatewayCapabilities,
    GatewayResult,
    Outcome,
    RefundRequest,
    StatusRequest,
    VoidRequest,
)
from aegispay.hookspecs import hookimpl
from aegispay.money import Money, known_currencies
from aegispay.settings import PluginConfig, structure_config
from aegispay.webhooks import WebhookKind, WebhookSignatureError, WebhookUpdate


def _rate(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name}: must be between 0 and 1, got {value!r}")


@attrs.frozen
class SimulatedGatewayConfig:
    name: str
    currencies: tuple[str, ...] | None = None
    latency_ms: float = 0.0
    decline_rate: float = attrs.field(default=0.03, validator=_rate)
    not_sent_rate: float = attrs.field(default=0.01, validator=_rate)
    unknown_rate: float = attrs.field(default=0.005, validator=_rate)
    requires_action_rate: float = attrs.field(default=0.0, validator=_rate)
    fixed_fee_minor: int = 30
    fee_bps: int = 290
    webhook_secret: str | None = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        total = self.decline_rate + self.not_sent_rate + self.unknown_rate
        if total + self.requires_action_rate > 1.0:
            raise ValueError(f"{self.name}: outcome rates add up to more than 1")
        if self.latency_ms < 0:
            raise ValueError(f"{self.name}: latency_ms must be >= 0")
        unknown = set(self.currencies or ()) - known_currencies()
        if unknown:
            raise ValueError(f"{self.name}: unknown currencies {sorted(unknown)}")


DEFAULT_GATEWAYS = (
    SimulatedGatewayConfig("sim-alpha", ("USD", "EUR", "GBP", "JPY"), 20.0, 0.03, 0.01, 0.005),
    SimulatedGatewayConfig("sim-beta", None, 30.0, 0.04, 0.02, 0.005, 0.0, 25, 250),
    SimulatedGatewayConfig(
        "sim-gamma", ("USD", "INR", "KWD"), 15.0, 0.05, 0.01, 0.005, 0.0, 0, 320
    ),
)


@attrs.frozen
class SimulatedGatewaysConfig:
    seed: int = 0
    gateways: tuple[SimulatedGatewayConfig, ...] = DEFAULT_GATEWAYS
    latency_ms: float | None = None  # overrides every gateway's mean latency when set


@attrs.define
class Charge:
    """One authorisation a simulated gateway really made."""

    gateway: str
    payment_id: str
    idempotency_key: str
    reference: str
    amount_minor: int
    captured_minor: int = 0
    refunded_minor: int = 0
    voided: bool = False
    currency: str = ""
    wants_capture: bool = False  # what the authorize asked, applied when an action completes


@attrs.define
class Ledger:
    """What the simulated gateways really did, shared by all of them."""

    charges: dict[str, Charge] = attrs.field(factory=dict)  # by reference
    by_payment: dict[str, list[str]] = attrs.field(factory=dict)
    answers: dict[tuple[str, str], GatewayResult] = attrs.field(factory=dict)
    fingerprints: dict[tuple[str, str], str] = attrs.field(factory=dict)
    unknown_keys: set[str] = attrs.field(factory=set)
    status_lookups: int = 0
    gateway_time_ms: dict[str, float] = attrs.field(factory=dict)

    def duplicate_charges(self) -> int:
        """Payments charged (authorised and not voided) more than once, across all gateways."""
        duplicates = 0
        for references in self.by_payment.values():
            live = [r for r in references if not self.charges[r].voided]
            duplicates += max(0, len(live) - 1)
        return duplicates

    def take_gateway_time(self, payment_id: str) -> float:
        return self.gateway_time_ms.pop(payment_id, 0.0)


def _unit(*parts: object) -> float:
    """A reproducible number in [0, 1) from ``parts``."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


_DECLINES = ("card_declined", "insufficient_funds", "do_not_honor", "expired_card")


#: How old a signed webhook may be (seconds), as Stripe's default tolerance.
WEBHOOK_TOLERANCE_S = 300
_SIGNATURE_HEADER = "sim-signature"
# The "HTTP method and path" of each call, so injected faults can target calls as on a real fake.
_ROUTES = {
    "authorize": ("POST", "/authorize"),
    "capture": ("POST", "/capture"),
    "void": ("POST", "/void"),
    "refund": ("POST", "/refund"),
    "status": ("GET", "/status"),
}


@attrs.define
class _FaultRule:
    fault: Fault
    remaining: int
    method: str | None
    path_prefix: str
    latency_s: float
    retry_after_s: int


class SimulatedGateway:
    """One simulated processor. Speaks to nothing outside the process; its only secret (the
    optional webhook secret) never reaches its repr."""

    def __init__(
        self,
        config: SimulatedGatewayConfig,
        ledger: Ledger,
        seed: int,
        latency_ms: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = config.name
        self.demo = False  # set by the plugin: see SimulatedGatewaysPlugin
        self.supported_currencies = frozenset(config.currencies) if config.currencies else None
        self.fees = FeeModel(config.fixed_fee_minor, config.fee_bps)
        self.capabilities = GatewayCapabilities(
            currencies=self.supported_currencies,
            methods=frozenset({"card"}),
            manual_capture=True,
            partial_capture=True,
            partial_refund=True,
            idempotent_create=True,
            authoritative_status=True,
            webhooks=config.webhook_secret is not None,
        )
        self.config = config
        self.ledger = ledger
        self._seed = seed
        self._latency_ms = latency_ms
        self._clock = clock
        # Test controls (see SimulatedGatewayControl): forced authorize outcomes, faults, closed.
        self._forced: collections.deque[tuple[Outcome, str | None]] = collections.deque()
        self._faults: list[_FaultRule] = []
        self._closed = False

    def control(self) -> SimulatedGatewayControl:
        """The in-process test control of this gateway (a FakeGatewayControl)."""
        return SimulatedGatewayControl(self)

    async def _faulty(
        self, route: str, call: Callable[[], Awaitable[GatewayResult]]
    ) -> GatewayResult:
        """Run ``call`` through the injected faults, reporting what an HTTP adapter would."""
        if self._closed:
            return GatewayResult(Outcome.NOT_SENT, message="connection refused (simulated)")
        rule = self._take_fault(route) if self._faults else None
        fault = rule.fault if rule else None
        if fault is Fault.RATE_LIMITED:
            assert rule is not None
            return GatewayResult(
                Outcome.NOT_SENT,
                message="rate limited (simulated 429)",
                retry_after_s=float(rule.retry_after_s),
            )
        if fault in (Fault.ERROR_500, Fault.DROP_BEFORE_PROCESSING):
            return GatewayResult(Outcome.UNKNOWN, message=f"{fault.value} (simulated)")
        if fault is Fault.LATENCY:
            assert rule is not None
            await anyio.sleep(rule.latency_s)
        result = await call()
        if fault in (Fault.DROP_AFTER_PROCESSING, Fault.TIMEOUT_AFTER_PROCESSING):
            return GatewayResult(Outcome.UNKNOWN, message=f"{fault.value} (simulated)")
        return result

    def _take_fault(self, route: str) -> _FaultRule | None:
        method, path = _ROUTES[route]
        for rule in self._faults:
            if rule.method is not None and rule.method.upper() != method:
                continue
            if not path.startswith(rule.path_prefix):
                continue
            rule.remaining -= 1
            if rule.remaining == 0:
                self._faults.remove(rule)
            return rule
        return None

    def __repr__(self) -> str:
        return f"SimulatedGateway({self.name!r})"

    async def _delay(self, payment_id: str, key: str) -> None:
        if self._latency_ms <= 0:
            return
        latency = self._latency_ms * (0.5 + _unit(self._seed, "latency", key))
        times = self.ledger.gateway_time_ms
        times[payment_id] = times.get(payment_id, 0.0) + latency
        await anyio.sleep(latency / 1000)

    def _draw(self, key: str) -> Outcome:
        c = self.config
        u = _unit(self._seed, self.name, key)
        for outcome, rate in (
            (Outcome.DECLINED, c.decline_rate),
            (Outcome.NOT_SENT, c.not_sent_rate),
            (Outcome.UNKNOWN, c.unknown_rate),
            (Outcome.REQUIRES_ACTION, c.requires_action_rate),
        ):
            if u < rate:
                return outcome
            u -= rate
        return Outcome.SUCCEEDED

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        if self._closed or self._faults:
            return await self._faulty("authorize", lambda: self._authorize(request))
        return await self._authorize(request)

    async def _authorize(self, request: AuthorizeRequest) -> GatewayResult:
        key = request.idempotency_key
        previous = self.ledger.answers.get((self.name, key))
        if previous is not None:  # idempotent replay, as real gateways do
            if self.ledger.fingerprints.get((self.name, key)) != _fingerprint(request):
                return GatewayResult(
                    Outcome.DECLINED,
                    decline_code="idempotency_key_reused",
                    message=f"key {key!r} was used with a different request",
                )
            return previous
        # Draw by the merchant's reference when there is one, so a seeded run is reproducible
        # even though payment ids are random.
        draw_key = f"{request.reference}#{request.attempt_no}" if request.reference else key
        await self._delay(request.payment_id, draw_key)
        forced_code: str | None = None
        if self._forced:
            outcome, forced_code = self._forced.popleft()
        else:
            outcome = self._draw(draw_key)
        if outcome is Outcome.NOT_SENT:
            return GatewayResult(Outcome.NOT_SENT, message="connection refused (simulated)")
        if outcome is Outcome.DECLINED:
            code = (
                forced_code or _DECLINES[int(_unit(self._seed, "code", draw_key) * len(_DECLINES))]
            )
            result = GatewayResult(
                Outcome.DECLINED, decline_code=code, message="declined (simulated)"
            )
        elif outcome is Outcome.REQUIRES_ACTION:
            reference = self._charge(request, captured=False)
            result = GatewayResult(
                Outcome.REQUIRES_ACTION,
                reference=reference,
                next_action={
                    "type": "redirect_to_url",
                    "url": f"https://sim.invalid/3ds/{reference}",
                },
            )
        else:
            reference = self._charge(request, captured=request.capture)
            result = GatewayResult(Outcome.SUCCEEDED, reference=reference, captured=request.capture)
        self.ledger.answers[(self.name, key)] = result
        self.ledger.fingerprints[(self.name, key)] = _fingerprint(request)
        if outcome is Outcome.UNKNOWN:
            # Processed (or not, half the time) but the answer is lost on the way back.
            if _unit(self._seed, "lost", draw_key) < 0.5:
                self._forget(result.reference)
                del self.ledger.answers[(self.name, key)]
            self.ledger.unknown_keys.add(key)
            return GatewayResult(Outcome.UNKNOWN, message="read timeout (simulated)")
        return result

    def _charge(self, request: AuthorizeRequest, captured: bool) -> str:
        reference = f"{self.name}_ch_{request.idempotency_key}"
        amount = request.amount.minor
        self.ledger.charges[reference] = Charge(
            self.name,
            request.payment_id,
            request.idempotency_key,
            reference,
            amount,
            captured_minor=amount if captured else 0,
            currency=request.amount.currency,
            wants_capture=request.capture,
        )
        self.ledger.by_payment.setdefault(request.payment_id, []).append(reference)
        return reference

    def _forget(self, reference: str | None) -> None:
        if reference is None:
            return
        charge = self.ledger.charges.pop(reference)
        self.ledger.by_payment[charge.payment_id].remove(reference)

    def _find(self, reference: str | None) -> Charge | None:
        return self.ledger.charges.get(reference) if reference else None

    async def capture(self, request: CaptureRequest) -> GatewayResult:
        if self._closed or self._faults:
            return await self._faulty("capture", lambda: self._capture(request))
        return await self._capture(request)

    async def _capture(self, request: CaptureRequest) -> GatewayResult:
        await self._delay(request.payment_id, request.idempotency_key)
        charge = self._find(request.gateway_reference)
        if charge is None or charge.voided:
            return GatewayResult(Outcome.DECLINED, decline_code="no_such_authorization")
        if charge.captured_minor and charge.captured_minor != request.amount.minor:
            return GatewayResult(Outcome.DECLINED, decline_code="already_captured")
        if request.amount.minor > charge.amount_minor:
            return GatewayResult(Outcome.DECLINED, decline_code="amount_too_large")
        charge.captured_minor = request.amount.minor
        return GatewayResult(Outcome.SUCCEEDED, reference=charge.reference, captured=True)

    async def void(self, request: VoidRequest) -> GatewayResult:
        if self._closed or self._faults:
            return await self._faulty("void", lambda: self._void(request))
        return await self._void(request)

    async def _void(self, request: VoidRequest) -> GatewayResult:
        await self._delay(request.payment_id, request.idempotency_key)
        charge = self._find(request.gateway_reference)
        if charge is None:
            return GatewayResult(Outcome.DECLINED, decline_code="no_such_authorization")
        if charge.captured_minor:
            return GatewayResult(Outcome.DECLINED, decline_code="already_captured")
        charge.voided = True
        return GatewayResult(Outcome.SUCCEEDED, reference=charge.reference)

    async def refund(self, request: RefundRequest) -> GatewayResult:
        if self._closed or self._faults:
            return await self._faulty("refund", lambda: self._refund(request))
        return await self._refund(request)

    async def _refund(self, request: RefundRequest) -> GatewayResult:
        previous = self.ledger.answers.get((self.name, request.idempotency_key))
        if previous is not None:
            return previous
        await self._delay(request.payment_id, request.idempotency_key)
        charge = self._find(request.gateway_reference)
        if charge is None or not charge.captured_minor:
            return GatewayResult(Outcome.DECLINED, decline_code="not_captured")
        if charge.refunded_minor + request.amount.minor > charge.captured_minor:
            return GatewayResult(Outcome.DECLINED, decline_code="amount_too_large")
        charge.refunded_minor += request.amount.minor
        result = GatewayResult(
            Outcome.SUCCEEDED, reference=f"{charge.reference}_re_{request.idempotency_key}"
        )
        self.ledger.answers[(self.name, request.idempotency_key)] = result
        return result

    async def get_status(self, request: StatusRequest) -> GatewayResult:
        if self._closed or self._faults:
            return await self._faulty("status", lambda: self._get_status(request))
        return await self._get_status(request)

    async def _get_status(self, request: StatusRequest) -> GatewayResult:
        self.ledger.status_lookups += 1
        answer = self.ledger.answers.get((self.name, request.idempotency_key))
        if answer is None:
            # This gateway never processed the key: the request did not arrive.
            return GatewayResult(Outcome.NOT_SENT, message="no such request (simulated lookup)")
        charge = self._find(answer.reference)
        if answer.outcome is Outcome.SUCCEEDED and charge is not None:
            return GatewayResult(
                Outcome.SUCCEEDED, reference=charge.reference, captured=bool(charge.captured_minor)
            )
        return answer

    # -- webhooks ------------------------------------------------------------------------------

    async def parse_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> WebhookUpdate:
        """Verify a webhook signed as :meth:`SimulatedGatewayControl.signed_webhook` signs it:
        ``sim-signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>." + body>``."""
        secret = self.config.webhook_secret
        if secret is None:
            raise WebhookSignatureError(f"{self.name}: no webhook secret is configured")
        header = headers.get(_SIGNATURE_HEADER)
        if not header:
            raise WebhookSignatureError(f"{self.name}: missing {_SIGNATURE_HEADER} header")
        fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
        timestamp, signature = fields.get("t", ""), fields.get("v1", "")
        if not timestamp.isdigit() or not signature:
            raise WebhookSignatureError(f"{self.name}: malformed {_SIGNATURE_HEADER} header")
        expected = _sign(secret, timestamp, raw_body)
        if not hmac.compare_digest(expected, signature):
            raise WebhookSignatureError(f"{self.name}: signature does not match the body")
        if abs(self._clock() - int(timestamp)) > WEBHOOK_TOLERANCE_S:
            raise WebhookSignatureError(
                f"{self.name}: timestamp outside the {WEBHOOK_TOLERANCE_S}s tolerance"
            )
        try:
            event = json.loads(raw_body)
            amount = (
                Money(event["amount_minor"], event["currency"])
                if event.get("amount_minor") is not None
                else None
            )
            return WebhookUpdate(
                event_id=str(event["id"]),
                kind=WebhookKind(event["type"]),
                gateway_reference=event.get("reference"),
                payment_id=event.get("payment_id"),
                amount=amount,
                decline_code=event.get("decline_code"),
                refund_reference=event.get("refund_reference"),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidInput("webhook body", f"not a {self.name} event: {error}") from error


def _sign(secret: str, timestamp: str, body: bytes) -> str:
    message = timestamp.encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _fingerprint(request: AuthorizeRequest) -> str:
    """What a replayed authorize must repeat exactly (as a gateway's idempotency layer checks)."""
    return f"{request.amount.minor} {request.amount.currency} {request.capture}"


class SimulatedGatewayControl:
    """In-process control of one :class:`SimulatedGateway`, a FakeGatewayControl for tests.

    Transport faults need no HTTP: each is reported as an HTTP adapter would report it (429 ->
    NOT_SENT with retry_after_s; 500 or a drop -> UNKNOWN, processed or not; ``close()`` ->
    connection refused, NOT_SENT). Paths are ``/authorize``, ``/capture``, ``/void``,
    ``/refund`` (POST) and ``/status`` (GET).
    """

    def __init__(self, gateway: SimulatedGateway) -> None:
        self.gateway = gateway
        self.base_url = f"inproc://{gateway.name}"

    def __repr__(self) -> str:
        return f"SimulatedGatewayControl({self.gateway.name!r})"

    @property
    def webhook_secret(self) -> str:
        secret = self.gateway.config.webhook_secret
        if secret is None:
            raise LookupError(f"{self.gateway.name}: no webhook secret is configured")
        return secret

    def inject(
        self,
        fault: Fault,
        *,
        count: int = 1,
        method: str | None = None,
        path_prefix: str = "",
        latency_s: float = 0.0,
        retry_after_s: int = 1,
    ) -> None:
        if count < 1:
            raise ValueError(f"count: must be >= 1, got {count}")
        rule = _FaultRule(fault, count, method, path_prefix, latency_s, retry_after_s)
        self.gateway._faults.append(rule)

    def close(self) -> None:
        """From now on every call is refused (NOT_SENT), as when nothing listens."""
        self.gateway._closed = True

    def decline_next(self, code: str = "card_declined") -> None:
        self.gateway._forced.append((Outcome.DECLINED, code))

    def require_action_next(self) -> None:
        self.gateway._forced.append((Outcome.REQUIRES_ACTION, None))

    def complete_action(self, gateway_reference: str) -> None:
        ledger = self.gateway.ledger
        charge = ledger.charges.get(gateway_reference)
        answer = ledger.answers.get((self.gateway.name, charge.idempotency_key)) if charge else None
        if charge is None or answer is None or answer.outcome is not Outcome.REQUIRES_ACTION:
            raise LookupError(f"{gateway_reference!r}: no payment waits for the customer")
        if charge.wants_capture:
            charge.captured_minor = charge.amount_minor
        ledger.answers[(self.gateway.name, charge.idempotency_key)] = GatewayResult(
            Outcome.SUCCEEDED, reference=charge.reference, captured=charge.wants_capture
        )

    def charges(self) -> int:
        return sum(
            1
            for charge in self.gateway.ledger.charges.values()
            if charge.gateway == self.gateway.name and charge.captured_minor and not charge.voided
        )

    def amount_of(self, gateway_reference: str) -> tuple[int, str] | None:
        charge = self.gateway.ledger.charges.get(gateway_reference)
        return (charge.amount_minor, charge.currency) if charge else None

    def signed_webhook(
        self,
        kind: WebhookKind,
        gateway_reference: str,
        *,
        amount_minor: int,
        currency: str,
        event_id: str | None = None,
        age_s: int = 0,
        secret: str | None = None,
        decline_code: str | None = None,
        refund_reference: str | None = None,
    ) -> tuple[dict[str, str], bytes]:
        charge = self.gateway.ledger.charges.get(gateway_reference)
        event = {
            "id": event_id or f"evt_{uuid.uuid4().hex}",  # a fresh event, as the gateway sends
            "type": kind.value,
            "reference": gateway_reference,
            "payment_id": charge.payment_id if charge else None,
            "amount_minor": amount_minor,
            "currency": currency,
            "decline_code": decline_code,
            "refund_reference": refund_reference,
        }
        body = json.dumps(event, separators=(",", ":")).encode()
        timestamp = str(int(self.gateway._clock()) - age_s)
        signature = _sign(secret or self.webhook_secret, timestamp, body)
        return {"Sim-Signature": f"t={timestamp},v1={signature}"}, body


class SimulatedGatewaysPlugin:
    """Registers the configured simulated gateways, sharing one ledger."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = structure_config(
            config, SimulatedGatewaysConfig, "plugins.simulated_gateways"
        )
        self.ledger = Ledger()
        # Unconfigured, they are demo gateways: used only while no real gateway is registered
        # (see aegispay.service._drop_demo_gateways). A [plugins.simulated_gateways] section,
        # as `aegispay simulate` writes, makes them regular gateways.
        self.demo = not config

    @hookimpl(trylast=True)
    def aegispay_register_gateways(
        self, register: Callable[[Gateway], None], config: PluginConfig
    ) -> None:
        for gateway_config in self.config.gateways:
            latency = self.config.latency_ms
            if latency is None:
                latency = gateway_config.latency_ms
            gateway = SimulatedGateway(gateway_config, self.ledger, self.config.seed, latency)
            gateway.demo = self.demo
            register(gateway)
