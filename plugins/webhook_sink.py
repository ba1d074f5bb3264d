"""Signed webhooks to merchants: every outbox message is POSTed as one JSON body to each
configured endpoint that wants it.

Configuration (``[plugins.webhooks]``; the sink is active when the section has any key)::

    timeout_s = 10.0             # each request (read / write / pool)
    connect_timeout_s = 3.0
    attempts = 3                 # tries per message within one publish (1 = no retry)
    backoff_base_s = 0.25        # full jitter: sleep uniform(0, min(max, base * 2**n))
    backoff_max_s = 2.0
    max_retry_after_s = 10.0     # a longer Retry-After is left to the relay's backoff
    max_connections = 10         # connection pool per endpoint
    concurrency = 4              # payments delivered at once (one payment stays in order)

    [plugins.webhooks.endpoints.acme]   # one table per endpoint; the name is yours
    url = "https://acme.example/aegispay/webhooks"
    secret = "whsec_..."         # at least 16 characters; set it from the environment:
                                 # AEGISPAY_PLUGINS__WEBHOOKS__ENDPOINTS__ACME__SECRET
    merchants = ["m_acme"]       # only these merchants' payments (default: every merchant)
    event_types = ["PaymentCompleted", "RefundSucceeded"]   # default: every event
    allow_http = false           # plain http only to loopback unless true
    enabled = true

Each endpoint is its own sink, named ``webhooks.<endpoint>``.

The request: ``POST <url>`` with ``Content-Type: application/json`` and the body::

    {"id": "<message_id>", "type": "PaymentCompleted", "payment_id": "...",
     "merchant_id": "...", "sequence": 4, "occurred_at": "2025-01-01T00:00:00+00:00",
     "data": {... the event, as service.event_types.to_dict gives it ...}}

and the headers ``AegisPay-Message-Id`` (the message id again: deduplicate on it),
``AegisPay-Event-Type`` and ``AegisPay-Signature: t=<unix seconds>,v1=<hex>``, where ``<hex>`` is
HMAC-SHA256 with the endpoint's secret over ``f"{t}.".encode() + raw_body``. Verify with
:func:`verify_signature` on the raw bytes received, before parsing them.

Messages of one payment are sent one after another, each only once the previous one was
accepted (any 2xx), so a receiver sees a payment's events in order; different payments go out
concurrently. A connect error, a timeout, 408, 429 or 5xx is retried within the call
(``attempts``, exponential backoff with full jitter, or the Retry-After the receiver asked for);
then the sink raises :class:`aegispay.plugins._sinks.EventSinkError` and the relay retries the
batch later with its own backoff. Any other status (4xx, 3xx: redirects are not followed) is
permanent: the sink raises at once (``permanent=True``) and the relay parks the batch after its
attempts. The secret never appears in a repr, a log line or an exception message.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio
import attrs
from aegispay.hookspecs import hookimpl
from aegispay.outbox import EventSink, OutboxMessage
from aegispay.settings import PluginConfig
from aegispay.urls import safe_url

from ._sinks import (
    EventSinkError,
    MerchantDirectory,
    Serializer,
    SinkPlugin,
    by_payment,
    config_error,
    default_serializer,
    dumps,
    read_config,
    require_positive,
)

if TYPE_CHECKING:
    import httpx
    from tenacity import RetryCallState

NAME = "webhooks"
SIGNATURE_HEADER = "AegisPay-Signature"
MESSAGE_ID_HEADER = "AegisPay-Message-Id"
EVENT_TYPE_HEADER = "AegisPay-Event-Type"
DEFAULT_TOLERANCE_S = 300.0
MIN_SECRET_LENGTH = 16

log = logging.getLogger("aegispay.sinks.webhooks")
Sleep = Callable[[float], Awaitable[None]]


# --- signing and verifying ---------------------------------------------------------------------


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: int, raw_body: bytes) -> str:
    """The ``v1`` signature: hex HMAC-SHA256 of ``f"{timestamp}.".encode() + raw_body``."""
    payload = str(timestamp).encode("ascii") + b"." + raw_body
    return hmac.new(_key(secret), payload, hashlib.sha256).hexdigest()


def signature_header(secret: str | bytes, timestamp: int, raw_body: bytes) -> str:
    """The ``AegisPay-Signature`` header value: ``t=<timestamp>,v1=<hex>``."""
    return f"t={timestamp},v1={sign(secret, timestamp, raw_body)}"


def verify_signature(
    secret: str | bytes,
    header: str | None,
    raw_body: bytes,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True when ``header`` (the ``AegisPay-Signature`` value) signs ``raw_body`` with
    ``secret`` and its timestamp is within ``tolerance_s`` of ``now`` (default: the current
    time), in either direction.

    ``raw_body`` is the request body exactly as received (bytes), never a re-encoded parse of
    it. Several ``v1=`` entries are allowed (any one matching is enough). Comparison is
    constant-time (``hmac.compare_digest``). A stale timestamp is rejected so that a captured
    request cannot be replayed later; also deduplicate on ``AegisPay-Message-Id``.
    """
    if not isinstance(raw_body, bytes | bytearray):
        raise TypeError("raw_body must be the request body as bytes, exactly as received")
    if not header or not isinstance(header, str):
        return False
    timestamp: int | None = None
    candidates: list[bytes] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                return False
            timestamp = int(value)
        elif key == "v1":
            if not value.isascii():
                return False
            candidates.append(value.encode("ascii"))
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, bytes(raw_body)).encode("ascii")
    matched = False
    for candidate in candidates:  # check every entry: the time taken does not depend on which
        matched |= hmac.compare_digest(expected, candidate)
    return matched


