"""Fleet-wide breaker state in Redis (aegispay.shared_breaker), against the real Redis.

Workers are GatewayMonitors (or services) on fake clocks sharing a key prefix; each test
drives the refresh rounds itself (``refresh_once``), so nothing waits on the background task.
"The open timeout has passed" is two steps: the fake clocks move on, and the open key goes
(deleted here, as its PX would; one test lets a real PX run out).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import _services
import anyio
import hypothesis
import pytest
import redis.asyncio as aioredis
from _services import REDIS_URL
from aegispay import Money, PaymentRequest, PaymentState
from aegispay.breaker import REJECTED, CircuitState, GatewayMonitor
from aegispay.errors import ConfigError
from aegispay.gateways import Operation, Outcome
from aegispay.health import CallClass
from aegispay.settings import (
    BreakerSettings,
    GatewayHealthSettings,
    Settings,
    SharedBreakerSettings,
    settings_from_dict,
)
from aegispay.shared_breaker import SharedBreakerState
from aegispay.stack import build_service
from aegispay.testing import ScriptedGateway, make_test_service
from hypothesis import strategies as st

pytestmark = pytest.mark.anyio

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1
TIMEOUT_S = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio only


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    async with _services.redis_client(decode_responses=True) as client:
        yield client


# Every key a test here can make, per prefix: deleted by name afterwards (a SCAN of a busy
# shared Redis takes seconds per test).
_GATEWAYS = ("gw", "first", "second", "sim-alpha")


def our_keys(prefix: str) -> list[str]:
    return [f"{prefix}{kind}:{gw}" for kind in ("open", "probe", "stats") for gw in _GATEWAYS]


@pytest.fixture
async def prefix(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    """A random key prefix per test; its keys are deleted afterwards."""
    value = f"aegispay-test:{uuid.uuid4().hex}:"
    yield value
    await redis_client.delete(*our_keys(value))


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def health_settings(prefix: str, **breaker: Any) -> GatewayHealthSettings:
    options: dict[str, Any] = {
        "failure_threshold": 2,
        "open_timeout_s": TIMEOUT_S,
        "success_threshold": 1,
        **breaker,
    }
    return GatewayHealthSettings(
        window_calls=100,
        window_s=0,
        breaker=BreakerSettings(**options),
        shared=SharedBreakerSettings(url=REDIS_URL, prefix=prefix),
    )


class Worker:
    """One worker: a monitor of gateway ``gw`` on its own fake clock, and its shared state."""

    def __init__(self, name: str, prefix: str, url: str = REDIS_URL, **breaker: Any) -> None:
        settings = health_settings(prefix, **breaker)
        # Each worker's monotonic clock has its own origin: only durations may cross.
        self.clock = FakeClock(1000.0 * (1 + len(name)) + ord(name[0]))
        self.monitor = GatewayMonitor(["gw"], settings, clock=self.clock, on_change=None)
        self.health, self.breaker = self.monitor.pairs["gw"]
        self.shared = SharedBreakerState(self.monitor, url, settings.shared, worker=name)

    def call(self, cls: CallClass = CallClass.SUCCESS, latency_ms: float = 5.0) -> bool:
        """One gateway call through the breaker; False when it failed fast."""
        token = self.breaker.allow()
        if token == REJECTED:
            return False
        self.health.record(cls, latency_ms)
        self.breaker.record(token, cls in (CallClass.NOT_SENT, CallClass.TIMEOUT))
        return True

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    async def refresh(self) -> None:
        assert await self.shared.refresh_once()


@pytest.fixture
async def workers(prefix: str) -> AsyncIterator[tuple[Worker, Worker, Worker]]:
    made = (Worker("a", prefix), Worker("b", prefix), Worker("c", prefix))
    yield made
    for worker in made:
        await worker.shared.aclose()


async def open_on_a(a: Worker, *others: Worker) -> None:
    a.call(CallClass.NOT_SENT)
    a.call(CallClass.NOT_SENT)
    assert a.breaker.state is OPEN
    await a.refresh()
    for other in others:
        await other.refresh()


async def time_passes(redis_client: aioredis.Redis, prefix: str, *workers: Worker) -> None:
    """The open timeout elapses: every fake clock moves on, and the open key's PX runs out."""
    for worker in workers:
        worker.advance(TIMEOUT_S)
    await redis_client.delete(f"{prefix}open:gw")


