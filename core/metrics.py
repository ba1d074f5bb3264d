"""A fixed-memory latency histogram (HDR-style log-linear buckets, ~1.6 % relative error).

Recording is O(1) and memory is bounded by the value range, not by how many values are
recorded, so a 200,000-payment run costs the same few kilobytes as a 1,000-payment one.
"""

from __future__ import annotations

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
