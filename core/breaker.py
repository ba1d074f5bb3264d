"""A circuit breaker per gateway: CLOSED / OPEN / HALF_OPEN, and the registry the engine uses.

* CLOSED: every call goes through. ``failure_threshold`` consecutive failures open the circuit,
  and so does a failure rate over the gateway's health window of at least ``failure_rate``
  once the window holds ``min_calls`` judged calls (so one early failure cannot open it).
* OPEN: calls fail fast (the engine answers NOT_SENT without calling the gateway, so routing
  moves on to the next gateway). After ``open_timeout_s`` the next call half-opens it.
* HALF_OPEN: at most ``half_open_max_probes`` calls at a time go through; the rest fail fast.
  ``success_threshold`` successful probes close the circuit (and clear the health window, so
  the failures that opened it cannot open it again); one failed probe opens it again.

A decline is the gateway answering: it resets the consecutive-failure count and counts as a
successful probe, but it is left out of the failure rate. Results of calls admitted before
the last state change are recorded in health but do not move the breaker (a slow call from
before the circuit opened says nothing about the gateway now). State changes go to
``on_change``; the default logs them on ``aegispay.breaker`` at WARNING.

Shared across a fleet (:mod:`aegispay.shared_breaker`, optional): a background task adopts
other workers' openings and closings (:meth:`CircuitBreaker.adopt_open`, ``adopt_close``) and,
while Redis answers, sets ``shared``: the breaker then half-opens only once ``probe_granted``
says this worker holds the fleet's one probe slot. The CLOSED path never looks at either.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from .health import SEGMENT_DIMENSIONS, GatewayHealth
from .settings import BreakerSettings, GatewayHealthSettings

log = logging.getLogger("aegispay.breaker")


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# (gateway, old state, new state, reason)
StateChange = Callable[[str, CircuitState, CircuitState, str], None]
REJECTED = -1  # what ``allow`` returns when the call must not be made


def log_state_change(name: str, old: CircuitState, new: CircuitState, reason: str) -> None:
    log.warning("circuit for gateway %s: %s -> %s (%s)", name, old.value, new.value, reason)


class CircuitBreaker:
    """One gateway's breaker. ``allow`` before a call, ``record`` after it (same token)."""

    __slots__ = (
        "_generation",
        "_opened_at",
        "_probe_successes",
        "_probes",
        "clock",
        "consecutive_failures",
        "health",
        "name",
        "on_change",
        "opened",
        "probe_granted",
        "reason",
        "rejected",
        "settings",
        "shared",
        "state",
        "transitions",
    )

    def __init__(
        self,
        name: str,
        settings: BreakerSettings | None = None,
        *,
        health: GatewayHealth | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: StateChange | None = log_state_change,
    ) -> None:
        self.name = name
        self.settings = settings or BreakerSettings()
        self.health = health  # the window the failure-rate rule reads; None: rule off
        self.clock = clock
        self.on_change = on_change
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self.opened = 0  # times the circuit opened
        self.rejected = 0  # calls failed fast
        self.transitions: list[tuple[float, CircuitState, CircuitState, str]] = []
        self.reason = ""  # why the last state change happened
        self._generation = 0  # bumped on every state change
        self._opened_at = 0.0
        self._probes = 0  # half-open probes in flight
        self._probe_successes = 0
        # Set by aegispay.shared_breaker while the fleet's state is known: half-open probes
        # then need ``probe_granted`` (this worker holds the fleet's probe slot).
        self.shared = False
        self.probe_granted = False

    @property
    def generation(self) -> int:
        """Bumped on every state change (how the shared state notices local changes)."""
        return self._generation

    def _change(self, new: CircuitState, now: float, reason: str) -> None:
        old = self.state
        self.state = new
        self.reason = reason
        self._generation += 1
        self._probes = 0
        self._probe_successes = 0
        self.consecutive_failures = 0
        if new is not CircuitState.HALF_OPEN:
            self.probe_granted = False  # a slot is for one half-open spell
        if new is CircuitState.OPEN:
            self._opened_at = now
            self.opened += 1
        elif new is CircuitState.CLOSED and self.health is not None:
            self.health.clear()
        if len(self.transitions) < 1000:  # bounded: a flapping gateway must not grow memory
            self.transitions.append((now, old, new, reason))
        if self.on_change is not None:
            self.on_change(self.name, old, new, reason)

    def allow(self, now: float | None = None) -> int:
        """A token for ``record`` if the call may be made, else :data:`REJECTED`."""
        state = self.state
        if state is CircuitState.CLOSED or not self.settings.enabled:
            return self._generation
        if now is None:
            now = self.clock()
        if state is CircuitState.OPEN:
            if now - self._opened_at < self.settings.open_timeout_s or (
                self.shared and not self.probe_granted  # the fleet's probe is elsewhere
            ):
                self.rejected += 1
                return REJECTED
            self._change(CircuitState.HALF_OPEN, now, "open timeout elapsed")
        if self._probes >= self.settings.half_open_max_probes or (
            self.shared and not self.probe_granted
        ):
            self.rejected += 1
            return REJECTED
        self._probes += 1
        return self._generation

    def record(self, token: int, failed: bool, now: float | None = None) -> None:
        """The result of a call ``allow`` admitted with ``token``."""
        if token != self._generation or not self.settings.enabled:
            return  # admitted before the last state change: health has it, the breaker not
        state = self.state
        settings = self.settings
        if state is CircuitState.CLOSED:
            if not failed:
                self.consecutive_failures = 0
                return
            self.consecutive_failures += 1
            if self.consecutive_failures >= settings.failure_threshold:
                reason = f"{self.consecutive_failures} consecutive failures"
            else:
                health = self.health
                if health is None:
                    return
                judged = health.counts[0] + health.failures
                if judged < settings.min_calls or health.failures < settings.failure_rate * judged:
                    return
                reason = f"failure rate {health.failures}/{judged} over the window"
            self._change(CircuitState.OPEN, self.clock() if now is None else now, reason)
            return
        # HALF_OPEN (an OPEN circuit admits nothing, so its generation never gets results)
        self._probes -= 1
        if failed:
            self._change(CircuitState.OPEN, self.clock() if now is None else now, "probe failed")
            return
        self._probe_successes += 1
        if self._probe_successes >= settings.success_threshold:
            reason = f"{self._probe_successes} successful probes"
            self._change(CircuitState.CLOSED, self.clock() if now is None else now, reason)

    def release(self, token: int) -> None:
        """The admitted call never finished (cancelled): give its probe slot back."""
        if token == self._generation and self.state is CircuitState.HALF_OPEN:
            self._probes -= 1

    def wants_probe(self, now: float) -> bool:
        """True when the next call would be a half-open probe that the breaker would admit:
        routing puts such a gateway first, else a recovered gateway that no strategy ranks
        first (its window still holds the failures that opened it) would never be probed."""
        if not self.settings.enabled or (self.shared and not self.probe_granted):
            return False
        state = self.state
        if state is CircuitState.OPEN:
            return now - self._opened_at >= self.settings.open_timeout_s
        if state is CircuitState.HALF_OPEN:
            return self._probes < self.settings.half_open_max_probes
        return False

    def adopt_open(self, remaining_s: float, reason: str, now: float | None = None) -> None:
        """Another worker opened this circuit: fail fast for ``remaining_s`` more seconds
        (then half-open as usual), with no failures of our own."""
        if not self.settings.enabled:
            return
        now = self.clock() if now is None else now
        if self.state is not CircuitState.OPEN:
            self._change(CircuitState.OPEN, now, f"opened by another worker: {reason}")
        self._opened_at = now + remaining_s - self.settings.open_timeout_s

    def adopt_close(self, reason: str, now: float | None = None) -> None:
        """Another worker's probe closed this circuit: close it here too."""
        if self.state is not CircuitState.CLOSED:
            self._change(CircuitState.CLOSED, self.clock() if now is None else now, reason)

    def reopens_in(self, now: float) -> float:
        """Seconds until an OPEN circuit half-opens (0 when it is not open)."""
        if self.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self.settings.open_timeout_s - (now - self._opened_at))

    def current_state(self, now: float | None = None) -> CircuitState:
        """The state, reporting an OPEN circuit whose timeout has elapsed as HALF_OPEN."""
        if self.state is CircuitState.OPEN:
            now = self.clock() if now is None else now
            if now - self._opened_at >= self.settings.open_timeout_s:
                return CircuitState.HALF_OPEN
        return self.state