async def test_an_open_circuit_is_adopted_by_the_other_workers(
    workers: tuple[Worker, Worker, Worker], redis_client: aioredis.Redis, prefix: str
) -> None:
    a, b, _ = workers
    await b.refresh()  # b knew the fleet before (closed)
    assert b.breaker.state is CLOSED and b.breaker.shared
    await open_on_a(a, b)

    assert b.breaker.state is OPEN
    assert b.health.failures == 0 and b.breaker.consecutive_failures == 0  # none of its own
    assert not b.call() and b.breaker.rejected == 1
    assert 0 < b.breaker.reopens_in(b.clock()) <= TIMEOUT_S
    assert "opened by another worker: 2 consecutive failures" in b.breaker.transitions[-1][3]
    value = json.loads(await redis_client.get(f"{prefix}open:gw"))
    assert value["worker"] == "a" and value["reason"] == "2 consecutive failures"
    # Adopting is not opening again: another round changes nothing.
    await b.refresh()
    assert b.breaker.opened == 1 and len(b.breaker.transitions) == 1


async def test_only_one_worker_gets_the_probe_slot(
    workers: tuple[Worker, Worker, Worker], redis_client: aioredis.Redis, prefix: str
) -> None:
    a, b, c = workers
    await open_on_a(a, b, c)
    await time_passes(redis_client, prefix, a, b, c)
    # Until a round has asked Redis for the slot, nobody probes.
    assert not any(w.call() for w in (a, b, c))
    async with anyio.create_task_group() as group:  # all three ask at once
        for worker in (a, b, c):
            group.start_soon(worker.refresh)
    granted = [w for w in (a, b, c) if w.breaker.probe_granted]
    assert len(granted) == 1
    winner = granted[0]
    assert await redis_client.get(f"{prefix}probe:gw") == f"probe:{winner.shared.worker}"
    for worker in (a, b, c):
        assert worker.breaker.wants_probe(worker.clock()) is (worker is winner)
    # The winner probes (held open: the call has not finished); the others fail fast.
    token = winner.breaker.allow()
    assert token != REJECTED and winner.breaker.state is HALF_OPEN
    for worker in (a, b, c):
        if worker is not winner:
            assert not worker.call()
            await worker.refresh()  # still not theirs
            assert not worker.breaker.probe_granted and not worker.call()
    winner.breaker.release(token)


async def test_a_successful_probe_closes_the_circuit_everywhere(
    workers: tuple[Worker, Worker, Worker], redis_client: aioredis.Redis, prefix: str
) -> None:
    a, b, c = workers
    await c.refresh()
    await open_on_a(a, b)
    await time_passes(redis_client, prefix, a, b, c)
    await b.refresh()
    await a.refresh()
    assert b.breaker.probe_granted and not a.breaker.probe_granted
    assert b.call()  # the probe succeeds: b closes
    assert b.breaker.state is CLOSED
    await b.refresh()
    assert await redis_client.get(f"{prefix}open:gw") is None
    assert await redis_client.get(f"{prefix}probe:gw") is not None  # the tombstone
    await a.refresh()
    await c.refresh()
    assert a.breaker.state is CLOSED and a.call()
    assert "closed by a successful probe on another worker" in a.breaker.transitions[-1][3]
    assert c.breaker.state is CLOSED and c.breaker.transitions == []  # never saw the open
    # The fleet is closed: the next failures open it afresh, and everyone adopts that.
    await open_on_a(a, b, c)
    assert b.breaker.state is OPEN and c.breaker.state is OPEN


