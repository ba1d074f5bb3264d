"""Gateway health: the sliding window (by count and by time), classes, latency, the score."""

from __future__ import annotations

import pytest
from aegispay.errors import ConfigError
from aegispay.health import CallClass, GatewayHealth
from aegispay.settings import BreakerSettings, GatewayHealthSettings, settings_from_dict
from hypothesis import given, settings
from hypothesis import strategies as st

C = CallClass


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def health(window_calls: int = 10, window_s: float = 0.0, **kw: float) -> GatewayHealth:
    return GatewayHealth(
        "g",
        window_calls=window_calls,
        window_s=window_s,
        clock=FakeClock(),
        **kw,  # type: ignore[arg-type]
    )


def test_empty_window_is_fully_healthy() -> None:
    h = health()
    assert h.score() == 1.0
    assert h.volume == 0
    assert h.percentile_ms(99) == 0.0
    assert h.success_rate() == 1.0


def test_declines_do_not_lower_health() -> None:
    h = health()
    for _ in range(10):
        h.record(C.DECLINED, 5.0)
    assert h.score() == 1.0
    assert h.failure_rate() == 0.0
    assert h.counts[C.DECLINED] == 10
    h.record(C.SUCCESS, 5.0)
    h.record(C.NOT_SENT, 5.0)
    # One success and one failure judged; the declines count neither way.
    assert h.score() == 0.5


@pytest.mark.parametrize("failure", [C.NOT_SENT, C.UNKNOWN, C.TIMEOUT])
def test_gateway_failures_lower_health(failure: CallClass) -> None:
    h = health()
    for _ in range(3):
        h.record(C.SUCCESS, 1.0)
    h.record(failure, 1.0)
    assert h.failures == 1
    assert h.score() == pytest.approx(0.75)
    assert h.snapshot()["by_class"][failure.name.lower()] == 1


def test_window_by_count_forgets_the_oldest() -> None:
    h = health(window_calls=4)
    for _ in range(4):
        h.record(C.NOT_SENT, 1.0)
    assert h.score() == 0.0
    for i in range(4):
        h.record(C.SUCCESS, 1.0)
        assert h.failures == 3 - i
        assert h.volume == 4
    assert h.score() == 1.0
    assert h.total == 8  # lifetime count is not windowed


def test_window_by_time_forgets_old_calls() -> None:
    clock = FakeClock()
    h = GatewayHealth("g", window_calls=0, window_s=10.0, clock=clock)
    h.record(C.UNKNOWN, 1.0)
    clock.now += 6
    h.record(C.SUCCESS, 1.0)
    assert (h.volume, h.failures) == (2, 1)
    clock.now += 4  # the failure is now exactly 10 s old: out
    h.record(C.SUCCESS, 1.0)
    assert (h.volume, h.failures) == (2, 0)
    clock.now += 100  # reading refreshes the window even without new calls
    assert h.snapshot()["volume"] == 0


def test_both_limits_apply() -> None:
    clock = FakeClock()
    h = GatewayHealth("g", window_calls=3, window_s=10.0, clock=clock)
    for _ in range(5):
        h.record(C.SUCCESS, 1.0)
    assert h.volume == 3
    clock.now += 11
    h.record(C.TIMEOUT, 1.0)
    assert (h.volume, h.failures) == (1, 1)


def test_latency_percentiles_over_the_window() -> None:
    h = health(window_calls=100)
    for ms in range(1, 101):
        h.record(C.SUCCESS, float(ms))
    assert h.percentile_ms(50) == pytest.approx(50, rel=0.02)
    assert h.percentile_ms(95) == pytest.approx(95, rel=0.02)
    assert h.percentile_ms(99) == pytest.approx(99, rel=0.02)
    for _ in range(100):  # the slow calls age out of the histogram too
        h.record(C.SUCCESS, 2.0)
    assert h.percentile_ms(99) == pytest.approx(2.0, rel=0.02)
    assert len(h._latency) == 1