class GatewayMonitor:
    """Health and breaker of every gateway the engine calls, built from the settings, and the
    per-segment health windows of each gateway (see :mod:`aegispay.health`)."""

    def __init__(
        self,
        names: Iterable[str],
        settings: GatewayHealthSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: StateChange | None = log_state_change,
    ) -> None:
        self.settings = settings or GatewayHealthSettings()
        self.clock = clock
        self.on_change = on_change
        self.health: dict[str, GatewayHealth] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self.pairs: dict[str, tuple[GatewayHealth, CircuitBreaker]] = {}
        # gateway -> one table per dimension (SEGMENT_DIMENSIONS order): value -> window
        self.segments: dict[str, tuple[dict[str, GatewayHealth], ...]] = {}
        enabled = set(self.settings.segments)
        self._dimensions = tuple(i for i, d in enumerate(SEGMENT_DIMENSIONS) if d in enabled)
        self.segments_dropped = 0  # calls not recorded in a segment over max_segments
        self._registry: Any = None
        # The fleet-wide state in Redis (aegispay.shared_breaker.SharedBreakerState), when
        # configured: set by aegispay.stack.build_service, run while the service is entered.
        self.shared: Any = None
        for name in names:
            self.add(name)

    def add(self, name: str) -> tuple[GatewayHealth, CircuitBreaker]:
        s = self.settings
        health = GatewayHealth(
            name,
            window_calls=s.window_calls,
            window_s=s.window_s,
            latency_target_ms=s.latency_target_ms,
            percentile_refresh_s=s.percentile_refresh_s,
            clock=self._now,
        )
        breaker = CircuitBreaker(
            name, s.breaker_for(name), health=health, clock=self._now, on_change=self.on_change
        )
        self.health[name] = health
        self.breakers[name] = breaker
        self.pairs[name] = (health, breaker)
        self.segments[name] = tuple({} for _ in SEGMENT_DIMENSIONS)
        return health, breaker

    def _now(self) -> float:
        return self.clock()  # late-bound, so a test can swap ``monitor.clock``

    def metrics_registry(self) -> Any:
        """This monitor's own ``prometheus_client.CollectorRegistry`` (made on first use; never
        the global default registry), read at scrape time: see aegispay.metrics."""
        if self._registry is None:
            from .metrics import gateway_metrics_registry

            self._registry = gateway_metrics_registry(self)
        return self._registry

    def record_segments(
        self,
        name: str,
        cls: int,
        latency_ms: float,
        now: float,
        values: tuple[str | None, str | None, str | None],
    ) -> None:
        """Record one call in ``name``'s segment windows; ``values`` are the call's currency,
        payment method and country (None: not known, not recorded). O(1) per dimension.

        At most ``max_segments`` values per dimension and gateway get a window (payment
        method and country come from callers: memory must not grow with what they send);
        calls for further values are counted in ``segments_dropped``."""
        tables = self.segments.get(name)
        if tables is None:
            self.add(name)
            tables = self.segments[name]
        for i in self._dimensions:
            value = values[i]
            if value is None:
                continue
            table = tables[i]
            window = table.get(value)
            if window is None:
                if len(table) >= self.settings.max_segments:
                    self.segments_dropped += 1
                    continue
                window = table[value] = self._segment_window(name, i, value)
            window.record(cls, latency_ms, now)

    def _segment_window(self, name: str, dimension: int, value: str) -> GatewayHealth:
        s = self.settings
        return GatewayHealth(
            f"{name}/{SEGMENT_DIMENSIONS[dimension]}={value}",
            window_calls=s.segment_window_calls,
            window_s=s.window_s,
            latency_target_ms=s.latency_target_ms,
            percentile_refresh_s=s.percentile_refresh_s,
            clock=self._now,
        )

    def segment(self, name: str, dimension: str, value: str) -> GatewayHealth | None:
        """The window of ``name`` for one segment (``segment("stripe", "currency", "USD")``),
        None when it has seen no call (or the dimension is off)."""
        tables = self.segments.get(name)
        if tables is None or dimension not in SEGMENT_DIMENSIONS:
            return None
        return tables[SEGMENT_DIMENSIONS.index(dimension)].get(value)

    def snapshot(self, segments: bool = False) -> dict[str, dict[str, Any]]:
        """Per gateway: score, success rate, latency percentiles, volume, throughput, calls
        by class and circuit state; with ``segments``, also ``segments[dimension][value]``
        holding the same health figures for each segment window."""
        now = self.clock()
        report = {}
        for name in sorted(self.health):
            breaker = self.breakers[name]
            entry = {
                **self.health[name].snapshot(now),
                "circuit": breaker.current_state(now).value,
                "circuit_opened": breaker.opened,
                "rejected": breaker.rejected,
            }
            if segments:
                tables = self.segments.get(name, ())
                entry["segments"] = {
                    dimension: {value: table[value].snapshot(now) for value in sorted(table)}
                    for dimension, table in zip(SEGMENT_DIMENSIONS, tables, strict=True)
                    if table
                }
            report[name] = entry
        return report
