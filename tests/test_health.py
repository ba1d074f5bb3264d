"""Gateway health: the sliding window (by count and by time), classes, latency, the score."""

from __future__ import annotations

import pytest
from aegispay.errors import ConfigError
from aegispay.health import CallClass, GatewayHealth
from aegispay.settings import BreakerSettings, GatewayHealthSettings, settings_from_dict

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