def test_score_formula_with_latency_target() -> None:
    h = health(window_calls=100, latency_target_ms=100.0)
    for _ in range(8):
        h.record(C.SUCCESS, 50.0)
    assert h.score() == 1.0  # p95 under the target
    for _ in range(2):
        h.record(C.UNKNOWN, 400.0)
    # availability 8/10; p95 is ~400 ms against a 100 ms target.
    p95 = h.percentile_ms(95)
    assert p95 == pytest.approx(400, rel=0.02)
    assert h.latency_factor() == pytest.approx(100 / p95)
    assert h.score() == pytest.approx(0.8 * 100 / p95)
    assert 0.0 <= h.score() <= 1.0


def test_clear_keeps_the_lifetime_total() -> None:
    h = health()
    h.record(C.NOT_SENT, 1.0)
    h.clear()
    assert (h.volume, h.failures, h.total, h.score()) == (0, 0, 1, 1.0)


def test_invalid_windows() -> None:
    with pytest.raises(ValueError):
        GatewayHealth("g", window_calls=0, window_s=0)
    with pytest.raises(ValueError):
        GatewayHealth("g", window_calls=-1)


def test_settings_defaults_and_overrides() -> None:
    settings = settings_from_dict(
        {
            "engine": {
                "gateway_health": {
                    "window_calls": 100,
                    "breaker": {"failure_threshold": 3},
                    "overrides": {"stripe": {"open_timeout_s": 5.0}},
                }
            }
        }
    )
    gh = settings.engine.gateway_health
    assert gh.window_calls == 100
    assert gh.window_s == 60.0
    assert gh.breaker_for("other").failure_threshold == 3
    assert gh.breaker_for("stripe") == BreakerSettings(open_timeout_s=5.0)
    assert GatewayHealthSettings().breaker == BreakerSettings()


@pytest.mark.parametrize(
    ("table", "where"),
    [
        ({"window_calls": 0, "window_s": 0}, "gateway_health"),
        ({"breaker": {"failure_rate": 1.5}}, "failure_rate"),
        ({"breaker": {"min_calls": 0}}, "min_calls"),
        ({"breaker": {"open_timeout_s": 0}}, "open_timeout_s"),
        ({"overrides": {"x": {"half_open_max_probes": 0}}}, "half_open_max_probes"),
        ({"breaker": {"unknown": 1}}, "unknown key"),
    ],
)
def test_settings_are_validated(table: dict[str, object], where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        settings_from_dict({"engine": {"gateway_health": table}})


def test_documented_configuration_is_valid_and_shows_the_defaults() -> None:
    import tomllib
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    body = doc.split("## Gateway health and circuit breakers", 1)[1].split("\n## ", 1)[0]
    lines = body[body.index("    [engine.gateway_health]\n") :].splitlines()
    block = []
    for line in lines:  # the indented block: up to the first unindented text
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    data = tomllib.loads("\n".join(block))
    assert "overrides" in data["engine"]["gateway_health"]
    settings = settings_from_dict(data).engine.gateway_health
    assert attrs_without_overrides(settings) == attrs_without_overrides(GatewayHealthSettings())
    assert settings.breaker_for("sim-beta") == BreakerSettings(failure_threshold=3)


def attrs_without_overrides(settings: GatewayHealthSettings) -> GatewayHealthSettings:
    import attrs

    return attrs.evolve(settings, overrides={})


# --- windows kept in O(1) agree with a recount; rates, throughput, lifetime counters ----------


def _recount(calls: list[tuple[float, int, float]], now: float, n: int, t: float) -> list[int]:
    """Brute force: the calls a (last n, newer than now - t) window holds, by class."""
    kept = [c for c in calls if not t or c[0] > now - t]
    kept = kept[-n:] if n else kept
    counts = [0] * len(CallClass)
    for _, cls, _ in kept:
        counts[cls] += 1
    return counts


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=3.0),
            st.sampled_from(list(CallClass)),
            st.floats(min_value=0.0, max_value=5000.0),
        ),
        max_size=120,
    ),
    n=st.integers(min_value=0, max_value=30),
    t=st.sampled_from([0.0, 2.5, 10.0]),
)
def test_running_counters_match_a_recount(
    steps: list[tuple[float, CallClass, float]], n: int, t: float
) -> None:
    if not n and not t:
        n = 5
    clock = FakeClock()
    h = GatewayHealth("g", window_calls=n, window_s=t, clock=clock)
    calls: list[tuple[float, int, float]] = []
    for gap, cls, latency in steps:
        clock.now += gap
        h.record(cls, latency)
        calls.append((clock.now, cls, latency))
        h.refresh()
        expected = _recount(calls, clock.now, n, t)
        assert h.counts == expected
        assert h.failures == sum(expected[c] for c in (C.NOT_SENT, C.UNKNOWN, C.TIMEOUT))
        assert h.volume == sum(expected)
        assert sum(h._latency.values()) == h.volume  # the histogram follows the window
    assert h.total == len(steps)
    assert h.lifetime == [sum(1 for _, c, _ in steps if c == k) for k in CallClass]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=10_000.0), min_size=1, max_size=200))
