"""Latency histograms and the Prometheus view of gateway health.

:class:`LatencyHistogram` is a fixed-memory latency histogram (HDR-style log-linear buckets,
~1.6 % relative error): recording is O(1) and memory is bounded by the value range, not by how
many values are recorded, so a 200,000-payment run costs the same few kilobytes as a
1,000-payment one. :class:`GatewayHealthCollector` exposes every gateway's (and segment's)
health, latency, outcome counts and circuit state to Prometheus, read at scrape time, on a
registry made per service by :func:`gateway_metrics_registry`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

_SUB = 64  # sub-buckets per power of two


class LatencyHistogram:
    __slots__ = ("count", "counts", "max_us", "total_us")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total_us = 0
        self.max_us = 0

    @staticmethod
    def _index(us: int) -> int:
        if us < 2 * _SUB:
            return us
        shift = us.bit_length() - 7  # keeps (us >> shift) in [64, 128)
        return (shift + 1) * _SUB + (us >> shift) - _SUB

    @staticmethod
    def _value(index: int) -> int:
        if index < 2 * _SUB:
            return index
        shift = index // _SUB - 1
        return ((index % _SUB) + _SUB) << shift

    def record_ms(self, ms: float) -> None:
        us = int(ms * 1000) if ms > 0 else 0
        index = self._index(us)
        self.counts[index] = self.counts.get(index, 0) + 1
        self.count += 1
        self.total_us += us
        if us > self.max_us:
            self.max_us = us

    def percentile_ms(self, p: float) -> float:
        """The value at percentile ``p`` (0-100), in ms (bucket lower bound)."""
        if not self.count:
            return 0.0
        rank = max(1, round(self.count * p / 100))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return self._value(index) / 1000
        return self.max_us / 1000

    def mean_ms(self) -> float:
        return self.total_us / self.count / 1000 if self.count else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "p50": round(self.percentile_ms(50), 3),
            "p95": round(self.percentile_ms(95), 3),
            "p99": round(self.percentile_ms(99), 3),
            "mean": round(self.mean_ms(), 3),
            "max": round(self.max_us / 1000, 3),
        }


# --- Prometheus --------------------------------------------------------------------------------
# prometheus_client is imported inside these functions: ``aegispay.health`` imports this module
# for the histogram's bucket maths, and a payment service that is never scraped should not pay
# for importing the client (~50 ms).

_QUANTILES = (("0.5", 50.0), ("0.95", 95.0), ("0.99", 99.0))


class GatewayHealthCollector:
    """A Prometheus collector that reads a :class:`aegispay.breaker.GatewayMonitor` at scrape
    time, so nothing is added to the per-call hot path.

    Per gateway (label ``gateway``; segment metrics add ``dimension`` and ``value``, e.g.
    ``dimension="currency", value="USD"``), over the health window unless noted:

    * ``aegispay_gateway_health_score``, ``aegispay_gateway_success_rate``,
      ``aegispay_gateway_failure_rate`` (gauges, 0-1; the score formula is in aegispay.health)
    * ``aegispay_gateway_latency_ms`` (summary): ``quantile`` 0.5 / 0.95 / 0.99 over the window,
      ``_count`` and ``_sum`` over the gateway's lifetime
    * ``aegispay_gateway_calls_total`` (counter, lifetime) by ``outcome``: success, declined,
      not_sent, unknown, timeout
    * ``aegispay_gateway_window_calls`` (gauge) by ``outcome``, and
      ``aegispay_gateway_throughput_per_second`` (gauge)
    * ``aegispay_gateway_circuit_state`` (gauge, 1 for the current ``state``, 0 for the others),
      ``aegispay_gateway_circuit_opened_total`` and ``aegispay_gateway_rejected_calls_total``
    * ``aegispay_gateway_segment_health_score``, ``..._segment_success_rate``,
      ``..._segment_latency_ms`` (quantiles only), ``..._segment_window_calls`` (all outcomes)
    """

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor  # aegispay.breaker.GatewayMonitor (not imported: a cycle)

    def describe(self) -> list[Any]:
        return []  # unchecked collector: the families depend on the gateways and segments

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.metrics_core import Metric

        from .breaker import CircuitState
        from .health import SEGMENT_DIMENSIONS, CallClass

        monitor = self.monitor
        now = monitor.clock()
        g = "gateway"
        score = GaugeMetricFamily(
            "aegispay_gateway_health_score", "Health score 0-1 over the window", labels=[g]
        )
        success = GaugeMetricFamily(
            "aegispay_gateway_success_rate", "Successful calls / all calls", labels=[g]
        )
        failure = GaugeMetricFamily(
            "aegispay_gateway_failure_rate",
            "NOT_SENT+UNKNOWN+timeouts / (those + successes); declines left out",
            labels=[g],
        )
        latency = Metric(
            "aegispay_gateway_latency_ms",
            "Gateway call latency in ms: quantiles over the window, count and sum lifetime",
            "summary",
        )
        calls = CounterMetricFamily(
            "aegispay_gateway_calls", "Gateway calls by outcome class", labels=[g, "outcome"]
        )
        window = GaugeMetricFamily(
            "aegispay_gateway_window_calls",
            "Calls in the health window by outcome class",
            labels=[g, "outcome"],
        )
        throughput = GaugeMetricFamily(
            "aegispay_gateway_throughput_per_second", "Calls per second in the window", labels=[g]
        )
        circuit = GaugeMetricFamily(
            "aegispay_gateway_circuit_state",
            "1 for the circuit's current state, 0 for the others",
            labels=[g, "state"],
        )
        opened = CounterMetricFamily(
            "aegispay_gateway_circuit_opened", "Times the circuit opened", labels=[g]
        )
        rejected = CounterMetricFamily(
            "aegispay_gateway_rejected_calls",
            "Calls failed fast by an open circuit (the gateway was not called)",
            labels=[g],
        )
        seg_labels = [g, "dimension", "value"]
        seg_score = GaugeMetricFamily(
            "aegispay_gateway_segment_health_score", "Health score per segment", labels=seg_labels
        )
        seg_success = GaugeMetricFamily(
            "aegispay_gateway_segment_success_rate", "Success rate per segment", labels=seg_labels
        )
        seg_latency = GaugeMetricFamily(
            "aegispay_gateway_segment_latency_ms",
            "Latency quantiles per segment over its window",
            labels=[*seg_labels, "quantile"],
        )
        seg_volume = GaugeMetricFamily(
            "aegispay_gateway_segment_window_calls",
            "Calls in the segment window",
            labels=seg_labels,
        )
        names = [c.name.lower() for c in CallClass]
        for name in sorted(monitor.health):
            health = monitor.health[name]
            health.refresh(now)
            quantiles = health.percentiles_ms([q for _, q in _QUANTILES])
            score.add_metric([name], health.availability() * health.latency_factor(quantiles[1]))
            success.add_metric([name], health.success_rate())
            failure.add_metric([name], health.failure_rate())
            for (label, _), value in zip(_QUANTILES, quantiles, strict=True):
                latency.add_sample(
                    "aegispay_gateway_latency_ms", {g: name, "quantile": label}, value
                )
            latency.add_sample("aegispay_gateway_latency_ms_count", {g: name}, health.total)
            latency.add_sample("aegispay_gateway_latency_ms_sum", {g: name}, health.latency_sum_ms)
            for outcome, total, current in zip(names, health.lifetime, health.counts, strict=True):
                calls.add_metric([name, outcome], total)
                window.add_metric([name, outcome], current)
            throughput.add_metric([name], health.throughput())
            breaker = monitor.breakers[name]
            state = breaker.current_state(now)
            for each in CircuitState:
                circuit.add_metric([name, each.value], 1.0 if each is state else 0.0)
            opened.add_metric([name], breaker.opened)
            rejected.add_metric([name], breaker.rejected)
            tables = monitor.segments.get(name, ())
            for dimension, table in zip(SEGMENT_DIMENSIONS, tables, strict=False):
                for value in sorted(table):
                    seg = table[value]
                    seg.refresh(now)
                    labels = [name, dimension, value]
                    seg_q = seg.percentiles_ms([q for _, q in _QUANTILES])
                    seg_score.add_metric(labels, seg.availability() * seg.latency_factor(seg_q[1]))
                    seg_success.add_metric(labels, seg.success_rate())
                    seg_volume.add_metric(labels, seg.volume)
                    for (label, _), value_ms in zip(_QUANTILES, seg_q, strict=True):
                        seg_latency.add_metric([*labels, label], value_ms)
        yield from (score, success, failure, latency, calls, window, throughput)
        yield from (circuit, opened, rejected, seg_score, seg_success, seg_latency, seg_volume)


def gateway_metrics_registry(monitor: Any) -> Any:
    """A new ``prometheus_client.CollectorRegistry`` (never the global default one) holding a
    :class:`GatewayHealthCollector` for ``monitor``: one per service, e.g.
    ``gateway_metrics_registry(service.gateway_monitor)``. Serve it with
    ``prometheus_client.make_asgi_app(registry)`` or render it with :func:`render_metrics`."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayHealthCollector(monitor))
    return registry


def render_metrics(registry: Any) -> str:
    """The registry in the Prometheus text exposition format."""
    from prometheus_client import generate_latest

    text: str = generate_latest(registry).decode("utf-8")
    return text
