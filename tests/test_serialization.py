"""Events to and from plain dicts: every core type round-trips, plugins add theirs safely."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import attrs
import orjson
import pytest
from aegispay import events as ev
from aegispay.codec import compile_codec
from aegispay.errors import InvalidInput, InvalidMoney, PluginError
from aegispay.gateways import Outcome
from aegispay.money import Money, known_currencies
from aegispay.payment import Attempt, Payment, PendingOperation, Refund, apply
from aegispay.serialization import EventTypes, make_converter, payment_from_json, payment_to_json
from aegispay.states import PaymentState
from aegispay.store import sql_direct
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
        payment_method_type="card",
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
@pytest.mark.parametrize("source", ["dict", "json"])
def test_invalid_money_in_a_dict_or_json_is_refused(
    amount: dict[str, Any], field: str, source: str
) -> None:
    types = EventTypes()
    data = types.to_dict(SAMPLES[6])
    data["amount"] = amount
    with pytest.raises(Exception) as info:
        types.from_dict(data) if source == "dict" else types.from_json(json.dumps(data))
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


# -- JSON (the stores' form): generated codecs, compatible with the former cattrs encoding ------


def _legacy_event_json(event: ev.Event) -> bytes:
    """An event exactly as the stores wrote it before the generated codecs (cattrs)."""
    data = make_converter().unstructure(event)
    data["type"] = event.type_name
    data["event_id"] = event.event_id
    return orjson.dumps(data)


def _legacy_payment_json(payment: Payment) -> bytes:
    return orjson.dumps(make_converter().unstructure(payment))


@pytest.mark.parametrize("event", SAMPLES, ids=_id)
def test_to_dict_is_what_cattrs_gives(event: ev.Event) -> None:
    assert EventTypes().to_dict(event) == orjson.loads(_legacy_event_json(event))


@pytest.mark.parametrize("event", SAMPLES, ids=_id)
def test_core_types_have_generated_codecs(event: ev.Event) -> None:
    codec = compile_codec(type(event), (("type", "o.type_name"), ("event_id", "o.event_id")))
    assert codec is not None
    assert codec.plain(event) == EventTypes().to_dict(event)
    data = orjson.loads(codec.dumps(event))
    assert codec.decode(data) == event
    assert codec.decode_owned(data) == event


@pytest.mark.parametrize("event", SAMPLES, ids=_id)
def test_json_round_trip_and_legacy_rows(event: ev.Event) -> None:
    types = EventTypes()
    text = types.to_json(event)
    assert orjson.loads(text) == orjson.loads(_legacy_event_json(event))
    assert types.from_json(text) == event
    assert types.from_json(text.decode()) == event
    assert types.from_json(_legacy_event_json(event)) == event
    assert types.from_json(json.dumps(types.to_dict(event), indent=1)) == event


times = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2200, 1, 1),
    timezones=st.none()
    | st.just(UTC)
    | st.builds(timezone, st.integers(-50_000, 50_000).map(lambda s: timedelta(seconds=s))),
)
attempts = st.builds(
    Attempt,
    number=st.integers(1, 50),
    gateway=texts,
    idempotency_key=texts,
    outcome=st.none() | st.sampled_from(Outcome),
    gateway_reference=optional_texts,
    decline_code=optional_texts,
    message=texts,
)
refunds = st.builds(
    Refund,
    number=st.integers(1, 50),
    amount=moneys,
    idempotency_key=texts,
    succeeded=st.booleans(),
    gateway_reference=optional_texts,
    reason=optional_texts,
)
pendings = st.builds(
    PendingOperation,
    kind=st.sampled_from(["capture", "refund", "void"]),
    idempotency_key=texts,
    amount=st.none() | moneys,
    number=st.integers(0, 50),
    reason=optional_texts,
)
string_maps = st.dictionaries(texts, texts, max_size=4)
payments = st.builds(
    Payment,
    id=st.text(min_size=1, max_size=30),
    merchant_id=texts,
    amount=moneys,
    state=st.sampled_from(PaymentState),
    version=st.integers(1, 10**6),
    created_at=times,
    updated_at=times,
    capture_mode=st.sampled_from(["automatic", "manual"]),
    customer_id=optional_texts,
    payment_method=optional_texts,
    reference=optional_texts,
    description=optional_texts,
    country=optional_texts,
    metadata=string_maps | string_maps.map(MappingProxyType),
    authorized=st.none() | moneys,
    captured=st.none() | moneys,
    refunded=st.none() | moneys,
    attempts=st.lists(attempts, max_size=3).map(tuple),
    refunds=st.lists(refunds, max_size=3).map(tuple),
    review=st.booleans(),
    failure_code=optional_texts,
    failure_message=optional_texts,
    next_action=st.none() | string_maps,
    pending=st.none() | pendings,
    payment_method_type=st.none() | st.sampled_from(["card", "upi", "paypal"]),
)


def _same_payment(back: Payment, payment: Payment) -> None:
    assert back == payment
    # Equality of datetimes ignores their offsets: the offsets must survive too.
    assert back.created_at.utcoffset() == payment.created_at.utcoffset()
    assert back.updated_at.utcoffset() == payment.updated_at.utcoffset()


@given(payment=payments)
def test_any_payment_round_trips_and_reads_its_legacy_row(payment: Payment) -> None:
    text = payment_to_json(payment)
    assert orjson.loads(text) == make_converter().unstructure(payment)
    _same_payment(payment_from_json(text), payment)
    # The generated decoders themselves (payment_from_json would hide a failure: cattrs).
    codec = compile_codec(Payment)
    assert codec is not None
    _same_payment(codec.decode(orjson.loads(text)), payment)
    _same_payment(codec.decode_owned(orjson.loads(text)), payment)
    _same_payment(payment_from_json(_legacy_payment_json(payment)), payment)


@given(event=any_event)
def test_any_event_round_trips_through_to_json(event: ev.Event) -> None:
    types = EventTypes()
    text = types.to_json(event)
    assert orjson.loads(text) == orjson.loads(_legacy_event_json(event))
    back = types.from_json(text)
    assert back == event
    assert back.occurred_at.utcoffset() == event.occurred_at.utcoffset()
    assert types.from_json(_legacy_event_json(event)) == event


class _Instant(datetime):
    """A datetime subclass (as test clocks make): orjson refuses those by itself."""


@pytest.mark.parametrize(
    "when",
    [
        datetime(2024, 1, 1, 9, 0, 0, 1),  # naive: no offset written, none read
        datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=1, minutes=2, seconds=3))),
        datetime(2024, 1, 1, 9, tzinfo=ZoneInfo("Europe/Paris")),
        _Instant(2024, 1, 1, 9, 30, tzinfo=UTC),
        datetime(2024, 1, 1, 9, 30, tzinfo=UTC),  # no microseconds: none written
    ],
)
def test_json_datetimes_are_written_as_isoformat(when: datetime) -> None:
    types = EventTypes()
    event = ev.PaymentFailed(payment_id="p", version=2, occurred_at=when, code="x")
    assert orjson.loads(types.to_json(event))["occurred_at"] == when.isoformat()
    back = types.from_json(types.to_json(event))
    assert back.occurred_at == when and back.occurred_at.utcoffset() == when.utcoffset()


def _payment(**changes: Any) -> Payment:
    fields: dict[str, Any] = {"id": "pay_1", "merchant_id": "m", "amount": USD,
        "state": PaymentState.PROCESSING, "version": 2, "created_at": T0, "updated_at": T0,
        "attempts": (Attempt(1, "sim", "k1"),)}  # fmt: skip
    return Payment(**{**fields, **changes})


def test_a_row_from_before_a_field_existed_gets_its_default() -> None:
    data = make_converter().unstructure(_payment(metadata={"a": "b"}))
    for later in ("pending", "review", "next_action", "metadata", "refunds"):
        del data[later]
    back = payment_from_json(json.dumps(data))
    assert back == _payment(metadata={})
    old_event = {"payment_id": "p", "version": 3, "occurred_at": T0.isoformat(),
                 "type": "PaymentProcessingStarted", "attempt_no": 1, "gateway": "sim",
                 "idempotency_key": "k"}  # fmt: skip
    expected = ev.PaymentProcessingStarted(
        payment_id="p", version=3, occurred_at=T0, attempt_no=1, gateway="sim", idempotency_key="k"
    )
    assert EventTypes().from_json(json.dumps(old_event)) == expected
    assert EventTypes().from_dict(old_event) == expected


def test_an_instance_with_extra_state_is_encoded_field_by_field() -> None:
    payment = _payment()
    object.__setattr__(payment, "_memo", object())  # not a field: must not reach the JSON
    assert orjson.loads(payment_to_json(payment)) == make_converter().unstructure(_payment())


@pytest.mark.parametrize(
    ("amount", "field"),
    [
        ({"minor": 19.99, "currency": "USD"}, "amount"),
        ({"minor": 1, "currency": "usd"}, "currency"),
    ],
)
def test_invalid_money_in_a_payments_json_is_refused(amount: dict[str, Any], field: str) -> None:
    payment = make_converter().unstructure(_payment())
    payment["amount"] = amount
    with pytest.raises(Exception) as info:
        payment_from_json(json.dumps(payment))
    assert [e.field for e in _leaves(info.value) if isinstance(e, InvalidMoney)] == [field]


def test_malformed_json_events_raise_as_before() -> None:
    types = EventTypes()
    data = types.to_dict(SAMPLES[3])
    data["outcome"] = "exploded"
    with pytest.raises(InvalidInput, match="malformed stored event"):
        types.from_json(json.dumps(data))
    with pytest.raises(PluginError, match="unknown event type"):
        types.from_json(json.dumps({**data, "type": ["not", "a", "name"]}))


@attrs.frozen(kw_only=True)
class Opaque(ev.Event):
    """A plugin event with a field type the generated codecs do not know: cattrs serves it."""

    type_name: ClassVar[str] = "acme.Opaque"

    blob: Any = None


def test_plugin_events_round_trip_through_json() -> None:
    types = EventTypes([*ev.CORE_EVENT_TYPES, FraudScored, Opaque])
    assert types.from_json(types.to_json(PLUGIN_EVENT)) == PLUGIN_EVENT
    opaque = Opaque(**COMMON, version=2, blob={"x": [1, 2]})
    assert orjson.loads(types.to_json(opaque))["blob"] == {"x": [1, 2]}
    assert types.from_json(types.to_json(opaque)) == opaque


@pytest.mark.parametrize(
    "when",
    [
        None,
        datetime(2024, 1, 1, 9, 30, tzinfo=UTC),
        datetime(2024, 1, 1, 9, 30, 0, 7, tzinfo=timezone(timedelta(hours=-7))),
        datetime(2024, 1, 1, 9, 30, 0, 7),  # naive: local time, as SQLAlchemy binds it
    ],
)
def test_sqlite_rows_bind_datetimes_as_sqlite_time(when: datetime | None) -> None:
    rows = [{"id": "p", "updated_at": when}]
    values = sql_direct._sqlite_values(rows, ("updated_at", "id"), ("updated_at",))
    assert values == [(sql_direct.sqlite_time(when), "p")]


@attrs.frozen
class _TaggedAttempt(Attempt):
    """Not a declared type: an Attempt subclass with a field JSON cannot hold as it is."""

    tags: Any = frozenset()


def test_a_value_the_generated_encoder_cannot_write_goes_through_cattrs() -> None:
    payment = _payment(attempts=(_TaggedAttempt(1, "sim", "k1", tags=frozenset({"x"})),))
    assert orjson.loads(payment_to_json(payment)) == make_converter().unstructure(payment)
    assert payment_from_json(payment_to_json(payment)) == _payment()


def test_postgres_rows_embed_the_json_columns_as_json() -> None:
    # The server stores a nested JSON value into a text column as its text: the rows carry
    # the payment's JSON as JSON (no escaping), and it reads back as the same payment.
    text = payment_to_json(_payment()).decode()
    rows = [{"id": "pay_1", "data": text, "updated_at": T0}, {"id": "p2", "data": text,
             "updated_at": datetime(2024, 1, 1, 9, 30)}]  # fmt: skip
    out = sql_direct._pg_json(rows, ("updated_at",))
    assert f'"data":{text}' in out
    decoded = orjson.loads(out)
    assert [row["data"] for row in decoded] == [orjson.loads(text)] * 2
    assert decoded[1]["updated_at"] == datetime(2024, 1, 1, 9, 30).astimezone(UTC).isoformat()
    assert sql_direct._pg_json(rows, ("updated_at",)) == out  # a second pass changes nothing


@attrs.frozen(kw_only=True, slots=False)
class Doubled(ev.Event):
    """A plugin event whose own ``__init__`` does more than store: decoding must call it."""

    type_name: ClassVar[str] = "acme.Doubled"

    score: int

    def __init__(self, *, payment_id: str, version: int, occurred_at: datetime, score: int):
        self.__attrs_init__(  # type: ignore[attr-defined]
            payment_id=payment_id, version=version, occurred_at=occurred_at, score=score * 2
        )


def test_a_class_with_its_own_init_is_built_through_it() -> None:
    types = EventTypes([Doubled])
    event = Doubled(**COMMON, version=2, score=2)
    assert event.score == 4
    assert orjson.loads(types.to_json(event))["score"] == 4
    assert types.from_json(types.to_json(event)).score == 8  # type: ignore[attr-defined]


def test_rows_from_before_the_method_type_read_as_none() -> None:
    """Payments and PaymentInitiated events stored before ``payment_method_type`` existed
    lack its key: they read back with None (cattrs' default), and the same row with the key
    reads it."""
    initiated = next(e for e in SAMPLES if isinstance(e, ev.PaymentInitiated))
    types = EventTypes()
    stored = orjson.loads(types.to_json(initiated))
    del stored["payment_method_type"]
    old = types.from_json(orjson.dumps(stored))
    assert isinstance(old, ev.PaymentInitiated) and old.payment_method_type is None
    assert old == attrs.evolve(initiated, payment_method_type=None)
    payment = apply(None, initiated)
    assert payment.payment_method_type == "card"
    row = orjson.loads(payment_to_json(payment))
    del row["payment_method_type"]
    assert payment_from_json(orjson.dumps(row)) == attrs.evolve(payment, payment_method_type=None)