async def test_a_failed_probe_reopens_the_circuit_for_everyone(
    workers: tuple[Worker, Worker, Worker], redis_client: aioredis.Redis, prefix: str
) -> None:
    a, b, _ = workers
    await open_on_a(a, b)
    first = json.loads(await redis_client.get(f"{prefix}open:gw"))["id"]
    await time_passes(redis_client, prefix, a, b)
    await b.refresh()
    assert b.breaker.probe_granted
    assert b.call(CallClass.TIMEOUT)
    assert b.breaker.state is OPEN
    await b.refresh()
    value = json.loads(await redis_client.get(f"{prefix}open:gw"))
    assert value["id"] != first and value["reason"] == "probe failed"
    assert await redis_client.get(f"{prefix}probe:gw") is None  # the slot is free for later
    await a.refresh()
    assert a.breaker.state is OPEN and 0 < a.breaker.reopens_in(a.clock()) <= TIMEOUT_S
    assert not a.call()


async def test_a_close_does_not_remove_a_newer_open(
    workers: tuple[Worker, Worker, Worker], redis_client: aioredis.Redis, prefix: str
) -> None:
    a, b, c = workers
    await open_on_a(a, b)
    await time_passes(redis_client, prefix, a, b)
    await b.refresh()
    assert b.call()  # b's probe closed the open it adopted ...
    c.call(CallClass.NOT_SENT)
    c.call(CallClass.NOT_SENT)
    await c.refresh()  # ... but c, which never saw it, has just opened afresh
    await b.refresh()
    assert json.loads(await redis_client.get(f"{prefix}open:gw"))["worker"] == "c"
    assert b.breaker.state is OPEN  # b adopted c's open in the same round
    await a.refresh()
    assert a.breaker.state is OPEN


async def test_every_key_expires(
    workers: tuple[Worker, Worker, Worker], redis_client: aioredis.Redis, prefix: str
) -> None:
    a, b, _ = workers
    await open_on_a(a, b)
    assert 0 < await redis_client.pttl(f"{prefix}open:gw") <= TIMEOUT_S * 1000
    stats_ttl = a.shared.settings.stats_ttl_s * 1000
    assert 0 < await redis_client.pttl(f"{prefix}stats:gw") <= stats_ttl
    await time_passes(redis_client, prefix, a, b)
    await a.refresh()
    assert 0 < await redis_client.pttl(f"{prefix}probe:gw") <= TIMEOUT_S * 1000
    assert a.call()
    await a.refresh()  # the tombstone too
    assert 0 < await redis_client.pttl(f"{prefix}probe:gw") <= TIMEOUT_S * 1000


async def test_a_crashed_worker_cannot_hold_the_circuit_open(
    prefix: str, redis_client: aioredis.Redis
) -> None:
    """A opens with a short real timeout and is never heard of again: the key's PX runs out
    and B gets the probe slot without anyone deleting anything."""
    a, b = Worker("a", prefix, open_timeout_s=0.2), Worker("b", prefix, open_timeout_s=0.2)
    try:
        await open_on_a(a, b)
        assert b.breaker.state is OPEN
        # Real time has to pass for Redis (it expires a key by its own clock, exactly: a
        # read after the PTTL never sees the key).
        await anyio.sleep(await redis_client.pttl(f"{prefix}open:gw") / 1000 + 0.01)
        assert not await redis_client.exists(f"{prefix}open:gw")
        b.advance(0.2)
        await b.refresh()
        assert b.breaker.probe_granted and b.call() and b.breaker.state is CLOSED
    finally:
        await a.shared.aclose()
        await b.shared.aclose()


async def test_redis_down_keeps_the_local_breaker_working(prefix: str) -> None:
    worker = Worker("a", prefix, url=DEAD_REDIS)
    try:
        assert not await worker.shared.refresh_once()  # logged, not raised
        assert worker.shared.failed_rounds == 1 and not worker.breaker.shared
        worker.call(CallClass.NOT_SENT)
        worker.call(CallClass.NOT_SENT)
        assert worker.breaker.state is OPEN and not worker.call()
        assert not await worker.shared.refresh_once()
        worker.advance(TIMEOUT_S)
        assert worker.call()  # half-opened on its own, no slot needed: closed again
        assert worker.breaker.state is CLOSED
    finally:
        await worker.shared.aclose()


