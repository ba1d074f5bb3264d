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
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from .health import GatewayHealth
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
        "rejected",
        "settings",
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
        self._generation = 0  # bumped on every state change
        self._opened_at = 0.0
        self._probes = 0  # half-open probes in flight
        self._probe_successes = 0

    def _change(self, new: CircuitState, now: float, reason: str) -> None:
        old = self.state
        self.state = new
        self._generation += 1
        self._probes = 0
        self._probe_successes = 0
        self.consecutive_failures = 0
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
            if now - self._opened_at < self.settings.open_timeout_s:
                self.rejected += 1
                return REJECTED
            self._change(CircuitState.HALF_OPEN, now, "open timeout elapsed")
        if self._probes >= self.settings.half_open_max_probes:
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

    def current_state(self, now: float | None = None) -> CircuitState:
        """The state, reporting an OPEN circuit whose timeout has elapsed as HALF_OPEN."""
        if self.state is CircuitState.OPEN:
            now = self.clock() if now is None else now
            if now - self._opened_at >= self.settings.open_timeout_s:
                return CircuitState.HALF_OPEN
        return self.state


class GatewayMonitor:
    """Health and breaker of every gateway the engine calls, built from the settings."""

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
        for name in names:
            self.add(name)

    def add(self, name: str) -> tuple[GatewayHealth, CircuitBreaker]:
        s = self.settings
        health = GatewayHealth(
            name,
            window_calls=s.window_calls,
            window_s=s.window_s,
            latency_target_ms=s.latency_target_ms,
            clock=self._now,
        )
        breaker = CircuitBreaker(
            name, s.breaker_for(name), health=health, clock=self._now, on_change=self.on_change
        )
        self.health[name] = health
        self.breakers[name] = breaker
        self.pairs[name] = (health, breaker)
        return health, breaker

    def _now(self) -> float:
        return self.clock()  # late-bound, so a test can swap ``monitor.clock``

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per gateway: score, success rate, latency percentiles, volume and circuit state."""
        now = self.clock()
        report = {}
        for name in sorted(self.health):
            breaker = self.breakers[name]
            report[name] = {
                **self.health[name].snapshot(now),
                "circuit": breaker.current_state(now).value,
                "circuit_opened": breaker.opened,
                "rejected": breaker.rejected,
            }
        return report
