"""The built-in event sinks: log lines, Redis Streams (real Redis) and signed webhooks (a real
HTTP server on the loopback interface, started here), then both end to end behind a service.

Ordering comes from awaiting each step; nothing sleeps to synchronise. Backoff sleeps are
injected (recorded, not slept), so delays are asserted as values, never timed. The one real wait
is a read timeout the test configures (a receiver that does not answer).
"""

from __future__ import annotations

import json
import logging
import socket
import traceback
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import _services
import anyio
import anyio.lowlevel
import attrs
import pytest
import redis.asyncio as aioredis
from _services import REDIS_URL
from aegispay import ConfigError, Money, PaymentRequest, PaymentState
from aegispay import events as ev
from aegispay.outbox import EventSink, OutboxMessage
from aegispay.plugins._sinks import EventSinkError, MerchantDirectory, default_serializer
from aegispay.plugins.log_sink import LogSink, LogSinkPlugin
from aegispay.plugins.redis_streams_sink import (
    RedisStreamsConfig,
    RedisStreamsPlugin,
    RedisStreamsSink,
)
from aegispay.plugins.webhook_sink import (
    EndpointConfig,
    WebhooksConfig,
    WebhookSink,
    WebhooksPlugin,
    parse_retry_after,
    sign,
    signature_header,
    verify_signature,
)
from aegispay.serialization import EventTypes
from aegispay.settings import PluginConfig, Settings
from aegispay.testing import make_test_service
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis.asyncio

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NOW_TS = NOW.timestamp()
SECRET = "whsec_TOPSECRET-0123456789abcdef"
PRIVATE = ("pm_tok_PRIVATE", "cus_PRIVATE", "PRIVATE-METADATA", "idem-PRIVATE", "PRIVATE-TEXT")


# --- events and messages --------------------------------------------------------------------------


def payment_events(payment_id: str, merchant: str = "m_acme") -> list[ev.Event]:
    """A completed payment's events, with personal data in every field that must stay out of
    logs (payment method, customer, metadata, idempotency keys, free text)."""
    amount = Money(1999, "USD")
    base: dict[str, Any] = {"payment_id": payment_id, "occurred_at": NOW}
    return [
        ev.PaymentInitiated(
            **base,
            version=1,
            merchant_id=merchant,
            amount=amount,
            capture_mode="automatic",
            customer_id="cus_PRIVATE",
            payment_method="pm_tok_PRIVATE",
            description="PRIVATE-TEXT",
            metadata={"note": "PRIVATE-METADATA"},
        ),
        ev.PaymentProcessingStarted(
            **base, version=2, attempt_no=1, gateway="sim-alpha", idempotency_key="idem-PRIVATE-1"
        ),
        ev.PaymentAuthorized(**base, version=3, attempt_no=1, amount=amount, gateway_reference="r"),
        ev.PaymentCompleted(**base, version=4, amount=amount, idempotency_key="idem-PRIVATE-2"),
    ]


def messages_of(events: Sequence[ev.Event]) -> list[OutboxMessage]:
    return [OutboxMessage(e.event_id, e.payment_id, e.version, e) for e in events]


def interleaved(*payments: Sequence[ev.Event]) -> list[OutboxMessage]:
    """Several payments' messages, interleaved as a relay batch would have them."""
    out: list[OutboxMessage] = []
    for row in zip(*payments, strict=True):
        out.extend(messages_of(row))
    return out


def new_id() -> str:
    return "pay_" + uuid.uuid4().hex[:16]


