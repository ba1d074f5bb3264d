"""A loopback HTTP/1.1 server for gateway fakes, with injectable transport faults.

Built on asyncio + h11 rather than a web framework so a fake controls the socket: it can answer
nothing, drop the connection before or after processing, or stall. The server runs its own event
loop in a daemon thread, so sync tests and async tests (asyncio or trio) use it the same way, and
a test's own event loop is never blocked by the fake.

A fake supplies a synchronous :data:`Handler`; it is called on the server thread, so the fake
guards its own state with a ``threading.Lock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import signal
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
import h11

log = logging.getLogger(__name__)

_READ_SIZE = 65536
_MAX_BODY = 10 * 1024 * 1024


@attrs.frozen
class FakeRequest:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.frozen
class FakeResponse:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = attrs.field(factory=dict)


def json_response(
    status: int, obj: object, headers: Mapping[str, str] | None = None
) -> FakeResponse:
    merged = {"content-type": "application/json"}
    merged.update({k.lower(): v for k, v in (headers or {}).items()})
    return FakeResponse(status, json.dumps(obj, separators=(",", ":")).encode(), merged)


Handler = Callable[[FakeRequest], FakeResponse]


class Fault(enum.Enum):
    ERROR_500 = "error_500"  # answer 500 without processing
    RATE_LIMITED = "rate_limited"  # answer 429 + Retry-After without processing
    TIMEOUT_AFTER_PROCESSING = "timeout_after_processing"  # process, never answer
    DROP_BEFORE_PROCESSING = "drop_before_processing"  # read the request, close, do not process
    DROP_AFTER_PROCESSING = "drop_after_processing"  # process, close without answering
    LATENCY = "latency"  # wait latency_s, then process normally


@attrs.define
class _FaultRule:
    fault: Fault
    remaining: int
    method: str | None
    path_prefix: str
    latency_s: float
    retry_after_s: int

    def matches(self, request: FakeRequest) -> bool:
        if self.method is not None and request.method != self.method.upper():
            return False
        return request.path.startswith(self.path_prefix)


class _Close(Exception):
    """Internal: end this connection without answering."""


class LoopbackServer:
    """Serves ``handler`` on ``127.0.0.1`` (a free port unless ``port`` is given).

    ``received()`` lists every request read in full, including ones a fault then dropped or left
    unanswered. ``handler_errors()`` lists exceptions the handler raised (each answered 500), so a
    test can assert the fake itself did not break.
    """

    def __init__(self, handler: Handler, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._handler = handler
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._lock = threading.Lock()
        self._rules: list[_FaultRule] = []
        self._received: list[FakeRequest] = []
        self._errors: list[BaseException] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._stopped: asyncio.Event | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> LoopbackServer:
        if self._thread is not None:
            raise RuntimeError("LoopbackServer already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(ready))
            except BaseException as exc:
                failure.append(exc)
                ready.set()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="aegispay-fake-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"fake server could not start: {failure[0]}") from failure[0]
        return self

    def close(self) -> None:
        """Stop serving, close every connection and the listening socket, join the thread."""
        thread, loop, stopped = self._thread, self._loop, self._stopped
        if thread is None:
            return
        if loop is not None and stopped is not None and thread.is_alive():
            loop.call_soon_threadsafe(stopped.set)
        thread.join()
        self._thread = None
        self._loop = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def serve_forever(self) -> None:
        """Start (if needed) and block until Ctrl-C or SIGTERM, then close: for running a fake
        as a process (``python -m <package>.fake --port N``)."""
        if self._thread is None:
            self.start()
        previous: Any = None
        on_main = threading.current_thread() is threading.main_thread()
        if on_main:  # signal handlers can only be installed from the main thread
            previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            thread = self._thread
            while thread is not None and thread.is_alive():
                thread.join(timeout=0.5)  # a bounded join keeps the main thread interruptible
        except KeyboardInterrupt:
            pass
        finally:
            if on_main:
                signal.signal(signal.SIGTERM, previous)
            self.close()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("LoopbackServer is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # -- control ---------------------------------------------------------------------------------

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
        """Apply ``fault`` to the next ``count`` requests matching ``method`` and ``path_prefix``.

        Rules apply in the order injected; the first matching rule with uses left wins.
        """
        if not isinstance(fault, Fault):
            raise TypeError(f"fault: expected a Fault, got {fault!r}")
        if count < 1:
            raise ValueError(f"count: must be >= 1, got {count}")
        if latency_s < 0:
            raise ValueError(f"latency_s: must be >= 0, got {latency_s}")
        if retry_after_s < 0:
            raise ValueError(f"retry_after_s: must be >= 0, got {retry_after_s}")
        rule = _FaultRule(fault, count, method, path_prefix, latency_s, retry_after_s)
        with self._lock:
            self._rules.append(rule)

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()

    def received(self) -> list[FakeRequest]:
        with self._lock:
            return list(self._received)

    def handler_errors(self) -> list[BaseException]:
        with self._lock:
            return list(self._errors)

    # -- serving (server thread) -----------------------------------------------------------------

    async def _serve(self, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._on_connection, self._host, self._requested_port)
        self._server = server
        self._port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            server.close()
            # Cancel open connections before wait_closed(): from Python 3.12 it waits for them.
            tasks = list(self._connections)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.wait_closed()
            self._server = None

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._converse(reader, writer)
        except (_Close, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # server closing: fall through to close the socket
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_BODY)
        while True:
            try:
                request = await self._read_request(conn, reader)
            except h11.RemoteProtocolError as exc:
                await self._send(conn, writer, FakeResponse(400, str(exc).encode()))
                return
            if request is None:
                return
            with self._lock:
                self._received.append(request)
                rule = self._take_rule(request)
            response = await self._respond(request, rule, reader)
            await self._send(conn, writer, response)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    def _take_rule(self, request: FakeRequest) -> _FaultRule | None:
        for rule in self._rules:
            if rule.remaining > 0 and rule.matches(request):
                rule.remaining -= 1
                if rule.remaining == 0:
                    self._rules.remove(rule)
                return rule
        return None

    async def _respond(
        self, request: FakeRequest, rule: _FaultRule | None, reader: asyncio.StreamReader
    ) -> FakeResponse:
        fault = rule.fault if rule is not None else None
        if fault is Fault.ERROR_500:
            return json_response(500, {"error": {"message": "injected internal error"}})
        if fault is Fault.RATE_LIMITED:
            assert rule is not None
            return json_response(
                429,
                {"error": {"message": "injected rate limit"}},
                {"retry-after": str(rule.retry_after_s)},
            )
        if fault is Fault.DROP_BEFORE_PROCESSING:
            raise _Close
        if fault is Fault.LATENCY:
            assert rule is not None
            await asyncio.sleep(rule.latency_s)  # simulated gateway latency, not test sync
        response = self._call_handler(request)
        if fault is Fault.DROP_AFTER_PROCESSING:
            raise _Close
        if fault is Fault.TIMEOUT_AFTER_PROCESSING:
            # Never answer: hold the connection until the client gives up (EOF) or we close.
            while await reader.read(_READ_SIZE):
                pass
            raise _Close
        return response

    def _call_handler(self, request: FakeRequest) -> FakeResponse:
        try:
            response = self._handler(request)
        except Exception as exc:
            log.exception("fake handler failed on %s %s", request.method, request.path)
            with self._lock:
                self._errors.append(exc)
            return json_response(500, {"error": {"message": f"fake handler error: {exc!r}"}})
        if not isinstance(response, FakeResponse):
            error = TypeError(f"handler returned {type(response).__name__}, not FakeResponse")
            with self._lock:
                self._errors.append(error)
            return json_response(500, {"error": {"message": str(error)}})
        return response

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> FakeRequest | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(_READ_SIZE)
                conn.receive_data(data)  # b"" tells h11 the peer closed
                continue
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > _MAX_BODY:
                    raise h11.RemoteProtocolError("request body too large")
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return _to_fake_request(head, bytes(body))

    async def _send(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, response: FakeResponse
    ) -> None:
        headers = [
            (k.lower(), v) for k, v in response.headers.items() if k.lower() != "content-length"
        ]
        headers.append(("content-length", str(len(response.body))))
        try:
            writer.write(conn.send(h11.Response(status_code=response.status, headers=headers)))
            if response.body:
                writer.write(conn.send(h11.Data(data=response.body)))
            writer.write(conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as exc:
            raise _Close from exc
        await writer.drain()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _to_fake_request(head: h11.Request, body: bytes) -> FakeRequest:
    target = urlsplit(head.target.decode("latin-1"))
    headers: dict[str, str] = {}
    for name, value in head.headers:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return FakeRequest(
        method=head.method.decode("ascii").upper(),
        path=unquote(target.path),
        query=dict(parse_qsl(target.query, keep_blank_values=True)),
        headers=headers,
        body=body,
    )


class LoopbackFake:
    """What every gateway fake shares: a :class:`LoopbackServer` underneath (``self._server``,
    set by the fake's ``__init__``), its lifecycle (``start``/``close``, a context manager,
    ``serve_forever``) and the fault controls of :class:`FakeGatewayControl`. A fake that runs
    more than the server (a webhook sender, say) extends ``start``/``close`` and calls super."""

    _server: LoopbackServer

    def start(self) -> Self:
        self._server.start()
        return self

    def close(self) -> None:
        self._server.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def serve_forever(self) -> None:
        """Serve until interrupted (Ctrl-C or SIGTERM), then close."""
        self._server.serve_forever()

    @property
    def base_url(self) -> str:
        return self._server.base_url

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
        """See :meth:`LoopbackServer.inject`."""
        self._server.inject(
            fault,
            count=count,
            method=method,
            path_prefix=path_prefix,
            latency_s=latency_s,
            retry_after_s=retry_after_s,
        )

    def received(self) -> list[FakeRequest]:
        return self._server.received()

    def handler_errors(self) -> list[BaseException]:
        return self._server.handler_errors()
