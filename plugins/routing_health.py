"""Health-based routing strategies: ``metrics``, ``latency`` and ``thompson``.

They read the live health windows of the service's :class:`aegispay.breaker.GatewayMonitor`
(``self.monitor``, bound when the service starts; unbound, every gateway looks healthy and
unmeasured). Each may read a *segment* window instead of the gateway's own::

    segment = "currency"           # or "payment_method", "country"
    segment_min_calls = 20         # ...when that window holds this many judged calls

so a gateway that is failing only for INR is ranked down for INR payments alone. A segment
window with fewer judged calls (successes + failures) falls back to the gateway's window.
Ties keep candidate order. Reading a window is O(1): counters, and a p95 cached for
``engine.gateway_health.percentile_refresh_s``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from aegispay.decisions import HookContext
from aegispay.health import SEGMENT_DIMENSIONS, GatewayHealth
from aegispay.payment import Payment

from .routing_base import Options, Ranking, Strategy, config_error
from .routing_cost import FeeTable, parse_fees

_SHOWN = 3  # gateways described in a decision's reason; the rest are counted


def _minor_text(minor: int, payment: Payment) -> str:
    """``minor`` units of the payment's currency as ``2.80 USD``, without building a Money."""
    exponent = payment.amount.exponent
    if not exponent:
        return f"{minor} {payment.amount.currency}"
    sign = "-" if minor < 0 else ""
    whole, part = divmod(abs(minor), 10**exponent)
    return f"{sign}{whole}.{part:0{exponent}d} {payment.amount.currency}"


def make_rng(seed: int | None) -> random.Random:
    """The factory for a strategy's own random generator: seeded (reproducible runs and
    tests) or, without a seed, from the OS. Never the module-global ``random`` state."""
    return random.Random(seed)


class HealthStrategy(Strategy):
    """Shared by the health-based strategies: the ``segment`` options and window lookup."""

    def _read_segment(self, options: Options) -> None:
        self.segment = options.choice("segment", SEGMENT_DIMENSIONS)
        self.segment_min_calls = options.integer("segment_min_calls", 20, minimum=1) or 1

    def windows(self, candidates: Sequence[str], payment: Payment) -> list[GatewayHealth | None]:
        """Per candidate, the window to judge it by (None: no health known)."""
        monitor = self.monitor
        if monitor is None:
            return [None] * len(candidates)
        health = monitor.health
        # Age out what left the time window: a gateway that lost its traffic records no new
        # calls, so only reading can forget its bad spell (else it would never win again).
        now = monitor.clock()
        if self.segment is None:
            found = [health.get(name) for name in candidates]
            for window in found:
                if window is not None:
                    window.refresh(now)
            return found
        if self.segment == "currency":
            value: str | None = payment.amount.currency
        elif self.segment == "payment_method":
            value = payment.payment_method
        else:
            value = payment.country
        out: list[GatewayHealth | None] = []
        for name in candidates:
            window = None if value is None else monitor.segment(name, self.segment, value)
            if window is not None:
                window.refresh(now)
            if window is None or window.counts[0] + window.failures < self.segment_min_calls:
                window = health.get(name)
                if window is not None:
                    window.refresh(now)
            out.append(window)
        return out

    def now(self) -> float:
        return self.monitor.clock() if self.monitor is not None else 0.0


