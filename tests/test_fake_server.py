"""The loopback HTTP server for gateway fakes (aegispay.fake_server) and its injected faults."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest
from aegispay.fake_server import (
    FakeRequest,
    FakeResponse,
    Fault,
    LoopbackServer,
    json_response,
)


class Echo:
    """A handler that counts the requests it processed (guarded by its own lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processed: list[FakeRequest] = []
        self.seen = threading.Event()

    def __call__(self, request: FakeRequest) -> FakeResponse:
        with self.lock:
            self.processed.append(request)
        self.seen.set()
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        return json_response(
            201,
            {"method": request.method, "path": request.path, "query": dict(request.query),
             "body": request.body.decode()},
            {"X-Fake": "yes"},
        )  # fmt: skip


def _server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "aegispay-fake-server"]


@pytest.fixture
def echo() -> Echo:
    return Echo()


@pytest.fixture
def server(echo: Echo) -> Iterator[LoopbackServer]:
    with LoopbackServer(echo) as running:
        yield running


def test_request_and_response_round_trip(server: LoopbackServer, echo: Echo) -> None:
    assert server.base_url.startswith("http://127.0.0.1:")
    with httpx.Client(base_url=server.base_url, timeout=2) as client:
        for n in range(3):  # one keep-alive connection, several requests
            response = client.post(
                "/v1/payment%20intents?expand=x&a=1", content=f"n={n}", headers={"X-Key": "K"}
            )
            assert response.status_code == 201
            assert response.headers["x-fake"] == "yes"
            assert response.json() == {
                "method": "POST",
                "path": "/v1/payment intents",
                "query": {"expand": "x", "a": "1"},
                "body": f"n={n}",
            }
    received = server.received()
    assert [r.body for r in received] == [b"n=0", b"n=1", b"n=2"]
    assert received[0].headers["x-key"] == "K"  # names lower-cased
    assert received == echo.processed


def test_error_500_and_rate_limit_answer_without_processing(
    server: LoopbackServer, echo: Echo
) -> None:
    server.inject(Fault.ERROR_500)
    server.inject(Fault.RATE_LIMITED, retry_after_s=9)
    with httpx.Client(base_url=server.base_url, timeout=2) as client:
        assert client.post("/a").status_code == 500
        limited = client.post("/a")
        assert (limited.status_code, limited.headers["retry-after"]) == (429, "9")
        assert client.post("/a").status_code == 201  # faults used up
    assert len(echo.processed) == 1
    assert len(server.received()) == 3


@pytest.mark.parametrize(
    ("fault", "processed"),
    [(Fault.DROP_BEFORE_PROCESSING, 0), (Fault.DROP_AFTER_PROCESSING, 1)],
)
def test_drops_close_without_answering(
    server: LoopbackServer, echo: Echo, fault: Fault, processed: int
) -> None:
    server.inject(fault)
    with httpx.Client(base_url=server.base_url, timeout=2) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.post("/a", content=b"x")
        assert len(echo.processed) == processed
        assert client.post("/a").status_code == 201  # the next connection is served


def test_timeout_after_processing_never_answers(server: LoopbackServer, echo: Echo) -> None:
    server.inject(Fault.TIMEOUT_AFTER_PROCESSING)
    with (
        httpx.Client(base_url=server.base_url, timeout=0.2) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.post("/a")
    assert echo.seen.wait(10)  # processed (maybe after the client gave up on a slow machine)
    assert len(echo.processed) == 1


def test_latency_then_normal_processing(server: LoopbackServer, echo: Echo) -> None:
    server.inject(Fault.LATENCY, latency_s=0.01)
    with httpx.Client(base_url=server.base_url, timeout=2) as client:
        assert client.get("/slow").status_code == 201
    assert len(echo.processed) == 1


def test_faults_match_method_path_and_count(server: LoopbackServer, echo: Echo) -> None:
    server.inject(Fault.ERROR_500, count=2, method="post", path_prefix="/v1/refunds")
    with httpx.Client(base_url=server.base_url, timeout=2) as client:
        assert client.get("/v1/refunds/re_1").status_code == 201  # other method
        assert client.post("/v1/charges").status_code == 201  # other path
        assert client.post("/v1/refunds").status_code == 500
        assert client.post("/v1/refunds/x").status_code == 500
        assert client.post("/v1/refunds").status_code == 201  # count used up


def test_inject_validates_its_arguments(server: LoopbackServer) -> None:
    with pytest.raises(ValueError, match="count"):
        server.inject(Fault.ERROR_500, count=0)
    with pytest.raises(ValueError, match="latency_s"):
        server.inject(Fault.LATENCY, latency_s=-1)
    with pytest.raises(TypeError, match="Fault"):
        server.inject("error_500")  # type: ignore[arg-type]


def test_a_failing_handler_answers_500_and_is_recorded(server: LoopbackServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=2) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    errors = server.handler_errors()
    assert len(errors) == 1 and "handler bug" in str(errors[0])


@pytest.mark.anyio
async def test_async_clients_on_either_backend(server: LoopbackServer, echo: Echo) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=2) as client:
        assert (await client.put("/x", content=b"1")).status_code == 201
        server.inject(Fault.DROP_AFTER_PROCESSING)
        with pytest.raises(httpx.RemoteProtocolError):
            await client.put("/x", content=b"2")
    assert [r.body for r in echo.processed] == [b"1", b"2"]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_close_leaves_no_thread_or_socket_even_with_a_hung_client(echo: Echo) -> None:
    before_fds, before_threads = _open_fds(), len(_server_threads())
    server = LoopbackServer(echo).start()
    port = server.port
    server.inject(Fault.TIMEOUT_AFTER_PROCESSING)
    hung = socket.create_connection(("127.0.0.1", port))
    hung.sendall(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    idle = socket.create_connection(("127.0.0.1", port))  # connected, never sends
    try:
        with httpx.Client(base_url=server.base_url, timeout=2) as client:
            assert client.get("/ok").status_code == 201  # served while the others hang
        server.close()
        server.close()  # idempotent
        assert hung.recv(10) == b""  # the server side closed: EOF, no answer
        assert idle.recv(10) == b""
    finally:
        hung.close()
        idle.close()
    assert len(_server_threads()) == before_threads
    assert _open_fds() == before_fds
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_a_taken_port_fails_start_cleanly(server: LoopbackServer, echo: Echo) -> None:
    threads = len(_server_threads())
    with pytest.raises(RuntimeError, match="could not start"):
        LoopbackServer(echo, port=server.port).start()
    assert len(_server_threads()) == threads


def test_base_url_before_start_is_an_error(echo: Echo) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        LoopbackServer(echo).base_url  # noqa: B018


SERVE = """
import sys
from aegispay.fake_server import LoopbackServer, json_response
server = LoopbackServer(lambda request: json_response(200, {"ok": True})).start()
print(server.port, flush=True)
server.serve_forever()
print("closed", flush=True)
"""


def test_serve_forever_stops_cleanly_on_sigterm() -> None:
    process = subprocess.Popen([sys.executable, "-c", SERVE], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        with httpx.Client(timeout=5) as client:
            assert client.get(f"http://127.0.0.1:{port}/x").json() == {"ok": True}
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert out.strip() == "closed"
