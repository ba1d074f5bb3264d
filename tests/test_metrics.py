"""Prometheus metrics read from gateway health at scrape time, and ``aegispay gateways``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import prometheus_client
import pytest
from aegispay import Money, Operation, Outcome, PaymentRequest
from aegispay.breaker import GatewayMonitor
from aegispay.health import CallClass
from aegispay.metrics import GatewayHealthCollector, gateway_metrics_registry, render_metrics
from aegispay.settings import BreakerSettings, GatewayHealthSettings
from aegispay.testing import ScriptedGateway, make_test_service

C = CallClass


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def monitor() -> tuple[GatewayMonitor, FakeClock]:
    clock = FakeClock()
    settings = GatewayHealthSettings(breaker=BreakerSettings(failure_threshold=2))
    return GatewayMonitor(["a", "b"], settings, clock=clock, on_change=None), clock


def test_scrape_reads_health_breakers_and_segments() -> None:
    mon, clock = monitor()
    a = mon.health["a"]
    for cls, ms in [(C.SUCCESS, 10.0)] * 6 + [(C.DECLINED, 20.0)] * 2 + [(C.NOT_SENT, 30.0)] * 2:
        a.record(cls, ms)
        mon.record_segments("a", cls, ms, clock.now, ("USD", "card", None))
    breaker = mon.breakers["b"]
    for _ in range(2):
        breaker.record(breaker.allow(), failed=True)
    breaker.allow()  # failed fast
    registry = gateway_metrics_registry(mon)
    value = registry.get_sample_value
    assert value("aegispay_gateway_health_score", {"gateway": "a"}) == 0.75
    assert value("aegispay_gateway_success_rate", {"gateway": "a"}) == 0.6
    assert value("aegispay_gateway_failure_rate", {"gateway": "a"}) == 0.25
    assert value("aegispay_gateway_calls_total", {"gateway": "a", "outcome": "declined"}) == 2
    assert value("aegispay_gateway_window_calls", {"gateway": "a", "outcome": "not_sent"}) == 2
    assert value("aegispay_gateway_latency_ms_count", {"gateway": "a"}) == 10
    assert value("aegispay_gateway_latency_ms_sum", {"gateway": "a"}) == 160.0
    p50 = value("aegispay_gateway_latency_ms", {"gateway": "a", "quantile": "0.5"})
    assert p50 == a.percentile_ms(50)
    assert 9.8 < p50 <= 10.0
    assert value("aegispay_gateway_circuit_state", {"gateway": "b", "state": "open"}) == 1.0
    assert value("aegispay_gateway_circuit_state", {"gateway": "b", "state": "closed"}) == 0.0
    assert value("aegispay_gateway_circuit_opened_total", {"gateway": "b"}) == 1
    assert value("aegispay_gateway_rejected_calls_total", {"gateway": "b"}) == 1
    usd = {"gateway": "a", "dimension": "currency", "value": "USD"}
    assert value("aegispay_gateway_segment_health_score", usd) == 0.75
    assert value("aegispay_gateway_segment_window_calls", usd) == 10
    card = {"gateway": "a", "dimension": "payment_method", "value": "card", "quantile": "0.99"}
    assert value("aegispay_gateway_segment_latency_ms", card) == a.percentile_ms(99)
    # Scraping reads the state at scrape time: later calls show up, nothing was cached.
    a.record(C.SUCCESS, 10.0)
    assert value("aegispay_gateway_calls_total", {"gateway": "a", "outcome": "success"}) == 7
    clock.now += 31  # b's open timeout elapsed: reported half-open
    assert value("aegispay_gateway_circuit_state", {"gateway": "b", "state": "half_open"}) == 1.0


def test_time_window_expiry_is_applied_at_scrape_time() -> None:
    mon, clock = monitor()
    mon.health["a"].record(C.NOT_SENT, 5.0)
    registry = gateway_metrics_registry(mon)
    labels = {"gateway": "a", "outcome": "not_sent"}
    assert registry.get_sample_value("aegispay_gateway_window_calls", labels) == 1
    clock.now += 61  # past window_s: gone from the window, still in the lifetime counter
    assert registry.get_sample_value("aegispay_gateway_window_calls", labels) == 0
    assert registry.get_sample_value("aegispay_gateway_calls_total", labels) == 1


def test_each_monitor_has_its_own_registry_and_the_default_one_is_untouched() -> None:
    first, _ = monitor()
    second, _ = monitor()
    first.health["a"].record(C.SUCCESS, 1.0)
    assert first.metrics_registry() is first.metrics_registry()
    assert first.metrics_registry() is not second.metrics_registry()
    labels = {"gateway": "a", "outcome": "success"}
    assert first.metrics_registry().get_sample_value("aegispay_gateway_calls_total", labels) == 1
    assert second.metrics_registry().get_sample_value("aegispay_gateway_calls_total", labels) == 0
    default = prometheus_client.REGISTRY
    assert default.get_sample_value("aegispay_gateway_calls_total", labels) is None
    assert GatewayHealthCollector(first).describe() == []


def test_exposition_text_is_valid_prometheus() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    mon, _clock = monitor()
    mon.health["a"].record(C.TIMEOUT, 12.0)
    text = render_metrics(mon.metrics_registry())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["aegispay_gateway_latency_ms"].type == "summary"
    assert families["aegispay_gateway_calls"].type == "counter"
    assert families["aegispay_gateway_health_score"].type == "gauge"
    assert 'aegispay_gateway_calls_total{gateway="a",outcome="timeout"} 1.0' in text


@pytest.mark.anyio
async def test_a_service_is_scraped_from_its_own_monitor() -> None:
    gateway = ScriptedGateway("g", script={Operation.AUTHORIZE: [Outcome.NOT_SENT]})
    service = make_test_service(gateways=[gateway])
    async with service:
        await service.pay(PaymentRequest(Money(100, "USD")))
        await service.pay(PaymentRequest(Money(100, "USD")))
    registry = service.gateway_monitor.metrics_registry()
    value = registry.get_sample_value
    assert value("aegispay_gateway_calls_total", {"gateway": "g", "outcome": "not_sent"}) == 1
    assert value("aegispay_gateway_calls_total", {"gateway": "g", "outcome": "success"}) == 1


# --- aegispay gateways --------------------------------------------------------------------------


def aegispay(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aegispay", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_gateways_json_after_a_simulated_warm_up(tmp_path: Path) -> None:
    result = aegispay("gateways", "--simulate", "300", "--seed", "5", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    gateways = report["gateways"]
    assert set(gateways) == {"sim-alpha", "sim-beta", "sim-gamma"}
    assert sum(report["warm_up_states"].values()) == 300
    assert sum(g["total_calls"] for g in gateways.values()) >= 300
    for health in gateways.values():
        assert set(health) >= {"score", "success_rate", "latency_ms", "circuit", "volume"}
        assert 0.0 <= health["score"] <= 1.0
        assert health["circuit"] in {"closed", "open", "half_open"}
    busiest = max(gateways.values(), key=lambda g: g["volume"])
    assert busiest["latency_ms"]["p99"] >= busiest["latency_ms"]["p50"] > 0
    assert "currency" in busiest["segments"]
    assert not list(tmp_path.iterdir())  # the warm-up wrote no store file


def test_gateways_table_and_prometheus_output(tmp_path: Path) -> None:
    table = aegispay("gateways", "--simulate", "100", "--segments", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    for heading in ("gateway", "score", "success", "p50 ms", "p95 ms", "p99 ms", "circuit"):
        assert heading in table.stdout
    assert "sim-alpha" in table.stdout and "currency=USD" in table.stdout
    empty = aegispay("gateways", cwd=tmp_path)
    assert empty.returncode == 0, empty.stderr
    assert "no gateway call" in empty.stdout
    prom = aegispay("gateways", "--simulate", "50", "--prometheus", cwd=tmp_path)
    assert prom.returncode == 0, prom.stderr
    assert "# TYPE aegispay_gateway_health_score gauge" in prom.stdout
    assert 'aegispay_gateway_circuit_state{gateway="sim-alpha",state="closed"} 1.0' in prom.stdout
