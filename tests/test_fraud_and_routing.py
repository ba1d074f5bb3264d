"""Pipeline hooks: fraud verdicts, routing decisions and validation, sync and async."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import pytest
from aegispay import (
    FraudVerdict,
    HookContext,
    Money,
    Operation,
    Payment,
    PaymentRequest,
    PaymentService,
    PaymentState,
    PaymentValidationError,
    Problem,
    RouteDecision,
    Settings,
    hookimpl,
)
from aegispay import events as ev
from aegispay.settings import PluginConfig
from aegispay.testing import ScriptedGateway, make_test_service

pytestmark = pytest.mark.anyio

S = PaymentState


def request(minor: int = 1000, **fields: Any) -> PaymentRequest:
    return PaymentRequest(Money(minor, "USD"), **fields)


def service_with(
    gateways: Sequence[ScriptedGateway],
    plugins: Sequence[object] = (),
    config: dict[str, dict[str, Any]] | None = None,
) -> PaymentService:
    settings = Settings(plugin_config=PluginConfig(config or {}))
    service: PaymentService = make_test_service(
        gateways=gateways, plugins=plugins, settings=settings
    )
    return service


# -- test plugins ------------------------------------------------------------------------------


class FixedVerdict:
    """A fraud check that always answers ``verdict`` (None: abstain)."""

    def __init__(self, verdict: FraudVerdict | None) -> None:
        self.verdict = verdict
        self.seen: list[Payment] = []

    @hookimpl
    def aegispay_check_fraud(self, payment: Payment, context: HookContext) -> FraudVerdict | None:
        self.seen.append(payment)
        return self.verdict


class OtherFixedVerdict(FixedVerdict):
    """The same check as a second plugin (plugins are registered under their class name)."""


class AsyncFixedVerdict:
    def __init__(self, verdict: FraudVerdict | None) -> None:
        self.verdict = verdict
        self.awaited = 0

    @hookimpl
    async def aegispay_check_fraud(
        self, payment: Payment, context: HookContext
    ) -> FraudVerdict | None:
        self.awaited += 1
        return self.verdict


class FixedRouter:
    def __init__(self, *names: str) -> None:
        self.names = names
        self.candidates: list[list[str]] = []

    @hookimpl
    def aegispay_select_gateway(
        self, payment: Payment, candidates: Sequence[str], context: HookContext
    ) -> RouteDecision:
        self.candidates.append(list(candidates))
        return RouteDecision(self.names, "test router", "fixed")


class AsyncRouter:
    def __init__(self, names: tuple[str, ...] | None) -> None:
        self.names = names
        self.awaited = 0

    @hookimpl
    async def aegispay_select_gateway(
        self, payment: Payment, candidates: Sequence[str], context: HookContext
    ) -> RouteDecision | None:
        self.awaited += 1
        if self.names is None:
            return None
        return RouteDecision(self.names, "async router", "async")


class RoutingWrapper:
    """A new-style wrapper around routing (e.g. for tracing): it changes nothing."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl(wrapper=True)
    def aegispay_select_gateway(
        self, payment: Payment, candidates: Sequence[str], context: HookContext
    ) -> Generator[None, Any, Any]:
        self.calls += 1
        return (yield)


class FieldValidator:
    def __init__(self, *problems: Problem) -> None:
        self.problems = list(problems)

    @hookimpl
    def aegispay_validate_payment(
        self, request: PaymentRequest, context: HookContext
    ) -> list[Problem]:
        return list(self.problems)


class AsyncFieldValidator(FieldValidator):
    @hookimpl
    async def aegispay_validate_payment(  # type: ignore[override]
        self, request: PaymentRequest, context: HookContext
    ) -> list[Problem]:
        return list(self.problems)


# -- fraud -------------------------------------------------------------------------------------


async def test_fraud_deny_fails_without_calling_a_gateway() -> None:
    gateway = ScriptedGateway()
    check = FixedVerdict(FraudVerdict.deny(95, "stolen card", "test"))
    service = service_with([gateway], [check])
    async with service:
        payment = await service.pay(request())
        history = await service.payment_history(payment.id)

    assert payment.state is S.FAILED
    assert payment.failure_code == "fraud_denied"
    assert "stolen card" in (payment.failure_message or "")
    assert payment.attempts == ()
    assert gateway.calls == []
    assert [type(e) for e in history] == [ev.PaymentInitiated, ev.PaymentFailed]
    assert [p.state for p in check.seen] == [S.INITIATED]