def unused_port() -> Iterator[int]:
    """A loopback port bound but not listening, so connecting is refused, for the test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def refused_port() -> Iterator[int]:
    yield from unused_port()


# --- a real HTTP receiver on the loopback interface --------------------------------------------


@attrs.frozen
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.frozen
class Reply:
    status: int = 200
    headers: dict[str, str] = attrs.field(factory=dict)
    hang: bool = False  # never answer: the client's read timeout fires


_PHRASES = {200: "OK", 204: "No Content", 400: "Bad Request", 408: "Request Timeout"}
_PHRASES |= {429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


class Receiver:
    """An HTTP/1.1 server (keep-alive) that records every request and answers from a script:
    ``then(Reply(500), Reply(500))`` makes the next two requests fail; after the script, 200."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: deque[Reply] = deque()
        self.port = 0
        self.stopped = anyio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def then(self, *replies: Reply) -> None:
        self.script.extend(replies)

    async def handle(self, stream: SocketStream) -> None:
        reader = BufferedByteReceiveStream(stream)
        async with stream:
            try:
                while True:
                    head = await reader.receive_until(b"\r\n\r\n", 65536)
                    request_line, *lines = head.decode("latin-1").split("\r\n")
                    method, path, _ = request_line.split(" ", 2)
                    headers = {}
                    for line in lines:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                    length = int(headers.get("content-length", "0"))
                    body = await reader.receive_exactly(length) if length else b""
                    self.requests.append(Received(method, path, headers, body))
                    reply = self.script.popleft() if self.script else Reply()
                    if reply.hang:
                        await self.stopped.wait()
                        return
                    extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
                    phrase = _PHRASES.get(reply.status, "Status")
                    response = (
                        f"HTTP/1.1 {reply.status} {phrase}\r\nContent-Length: 2\r\n{extra}\r\nok"
                    )
                    await stream.send(response.encode("latin-1"))
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                return
            except anyio.ClosedResourceError:
                return

    def by_payment(self) -> dict[str, list[int]]:
        """payment id -> sequences, in the order received."""
        out: dict[str, list[int]] = {}
        for request in self.requests:
            body = request.json()
            out.setdefault(body["payment_id"], []).append(body["sequence"])
        return out


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    receiver.port = listener.extra(SocketAttribute.local_port)
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(listener.serve, receiver.handle)
        yield receiver
        receiver.stopped.set()
        task_group.cancel_scope.cancel()
    await listener.aclose()