async def test_losing_redis_drops_the_probe_gate(
    workers: tuple[Worker, Worker, Worker], redis_client: aioredis.Redis, prefix: str
) -> None:
    a, b, _ = workers
    await open_on_a(a, b)
    await time_passes(redis_client, prefix, a, b)
    await b.refresh()  # b holds the slot ...
    await a.refresh()
    assert not a.call()  # ... so a may not probe
    await a.shared.aclose()
    a.shared = SharedBreakerState(a.monitor, DEAD_REDIS, a.shared.settings, worker="a")
    assert not await a.shared.refresh_once()  # Redis gone for a: it judges alone again
    assert not a.breaker.shared and a.call() and a.breaker.state is CLOSED


async def test_the_fleet_view_sums_the_live_workers(
    workers: tuple[Worker, Worker, Worker], redis_client: aioredis.Redis, prefix: str
) -> None:
    a, b, c = workers
    for _ in range(3):
        a.call(CallClass.SUCCESS, latency_ms=10.0)
    a.call(CallClass.DECLINED)
    b.call(CallClass.SUCCESS, latency_ms=200.0)
    b.call(CallClass.NOT_SENT)
    c.call(CallClass.NOT_SENT)
    c.shared.wall = lambda: a.shared.wall() - 60  # its last refresh was a minute ago
    for worker in (a, b, c):
        await worker.refresh()
    fleet = (await a.shared.fleet_health())["gw"]
    assert fleet["successes"] == 4 and fleet["failures"] == 1 and fleet["declined"] == 1
    assert fleet["volume"] == 6 and fleet["availability"] == 0.8
    assert 190 <= fleet["p95_ms"] <= 200  # the highest worker p95 (bucket lower bound)
    assert fleet["workers"] == {"a": "closed", "b": "closed"} and fleet["circuit"] == "closed"
    # The stale worker's field was removed.
    assert sorted(await redis_client.hkeys(f"{prefix}stats:gw")) == ["a", "b"]
    await open_on_a(a)
    fleet = (await b.shared.fleet_health())["gw"]
    assert fleet["circuit"] == "open" and 0 < fleet["reopens_in_s"] <= TIMEOUT_S