# --- configuration -----------------------------------------------------------------------------


@attrs.frozen
class EndpointConfig:
    url: str = attrs.field(repr=lambda url: repr(safe_url(url)))
    secret: str = attrs.field(repr=False)
    merchants: tuple[str, ...] | None = None
    event_types: tuple[str, ...] | None = None
    allow_http: bool = False
    enabled: bool = True


@attrs.frozen
class WebhooksConfig:
    endpoints: dict[str, EndpointConfig]
    timeout_s: float = 10.0
    connect_timeout_s: float = 3.0
    attempts: int = 3
    backoff_base_s: float = 0.25
    backoff_max_s: float = 2.0
    max_retry_after_s: float = 10.0
    max_connections: int = 10
    concurrency: int = 4
    enabled: bool = True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validate(settings: WebhooksConfig, where: str) -> None:
    require_positive(
        where, timeout_s=settings.timeout_s, connect_timeout_s=settings.connect_timeout_s
    )
    for key in ("attempts", "max_connections", "concurrency"):
        value = getattr(settings, key)
        if value < 1:
            raise config_error(f"{where}.{key}", f"must be at least 1 (got {value!r})")
    for key in ("backoff_base_s", "backoff_max_s", "max_retry_after_s"):
        value = getattr(settings, key)
        if value < 0:
            raise config_error(f"{where}.{key}", f"must not be negative (got {value!r})")
    if not settings.endpoints:
        raise config_error(f"{where}.endpoints", "no endpoint configured")
    for name, endpoint in settings.endpoints.items():
        _validate_endpoint(endpoint, f"{where}.endpoints.{name}")


def _validate_endpoint(endpoint: EndpointConfig, where: str) -> None:
    shown = safe_url(endpoint.url)
    try:
        parts = urlsplit(endpoint.url)
        host = parts.hostname or ""
        parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError as error:
        raise config_error(f"{where}.url", f"not a valid URL ({error})") from None
    if parts.scheme not in ("https", "http") or not host:
        raise config_error(f"{where}.url", f"expected an https:// URL (got {shown!r})")
    if parts.scheme == "http" and not (endpoint.allow_http or _is_loopback(host)):
        raise config_error(
            f"{where}.url",
            f"plain http to {host!r} would send payment events unencrypted: use https, or set "
            "allow_http = true",
        )
    if len(endpoint.secret) < MIN_SECRET_LENGTH:  # says how long it is, never what it is
        raise config_error(
            f"{where}.secret", f"must be at least {MIN_SECRET_LENGTH} characters (value hidden)"
        )


# --- delivery ----------------------------------------------------------------------------------


def _user_agent() -> str:
    try:
        return f"AegisPay-Webhooks/{version('aegispay')}"
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "AegisPay-Webhooks"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError):
            return None
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


