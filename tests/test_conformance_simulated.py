"""The simulated gateways pass the gateway conformance suite through their in-process control."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

import attrs
import pytest
from aegispay.fake_server import Fault
from aegispay.gateway_conformance import GatewayConformance
from aegispay.gateways import (
    AuthorizeRequest,
    GatewayCapabilities,
    GatewayResult,
    Outcome,
    capabilities_of,
)
from aegispay.plugins.simulated_gateways import (
    Ledger,
    SimulatedGateway,
    SimulatedGatewayConfig,
    SimulatedGatewayControl,
)
from aegispay.webhooks import WebhookKind, WebhookUpdate

SECRET = "whsec_simulated_conformance_0123456789"


def _quiet(name: str, currencies: tuple[str, ...] | None) -> SimulatedGateway:
    """A simulated gateway whose outcomes are only those the suite asks for."""
    config = SimulatedGatewayConfig(
        name,
        currencies,
        decline_rate=0.0,
        not_sent_rate=0.0,
        unknown_rate=0.0,
        webhook_secret=SECRET,
    )
    return SimulatedGateway(config, Ledger(), seed=1, latency_ms=0.0)


class TestSimulatedConformance(GatewayConformance):
    decline_codes = ("card_declined", "insufficient_funds")

    @pytest.fixture
    def conformance_gateway(self) -> SimulatedGateway:
        return _quiet("sim-conformance", None)

    @pytest.fixture
    def conformance_fake(self, conformance_gateway: SimulatedGateway) -> SimulatedGatewayControl:
        return conformance_gateway.control()


class TestSimulatedConformanceNarrowCurrencies(GatewayConformance):
    """A gateway listing only some currencies: the suite uses only those."""

    currencies = ("USD", "JPY", "KWD")

    @pytest.fixture
    def conformance_gateway(self) -> SimulatedGateway:
        return _quiet("sim-usd-kwd", ("USD", "KWD"))

    @pytest.fixture
    def conformance_fake(self, conformance_gateway: SimulatedGateway) -> SimulatedGatewayControl:
        return conformance_gateway.control()

    def test_only_listed_currencies_are_used(self, conformance_gateway: SimulatedGateway) -> None:
        assert self.usable_currencies(conformance_gateway) == ["USD", "KWD"]


def test_fixtures_must_be_provided() -> None:
    """The base class's placeholders fail with a message naming what to provide."""
    placeholder = GatewayConformance.conformance_fake.__wrapped__  # type: ignore[attr-defined]
    with pytest.raises(NotImplementedError, match="conformance_fake"):
        placeholder(GatewayConformance())


# -- the suite fails a gateway that gets it wrong ------------------------------------------------


class _NoReplay(SimulatedGateway):
    """Forgets idempotency keys: a repeated authorize charges again."""

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        self.ledger.answers.pop((self.name, request.idempotency_key), None)
        fresh = attrs.evolve(request, idempotency_key=f"{request.idempotency_key}-{_next()}")
        return await super().authorize(fresh)


class _LostIsNotSent(SimulatedGateway):
    """Reports a lost answer as NOT_SENT: the mistake that makes failover charge twice."""

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        result = await super().authorize(request)
        if result.outcome is Outcome.UNKNOWN:
            return GatewayResult(Outcome.NOT_SENT)
        return result


class _GenericDecline(SimulatedGateway):
    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        result = await super().authorize(request)
        return attrs.evolve(result, decline_code="declined") if result.decline_code else result


class _TrustsAnyWebhook(SimulatedGateway):
    async def parse_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> WebhookUpdate:
        event = json.loads(raw_body)
        return WebhookUpdate(
            str(event["id"]), WebhookKind(event["type"]), event["reference"], None, None
        )


_COUNTER = itertools.count()


def _next() -> int:
    return next(_COUNTER)


def _broken(cls: type[SimulatedGateway]) -> SimulatedGateway:
    good = _quiet("sim-broken", None)
    return cls(good.config, good.ledger, seed=1, latency_ms=0.0)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("cls", "test", "args"),
    [
        (_NoReplay, "test_same_key_twice_is_one_charge_with_the_same_reference", {}),
        (
            _LostIsNotSent,
            "test_ambiguous_failure_is_unknown_then_resolved_without_a_second_charge",
            {"fault": Fault.DROP_AFTER_PROCESSING},
        ),
        (_GenericDecline, "test_bank_decline_is_declined_with_the_code", {}),
        (_TrustsAnyWebhook, "test_webhook_tampered_body_is_rejected", {}),
        (_TrustsAnyWebhook, "test_webhook_wrong_secret_is_rejected_without_leaking", {}),
    ],
)
async def test_the_suite_catches_a_broken_gateway(
    cls: type[SimulatedGateway], test: str, args: dict[str, Any]
) -> None:
    gateway = _broken(cls)
    suite = TestSimulatedConformance()
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        await getattr(suite, test)(suite_gateway=gateway, suite_fake=gateway.control(), **args)
    # ... while the same test passes on the well-behaved gateway.
    good = _broken(SimulatedGateway)
    await getattr(suite, test)(suite_gateway=good, suite_fake=good.control(), **args)


# -- capabilities ------------------------------------------------------------------------------


class _Bare:
    """A gateway that declares no capabilities."""

    name = "bare"
    supported_currencies = frozenset({"EUR"})


def test_capabilities_default_to_the_least_and_are_checked() -> None:
    assert capabilities_of(_Bare()) == GatewayCapabilities(currencies=frozenset({"EUR"}))  # type: ignore[arg-type]
    assert not any(
        getattr(capabilities_of(_Bare()), flag)  # type: ignore[arg-type]
        for flag in ("manual_capture", "partial_capture", "partial_refund", "webhooks")
    )
    wrong = _Bare()
    wrong.capabilities = {"manual_capture": True}  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match=r"bare.*GatewayCapabilities"):
        capabilities_of(wrong)  # type: ignore[arg-type]
    sim = _quiet("sim-caps", ("USD",))
    caps = capabilities_of(sim)
    assert caps.currencies == frozenset({"USD"}) and caps.webhooks and caps.manual_capture
    assert GatewayResult(Outcome.NOT_SENT).retry_after_s is None