def test_settings_validate_the_shared_table() -> None:
    settings = settings_from_dict(
        {"engine": {"gateway_health": {"shared": {"url": REDIS_URL, "refresh_s": 0.25}}}}
    )
    shared = settings.engine.gateway_health.shared
    assert shared.refresh_s == 0.25 and shared.resolve_url(None) == REDIS_URL
    assert SharedBreakerSettings().resolve_url("redis://locks:6379/0") is None  # off
    enabled = SharedBreakerSettings(enabled=True)
    assert enabled.resolve_url("redis://locks:6379/0") == "redis://locks:6379/0"
    with pytest.raises(ConfigError, match="enabled = true needs a url"):
        enabled.resolve_url(None)
    with pytest.raises(ConfigError, match=r"shared.*url: expected a redis://"):
        settings_from_dict({"engine": {"gateway_health": {"shared": {"url": "http://x"}}}})
    with pytest.raises(ConfigError, match=r"stats_ttl_s: must be at least twice refresh_s"):
        settings_from_dict(
            {"engine": {"gateway_health": {"shared": {"refresh_s": 5, "stats_ttl_s": 6}}}}
        )
    secret = SharedBreakerSettings(url="redis://:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in repr(secret)
    state = SharedBreakerState(GatewayMonitor(["gw"]), secret.url or "", secret)
    assert "hunter2" not in repr(state)


def test_build_service_wires_it_only_when_configured() -> None:
    assert build_service(Settings(store="memory://")).gateway_monitor.shared is None
    settings = settings_from_dict(
        {"store": "memory://", "engine": {"gateway_health": {"shared": {"enabled": True}}}}
    )
    with pytest.raises(ConfigError, match="needs a url, or a redis:// lock URL"):
        build_service(settings)
    settings = settings_from_dict(
        {
            "store": "memory://",
            "lock": REDIS_URL,
            "engine": {"gateway_health": {"shared": {"enabled": True}}},
        }
    )
    shared = build_service(settings).gateway_monitor.shared
    assert isinstance(shared, SharedBreakerState)


def two_gateway_service(prefix: str, url: str = REDIS_URL) -> tuple[Any, ScriptedGateway]:
    """A service routing to ``first`` then ``second``; ``first`` fails NOT_SENT twice."""
    first = ScriptedGateway("first", script={Operation.AUTHORIZE: [Outcome.NOT_SENT] * 2})
    settings = settings_from_dict(
        {
            "engine": {
                "gateway_health": {
                    "breaker": {"failure_threshold": 2, "open_timeout_s": 30.0},
                    "shared": {"url": url, "prefix": prefix},
                },
            },
            "plugins": {"priority_routing": {"order": ["first", "second"]}},
        }
    )
    service = make_test_service(gateways=[first, ScriptedGateway("second")], settings=settings)
    return service, first


def request() -> PaymentRequest:
    return PaymentRequest(Money.of("10.00", "USD"))


async def test_two_services_one_picture(prefix: str) -> None:
    """Service 1's failures open ``first``; service 2 then never calls it, and neither
    service fails a payment."""
    one, _ = two_gateway_service(prefix)
    two, first_two = two_gateway_service(prefix)
    first_two.script.clear()  # service 2's ``first`` would answer: it must not be asked
    try:
        async with one, two:
            for _ in range(3):
                assert (await one.pay(request())).state is PaymentState.COMPLETED
            assert one.gateway_monitor.breakers["first"].state is OPEN
            assert await one.gateway_monitor.shared.refresh_once()
            assert await two.gateway_monitor.shared.refresh_once()
            assert two.gateway_monitor.breakers["first"].state is OPEN
            for _ in range(3):
                assert (await two.pay(request())).state is PaymentState.COMPLETED
            assert first_two.calls == []
            fleet = await two.gateway_monitor.shared.fleet_health()
            assert fleet["first"]["circuit"] == "open" and fleet["first"]["failures"] == 2
    finally:
        await one.aclose()
        await two.aclose()


async def test_the_service_runs_the_refresh_task_and_survives_a_dead_redis(
    prefix: str,
) -> None:
    service, _ = two_gateway_service(prefix, url=DEAD_REDIS)
    shared = service.gateway_monitor.shared
    ran = anyio.Event()
    refresh = shared.refresh_once

    async def observed() -> bool:
        answered: bool = await refresh()
        ran.set()
        return answered

    shared.refresh_once = observed
    try:
        async with service:
            with anyio.fail_after(10):
                await ran.wait()  # the task started with the service, and failed quietly
            assert shared.failed_rounds >= 1
            for _ in range(3):
                assert (await service.pay(request())).state is PaymentState.COMPLETED
            assert service.gateway_monitor.breakers["first"].state is OPEN  # local breaker
    finally:
        await service.aclose()
    assert not service.gateway_monitor.breakers["first"].shared  # stopped with the service


def test_gateways_fleet_prints_what_the_workers_published() -> None:
    """``aegispay gateways --fleet``: a worker publishes, the command reads the merged view."""
    prefix = f"aegispay-test:{uuid.uuid4().hex}:"
    settings = health_settings(prefix)

    async def cleanup() -> None:
        async with _services.redis_client() as client:
            await client.delete(*our_keys(prefix))

    async def publish() -> None:
        async with _services.redis_client():  # skip (or fail in CI) without Redis
            pass
        monitor = GatewayMonitor(["sim-alpha"], settings, on_change=None)
        health = monitor.health["sim-alpha"]
        for cls in (CallClass.SUCCESS, CallClass.SUCCESS, CallClass.TIMEOUT):
            health.record(cls, 12.0)
        shared = SharedBreakerState(monitor, REDIS_URL, settings.shared, worker="w1")
        try:
            assert await shared.refresh_once()
        finally:
            await shared.aclose()

    anyio.run(publish)
    try:
        cli_checks(prefix)
    finally:
        anyio.run(cleanup)


def cli_checks(prefix: str) -> None:
    from aegispay.cli import cli
    from click.testing import CliRunner

    env = {
        "AEGISPAY_ENGINE__GATEWAY_HEALTH__SHARED__URL": f'"{REDIS_URL}"',
        "AEGISPAY_ENGINE__GATEWAY_HEALTH__SHARED__PREFIX": f'"{prefix}"',
    }
    result = CliRunner().invoke(cli, ["gateways", "--fleet", "--json"], env=env)
    assert result.exit_code == 0, result.output
    fleet = json.loads(result.output)["gateways"]["sim-alpha"]
    assert fleet["workers"] == {"w1": "closed"}
    assert (fleet["successes"], fleet["failures"], fleet["volume"]) == (2, 1, 3)
    table = CliRunner().invoke(cli, ["gateways", "--fleet"], env=env)
    assert table.exit_code == 0 and "sim-alpha" in table.output
    unconfigured = CliRunner().invoke(cli, ["gateways", "--fleet"])
    assert unconfigured.exit_code != 0 and "--fleet needs" in unconfigured.output


_STEPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("call"),
            st.integers(0, 2),
            st.sampled_from([CallClass.SUCCESS, CallClass.NOT_SENT, CallClass.DECLINED]),
        ),
        st.tuples(st.just("trip"), st.integers(0, 2), st.none()),
        st.tuples(
            st.just("everyone calls"),
            st.just(0),
            st.sampled_from([CallClass.SUCCESS, CallClass.NOT_SENT]),
        ),
        st.tuples(st.just("refresh"), st.integers(0, 2), st.none()),
        st.tuples(st.just("time passes"), st.permutations([0, 1, 2]), st.none()),
    ),
    max_size=40,
)


