"""Events to and from plain dicts: every core type round-trips, plugins add theirs safely."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar

import attrs
import pytest
from aegispay import events as ev
from aegispay.errors import InvalidMoney, PluginError
from aegispay.gateways import Outcome
from aegispay.money import Money, known_currencies
from aegispay.serialization import EventTypes, make_converter
from hypothesis import given
from hypothesis import strategies as st

T0 = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
COMMON: dict[str, Any] = {"payment_id": "pay_1", "occurred_at": T0}
USD = Money(1999, "USD")

# One event of every core type, with every optional field set to a non-default value.
SAMPLES: list[ev.Event] = [
    ev.PaymentInitiated(
        **COMMON,
        version=1,
        merchant_id="m_1",
        amount=Money(1500, "KWD"),
        capture_mode="manual",
        customer_id="c_1",
        payment_method="card",
        reference="order-7",
        description="books",
        country="KW",
        metadata={"cart": "42", "channel": "web"},
    ),
    ev.PaymentFlaggedForReview(**COMMON, version=2, risk_score=75, reasons=("velocity", "bin")),
    ev.PaymentProcessingStarted(
        **COMMON,
        version=3,
        attempt_no=1,
        gateway="stripe",
        idempotency_key="pay_1-a1",
        route_reason="cheapest",
    ),
    ev.PaymentAttemptFailed(
        **COMMON,
        version=4,
        attempt_no=1,
        outcome=Outcome.NOT_SENT,
        decline_code="timeout",
        message="connect timeout",
    ),
    ev.PaymentOutcomeUnknown(**COMMON, version=5, attempt_no=2, message="reset by peer"),
    ev.PaymentRequiresAction(
        **COMMON,
        version=6,
        attempt_no=2,
        gateway_reference="pi_2",
        next_action={"type": "redirect", "url": "https://bank.example/3ds"},
    ),
    ev.PaymentAuthorized(**COMMON, version=7, attempt_no=2, amount=USD, gateway_reference="pi_2"),
    ev.PaymentCompleted(
        **COMMON, version=8, amount=USD, idempotency_key="cap-1", gateway_reference="ch_2"
    ),
    ev.PaymentFailed(**COMMON, version=9, code="card_declined", message="insufficient funds"),
    ev.PaymentCancelled(**COMMON, version=10, reason="customer asked", voided=True),
    ev.RefundSucceeded(
        **COMMON,
        version=11,
        refund_no=1,
        amount=Money(500, "USD"),
        idempotency_key="r-1",
        gateway_reference="re_1",
        reason="damaged",
    ),
    ev.RefundFailed(
        **COMMON,
        version=12,
        refund_no=2,
        amount=Money(1, "USD"),
        idempotency_key="r-2",
        code="expired_card",
        message="card expired",
    ),
    ev.CaptureFailed(
        **COMMON,
        version=13,
        amount=Money(7, "JPY"),
        idempotency_key="cap-2",
        code="expired",
        message="authorization expired",
    ),
    ev.CaptureRequested(**COMMON, version=14, amount=Money(1234, "EUR"), idempotency_key="cap-3"),
    ev.RefundRequested(
        **COMMON,
        version=15,
        refund_no=3,
        amount=Money(250, "KWD"),
        idempotency_key="r-3",
        reason="late delivery",
    ),
    ev.VoidRequested(**COMMON, version=16, idempotency_key="void-1", reason="out of stock"),
    ev.OperationNotSent(
        **COMMON,
        version=17,
        operation="refund",
        idempotency_key="r-3",
        message="connection refused",
    ),
]


def _id(event: ev.Event) -> str:
    return event.type_name


def test_samples_cover_every_core_event_type() -> None:
    assert [type(e) for e in SAMPLES] == list(ev.CORE_EVENT_TYPES)


def test_registry_knows_the_core_types() -> None:
    assert EventTypes().names() == sorted(t.type_name for t in ev.CORE_EVENT_TYPES)
    assert EventTypes([]).names() == []


@pytest.mark.parametrize("event", SAMPLES, ids=_id)
def test_round_trip(event: ev.Event) -> None:
    types = EventTypes()
    data = types.to_dict(event)
    back = types.from_dict(data)
    assert type(back) is type(event)
    assert back == event


@pytest.mark.parametrize("event", SAMPLES, ids=_id)
def test_round_trip_through_json(event: ev.Event) -> None:
    types = EventTypes()
    text = json.dumps(types.to_dict(event))
    assert types.from_dict(json.loads(text)) == event


@pytest.mark.parametrize("event", SAMPLES, ids=_id)
def test_dict_carries_type_and_event_id(event: ev.Event) -> None:
    data = EventTypes().to_dict(event)
    assert data["type"] == event.type_name
    assert data["event_id"] == f"pay_1:{event.version}"
    assert data["payment_id"] == "pay_1"
    assert data["version"] == event.version
    assert data["occurred_at"] == "2024-05-01T12:30:15.123456+00:00"
    assert "type_name" not in data
    field_names = {a.name for a in attrs.fields(type(event))}
    assert set(data) == field_names | {"type", "event_id"}


def test_dict_shapes() -> None:
    types = EventTypes()
    initiated = types.to_dict(SAMPLES[0])
    assert initiated["amount"] == {"minor": 1500, "currency": "KWD"}
    assert initiated["metadata"] == {"cart": "42", "channel": "web"}
    flagged = types.to_dict(SAMPLES[1])
    assert flagged["reasons"] == ["velocity", "bin"]
    assert types.from_dict(flagged).reasons == ("velocity", "bin")  # type: ignore[attr-defined]
    attempt_failed = types.to_dict(SAMPLES[3])
    assert attempt_failed["outcome"] == "not_sent"
    cancelled = types.to_dict(SAMPLES[9])
    assert cancelled["voided"] is True


def test_defaults_and_none_round_trip() -> None:
    types = EventTypes()
    minimal = ev.PaymentInitiated(
        **COMMON, version=1, merchant_id="m", amount=Money(0, "JPY"), capture_mode="automatic"
    )
    data = types.to_dict(minimal)
    assert data["customer_id"] is None and data["metadata"] == {}
    assert types.from_dict(data) == minimal


def test_from_dict_ignores_type_and_event_id_and_does_not_mutate_its_input() -> None:
    types = EventTypes()
    data = types.to_dict(SAMPLES[8])
    snapshot = dict(data)
    types.from_dict(data)
    assert data == snapshot


def test_the_version_not_a_stale_event_id_decides() -> None:
    types = EventTypes()
    data = types.to_dict(SAMPLES[8])
    data["event_id"] = "someone-else:999"
    event = types.from_dict(data)
    assert event.event_id == "pay_1:9"


@pytest.mark.parametrize(
    "when",
    [
        datetime(2024, 1, 1, tzinfo=UTC),
        datetime(2024, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2024, 1, 1, 9, 0, 0, 1),  # naive stays naive
    ],
)
def test_datetimes_keep_their_offset(when: datetime) -> None:
    types = EventTypes()
    event = ev.PaymentFailed(payment_id="p", version=2, occurred_at=when, code="x")
    back = types.from_dict(types.to_dict(event))
    assert back.occurred_at == when
    assert back.occurred_at.utcoffset() == when.utcoffset()


def test_money_converter() -> None:
    converter = make_converter()
    assert converter.unstructure(Money(1, "CLF")) == {"minor": 1, "currency": "CLF"}
    assert converter.structure({"minor": 1250, "currency": "BHD"}, Money) == Money(1250, "BHD")


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for sub in error.exceptions for leaf in _leaves(sub)]
    return [error]


@pytest.mark.parametrize(
    ("amount", "field"),
    [
        ({"minor": 19.99, "currency": "USD"}, "amount"),
        ({"minor": -1, "currency": "USD"}, "amount"),
        ({"minor": 1999, "currency": "usd"}, "currency"),
        ({"minor": 1999, "currency": "XAU"}, "currency"),
    ],
)
def test_invalid_money_in_a_dict_is_refused(amount: dict[str, Any], field: str) -> None:
    types = EventTypes()
    data = types.to_dict(SAMPLES[6])
    data["amount"] = amount
    with pytest.raises(Exception) as info:
        types.from_dict(data)
    money_errors = [e for e in _leaves(info.value) if isinstance(e, InvalidMoney)]
    assert [e.field for e in money_errors] == [field]


# -- unknown types ---------------------------------------------------------------------------------


def test_unknown_type_is_a_plugin_error_naming_it() -> None:
    data = EventTypes().to_dict(SAMPLES[8])
    data["type"] = "acme.FraudScored"
    with pytest.raises(PluginError) as info:
        EventTypes().from_dict(data)
    assert "unknown event type 'acme.FraudScored'" in str(info.value)
    assert "plugin" in str(info.value)


def test_missing_type_is_a_plugin_error() -> None:
    data = EventTypes().to_dict(SAMPLES[8])
    del data["type"]
    with pytest.raises(PluginError, match="unknown event type None"):
        EventTypes().from_dict(data)


def test_an_empty_registry_knows_nothing() -> None:
    data = EventTypes().to_dict(SAMPLES[8])
    with pytest.raises(PluginError, match="'PaymentFailed'"):
        EventTypes([]).from_dict(data)


# -- plugin event types ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class FraudScored(ev.Event):
    type_name: ClassVar[str] = "acme.FraudScored"

    score: int
    model: str
    amount: Money
    signals: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class OtherFraudScored(ev.Event):
    type_name: ClassVar[str] = "acme.FraudScored"

    score: int


@attrs.frozen(kw_only=True)
class NotAFailure(ev.Event):
    type_name: ClassVar[str] = "PaymentFailed"


@attrs.frozen(kw_only=True)
class InheritsItsName(ev.PaymentFailed):
    extra: str = ""


@attrs.frozen(kw_only=True)
class NoName(ev.Event):
    note: str = ""


PLUGIN_EVENT = FraudScored(
    **COMMON, version=4, score=91, model="gbm-3", amount=USD, signals=("ip", "device")
)


def test_plugin_event_round_trips_once_registered() -> None:
    types = EventTypes()
    types.register(FraudScored)
    assert "acme.FraudScored" in types.names()
    data = types.to_dict(PLUGIN_EVENT)
    assert data["type"] == "acme.FraudScored"
    assert data["amount"] == {"minor": 1999, "currency": "USD"}
    assert types.from_dict(json.loads(json.dumps(data))) == PLUGIN_EVENT


def test_registries_are_per_service() -> None:
    with_plugin = EventTypes([*ev.CORE_EVENT_TYPES, FraudScored])
    data = with_plugin.to_dict(PLUGIN_EVENT)
    assert with_plugin.from_dict(data) == PLUGIN_EVENT
    with pytest.raises(PluginError, match=r"unknown event type 'acme\.FraudScored'"):
        EventTypes().from_dict(data)
    assert "acme.FraudScored" not in EventTypes().names()


def test_registering_the_same_class_twice_is_harmless() -> None:
    types = EventTypes()
    types.register(FraudScored)
    types.register(FraudScored)
    types.register(ev.PaymentFailed)
    assert types.names().count("acme.FraudScored") == 1
    assert len(types.names()) == len(ev.CORE_EVENT_TYPES) + 1


def test_name_clash_between_plugins_is_refused() -> None:
    types = EventTypes()
    types.register(FraudScored)
    with pytest.raises(PluginError) as info:
        types.register(OtherFraudScored)
    message = str(info.value)
    assert "'acme.FraudScored'" in message
    assert f"{__name__}.FraudScored" in message  # who holds the name
    # The first registration stands.
    assert types.from_dict(types.to_dict(PLUGIN_EVENT)) == PLUGIN_EVENT


def test_a_plugin_cannot_take_a_core_name() -> None:
    types = EventTypes()
    with pytest.raises(PluginError) as info:
        types.register(NotAFailure)
    assert "'PaymentFailed'" in str(info.value)
    assert "aegispay.events.PaymentFailed" in str(info.value)
    data = types.to_dict(SAMPLES[8])
    assert type(types.from_dict(data)) is ev.PaymentFailed


def test_clash_at_construction_is_refused() -> None:
    with pytest.raises(PluginError, match=r"acme\.FraudScored"):
        EventTypes([FraudScored, OtherFraudScored])


@pytest.mark.parametrize(
    "event_type", [InheritsItsName, NoName, ev.Event], ids=lambda t: t.__name__
)
def test_an_event_type_must_set_its_own_type_name(event_type: type[ev.Event]) -> None:
    with pytest.raises(PluginError) as info:
        EventTypes().register(event_type)
    assert event_type.__qualname__ in str(info.value)
    assert "type_name" in str(info.value)


@pytest.mark.parametrize("thing", [dict, int, "PaymentFailed", SAMPLES[8], None])
def test_only_event_classes_can_be_registered(thing: Any) -> None:
    with pytest.raises(PluginError, match="not a subclass of aegispay Event"):
        EventTypes().register(thing)


# -- properties ------------------------------------------------------------------------------------

texts = st.text(max_size=20)
optional_texts = st.none() | texts
moneys = st.builds(Money, st.integers(0, 10**15), st.sampled_from(sorted(known_currencies())))
datetimes = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=9))]),
)


def _common() -> dict[str, st.SearchStrategy[Any]]:
    return {
        "payment_id": st.text(min_size=1, max_size=30),
        "version": st.integers(1, 10**6),
        "occurred_at": datetimes,
    }


any_event = st.one_of(
    st.builds(
        ev.PaymentInitiated,
        **_common(),
        merchant_id=texts,
        amount=moneys,
        capture_mode=texts,
        customer_id=optional_texts,
        payment_method=optional_texts,
        reference=optional_texts,
        description=optional_texts,
        country=optional_texts,
        metadata=st.dictionaries(texts, texts, max_size=4),
    ),
    st.builds(
        ev.PaymentFlaggedForReview,
        **_common(),
        risk_score=st.integers(0, 100),
        reasons=st.lists(texts, max_size=4).map(tuple),
    ),
    st.builds(
        ev.PaymentAttemptFailed,
        **_common(),
        attempt_no=st.integers(1, 50),
        outcome=st.sampled_from(Outcome),
        decline_code=optional_texts,
        message=texts,
    ),
    st.builds(
        ev.PaymentRequiresAction,
        **_common(),
        attempt_no=st.integers(1, 50),
        gateway_reference=optional_texts,
        next_action=st.dictionaries(texts, texts, max_size=3),
    ),
    st.builds(
        ev.RefundSucceeded,
        **_common(),
        refund_no=st.integers(1, 50),
        amount=moneys,
        idempotency_key=texts,
        gateway_reference=optional_texts,
        reason=optional_texts,
    ),
    st.builds(ev.PaymentCancelled, **_common(), reason=texts, voided=st.booleans()),
)


@given(event=any_event)
def test_any_event_round_trips_through_json(event: ev.Event) -> None:
    types = EventTypes()
    data = json.loads(json.dumps(types.to_dict(event)))
    assert data["event_id"] == event.event_id
    assert types.from_dict(data) == event
