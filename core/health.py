"""Gateway health: sliding windows over recent calls, per gateway and per segment, O(1) per call.

Every gateway call the engine makes is recorded once, as a :class:`CallClass` and a latency,
in its gateway's window and (authorisations only) in one window per *segment* of that gateway:
its currency, payment method and customer country (``("currency", "USD")``, ...), so routing
and operators can see that a gateway is fine for USD cards but failing for INR UPI.

The window is "the last ``window_calls`` calls, no older than ``window_s`` seconds" (either
limit may be switched off with 0, not both). Entries live in a deque in call order; running
counters per class and a latency histogram that supports removal (the log-linear buckets of
:class:`aegispay.metrics.LatencyHistogram`, ~1.6 % relative error) are updated as an entry
enters and as it leaves, so recording is O(1) (amortised: each entry is appended once and
evicted once) and nothing ever rescans the history. Percentiles are read by walking the
histogram's occupied buckets; :meth:`GatewayHealth.p95_ms` caches that walk for
``percentile_refresh_s`` so a routing decision reads it in O(1).

Declines by the customer's bank (``Outcome.DECLINED``) are the gateway doing its job: they
are counted, but they are neither successes nor failures for health. NOT_SENT, UNKNOWN and
timeouts are the gateway's failures; an HTTP 5xx reaches health as one of them (adapters map
a 5xx to NOT_SENT when the gateway says nothing was done, else to UNKNOWN), and so does a
rate-limit answer (NOT_SENT with Retry-After).

Health score (0.0-1.0)::

    availability   = successes / (successes + failures)      1.0 when there are none
    latency_factor = min(1, latency_target_ms / p95)         1.0 when p95 <= target, or no target
    score          = availability * latency_factor

``successes`` are SUCCEEDED / PENDING / REQUIRES_ACTION answers (and a status lookup's "no
such request"); ``failures`` are NOT_SENT + UNKNOWN + timeouts; both over the window. So 8
successes, 2 timeouts and any number of declines score 0.8; with a 100 ms target and a p95 of
400 ms that becomes 0.2. The circuit state is reported next to the score, not folded into it.

Also over the window: the rate of each outcome class (calls of that class / all calls, declines
included), the volume, and the throughput (calls per second between the oldest and the newest
call in the window).
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from .metrics import LatencyHistogram


class CallClass(enum.IntEnum):
    """How one gateway call ended, as far as the gateway's health is concerned."""

    SUCCESS = 0
    DECLINED = 1  # the customer's bank said no: not the gateway's failure
    NOT_SENT = 2
    UNKNOWN = 3
    TIMEOUT = 4


FAILURES = frozenset({CallClass.NOT_SENT, CallClass.UNKNOWN, CallClass.TIMEOUT})
_IS_FAILURE = tuple(c in FAILURES for c in CallClass)
_NAMES = tuple(c.name.lower() for c in CallClass)
_SUB = 64  # sub-buckets per power of two: must match aegispay.metrics.LatencyHistogram

# The segment dimensions, in the order GatewayMonitor.record_segments takes their values.
SEGMENT_DIMENSIONS = ("currency", "payment_method", "country")