def test_window_percentiles_match_a_histogram_of_the_same_calls(latencies: list[float]) -> None:
    from aegispay.metrics import LatencyHistogram

    h = health(window_calls=500)
    reference = LatencyHistogram()
    for ms in latencies:
        h.record(C.SUCCESS, ms)
        reference.record_ms(ms)
    for p in (50, 95, 99):
        assert h.percentile_ms(p) == reference.percentile_ms(p)
        # ~1.6 % relative error (bucket lower bound), and never above the true value + 1 us
        exact = sorted(latencies)[max(1, round(len(latencies) * p / 100)) - 1]
        assert h.percentile_ms(p) <= exact + 0.001
        assert h.percentile_ms(p) >= exact * (1 - 1 / 64) - 0.001
    assert h.percentiles_ms([99, 50]) == [h.percentile_ms(99), h.percentile_ms(50)]


def test_class_rates_throughput_and_lifetime_latency() -> None:
    clock = FakeClock()
    h = GatewayHealth("g", window_calls=100, window_s=0, clock=clock)
    for cls in [C.SUCCESS] * 6 + [C.DECLINED] * 2 + [C.NOT_SENT, C.TIMEOUT]:
        clock.now += 0.5
        h.record(cls, 10.0)
    rates = h.class_rates()
    assert rates == {
        "success": 0.6,
        "declined": 0.2,
        "not_sent": 0.1,
        "unknown": 0.0,
        "timeout": 0.1,
    }
    assert h.throughput() == pytest.approx(9 / 4.5)  # 10 calls over 4.5 s: 9 intervals
    assert h.latency_sum_ms == 100.0
    snap = h.snapshot()
    assert snap["throughput_per_s"] == 2.0
    assert snap["class_rates"]["declined"] == 0.2
    assert health().throughput() == 0.0


def test_score_formula_documented_example() -> None:
    # The module docstring's example: 8 successes, 2 timeouts, declines -> 0.8; with a
    # 100 ms target and a p95 of 400 ms -> 0.2.
    h = health(window_calls=100, latency_target_ms=100.0)
    for _ in range(8):
        h.record(C.SUCCESS, 400.0)
    for _ in range(2):
        h.record(C.TIMEOUT, 400.0)
    for _ in range(30):
        h.record(C.DECLINED, 400.0)
    p95 = h.percentile_ms(95)
    assert 390.0 < p95 <= 400.0
    assert h.availability() == 0.8
    assert h.score() == pytest.approx(0.8 * 100.0 / p95)
    assert h.fast_score(h.clock()) == h.score()


def test_cached_p95_is_refreshed_after_percentile_refresh_s() -> None:
    clock = FakeClock()
    h = GatewayHealth("g", window_calls=100, window_s=0, percentile_refresh_s=1.0, clock=clock)
    h.record(C.SUCCESS, 10.0)
    first = h.p95_ms(clock.now)
    for _ in range(50):
        h.record(C.SUCCESS, 500.0)
    assert h.p95_ms(clock.now + 0.99) == first
    assert h.p95_ms(clock.now + 1.0) == h.percentile_ms(95) > first
    h.clear()
    assert h.p95_ms(clock.now + 1.0) == 0.0  # clear drops the cache too


def test_segment_settings_are_validated() -> None:
    gh = settings_from_dict({"engine": {"gateway_health": {"segments": ["currency"]}}})
    assert gh.engine.gateway_health.segments == ("currency",)
    with pytest.raises(ConfigError, match="segments"):
        settings_from_dict({"engine": {"gateway_health": {"segments": ["planet"]}}})
    with pytest.raises(ConfigError, match="segment_window_calls"):
        settings_from_dict({"engine": {"gateway_health": {"segment_window_calls": 0}}})