class Metrics(HealthStrategy):
    """``strategy = "metrics"``: the best weighted score of success rate, latency and cost.

    Options (``[plugins.routing.metrics]``)::

        weights = { success = 0.6, latency = 0.3, cost = 0.1 }   # the defaults
        latency_target_ms = 0        # 0: latency relative to the fastest candidate
        fees = { ... }               # as for strategy "cost"; needed when weights.cost > 0
        segment = "currency"         # optional, see the module docstring

    Per candidate, over its health window::

        success = successes / (successes + failures)     1.0 with none (declines left out)
        latency = fastest p95 / own p95                   or min(1, latency_target_ms / p95);
                                                          1.0 with no latency measured
        cost    = (cheapest fee + 1) / (own fee + 1)      fees in minor units; 0.0 with no fee
        score   = (w_success * success + w_latency * latency + w_cost * cost) / sum(weights)

    Candidates go in descending score (ties: candidate order). An unmeasured gateway scores
    full marks on success and latency, so a new gateway gets traffic and gets measured.
    """

    name: ClassVar[str] = "metrics"

    def __init__(self, options: Options) -> None:
        weights = options.table("weights")
        w = {"success": 0.6, "latency": 0.3, "cost": 0.1}
        if weights is not None:
            w = {key: weights.number(key, 0.0) for key in w}
            weights.finish()
            if not any(w.values()):
                raise config_error(weights.where, "needs at least one weight above 0")
        self.latency_target_ms = options.number("latency_target_ms", 0.0)
        self.fees: FeeTable = parse_fees(options, required=False)
        if w["cost"] and not self.fees:
            if weights is None:  # the default weights: without fees, cost is left out
                w["cost"] = 0.0
            else:
                raise config_error(options.path("fees"), "required when weights.cost > 0")
        self._read_segment(options)
        options.finish()
        self._fee_rows: dict[tuple[str, str | None], dict[str, tuple[int, int]]] = {}
        total = sum(w.values())
        self.w_success = w["success"] / total
        self.w_latency = w["latency"] / total
        self.w_cost = w["cost"] / total

    def _fee_row(self, payment: Payment) -> dict[str, tuple[int, int]]:
        """Per gateway, (fixed minor, basis points) for this currency and method: cached, as
        the fee table is fixed once configured and a decision must not search it."""
        key = (payment.amount.currency, payment.payment_method)
        row = self._fee_rows.get(key)
        if row is None:
            row = {}
            for gateway, entries in self.fees.items():
                fee = entries.get(key) or entries.get((key[0], None))
                if fee is not None:
                    row[gateway] = (fee.fixed_minor, fee.basis_points)
            if len(self._fee_rows) < 1024:  # bounded: methods come from callers
                self._fee_rows[key] = row
        return row

    def rank(self, candidates: Sequence[str], payment: Payment, context: HookContext) -> Ranking:
        # The hot path of every routing decision: one pass to read the windows and fees
        # (the relative scores need the fastest and the cheapest), one pass to score.
        if not candidates:
            return Ranking((), "metrics: no candidates", self.name)
        monitor = self.monitor
        if monitor is not None and self.segment is None:
            get = monitor.health.get
            windows: list[GatewayHealth | None] = [get(name) for name in candidates]
        else:
            windows = self.windows(candidates, payment)
        now = monitor.clock() if monitor is not None else 0.0
        fee_row = self._fee_row(payment) if self.w_cost > 0 else None
        minor = payment.amount.minor
        rows: list[tuple[float, float, int | None]] = []
        fastest = float("inf")
        cheapest: int | None = None
        for name, window in zip(candidates, windows, strict=True):
            if window is None or not window._entries:
                ok = 1.0
                p95 = 0.0
            else:
                good = window.counts[0]
                judged = good + window.failures
                ok = good / judged if judged else 1.0
                at = window._pct_at  # GatewayHealth.p95_ms's cache test, inlined
                if at <= now < at + window.percentile_refresh_s:
                    p95 = window._pct_p95
                else:
                    p95 = window.p95_ms(now)
                if 0.0 < p95 < fastest:
                    fastest = p95
            fee = None
            if fee_row is not None:
                entry = fee_row.get(name)
                if entry is not None:
                    fee = entry[0] + (minor * entry[1] + 5000) // 10000
                    if cheapest is None or fee < cheapest:
                        cheapest = fee
            rows.append((ok, p95, fee))
        target = self.latency_target_ms
        ws, wl, wc = self.w_success, self.w_latency, self.w_cost
        scored = []
        for i, (ok, p95, fee) in enumerate(rows):
            if p95 <= 0.0:
                latency = 1.0
            elif target > 0.0:
                latency = 1.0 if p95 <= target else target / p95
            else:
                latency = fastest / p95
            score = ws * ok + wl * latency
            if fee is not None and cheapest is not None:
                score += wc * (cheapest + 1) / (fee + 1)
            scored.append((-score, i))
        scored.sort()
        ordered = tuple([candidates[i] for _, i in scored])
        return Ranking(ordered, self._reason(candidates, scored, rows, payment), self.name)

    def _reason(
        self,
        candidates: Sequence[str],
        scored: list[tuple[float, int]],
        rows: list[tuple[float, float, int | None]],
        payment: Payment,
    ) -> str:
        """The winner's figures, then the next two by score: enough to see why, at a cost
        that stays small next to the decision itself."""
        neg, first = scored[0]
        ok, p95, fee = rows[first]
        fee_text = ""
        if self.w_cost > 0:
            fee_text = ", no fee" if fee is None else f", fee {_minor_text(fee, payment)}"
        head = (
            f"metrics: {candidates[first]} {-neg:.3f} (success {ok:.3f}, p95 {p95:.1f} ms"
            f"{fee_text})"
        )
        count = len(scored)
        if count == 1:
            return head
        n1, i1 = scored[1]
        if count == 2:
            return f"{head}, then {candidates[i1]} {-n1:.3f}"
        n2, i2 = scored[2]
        more = f" +{count - 3} more" if count > 3 else ""
        return f"{head}, then {candidates[i1]} {-n1:.3f}, {candidates[i2]} {-n2:.3f}{more}"