class RecordingSleep:
    """Injected in place of anyio.sleep: remembers each backoff delay, sleeps none."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await anyio.lowlevel.checkpoint()


def webhook_settings(**overrides: Any) -> WebhooksConfig:
    values: dict[str, Any] = {"endpoints": {}, "backoff_base_s": 0.5, "backoff_max_s": 4.0}
    values.update(overrides)
    return WebhooksConfig(**values)


@pytest.fixture
async def make_webhook(
    receiver: Receiver,
) -> AsyncIterator[Any]:
    """``make_webhook(url=..., sleep=..., merchants=..., **settings)`` -> a WebhookSink with a
    fixed clock; every sink made is closed afterwards."""
    made: list[WebhookSink] = []

    def make(
        *,
        url: str | None = None,
        sleep: RecordingSleep | None = None,
        merchants: tuple[str, ...] | None = None,
        event_types: tuple[str, ...] | None = None,
        directory: MerchantDirectory | None = None,
        **settings: Any,
    ) -> WebhookSink:
        endpoint = EndpointConfig(
            url=url or receiver.url, secret=SECRET, merchants=merchants, event_types=event_types
        )
        sink = WebhookSink(
            "acme",
            endpoint,
            webhook_settings(**settings),
            directory=directory,
            sleep=sleep or RecordingSleep(),
            clock=lambda: NOW_TS,
        )
        made.append(sink)
        return sink

    yield make
    for sink in made:
        await sink.aclose()


# --- the log sink ------------------------------------------------------------------------------


def registered(plugin: Any, sections: dict[str, Any] | None = None) -> list[EventSink]:
    sinks: list[EventSink] = []
    plugin.aegispay_register_event_sinks(register=sinks.append, config=PluginConfig(sections))
    return sinks


@pytest.mark.parametrize("plugin", [LogSinkPlugin, RedisStreamsPlugin, WebhooksPlugin])
@pytest.mark.parametrize("section", [{}, {"enabled": False}])
def test_a_sink_that_is_not_configured_registers_nothing(
    plugin: type[Any], section: dict[str, Any]
) -> None:
    if section and plugin is RedisStreamsPlugin:
        section = {**section, "url": REDIS_URL}
    if section and plugin is WebhooksPlugin:
        section = {**section, "endpoints": {"a": {"url": "https://a.example", "secret": SECRET}}}
    assert registered(plugin(section)) == []


async def test_log_sink_writes_one_json_line_per_message_with_safe_fields_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    [sink] = registered(LogSinkPlugin({"logger": "test.sinks.log", "level": "info"}))
    assert isinstance(sink, LogSink) and sink.name == "log_sink"
    events = payment_events("pay_log")
    with caplog.at_level(logging.INFO, logger="test.sinks.log"):
        await sink.publish(messages_of(events))
    lines = [r.getMessage() for r in caplog.records if r.name == "test.sinks.log"]
    records = [json.loads(line) for line in lines]
    assert [r["message_id"] for r in records] == [e.event_id for e in events]
    assert [r["sequence"] for r in records] == [1, 2, 3, 4]
    assert {r["payment_id"] for r in records} == {"pay_log"}
    assert [r["type"] for r in records] == [e.type_name for e in events]
    assert records[0]["merchant_id"] == "m_acme"
    assert (records[0]["amount"], records[0]["currency"]) == (1999, "USD")
    assert records[1]["gateway"] == "sim-alpha"
    for text in PRIVATE:
        assert text not in caplog.text
    for key in ("metadata", "payment_method", "customer_id", "idempotency_key", "description"):
        assert all(key not in r for r in records)


async def test_log_sink_writes_nothing_below_its_level(caplog: pytest.LogCaptureFixture) -> None:
    [sink] = registered(LogSinkPlugin({"logger": "test.sinks.quiet", "level": "DEBUG"}))
    with caplog.at_level(logging.INFO, logger="test.sinks.quiet"):
        await sink.publish(messages_of(payment_events("pay_q")))
    assert [r for r in caplog.records if r.name == "test.sinks.quiet"] == []


def test_log_sink_bad_level_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"plugins\.log_sink\.level: .*'LOUD'"):
        registered(LogSinkPlugin({"level": "LOUD"}))
    with pytest.raises(ConfigError, match=r"plugins\.log_sink: unknown key\(s\) \['levle'\]"):
        registered(LogSinkPlugin({"levle": "INFO"}))


def test_bad_sink_configuration_raises_config_error_from_build_service() -> None:
    settings = Settings(plugin_config=PluginConfig({"log_sink": {"enabled": "yes"}}))
    with pytest.raises(ConfigError, match=r"plugins\.log_sink\.enabled: expected true or false"):
        make_test_service(settings=settings, builtins=("log_sink",))


# --- shared: serialization and the merchant directory ---------------------------------------------


@attrs.frozen(kw_only=True, slots=False)
class ChargebackOpened(ev.Event):
    type_name = "acme.ChargebackOpened"

    amount: Money
    dispute_id: str


def test_default_serializer_equals_a_registry_that_knows_the_plugin_type() -> None:
    event = ChargebackOpened(
        payment_id="pay_cb", version=5, occurred_at=NOW, amount=Money(500, "EUR"), dispute_id="d1"
    )
    registry = EventTypes()
    registry.register(ChargebackOpened)
    assert default_serializer(event) == registry.to_dict(event)
    assert registry.from_dict(default_serializer(event)) == event


async def test_merchant_directory_learns_then_asks_the_store_then_fails_clearly() -> None:
    directory = MerchantDirectory(capacity=2)
    first = payment_events("pay_1", "m1")
    assert await directory.resolve(messages_of(first)) == {"pay_1": "m1"}
    later = messages_of(payment_events("pay_2", "m2")[1:])  # no PaymentInitiated
    with pytest.raises(EventSinkError, match=r"payment pay_2: merchant unknown"):
        await directory.resolve(later)
    asked: list[str] = []

    async def lookup(payment_id: str) -> str | None:
        asked.append(payment_id)
        return {"pay_2": "m2"}.get(payment_id)

    directory.bind(lookup)
    assert await directory.resolve(later + later) == {"pay_2": "m2"}
    assert await directory.resolve(later) == {"pay_2": "m2"}
    assert asked == ["pay_2"]  # remembered after one lookup
    with pytest.raises(EventSinkError, match=r"payment pay_9: not in the store"):
        await directory.resolve(messages_of(payment_events("pay_9")[1:]))


# --- Redis Streams -----------------------------------------------------------------------------


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    async with _services.redis_client(decode_responses=True) as client:
        yield client


@pytest.fixture
async def stream(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    """A unique stream key (prefix) per test; its keys are deleted afterwards."""
    async with _services.redis_key_prefix(redis_client, "events") as key:
        yield key


@pytest.fixture
async def make_redis_sink() -> AsyncIterator[Any]:
    made: list[RedisStreamsSink] = []

    def make(**values: Any) -> RedisStreamsSink:
        values.setdefault("url", REDIS_URL)
        sink = RedisStreamsSink(RedisStreamsConfig(**values))
        made.append(sink)
        return sink

    yield make
    for sink in made:
        await sink.aclose()


async def read_group(client: aioredis.Redis, stream: str, group: str) -> list[dict[str, str]]:
    """What one consumer of ``group`` reads, acknowledged, in stream order."""
    entries: list[dict[str, str]] = []
    while True:
        reply = await client.xreadgroup(group, "consumer-1", {stream: ">"}, count=3)
        if not reply:
            return entries
        for _, batch in reply:
            for entry_id, fields in batch:
                entries.append(fields)
                await client.xack(stream, group, entry_id)


@asyncio_only
async def test_redis_consumer_group_reads_back_exactly_what_was_committed_in_order(
    redis_client: aioredis.Redis, stream: str, make_redis_sink: Any
) -> None:
    sink = make_redis_sink(stream=stream)
    await redis_client.xgroup_create(stream, "billing", id="$", mkstream=True)
    first, second = payment_events(new_id()), payment_events(new_id(), "m_other")
    batch = interleaved(first, second)
    await sink.publish(batch[:5])
    await sink.publish(batch[3:])  # at least once: two messages are published twice

    entries = await read_group(redis_client, stream, "billing")
    assert len(entries) == len(batch) + 2
    assert set(entries[0]) == {"message_id", "payment_id", "sequence", "type", "data"}
    # The consumer deduplicates on message_id and keeps each payment's order.
    seen: set[str] = set()
    received: dict[str, list[ev.Event]] = {}
    registry = EventTypes()
    for fields in entries:
        if fields["message_id"] in seen:
            continue
        seen.add(fields["message_id"])
        event = registry.from_dict(json.loads(fields["data"]))
        assert fields["type"] == event.type_name
        assert (fields["payment_id"], int(fields["sequence"])) == (event.payment_id, event.version)
        assert fields["message_id"] == event.event_id
        received.setdefault(fields["payment_id"], []).append(event)
    assert received == {first[0].payment_id: first, second[0].payment_id: second}


@asyncio_only
async def test_redis_batch_is_one_pipeline_round_trip(
    redis_client: aioredis.Redis, stream: str, make_redis_sink: Any, monkeypatch: Any
) -> None:
    sink = make_redis_sink(stream=stream)
    client = sink._redis()
    executions: list[int] = []
    pipeline = client.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = pipeline(*args, **kwargs)
        execute = pipe.execute

        async def counted(*a: Any, **k: Any) -> Any:
            executions.append(len(pipe.command_stack))
            return await execute(*a, **k)

        pipe.execute = counted
        return pipe

    async def no_single_commands(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a command outside the pipeline: {args[:1]}")

    monkeypatch.setattr(client, "pipeline", counting_pipeline)
    monkeypatch.setattr(client, "execute_command", no_single_commands)
    await sink.publish(interleaved(payment_events(new_id()), payment_events(new_id())))
    assert executions == [8]
    assert await redis_client.xlen(stream) == 8


@asyncio_only
async def test_redis_maxlen_trims_the_stream(
    redis_client: aioredis.Redis, stream: str, make_redis_sink: Any
) -> None:
    sink = make_redis_sink(stream=stream, maxlen=5, approximate=False)
    for _ in range(3):
        await sink.publish(messages_of(payment_events(new_id())))
    assert await redis_client.xlen(stream) == 5
    tail = await redis_client.xrange(stream)
    assert [int(fields["sequence"]) for _, fields in tail] == [4, 1, 2, 3, 4]

    # MAXLEN ~ 5 trims whole radix-tree nodes only (100 entries each by default): 12 stay.
    approximate = make_redis_sink(stream=f"{stream}:approx", maxlen=5)
    for _ in range(3):
        await approximate.publish(messages_of(payment_events(new_id())))
    assert await redis_client.xlen(f"{stream}:approx") == 12


@asyncio_only
async def test_redis_per_merchant_streams(
    redis_client: aioredis.Redis, stream: str, make_redis_sink: Any
) -> None:
    sink = make_redis_sink(stream=stream, per_merchant=True)
    a, b = payment_events(new_id(), "m_a"), payment_events(new_id(), "m_b")
    await sink.publish(interleaved(a, b))
    for merchant, events in (("m_a", a), ("m_b", b)):
        entries = await redis_client.xrange(f"{stream}:{merchant}")
        assert [f["message_id"] for _, f in entries] == [e.event_id for e in events]
    assert await redis_client.exists(stream) == 0
    # Later events of a payment whose PaymentInitiated this process never saw: the store is
    # asked (bound at service startup); without it the batch fails and is retried.
    fresh = RedisStreamsSink(RedisStreamsConfig(url=REDIS_URL, stream=stream, per_merchant=True))
    later = payment_events(new_id(), "m_c")[1:]
    try:
        with pytest.raises(EventSinkError, match="merchant unknown"):
            await fresh.publish(messages_of(later))

        async def lookup(payment_id: str) -> str:
            return "m_c"

        fresh.directory.bind(lookup)
        await fresh.publish(messages_of(later))
    finally:
        await fresh.aclose()
    assert await redis_client.xlen(f"{stream}:m_c") == 3


@asyncio_only
async def test_redis_down_raises_a_clear_error_without_the_password(refused_port: int) -> None:
    url = f"redis://:hunter2-PASSWORD@127.0.0.1:{refused_port}/0"
    sink = RedisStreamsSink(RedisStreamsConfig(url=url, connect_timeout_s=2.0))
    assert "hunter2-PASSWORD" not in repr(sink) and "***" in repr(sink)
    try:
        with pytest.raises(EventSinkError) as caught:
            await sink.publish(messages_of(payment_events(new_id())))
    finally:
        await sink.aclose()
    message = str(caught.value)
    assert message.startswith(f"redis_streams sink at redis://:***@127.0.0.1:{refused_port}/0: ")
    assert "ConnectionError" in message
    everything = "".join(traceback.format_exception(caught.value))
    assert "hunter2-PASSWORD" not in everything


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_redis_sink_on_trio_says_it_needs_asyncio() -> None:
    sink = RedisStreamsSink(RedisStreamsConfig(url=REDIS_URL))
    with pytest.raises(EventSinkError, match="needs asyncio"):
        await sink.publish(messages_of(payment_events(new_id())))


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"stream": "x"}, r"plugins\.redis_streams\.url: required key missing"),
        ({"url": "http://:pw-SECRET@h/0"}, r"plugins\.redis_streams\.url: expected a redis://"),
        ({"url": REDIS_URL, "maxlen": 0}, r"plugins\.redis_streams\.maxlen: must be at least 1"),
        ({"url": REDIS_URL, "maxlen": "10"}, r"plugins\.redis_streams\.maxlen: expected an int"),
        ({"url": REDIS_URL, "timeout_s": 0}, r"plugins\.redis_streams\.timeout_s: must be greater"),
        ({"url": REDIS_URL, "strem": "x"}, r"plugins\.redis_streams: unknown key\(s\) \['strem'\]"),
    ],
)
def test_redis_bad_configuration(section: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        registered(RedisStreamsPlugin(section))
    assert "pw-SECRET" not in str(caught.value)


# --- webhooks: signatures ------------------------------------------------------------------------


def test_signature_round_trip_and_every_way_to_fail() -> None:
    body = b'{"id":"pay_1:1","amount":1999}'
    header = signature_header(SECRET, int(NOW_TS), body)
    assert header == f"t={int(NOW_TS)},v1={sign(SECRET, int(NOW_TS), body)}"
    assert verify_signature(SECRET, header, body, 300, now=NOW_TS)
    assert verify_signature(SECRET.encode(), header, body, 300, now=NOW_TS + 299)
    assert not verify_signature(SECRET, header, body + b" ", 300, now=NOW_TS)  # tampered
    assert not verify_signature("whsec_another-secret-000000", header, body, 300, now=NOW_TS)
    assert not verify_signature(SECRET, header, body, 300, now=NOW_TS + 301)  # stale
    assert not verify_signature(SECRET, header, body, 300, now=NOW_TS - 301)  # from the future
    other = sign("whsec_old-secret-0000000000", int(NOW_TS), body)
    assert verify_signature(SECRET, f"{header},v1={other}", body, 300, now=NOW_TS)  # rotation
    for bad in (
        None,
        "",
        "garbage",
        f"v1={sign(SECRET, int(NOW_TS), body)}",  # no timestamp
        f"t={int(NOW_TS)}",  # no signature
        f"t=abc,v1={sign(SECRET, int(NOW_TS), body)}",
        f"t={int(NOW_TS)},t={int(NOW_TS)},v1={sign(SECRET, int(NOW_TS), body)}",
        f"t={int(NOW_TS)},v1=é",
    ):
        assert not verify_signature(SECRET, bad, body, 300, now=NOW_TS), bad
    with pytest.raises(TypeError, match="bytes"):
        verify_signature(SECRET, header, body.decode(), 300, now=NOW_TS)  # type: ignore[arg-type]


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3", NOW_TS) == 3.0
    assert parse_retry_after(" 0 ", NOW_TS) == 0.0
    assert parse_retry_after("Sat, 01 Mar 2025 12:00:30 GMT", NOW_TS) == 30.0
    assert parse_retry_after("Sat, 01 Mar 2025 11:00:00 GMT", NOW_TS) == 0.0
    assert parse_retry_after("soon", NOW_TS) is None
    assert parse_retry_after(None, NOW_TS) is None


# --- webhooks: delivery to a real server ---------------------------------------------------------


async def test_webhook_posts_one_signed_body_per_message_in_payment_order(
    receiver: Receiver, make_webhook: Any
) -> None:
    sink = make_webhook(concurrency=4)
    first, second, third = (payment_events(new_id(), m) for m in ("m1", "m2", "m3"))
    batch = interleaved(first, second, third)
    merchants = {p[0].payment_id: p[0].merchant_id for p in (first, second, third)}  # type: ignore[attr-defined]
    await sink.publish(batch)

    assert len(receiver.requests) == len(batch)
    assert receiver.by_payment() == {p[0].payment_id: [1, 2, 3, 4] for p in (first, second, third)}
    by_id = {m.message_id: m for m in batch}
    for request in receiver.requests:
        assert (request.method, request.path) == ("POST", "/hooks")
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"].startswith("AegisPay-Webhooks")
        assert verify_signature(
            SECRET, request.headers["aegispay-signature"], request.body, 300, now=NOW_TS
        )
        body = request.json()
        message = by_id[request.headers["aegispay-message-id"]]
        assert body["id"] == message.message_id
        assert request.headers["aegispay-event-type"] == body["type"] == message.event.type_name
        assert body["payment_id"] == message.payment_id
        assert body["sequence"] == message.sequence
        assert body["occurred_at"] == NOW.isoformat()
        assert body["merchant_id"] == merchants[message.payment_id]
        assert EventTypes().from_dict(body["data"]) == message.event
    assert len({r.headers["aegispay-message-id"] for r in receiver.requests}) == len(batch)


async def test_webhook_filters_by_merchant_and_event_type(
    receiver: Receiver, make_webhook: Any
) -> None:
    sink = make_webhook(merchants=("m1",), event_types=("PaymentInitiated", "PaymentCompleted"))
    mine, theirs = payment_events(new_id(), "m1"), payment_events(new_id(), "m2")
    await sink.publish(interleaved(mine, theirs))
    assert [r.headers["aegispay-message-id"] for r in receiver.requests] == [
        mine[0].event_id,
        mine[3].event_id,
    ]


async def test_webhook_retries_5xx_with_full_jitter_then_delivers(
    receiver: Receiver, make_webhook: Any
) -> None:
    sleep = RecordingSleep()
    sink = make_webhook(sleep=sleep, attempts=4, backoff_base_s=0.5, backoff_max_s=1.5)
    receiver.then(Reply(500), Reply(503), Reply(500))
    events = payment_events(new_id())
    await sink.publish(messages_of(events[:1]))
    assert len(receiver.requests) == 4
    assert len({r.body for r in receiver.requests}) == 1  # the same body each time
    assert len(sleep.delays) == 3
    for n, delay in enumerate(sleep.delays):  # full jitter: uniform(0, min(max, base * 2**n))
        assert 0 <= delay <= min(1.5, 0.5 * 2**n)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
async def test_webhook_transient_statuses_are_retried(
    receiver: Receiver, make_webhook: Any, status: int
) -> None:
    sink = make_webhook(attempts=2)
    receiver.then(Reply(status))
    await sink.publish(messages_of(payment_events(new_id())[:1]))
    assert len(receiver.requests) == 2


async def test_webhook_gives_up_after_its_attempts_and_raises_for_the_relay(
    receiver: Receiver, make_webhook: Any
) -> None:
    sink = make_webhook(attempts=3)
    receiver.then(*[Reply(500)] * 3)
    events = payment_events(new_id())
    with pytest.raises(EventSinkError) as caught:
        await sink.publish(messages_of(events))
    assert len(receiver.requests) == 3  # the first message only: later ones wait their turn
    error = caught.value
    assert not error.permanent
    assert str(error) == (
        f"webhook endpoint 'acme' ({receiver.url}): message {events[0].event_id}: "
        "HTTP 500 Internal Server Error (attempt 3 of 3)"
    )
    # The relay retries the batch later: it is delivered from the start, in order.
    await sink.publish(messages_of(events))
    assert [r.json()["sequence"] for r in receiver.requests[3:]] == [1, 2, 3, 4]


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
async def test_webhook_4xx_is_permanent_and_not_retried(
    receiver: Receiver, make_webhook: Any, status: int
) -> None:
    sink = make_webhook(attempts=5)
    receiver.then(Reply(status))
    events = payment_events(new_id())
    with pytest.raises(EventSinkError, match=rf"HTTP {status} .*refused, not retried") as caught:
        await sink.publish(messages_of(events))
    assert caught.value.permanent
    assert len(receiver.requests) == 1  # neither retried nor followed by the payment's next event


async def test_webhook_honours_retry_after(receiver: Receiver, make_webhook: Any) -> None:
    sleep = RecordingSleep()
    sink = make_webhook(sleep=sleep, attempts=3, max_retry_after_s=10)
    receiver.then(Reply(429, {"Retry-After": "7"}), Reply(503, {"Retry-After": "2"}))
    await sink.publish(messages_of(payment_events(new_id())[:1]))
    assert sleep.delays == [7.0, 2.0]
    assert len(receiver.requests) == 3


async def test_webhook_long_retry_after_is_left_to_the_relay(
    receiver: Receiver, make_webhook: Any
) -> None:
    sleep = RecordingSleep()
    sink = make_webhook(sleep=sleep, attempts=3, max_retry_after_s=10)
    receiver.then(Reply(429, {"Retry-After": "3600"}))
    with pytest.raises(EventSinkError, match="HTTP 429 Too Many Requests") as caught:
        await sink.publish(messages_of(payment_events(new_id())[:1]))
    assert caught.value.retry_after == 3600 and not caught.value.permanent
    assert sleep.delays == [] and len(receiver.requests) == 1


async def test_webhook_connect_error_is_retried_then_raised(
    make_webhook: Any, refused_port: int
) -> None:
    sleep = RecordingSleep()
    sink = make_webhook(url=f"http://127.0.0.1:{refused_port}/hooks", sleep=sleep, attempts=3)
    with pytest.raises(EventSinkError, match=r"ConnectError.*\(attempt 3 of 3\)") as caught:
        await sink.publish(messages_of(payment_events(new_id())[:1]))
    assert len(sleep.delays) == 2 and not caught.value.permanent


async def test_webhook_read_timeout_is_retried(receiver: Receiver, make_webhook: Any) -> None:
    sink = make_webhook(attempts=2, timeout_s=0.2)
    receiver.then(Reply(hang=True))
    await sink.publish(messages_of(payment_events(new_id())[:1]))
    assert len(receiver.requests) == 2
    assert receiver.requests[0].body == receiver.requests[1].body


async def test_webhook_secret_never_shows(
    receiver: Receiver, make_webhook: Any, refused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = WebhooksPlugin({"endpoints": {"acme": {"url": receiver.url, "secret": SECRET}}})
    [sink] = registered(plugin)
    texts = [repr(plugin), repr(sink), str(sink)]
    texts.append(repr(EndpointConfig(url=receiver.url, secret=SECRET)))
    with_password = EndpointConfig(url="https://u:pw-PRIVATE@x.example/", secret=SECRET)
    assert "pw-PRIVATE" not in repr(with_password) and "x.example" in repr(with_password)
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    for reply in (Reply(500), Reply(400)):
        receiver.then(*[reply] * 3)
        with pytest.raises(EventSinkError) as caught:
            await make_webhook(attempts=3).publish(messages_of(payment_events(new_id())[:1]))
        errors.append(caught.value)
    with pytest.raises(EventSinkError) as refused:
        await make_webhook(url=f"http://127.0.0.1:{refused_port}/", attempts=2).publish(
            messages_of(payment_events(new_id())[:1])
        )
    errors.append(refused.value)
    texts += [str(e) for e in errors] + ["".join(traceback.format_exception(e)) for e in errors]
    texts.append(caplog.text)
    for text in texts:
        assert SECRET not in text
    with pytest.raises(ConfigError) as short:
        registered(WebhooksPlugin({"endpoints": {"a": {"url": receiver.url, "secret": "sh0rt"}}}))
    assert "sh0rt" not in str(short.value)
    await plugin.aclose()


async def test_webhook_client_closes_idempotently_and_reopens(
    receiver: Receiver, make_webhook: Any
) -> None:
    sink = make_webhook()
    await sink.publish(messages_of(payment_events(new_id())[:1]))
    await sink.aclose()
    await sink.aclose()
    await sink.publish(messages_of(payment_events(new_id())[:1]))
    assert len(receiver.requests) == 2


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"timeout_s": 1.0}, r"plugins\.webhooks\.endpoints: required key missing"),
        ({"endpoints": {}}, r"plugins\.webhooks\.endpoints: no endpoint configured"),
        (
            {"endpoints": {"a": {"url": "ftp://x.example/", "secret": SECRET}}},
            r"plugins\.webhooks\.endpoints\.a\.url: expected an https:// URL \(got 'ftp://",
        ),
        (
            {"endpoints": {"a": {"url": "http://merchant.example/", "secret": SECRET}}},
            r"plugins\.webhooks\.endpoints\.a\.url: plain http to 'merchant\.example'",
        ),
        (
            {"endpoints": {"a": {"url": "https://x.example/", "secret": "short"}}},
            r"plugins\.webhooks\.endpoints\.a\.secret: must be at least 16 characters",
        ),
        (
            {"endpoints": {"a": {"url": "https://x.example/", "secret": 1234567890123456789}}},
            r"plugins\.webhooks\.endpoints\['a'\]\.secret: expected a string \(value hidden\)",
        ),
        (
            {"endpoints": {"a": {"url": 5, "secret": SECRET}}},
            r"plugins\.webhooks\.endpoints\['a'\]\.url: expected a string \(got 5\)",
        ),
        (
            {"attempts": 0, "endpoints": {"a": {"url": "https://x.example/", "secret": SECRET}}},
            r"plugins\.webhooks\.attempts: must be at least 1",
        ),
        (
            {"timeout_s": -1, "endpoints": {"a": {"url": "https://x.example/", "secret": SECRET}}},
            r"plugins\.webhooks\.timeout_s: must be greater than 0",
        ),
    ],
)
def test_webhook_bad_configuration(section: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        registered(WebhooksPlugin(section))
    assert SECRET not in str(caught.value) and "1234567890123456789" not in str(caught.value)


def test_webhook_endpoints_become_sinks_and_http_is_allowed_when_asked() -> None:
    section = {
        "endpoints": {
            "b": {"url": "http://internal-hooks/", "secret": SECRET, "allow_http": True},
            "a": {"url": "https://a.example/hooks", "secret": SECRET},
            "off": {"url": "https://off.example/hooks", "secret": SECRET, "enabled": False},
        }
    }
    sinks = registered(WebhooksPlugin(section))
    assert [s.name for s in sinks] == ["webhooks.a", "webhooks.b"]
    assert all(isinstance(s, EventSink) for s in sinks)


# --- end to end: a service with both sinks --------------------------------------------------------


@asyncio_only
async def test_service_publishes_every_event_to_the_stream_and_the_webhook_in_order(
    redis_client: aioredis.Redis, stream: str, receiver: Receiver
) -> None:
    config = PluginConfig(
        {
            "redis_streams": {"url": REDIS_URL, "stream": stream, "per_merchant": True},
            "webhooks": {
                "endpoints": {
                    "acme": {"url": receiver.url, "secret": SECRET, "merchants": ["m_e2e"]},
                    "other": {"url": receiver.url + "/other", "secret": SECRET, "merchants": ["x"]},
                },
            },
        }
    )
    service = make_test_service(
        settings=Settings(plugin_config=config),
        builtins=("validation", "priority_routing", "redis_streams", "webhooks"),
    )
    try:
        async with service:
            payment = await service.pay(
                PaymentRequest(Money(2500, "USD"), merchant_id="m_e2e", metadata={"k": "v"})
            )
            payment = await service.refund(payment.id, Money(1000, "USD"))
        # Leaving the block drained the relay: everything committed has been published.
        history = await service.payment_history(payment.id)
        assert payment.state is PaymentState.PARTIALLY_REFUNDED
        assert len(history) >= 6

        entries = await redis_client.xrange(f"{stream}:m_e2e")
        assert [f["message_id"] for _, f in entries] == [e.event_id for e in history]
        assert [int(f["sequence"]) for _, f in entries] == [e.version for e in history]
        assert [service.event_types.from_dict(json.loads(f["data"])) for _, f in entries] == history

        paths = {r.path for r in receiver.requests}
        assert paths == {"/hooks"}  # nothing for the other merchant's endpoint
        assert [r.headers["aegispay-message-id"] for r in receiver.requests] == [
            e.event_id for e in history
        ]
        for request in receiver.requests:
            header = request.headers["aegispay-signature"]
            assert verify_signature(SECRET, header, request.body, 300)
            assert request.json()["merchant_id"] == "m_e2e"
    finally:
        await service.host.plugin("redis_streams").aclose()
        await service.host.plugin("webhooks").aclose()
        await service.aclose()
