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
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import attrs
from aegispay.gateways import (
    AuthorizeRequest,
    CaptureRequest,
    FeeModel,
    Gateway,
    GatewayResult,
    Outcome,
    RefundRequest,
    StatusRequest,
    VoidRequest,
)
from aegispay.hookspecs import hookimpl
from aegispay.money import known_currencies
from aegispay.settings import PluginConfig, structure_config


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


@attrs.define
class Ledger:
    """What the simulated gateways really did, shared by all of them."""

    charges: dict[str, Charge] = attrs.field(factory=dict)  # by reference
    by_payment: dict[str, list[str]] = attrs.field(factory=dict)
    answers: dict[tuple[str, str], GatewayResult] = attrs.field(factory=dict)
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


class SimulatedGateway:
    """One simulated processor. Reads no secrets, speaks to nothing outside the process."""

    def __init__(
        self, config: SimulatedGatewayConfig, ledger: Ledger, seed: int, latency_ms: float
    ) -> None:
        self.name = config.name
        self.supported_currencies = frozenset(config.currencies) if config.currencies else None
        self.fees = FeeModel(config.fixed_fee_minor, config.fee_bps)
        self.config = config
        self.ledger = ledger
        self._seed = seed
        self._latency_ms = latency_ms

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
        key = request.idempotency_key
        previous = self.ledger.answers.get((self.name, key))
        if previous is not None:  # idempotent replay, as real gateways do
            return previous
        # Draw by the merchant's reference when there is one, so a seeded run is reproducible
        # even though payment ids are random.
        draw_key = f"{request.reference}#{request.attempt_no}" if request.reference else key
        await self._delay(request.payment_id, draw_key)
        outcome = self._draw(draw_key)
        if outcome is Outcome.NOT_SENT:
            return GatewayResult(Outcome.NOT_SENT, message="connection refused (simulated)")
        if outcome is Outcome.DECLINED:
            code = _DECLINES[int(_unit(self._seed, "code", draw_key) * len(_DECLINES))]
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
        await self._delay(request.payment_id, request.idempotency_key)
        charge = self._find(request.gateway_reference)
        if charge is None:
            return GatewayResult(Outcome.DECLINED, decline_code="no_such_authorization")
        if charge.captured_minor:
            return GatewayResult(Outcome.DECLINED, decline_code="already_captured")
        charge.voided = True
        return GatewayResult(Outcome.SUCCEEDED, reference=charge.reference)

    async def refund(self, request: RefundRequest) -> GatewayResult:
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


class SimulatedGatewaysPlugin:
    """Registers the configured simulated gateways, sharing one ledger."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = structure_config(
            config, SimulatedGatewaysConfig, "plugins.simulated_gateways"
        )
        self.ledger = Ledger()

    @hookimpl(trylast=True)
    def aegispay_register_gateways(
        self, register: Callable[[Gateway], None], config: PluginConfig
    ) -> None:
        for gateway_config in self.config.gateways:
            latency = self.config.latency_ms
            if latency is None:
                latency = gateway_config.latency_ms
            register(SimulatedGateway(gateway_config, self.ledger, self.config.seed, latency))