async def test_builtin_fraud_rules_deny_list_fails_without_a_gateway_call() -> None:
    gateway = ScriptedGateway()
    service = service_with([gateway], config={"fraud_rules": {"deny_customers": ["cus_bad"]}})
    async with service:
        denied = await service.pay(request(customer_id="cus_bad"))
        allowed = await service.pay(request(customer_id="cus_good"))
    assert denied.failure_code == "fraud_denied"
    assert allowed.state is S.COMPLETED
    assert {c.payment_id for c in gateway.calls} == {allowed.id}


async def test_fraud_review_authorises_only_and_flags_the_payment() -> None:
    gateway = ScriptedGateway()
    check = FixedVerdict(FraudVerdict.review(55, "unusual amount", "test"))
    service = service_with([gateway], [check])
    async with service:
        payment = await service.pay(request())
        history = await service.payment_history(payment.id)
        captured_at_gateway_before = payment.id in gateway.captured
        captured = await service.capture(payment.id)

    assert payment.state is S.AUTHORIZED
    assert payment.review is True
    assert payment.capture_mode == "manual"
    assert payment.captured_amount == Money(0, "USD")
    assert not captured_at_gateway_before
    flagged = [e for e in history if isinstance(e, ev.PaymentFlaggedForReview)]
    assert len(flagged) == 1
    assert flagged[0].risk_score == 55
    assert flagged[0].reasons == ("unusual amount",)
    assert [c.operation for c in gateway.calls] == [Operation.AUTHORIZE, Operation.CAPTURE]
    assert history.index(flagged[0]) < [type(e) for e in history].index(ev.PaymentProcessingStarted)
    # A person decides later.
    assert captured.state is S.COMPLETED
    assert gateway.captured[payment.id] == 1000


async def test_review_payment_is_not_captured_at_the_gateway() -> None:
    gateway = ScriptedGateway()
    service = service_with([gateway], [FixedVerdict(FraudVerdict.review(50, "check", "t"))])
    async with service:
        payment = await service.pay(request())
    assert payment.state is S.AUTHORIZED
    assert payment.id not in gateway.captured


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (FraudVerdict.allow(0, "", "a"), FraudVerdict.deny(90, "deny b", "b"), S.FAILED),
        (FraudVerdict.deny(90, "deny a", "a"), FraudVerdict.allow(0, "", "b"), S.FAILED),
        (FraudVerdict.review(40, "review a", "a"), FraudVerdict.deny(90, "deny b", "b"), S.FAILED),
        (FraudVerdict.review(40, "review a", "a"), FraudVerdict.allow(0, "", "b"), S.AUTHORIZED),
        (None, FraudVerdict.review(40, "review b", "b"), S.AUTHORIZED),
        (FraudVerdict.allow(0, "", "a"), None, S.COMPLETED),
    ],
)
async def test_verdicts_from_two_plugins_combine(
    first: FraudVerdict | None, second: FraudVerdict | None, expected: PaymentState
) -> None:
    gateway = ScriptedGateway()
    service = service_with([gateway], [FixedVerdict(first), OtherFixedVerdict(second)])
    async with service:
        payment = await service.pay(request())
    assert payment.state is expected
    if expected is S.FAILED:
        assert payment.failure_code == "fraud_denied"
        assert gateway.calls == []
    if expected is S.AUTHORIZED:
        assert payment.review is True


async def test_async_fraud_check_is_awaited_and_honoured() -> None:
    gateway = ScriptedGateway()
    check = AsyncFixedVerdict(FraudVerdict.deny(99, "async says no", "async"))
    service = service_with([gateway], [check])
    async with service:
        payment = await service.pay(request())
    assert check.awaited == 1
    assert payment.state is S.FAILED
    assert payment.failure_code == "fraud_denied"
    assert "async says no" in (payment.failure_message or "")
    assert gateway.calls == []


async def test_async_and_sync_fraud_checks_combine() -> None:
    gateway = ScriptedGateway()
    service = service_with(
        [gateway],
        [AsyncFixedVerdict(FraudVerdict.review(30, "async review", "x")), FixedVerdict(None)],
    )
    async with service:
        payment = await service.pay(request())
    assert payment.state is S.AUTHORIZED
    assert payment.review is True


# -- routing -----------------------------------------------------------------------------------


async def test_third_party_router_beats_the_builtin_priority_router() -> None:
    a, b = ScriptedGateway("a"), ScriptedGateway("b")
    router = FixedRouter("b")
    service = service_with([a, b], [router], config={"priority_routing": {"order": ["a", "b"]}})
    async with service:
        payment = await service.pay(request())
        started = [
            e
            for e in await service.payment_history(payment.id)
            if isinstance(e, ev.PaymentProcessingStarted)
        ]
    assert payment.gateway == "b"
    assert a.calls == []
    assert router.candidates == [["a", "b"]]
    assert started[0].route_reason == "test router"