@hypothesis.settings(
    max_examples=60, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow]
)
@hypothesis.given(steps=_STEPS)
async def test_any_interleaving_keeps_one_prober_and_one_picture(
    steps: list[tuple[str, Any, CallClass | None]],
) -> None:
    """Three workers, any order of calls and rounds: at most one of them ever holds the probe
    slot, and once everyone has synced, an open in Redis is open on every worker. Time passes
    only between rounds of every worker (as it does: rounds run every refresh_s)."""
    prefix = f"aegispay-test:{uuid.uuid4().hex}:"
    async with _services.redis_client(decode_responses=True) as client:
        fleet = [Worker(name, prefix) for name in "abc"]
        try:
            for kind, i, cls in steps:
                if kind in ("call", "everyone calls"):
                    for worker in fleet if kind == "everyone calls" else [fleet[i]]:
                        holder = worker.breaker.shared and worker.breaker.probe_granted
                        if worker.call(cls or CallClass.SUCCESS) and holder:
                            hypothesis.event(f"a probe ended {worker.breaker.state.value}")
                elif kind == "trip":  # failures enough to open a closed circuit
                    fleet[i].call(CallClass.NOT_SENT)
                    fleet[i].call(CallClass.NOT_SENT)
                elif kind == "refresh":
                    await fleet[i].refresh()
                else:  # rounds ran before and go on after, in the order given
                    for worker in fleet:
                        await worker.refresh()
                    await time_passes(client, prefix, *fleet)
                    for j in i:
                        await fleet[j].refresh()
                holders = [w for w in fleet if w.breaker.shared and w.breaker.probe_granted]
                assert len(holders) <= 1
            for _ in range(2):
                for worker in fleet:
                    await worker.refresh()
            if await client.exists(f"{prefix}open:gw"):
                assert all(worker.breaker.state is OPEN for worker in fleet)
        finally:
            for worker in fleet:
                await worker.shared.aclose()
            await client.delete(*our_keys(prefix))