class WebhookSink:
    """Delivers messages to one endpoint; see the module docstring for the wire format."""

    def __init__(
        self,
        endpoint_name: str,
        endpoint: EndpointConfig,
        settings: WebhooksConfig,
        *,
        directory: MerchantDirectory | None = None,
        serializer: Serializer = default_serializer,
        sleep: Sleep | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        _validate_endpoint(endpoint, f"plugins.{NAME}.endpoints.{endpoint_name}")
        self.name = f"{NAME}.{endpoint_name}"
        self.endpoint_name = endpoint_name
        self.url = endpoint.url
        self.settings = settings
        self.serializer = serializer
        self.directory = directory or MerchantDirectory()
        self._secret = _key(endpoint.secret)
        self._merchants = None if endpoint.merchants is None else frozenset(endpoint.merchants)
        self._types = None if endpoint.event_types is None else frozenset(endpoint.event_types)
        self._sleep: Sleep = sleep or anyio.sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._where = f"webhook endpoint {endpoint_name!r} ({safe_url(endpoint.url)})"

    def __repr__(self) -> str:
        return f"WebhookSink({self.name!r}, url={safe_url(self.url)!r})"

    # -- what goes out ------------------------------------------------------------------------

    def body(self, message: OutboxMessage, merchant_id: str) -> bytes:
        """The raw JSON body for one message (what is signed and sent)."""
        event = message.event
        return dumps(
            {
                "id": message.message_id,
                "type": event.type_name,
                "payment_id": message.payment_id,
                "merchant_id": merchant_id,
                "sequence": message.sequence,
                "occurred_at": event.occurred_at.isoformat(),
                "data": self.serializer(event),
            }
        ).encode("utf-8")

    def _wanted(self, message: OutboxMessage) -> bool:
        return self._types is None or message.event.type_name in self._types

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        wanted = [m for m in messages if self._wanted(m)]
        if not wanted:
            return
        merchants = await self.directory.resolve(wanted)
        if self._merchants is not None:
            wanted = [m for m in wanted if merchants[m.payment_id] in self._merchants]
        groups = by_payment(wanted)
        if not groups:
            return
        client = self._client()
        failures: list[EventSinkError] = []

        async def deliver_group(group: list[OutboxMessage]) -> None:
            for message in group:  # in order; stop at the first failure of this payment
                try:
                    await self._deliver(client, message, merchants[message.payment_id])
                except EventSinkError as error:
                    failures.append(error)
                    return

        if len(groups) == 1 or self.settings.concurrency == 1:
            for group in groups:
                await deliver_group(group)
        else:
            limiter = anyio.CapacityLimiter(self.settings.concurrency)

            async def limited(group: list[OutboxMessage]) -> None:
                async with limiter:
                    await deliver_group(group)

            async with anyio.create_task_group() as task_group:
                for group in groups:
                    task_group.start_soon(limited, group)
        if failures:
            first = failures[0]
            more = f" (and {len(failures) - 1} more payments failed)" if len(failures) > 1 else ""
            raise EventSinkError(
                f"{first}{more}", permanent=first.permanent, retry_after=first.retry_after
            )

    async def _deliver(
        self, client: httpx.AsyncClient, message: OutboxMessage, merchant: str
    ) -> None:
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

        raw = self.body(message, merchant)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.attempts),
            wait=self._wait,
            retry=retry_if_exception(self._retryable),
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._post(client, message, raw, attempt.retry_state.attempt_number)

    def _retryable(self, error: BaseException) -> bool:
        if not isinstance(error, EventSinkError) or error.permanent:
            return False
        return error.retry_after is None or error.retry_after <= self.settings.max_retry_after_s

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, EventSinkError) and error.retry_after is not None:
            return error.retry_after
        ceiling = self.settings.backoff_base_s * 2 ** (state.attempt_number - 1)
        return self._rng.uniform(0, min(self.settings.backoff_max_s, ceiling))

    async def _post(
        self, client: httpx.AsyncClient, message: OutboxMessage, raw: bytes, attempt: int
    ) -> None:
        import httpx

        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            MESSAGE_ID_HEADER: message.message_id,
            EVENT_TYPE_HEADER: message.event.type_name,
            SIGNATURE_HEADER: signature_header(self._secret, timestamp, raw),
        }
        what = f"{self._where}: message {message.message_id}"
        tries = f"attempt {attempt} of {self.settings.attempts}"
        try:
            response = await client.post(self.url, content=raw, headers=headers)
        except httpx.TransportError as error:  # connect / read / write / pool errors, timeouts
            detail = self._scrub(f"{type(error).__name__}: {error}".rstrip(": "))
            log.info("%s: %s (%s)", what, detail, tries)
            raise EventSinkError(f"{what}: {detail} ({tries})") from None
        status = response.status_code
        if 200 <= status < 300:
            return
        reason = f"HTTP {status} {response.reason_phrase}".rstrip()
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock())
            wait = "" if retry_after is None else f", Retry-After {retry_after:g}s"
            log.info("%s: %s (%s%s)", what, reason, tries, wait)
            raise EventSinkError(f"{what}: {reason} ({tries}{wait})", retry_after=retry_after)
        log.warning("%s: %s: refused, not retried", what, reason)
        raise EventSinkError(f"{what}: {reason}: refused, not retried", permanent=True)

    def _scrub(self, text: str) -> str:
        secret = self._secret.decode("utf-8", "replace")
        return text.replace(secret, "***") if secret else text

    # -- the connection pool ------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if self._http is None or self._http.is_closed:
            import httpx

            limits = httpx.Limits(
                max_connections=self.settings.max_connections,
                max_keepalive_connections=self.settings.max_connections,
            )
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(
                    self.settings.timeout_s, connect=self.settings.connect_timeout_s
                ),
                limits=limits,
                follow_redirects=False,
                headers={"User-Agent": _user_agent()},
                transport=self._transport,
            )
        return self._http

    async def aclose(self) -> None:
        """Close the connection pool (idempotent; a later publish opens a new one)."""
        client, self._http = self._http, None
        if client is not None:
            await client.aclose()


class WebhooksPlugin(SinkPlugin[WebhookSink]):
    """Registers one :class:`WebhookSink` per configured endpoint of ``[plugins.webhooks]``."""

    def __repr__(self) -> str:
        return f"WebhooksPlugin(sinks={[sink.name for sink in self.sinks]})"

    @hookimpl(trylast=True)
    def aegispay_register_event_sinks(
        self, register: Callable[[EventSink], None], config: PluginConfig
    ) -> None:
        where = f"plugins.{NAME}"
        settings = read_config(self._section, WebhooksConfig, where)
        if settings is None:
            return
        _validate(settings, where)
        for name, endpoint in sorted(settings.endpoints.items()):
            if endpoint.enabled:
                sink = WebhookSink(name, endpoint, settings, directory=self._directory)
                self.sinks.append(sink)
                register(sink)
