"""Per-gateway health: a sliding window over recent calls, kept in O(1) per call.

Every gateway call the engine makes is recorded once, as a :class:`CallClass` and a latency.
The window is "the last ``window_calls`` calls, no older than ``window_s`` seconds" (either
limit may be switched off with 0, not both). Entries live in a deque in call order; running
counters per class and a latency histogram that supports removal are updated as an entry
enters and as it leaves, so recording is O(1) (amortised: each entry is appended once and
evicted once) and nothing ever rescans the history.

Declines by the customer's bank (``Outcome.DECLINED``) are the gateway doing its job: they
are counted, but they are neither successes nor failures for health. NOT_SENT, UNKNOWN and
timeouts are the gateway's failures.

Health score (0.0-1.0)::

    availability   = successes / (successes + failures)      1.0 when there are none
    latency_factor = min(1, latency_target_ms / p95)         1.0 when p95 <= target, or no target
    score          = availability * latency_factor

``successes`` are SUCCEEDED / PENDING / REQUIRES_ACTION answers (and a status lookup's "no
such request"); ``failures`` are NOT_SENT + UNKNOWN + timeouts; both over the window. The
circuit state is reported next to the score, not folded into it.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
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


class GatewayHealth:
    """The sliding window of one gateway's recent calls. Not thread-safe (one event loop)."""

    __slots__ = (
        "_entries",
        "_latency",
        "clock",
        "counts",
        "failures",
        "latency_target_ms",
        "name",
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_calls < 0 or window_s < 0:
            raise ValueError("window_calls and window_s must be 0 or more")
        if not window_calls and not window_s:
            raise ValueError("a health window needs window_calls or window_s (or both)")
        self.name = name
        self.window_calls = window_calls
        self.window_s = window_s
        self.latency_target_ms = latency_target_ms
        self.clock = clock
        # (time, class, latency bucket index), oldest first.
        self._entries: deque[tuple[float, int, int]] = deque()
        self._latency: dict[int, int] = {}  # bucket index -> calls in the window
        self.counts = [0] * len(CallClass)  # calls in the window, by class
        self.failures = 0  # NOT_SENT + UNKNOWN + TIMEOUT in the window
        self.total = 0  # every call ever recorded (not windowed)

    def record(self, cls: int, latency_ms: float, now: float | None = None) -> None:
        """Record one call: O(1) amortised."""
        if now is None:
            now = self.clock()
        us = int(latency_ms * 1000) if latency_ms > 0 else 0
        index = LatencyHistogram._index(us)
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
        if self.window_s:
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

    def percentile_ms(self, p: float) -> float:
        """Latency at percentile ``p`` (0-100) over the window, ms (bucket lower bound)."""
        volume = len(self._entries)
        if not volume:
            return 0.0
        rank = max(1, round(volume * p / 100))
        seen = 0
        for index in sorted(self._latency):
            seen += self._latency[index]
            if seen >= rank:
                return LatencyHistogram._value(index) / 1000
        return 0.0  # pragma: no cover - the counts add up to the volume

    def latency_factor(self) -> float:
        target = self.latency_target_ms
        if target <= 0:
            return 1.0
        p95 = self.percentile_ms(95)
        return 1.0 if p95 <= target else target / p95

    def score(self) -> float:
        """``availability * latency_factor`` (see the module docstring), 0.0-1.0."""
        return self.availability() * self.latency_factor()

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        self.refresh(now)
        return {
            "score": round(self.score(), 4),
            "success_rate": round(self.success_rate(), 4),
            "failure_rate": round(self.failure_rate(), 4),
            "volume": self.volume,
            "total_calls": self.total,
            "by_class": {_NAMES[c]: self.counts[c] for c in CallClass},
            "latency_ms": {
                "p50": round(self.percentile_ms(50), 3),
                "p95": round(self.percentile_ms(95), 3),
                "p99": round(self.percentile_ms(99), 3),
            },
        }