async def test_builtin_priority_router_applies_without_a_third_party_router() -> None:
    a, b = ScriptedGateway("a"), ScriptedGateway("b")
    service = service_with([a, b], config={"priority_routing": {"order": ["b", "a"]}})
    async with service:
        payment = await service.pay(request())
    assert payment.gateway == "b"
    assert a.calls == []


async def test_async_router_is_awaited_and_honoured() -> None:
    a, b = ScriptedGateway("a"), ScriptedGateway("b")
    router = AsyncRouter(("b",))
    service = service_with([a, b], [router], config={"priority_routing": {"order": ["a", "b"]}})
    async with service:
        payment = await service.pay(request())
    assert router.awaited == 1
    assert payment.gateway == "b"
    assert a.calls == []


async def test_async_router_abstaining_falls_back_to_the_priority_router() -> None:
    a, b = ScriptedGateway("a"), ScriptedGateway("b")
    router = AsyncRouter(None)
    service = service_with([a, b], [router], config={"priority_routing": {"order": ["b", "a"]}})
    async with service:
        payment = await service.pay(request())
    assert router.awaited == 1
    assert payment.gateway == "b"


@pytest.mark.parametrize("abstain", [False, True], ids=["decides", "abstains"])
async def test_async_router_is_honoured_when_a_routing_wrapper_is_present(abstain: bool) -> None:
    a, b, c = ScriptedGateway("a"), ScriptedGateway("b"), ScriptedGateway("c")
    router = AsyncRouter(None if abstain else ("b",))
    wrapper = RoutingWrapper()
    # Priority order (used when the async router abstains): c first.
    config = {"priority_routing": {"order": ["c", "a", "b"]}}
    service = service_with([a, b, c], [router, wrapper], config=config)
    async with service:
        payment = await service.pay(request())
    assert router.awaited == 1
    # A wrapper wraps each implementation call on its own (see aegispay.hooks._Caller): once
    # around the async router, and once more around the priority router when it abstains.
    assert wrapper.calls == (2 if abstain else 1)
    assert payment.state is S.COMPLETED
    assert payment.gateway == ("c" if abstain else "b")


async def test_router_only_sees_gateways_supporting_the_currency() -> None:
    eur_only = ScriptedGateway("eur_only", currencies=["EUR"])
    usd = ScriptedGateway("usd", currencies=["USD"])
    router = FixedRouter("eur_only", "usd")
    service = service_with([eur_only, usd], [router])
    async with service:
        payment = await service.pay(request())
    assert router.candidates == [["usd"]]
    assert payment.gateway == "usd"
    assert eur_only.calls == []


async def test_router_names_outside_the_candidates_are_dropped() -> None:
    a, b = ScriptedGateway("a"), ScriptedGateway("b")
    router = FixedRouter("ghost", "b", "ghost", "b")
    service = service_with([a, b], [router])
    async with service:
        payment = await service.pay(request())
    assert payment.state is S.COMPLETED
    assert payment.gateway == "b"
    assert [x.gateway for x in payment.attempts] == ["b"]
    assert a.calls == []


async def test_router_choosing_only_unknown_names_fails_safely() -> None:
    a = ScriptedGateway("a")
    service = service_with([a], [FixedRouter("ghost")])
    async with service:
        payment = await service.pay(request())
        stored = await service.get_payment(payment.id)
    assert payment.state is S.FAILED
    assert payment.failure_code == "no_gateway"
    assert "ghost" not in [x.gateway for x in payment.attempts]
    assert a.calls == []
    assert stored == payment


# -- validation --------------------------------------------------------------------------------


async def test_problems_from_every_validator_are_reported_together_and_nothing_is_stored() -> None:
    gateway = ScriptedGateway("usd_only", currencies=["USD"])
    service = service_with(
        [gateway],
        [
            FieldValidator(Problem("customer_id", "unknown customer")),
            AsyncFieldValidator(Problem("reference", "duplicate order reference")),
        ],
        config={"validation": {"limits": {"EUR": {"min": "1.00"}}}},
    )
    async with service:
        with pytest.raises(PaymentValidationError) as raised:
            await service.pay(PaymentRequest(Money(50, "EUR"), customer_id="c", reference="r"))
        ids = await service.store.payment_ids()

    fields = sorted(p.field for p in raised.value.problems)
    assert fields == ["amount", "amount.currency", "customer_id", "reference"]
    message = str(raised.value)
    assert "unknown customer" in message
    assert "duplicate order reference" in message
    assert ids == []
    assert gateway.calls == []


async def test_validators_with_nothing_to_say_let_the_payment_through() -> None:
    service = service_with([ScriptedGateway()], [FieldValidator(), AsyncFieldValidator()])
    async with service:
        payment = await service.create_payment(request())
    assert payment.state is S.INITIATED
