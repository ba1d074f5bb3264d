"""An event sink that appends every outbox message to a Redis stream (``XADD``).

Configuration (``[plugins.redis_streams]``; the sink is active when the section has any key)::

    url = "redis://:password@127.0.0.1:6379/0"   # required; the password is never shown
    stream = "aegispay:events"   # the stream key (the prefix, with per_merchant)
    per_merchant = false         # true: one stream per merchant, "<stream>:<merchant_id>"
    maxlen = 1000000             # trim to about this many entries (default: never trim)
    approximate = true           # MAXLEN ~ (cheap); false trims exactly
    timeout_s = 5.0              # each Redis round trip
    connect_timeout_s = 5.0
    enabled = true

Each entry has the fields ``message_id``, ``payment_id``, ``sequence``, ``type`` and ``data``
(the event as JSON, ``service.event_types.to_dict``). A batch is one ``MULTI``/``EXEC``
pipeline: one round trip, and the batch's entries are appended together and in the order
given, which keeps every payment's events in order in the stream. An error (Redis down, a
timeout) raises :class:`aegispay.plugins._sinks.EventSinkError`: the relay retries the batch
later. asyncio only (``redis.asyncio``); on trio, publishing raises.

Consumers:

* Delivery is at least once: a batch that failed after Redis appended it (a lost reply) or
  that another sink failed is appended again. Deduplicate on ``message_id``
  (``<payment_id>:<sequence>``), or keep the highest ``sequence`` applied per payment and skip
  anything not above it.
* Read with a consumer group (``XGROUP CREATE <stream> <group> $ MKSTREAM``, then
  ``XREADGROUP GROUP <group> <consumer> COUNT n STREAMS <stream> >`` and ``XACK``); entries
  come back in stream order, so one consumer sees each payment's events in order. With several
  consumers in a group, entries of one payment can be handled concurrently: use the
  ``sequence`` (wait for ``sequence - 1``) if your handling must be ordered.
* Trimming (``maxlen``) drops the oldest entries whether or not a group has read them: size it
  well above the backlog your consumers can fall behind by.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import unquote, urlsplit

import attrs
import sniffio
from aegispay.hookspecs import hookimpl
from aegispay.outbox import EventSink, OutboxMessage
from aegispay.settings import PluginConfig
from aegispay.urls import hide_password

from ._sinks import (
    EventSinkError,
    MerchantDirectory,
    Serializer,
    SinkPlugin,
    config_error,
    default_serializer,
    dumps,
    read_config,
    require_positive,
)

if TYPE_CHECKING:
    import redis.asyncio as aioredis

NAME = "redis_streams"
log = logging.getLogger("aegispay.sinks.redis_streams")


@attrs.frozen
class RedisStreamsConfig:
    url: str = attrs.field(repr=False)
    stream: str = "aegispay:events"
    per_merchant: bool = False
    maxlen: int | None = None
    approximate: bool = True
    timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    enabled: bool = True


def _validate(settings: RedisStreamsConfig, where: str) -> None:
    shown, _ = hide_password(settings.url)
    if urlsplit(settings.url).scheme not in ("redis", "rediss", "unix"):
        raise config_error(
            f"{where}.url", f"expected a redis://, rediss:// or unix:// URL (got {shown!r})"
        )
    if not settings.stream:
        raise config_error(f"{where}.stream", "must not be empty")
    if settings.maxlen is not None and settings.maxlen < 1:
        raise config_error(f"{where}.maxlen", f"must be at least 1 (got {settings.maxlen!r})")
    require_positive(
        where, timeout_s=settings.timeout_s, connect_timeout_s=settings.connect_timeout_s
    )


class RedisStreamsSink:
    """XADD every message of a batch to its stream in one MULTI/EXEC round trip."""

    def __init__(
        self,
        settings: RedisStreamsConfig,
        *,
        directory: MerchantDirectory | None = None,
        serializer: Serializer = default_serializer,
    ) -> None:
        _validate(settings, f"plugins.{NAME}")
        self.name = NAME
        self.settings = settings
        self.serializer = serializer
        self.directory = directory or MerchantDirectory()
        self._safe_url, self._password = hide_password(settings.url)
        self._client: aioredis.Redis | None = None

    def __repr__(self) -> str:
        return (
            f"RedisStreamsSink({self._safe_url!r}, stream={self.settings.stream!r}, "
            f"per_merchant={self.settings.per_merchant}, maxlen={self.settings.maxlen})"
        )

    def stream_for(self, merchant_id: str | None) -> str:
        if self.settings.per_merchant:
            return f"{self.settings.stream}:{merchant_id}"
        return self.settings.stream

    def entry(self, message: OutboxMessage) -> dict[str, str | int]:
        """The stream entry's fields for one message."""
        return {
            "message_id": message.message_id,
            "payment_id": message.payment_id,
            "sequence": message.sequence,
            "type": message.event.type_name,
            "data": dumps(self.serializer(message.event)),
        }

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            try:
                self._client = aioredis.Redis.from_url(
                    self.settings.url,
                    socket_timeout=self.settings.timeout_s,
                    socket_connect_timeout=self.settings.connect_timeout_s,
                    # No retries inside redis-py: a failed batch goes back to the relay, whose
                    # backoff decides when to try again.
                    retry=Retry(NoBackoff(), 0),
                )
            except ValueError as error:
                self._fail(error)
        return self._client

    def _fail(self, error: BaseException) -> NoReturn:
        message = f"{type(error).__name__}: {error}"
        if self._password:  # drivers may echo what they were given
            message = message.replace(self._password, "***")
            message = message.replace(unquote(self._password), "***")
        raise EventSinkError(f"redis_streams sink at {self._safe_url}: {message}") from None

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        if not messages:
            return
        if sniffio.current_async_library() != "asyncio":
            raise EventSinkError(
                "redis_streams sink: needs asyncio (it uses redis.asyncio); this service runs "
                f"on {sniffio.current_async_library()}"
            )
        merchants: Mapping[str, str] = {}
        if self.settings.per_merchant:
            merchants = await self.directory.resolve(messages)
        entries = [(self.stream_for(merchants.get(m.payment_id)), self.entry(m)) for m in messages]
        from redis.exceptions import RedisError

        client = self._redis()
        try:
            async with client.pipeline(transaction=True) as pipe:
                for stream, fields in entries:
                    pipe.xadd(
                        stream,
                        fields,  # type: ignore[arg-type]  # redis-py's stubs want an invariant dict
                        maxlen=self.settings.maxlen,
                        approximate=self.settings.approximate,
                    )
                await pipe.execute()
        except (RedisError, OSError) as error:
            self._fail(error)

    async def aclose(self) -> None:
        """Close the connection pool (idempotent; a later publish opens a new one)."""
        client, self._client = self._client, None
        if client is not None:
            from redis.exceptions import RedisError

            try:
                await client.aclose()
            except (RedisError, OSError) as error:
                log.warning("closing %s: %s", self._safe_url, type(error).__name__)


class RedisStreamsPlugin(SinkPlugin[RedisStreamsSink]):
    """Registers a :class:`RedisStreamsSink` when ``[plugins.redis_streams]`` is configured."""

    @hookimpl(trylast=True)
    def aegispay_register_event_sinks(
        self, register: Callable[[EventSink], None], config: PluginConfig
    ) -> None:
        settings = read_config(self._section, RedisStreamsConfig, f"plugins.{NAME}")
        if settings is None:
            return
        sink = RedisStreamsSink(settings, directory=self._directory)
        self.sinks.append(sink)
        register(sink)