class GatewayHealth:
    """The sliding window of one gateway's (or segment's) recent calls.

    Not thread-safe: it belongs to one event loop, like the service that feeds it.
    """

    __slots__ = (
        "_entries",
        "_latency",
        "_pct_at",
        "_pct_p95",
        "clock",
        "counts",
        "failures",
        "latency_sum_ms",
        "latency_target_ms",
        "lifetime",
        "name",
        "percentile_refresh_s",
        "total",
        "window_calls",
        "window_s",
    )

    def __init__(
        self,
        name: str,
        *,
        window_calls: int = 500,
        window_s: float = 60.0,
        latency_target_ms: float = 0.0,
        percentile_refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_calls < 0 or window_s < 0:
            raise ValueError("window_calls and window_s must be 0 or more")
        if not window_calls and not window_s:
            raise ValueError("a health window needs window_calls or window_s (or both)")
        if percentile_refresh_s < 0:
            raise ValueError("percentile_refresh_s must be 0 or more")
        self.name = name
        self.window_calls = window_calls
        self.window_s = window_s
        self.latency_target_ms = latency_target_ms
        self.percentile_refresh_s = percentile_refresh_s
        self.clock = clock
        # (time, class, latency bucket index), oldest first.
        self._entries: deque[tuple[float, int, int]] = deque()
        self._latency: dict[int, int] = {}  # bucket index -> calls in the window
        self.counts = [0] * len(CallClass)  # calls in the window, by class
        self.failures = 0  # NOT_SENT + UNKNOWN + TIMEOUT in the window
        self.total = 0  # every call ever recorded (not windowed)
        self.lifetime = [0] * len(CallClass)  # every call ever recorded, by class
        self.latency_sum_ms = 0.0  # of every call ever recorded (Prometheus summary _sum)
        self._pct_at = float("-inf")  # when the cached p95 was computed
        self._pct_p95 = 0.0

    def record(self, cls: int, latency_ms: float, now: float | None = None) -> None:
        """Record one call: O(1) amortised (the hot path: keep it free of calls)."""
        if now is None:
            now = self.clock()
        us = int(latency_ms * 1000) if latency_ms > 0 else 0
        # LatencyHistogram._index, inlined: a function call is a third of this method's cost.
        if us < 128:
            index = us
        else:
            shift = us.bit_length() - 7  # keeps (us >> shift) in [64, 128)
            index = (shift + 1) * _SUB + (us >> shift) - _SUB
        entries = self._entries
        if self.window_calls and len(entries) >= self.window_calls:
            self._evict(entries.popleft())
        entries.append((now, cls, index))
        self.counts[cls] += 1
        if _IS_FAILURE[cls]:
            self.failures += 1
        latency = self._latency
        latency[index] = latency.get(index, 0) + 1
        self.total += 1
        self.lifetime[cls] += 1
        self.latency_sum_ms += latency_ms
        if self.window_s:
            oldest = now - self.window_s
            if entries[0][0] <= oldest:
                self._expire(now)

    def _evict(self, entry: tuple[float, int, int]) -> None:
        _, cls, index = entry
        self.counts[cls] -= 1
        if _IS_FAILURE[cls]:
            self.failures -= 1
        left = self._latency[index] - 1
        if left:
            self._latency[index] = left
        else:
            del self._latency[index]

    def _expire(self, now: float) -> None:
        entries = self._entries
        oldest = now - self.window_s
        while entries and entries[0][0] <= oldest:
            self._evict(entries.popleft())

    def clear(self) -> None:
        """Forget the window (the lifetime ``total`` stays): used when a circuit closes."""
        self._entries.clear()
        self._latency.clear()
        self.counts = [0] * len(CallClass)
        self.failures = 0
        self._pct_at = float("-inf")

    # -- reading (not on the hot path) ----------------------------------------------------

    def refresh(self, now: float | None = None) -> None:
        """Drop entries that have aged out of the time window since the last call."""
        if self.window_s:
            self._expire(self.clock() if now is None else now)

    @property
    def volume(self) -> int:
        """Calls in the window, declines included."""
        return len(self._entries)

    @property
    def successes(self) -> int:
        return self.counts[CallClass.SUCCESS]

    @property
    def judged(self) -> int:
        """Successes + failures in the window: the calls that say something about health."""
        return self.counts[CallClass.SUCCESS] + self.failures

    def failure_rate(self) -> float:
        """failures / (successes + failures) over the window; declines are left out."""
        judged = self.counts[CallClass.SUCCESS] + self.failures
        return self.failures / judged if judged else 0.0

    def availability(self) -> float:
        judged = self.counts[CallClass.SUCCESS] + self.failures
        return self.counts[CallClass.SUCCESS] / judged if judged else 1.0

    def success_rate(self) -> float:
        """Successful answers / all calls in the window (declines count as not successful)."""
        volume = len(self._entries)
        return self.counts[CallClass.SUCCESS] / volume if volume else 1.0

    def class_rates(self) -> dict[str, float]:
        """Per class (declined, not_sent, unknown, timeout, success): calls / all calls."""
        volume = len(self._entries)
        return {_NAMES[c]: (self.counts[c] / volume if volume else 0.0) for c in CallClass}

    def throughput(self) -> float:
        """Calls per second between the oldest and the newest call in the window (0 with
        fewer than two calls, or all at one instant)."""
        entries = self._entries
        if len(entries) < 2:
            return 0.0
        span = entries[-1][0] - entries[0][0]
        return (len(entries) - 1) / span if span > 0 else 0.0

    def percentile_ms(self, p: float) -> float:
        """Latency at percentile ``p`` (0-100) over the window, ms (bucket lower bound)."""
        return self.percentiles_ms((p,))[0]

    def percentiles_ms(self, ps: Iterable[float]) -> list[float]:
        """Latencies at several percentiles (ascending or not) in one walk of the buckets."""
        wanted = list(ps)
        volume = len(self._entries)
        if not volume:
            return [0.0] * len(wanted)
        ranks = sorted((max(1, round(volume * p / 100)), i) for i, p in enumerate(wanted))
        out = [0.0] * len(wanted)
        latency = self._latency
        seen = 0
        k = 0
        for index in sorted(latency):
            seen += latency[index]
            while k < len(ranks) and seen >= ranks[k][0]:
                out[ranks[k][1]] = LatencyHistogram._value(index) / 1000
                k += 1
            if k == len(ranks):
                break
        return out

    def p95_ms(self, now: float) -> float:
        """The p95 latency, recomputed at most every ``percentile_refresh_s`` seconds: what
        routing reads on every decision, where a second-old p95 is as good as a fresh one."""
        if now - self._pct_at >= self.percentile_refresh_s or now < self._pct_at:
            self._pct_p95 = self.percentile_ms(95)
            self._pct_at = now
        return self._pct_p95

    def latency_factor(self, p95: float | None = None) -> float:
        target = self.latency_target_ms
        if target <= 0:
            return 1.0
        if p95 is None:
            p95 = self.percentile_ms(95)
        return 1.0 if p95 <= target else target / p95

    def score(self) -> float:
        """``availability * latency_factor`` (see the module docstring), 0.0-1.0."""
        return self.availability() * self.latency_factor()

    def fast_score(self, now: float) -> float:
        """:meth:`score` with the cached p95 (:meth:`p95_ms`): cheap enough for every decision."""
        judged = self.counts[0] + self.failures
        availability = self.counts[0] / judged if judged else 1.0
        if self.latency_target_ms <= 0:
            return availability
        return availability * self.latency_factor(self.p95_ms(now))

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = self.clock() if now is None else now
        self.refresh(now)
        p50, p95, p99 = self.percentiles_ms((50, 95, 99))
        return {
            "score": round(self.availability() * self.latency_factor(p95), 4),
            "success_rate": round(self.success_rate(), 4),
            "failure_rate": round(self.failure_rate(), 4),
            "volume": self.volume,
            "total_calls": self.total,
            "throughput_per_s": round(self.throughput(), 3),
            "by_class": {_NAMES[c]: self.counts[c] for c in CallClass},
            "class_rates": {name: round(rate, 4) for name, rate in self.class_rates().items()},
            "latency_ms": {"p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3)},
        }