class Latency(HealthStrategy):
    """``strategy = "latency"``: the lowest recent p95 latency first.

    Options (``[plugins.routing.latency]``)::

        min_calls = 10          # calls in the window before a gateway's p95 is trusted
        segment = "currency"    # optional, see the module docstring

    Gateways with at least ``min_calls`` calls in their window go first, by ascending p95
    (ties: candidate order); the others follow in candidate order, as fallbacks: an
    unmeasured gateway is not assumed fast.
    """

    name: ClassVar[str] = "latency"

    def __init__(self, options: Options) -> None:
        self.min_calls = options.integer("min_calls", 10, minimum=1) or 1
        self._read_segment(options)
        options.finish()

    def rank(self, candidates: Sequence[str], payment: Payment, context: HookContext) -> Ranking:
        now = self.now()
        measured = []
        for i, window in enumerate(self.windows(candidates, payment)):
            if window is not None and len(window._entries) >= self.min_calls:
                measured.append((window.p95_ms(now), i))
        measured.sort()
        ordered = tuple(candidates[i] for _, i in measured)
        if not ordered:
            return Ranking((), f"latency: no gateway has {self.min_calls} calls yet", self.name)
        listed = ", ".join(f"{candidates[i]} p95 {p95:.1f} ms" for p95, i in measured[:_SHOWN])
        more = f", +{len(measured) - _SHOWN} more" if len(measured) > _SHOWN else ""
        unmeasured = len(candidates) - len(measured)
        tail = f"; {unmeasured} unmeasured" if unmeasured else ""
        return Ranking(ordered, f"latency: fastest first ({listed}{more}){tail}", self.name)


class Thompson(HealthStrategy):
    """``strategy = "thompson"``: success rate with exploration, by Thompson sampling.

    Options (``[plugins.routing.thompson]``)::

        seed = 7               # optional: a reproducible sequence of decisions
        half_life_s = 2.0      # how fast old evidence fades
        max_evidence = 50      # judged calls the evidence may weigh, at most
        prior_successes = 1    # the Beta prior (numbers >= 0.01)
        prior_failures = 1
        segment = "currency"   # optional, see the module docstring

    Evidence per gateway is its successes ``s`` and failures ``f`` (declines left out),
    decayed exponentially with ``half_life_s``: each decision reads how many calls the health
    window recorded since the last one (its lifetime counters, O(1)) and halves the older
    evidence every ``half_life_s`` seconds, so the strategy reacts in seconds whatever the
    window's length. Each decision draws, per candidate, a success probability from
    ``Beta(prior_successes + s, prior_failures + f)``, with ``s + f`` scaled down to
    ``max_evidence``, and ranks by the draws. The cap is what keeps exploring: a
    well-measured gateway at 98 % is drawn below 0.94 about 1 time in 20, so a gateway whose
    failures have faded (or whose circuit just closed) still wins a few percent of decisions,
    and each success it reports raises its share. A degrading gateway loses its share as soon
    as its failures are recorded. The generator is the strategy's own (:func:`make_rng`),
    never the module-global one.
    """

    name: ClassVar[str] = "thompson"

    def __init__(self, options: Options) -> None:
        self.seed = options.integer("seed", None, minimum=0)
        self.half_life_s = options.number("half_life_s", 2.0, minimum=0.001)
        self.max_evidence = options.integer("max_evidence", 50, minimum=1) or 1
        self.prior_s = options.number("prior_successes", 1.0, minimum=0.01)
        self.prior_f = options.number("prior_failures", 1.0, minimum=0.01)
        self._read_segment(options)
        options.finish()
        self.rng = make_rng(self.seed)
        # window -> [time, successes seen, failures seen, decayed s, decayed f]; one entry
        # per gateway and segment window, so bounded like the windows themselves.
        self._evidence: dict[GatewayHealth, list[float]] = {}

    def _decayed(self, window: GatewayHealth, now: float) -> tuple[float, float]:
        life = window.lifetime
        ok = life[0]
        bad = life[2] + life[3] + life[4]  # NOT_SENT, UNKNOWN, TIMEOUT
        state = self._evidence.get(window)
        if state is None:  # first sight: what the window holds now
            s, f = float(window.counts[0]), float(window.failures)
            self._evidence[window] = [now, ok, bad, s, f]
            return s, f
        elapsed = now - state[0]
        if elapsed > 0:
            decay = 0.5 ** (elapsed / self.half_life_s)
            state[3] *= decay
            state[4] *= decay
            state[0] = now
        state[3] += ok - state[1]
        state[4] += bad - state[2]
        state[1], state[2] = ok, bad
        return state[3], state[4]

    def rank(self, candidates: Sequence[str], payment: Payment, context: HookContext) -> Ranking:
        if not candidates:
            return Ranking((), "thompson: no candidates", self.name)
        beta = self.rng.betavariate
        cap = self.max_evidence
        now = self.now()
        draws = []
        evidence = []
        for i, window in enumerate(self.windows(candidates, payment)):
            s = f = 0.0
            if window is not None:
                s, f = self._decayed(window, now)
            evidence.append((s, f))
            judged = s + f
            if judged > cap:
                s, f = s * cap / judged, f * cap / judged
            draws.append((-beta(self.prior_s + s, self.prior_f + f), i))
        draws.sort()
        ordered = tuple(candidates[i] for _, i in draws)
        listed = ", ".join(
            f"{candidates[i]} {-d:.3f} ({evidence[i][0]:.0f} ok/{evidence[i][1]:.0f} failed)"
            for d, i in draws[:_SHOWN]
        )
        more = f", +{len(draws) - _SHOWN} more" if len(draws) > _SHOWN else ""
        return Ranking(ordered, f"thompson: by sampled success rate {listed}{more}", self.name)
