"""Configurable routing: rules, then elimination, then a named strategy, then fallbacks.

Configuration (``[plugins.routing]``; without it this plugin abstains and ``priority_routing``
decides as before)::

    strategy = "metrics"         # round_robin, weighted, cost, geographic, ab_test, metrics,
                                 # latency, thompson, or a plugin's (see below)
    rules = [{ when = { currency = "INR" }, only = ["razorpay"] }]
    health_floor = 0.0           # 0: off; else drop gateways scoring below it...
    health_floor_min_calls = 20  # ...once their window holds this many judged calls
    probe_half_open = true       # a half-open circuit's probe goes first

    [plugins.routing.metrics]    # the strategy's own options
    weights = { success = 0.6, latency = 0.3, cost = 0.1 }

Each decision, in order:

1. gateways that do not take the payment's currency are eliminated (never a fallback);
2. the rules (see ``routing_rules``) eliminate and pick preferred gateways (compliance first);
3. elimination by health, once the service has started (it binds its GatewayMonitor): a
   gateway whose circuit would reject the call (open, or half-open with its probes in flight)
   is removed, and so, with ``health_floor``, is a closed-circuit gateway whose health score
   (aegispay.health) is below the floor. If only the floor emptied the list, the gateways
   below it are kept after all, as a weak gateway beats certain failure; if open circuits
   emptied it, the decision is empty and its reason names each circuit and when it
   half-opens (the payment fails ``no_gateway``: nothing was sent anywhere);
4. the strategy orders (and may eliminate from) what is left; candidates it did not rank
   follow as fallbacks in candidate order;
5. a half-open gateway whose probe the breaker would admit goes first (``probe_half_open``),
   else a recovered gateway whose window still holds the failures that opened its circuit
   would never be ranked first and never probed; then rule preferences; then the rest.

The reason names every rule that applied, what was eliminated and why, and the strategy's own
explanation. Gateway names in the configuration must be registered gateways: checked when the
service starts (ConfigError naming the field). Strategies from other plugins are registered
through the ``aegispay_register_routing_strategies`` hook when the service starts, so a
strategy name that is not built in is checked then.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aegispay.breaker import CircuitState
from aegispay.decisions import HookContext, RouteDecision
from aegispay.errors import ConfigError
from aegispay.gateways import supports_currency
from aegispay.hookspecs import hookimpl
from aegispay.payment import Payment

from .routing_base import Options, Ranking, Strategy, config_error
from .routing_registry import STRATEGIES, UnknownStrategy, build_strategy
from .routing_rules import Rule, apply_rules, parse_rule

if TYPE_CHECKING:
    from aegispay.breaker import GatewayMonitor
    from aegispay.service import PaymentService

WHERE = "plugins.routing"


class RoutingPlugin:
    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config
        self.active = bool(config)
        self.monitor: GatewayMonitor | None = None
        self._unsupported: dict[str, frozenset[str]] = {}  # currency -> gateways without it
        self._deferred: UnknownStrategy | None = None
        try:
            self._build(STRATEGIES)
        except UnknownStrategy as exc:  # perhaps a plugin's: registered when the service starts
            self._deferred = exc
            self._build(STRATEGIES, strategies=False)  # still check everything else now
        self._checked = False

    def _build(self, registry: Mapping[str, type[Strategy]], strategies: bool = True) -> None:
        self.refs: list[tuple[str, str]] = []  # (field, gateway name) to check at startup
        root = Options(self.config, WHERE, self.refs, registry=registry)
        self.rules: list[Rule] = [parse_rule(o, i) for i, o in enumerate(root.tables("rules"))]
        self.health_floor = root.number("health_floor", 0.0, maximum=1.0)
        self.floor_min_calls = root.integer("health_floor_min_calls", 20, minimum=1) or 1
        self.probe_half_open = root.boolean("probe_half_open", True)
        name = root.string("strategy")
        self.strategy: Strategy | None = None
        if name is not None and strategies:
            self.strategy = build_strategy(name, root.path("strategy"), None, root)
        if strategies:  # deferred: the strategy tables are read (and checked) at startup
            root.finish()

    def register_strategies(self, pm: Any) -> None:
        """Collect third-party strategies (``aegispay_register_routing_strategies``) and build
        the configured strategy if it needed one of them."""
        extra: dict[str, type[Strategy]] = {}

        def register(cls: type[Strategy]) -> None:
            name = getattr(cls, "name", None)
            if not (isinstance(cls, type) and issubclass(cls, Strategy)) or not name:
                raise config_error(
                    f"{WHERE}.strategy",
                    "a registered strategy must be a Strategy subclass with a name",
                    cls,
                )
            if name in STRATEGIES or name in extra:
                raise config_error(
                    f"{WHERE}.strategy", f"strategy name {name!r} is registered twice", cls
                )
            extra[name] = cls

        pm.hook.aegispay_register_routing_strategies(register=register)
        if self._deferred is not None:
            self._build({**STRATEGIES, **extra})  # raises if the name is still unknown
            self._deferred = None

    def bind(self, monitor: GatewayMonitor) -> None:
        """Use ``monitor``'s health and breakers for elimination and the strategies."""
        self.monitor = monitor
        if self.strategy is not None:
            self.strategy.bind(monitor)

    def check_gateways(self, known: Collection[str]) -> None:
        """Raise ConfigError naming the first configured gateway that is not registered."""
        for path, name in self.refs:
            if name not in known:
                raise config_error(path, f"unknown gateway; registered: {sorted(known)}", name)
        self._checked = True

    @hookimpl(trylast=True)
    def aegispay_startup(self, service: PaymentService) -> None:
        if self.active:
            self.register_strategies(service.host.pm)
            self.bind(service.gateway_monitor)
            self.check_gateways(service.gateways)

    @hookimpl(trylast=True)
    def aegispay_select_gateway(
        self, payment: Payment, candidates: Sequence[str], context: HookContext
    ) -> RouteDecision | None:
        if not self.active:
            return None
        if not self._checked:  # a service used without ``async with``
            self.check_gateways(context.gateways)
        return self.decide(payment, candidates, context)

    def decide(
        self, payment: Payment, candidates: Sequence[str], context: HookContext
    ) -> RouteDecision:
        if self._deferred is not None:
            raise ConfigError(
                f"{self._deferred} (a plugin's strategy is registered when the service starts: "
                "use `async with service`)"
            )
        notes: list[str] = []
        currency = payment.amount.currency
        unsupported = self._unsupported.get(currency)
        if unsupported is None:
            unsupported = self._unsupported[currency] = frozenset(
                name
                for name, gateway in context.gateways.items()
                if not supports_currency(gateway, currency)
            )
        if unsupported:
            dropped = [name for name in candidates if name in unsupported]
            if dropped:
                candidates = [name for name in candidates if name not in unsupported]
                notes.append(f"eliminated {dropped}: {currency} not supported")
        prefer: tuple[str, ...] = ()
        allowed: Sequence[str] = candidates
        if self.rules:
            rules = apply_rules(self.rules, candidates, payment)
            notes.extend(rules.notes)
            allowed, prefer = rules.allowed, rules.prefer
            if not allowed:
                return RouteDecision((), "; ".join([*notes, "no gateway left"]), "rules")
        probes: list[str] = []
        if self.monitor is not None and allowed:
            allowed, probes, note, empty = self._eliminate(allowed)
            if note:
                notes.append(note)
            if not allowed:
                return RouteDecision((), "; ".join([*notes, empty]), "elimination")
        if self.strategy is None:
            ranking = Ranking((), "candidate order", "rules")
        else:
            ranking = self.strategy.rank(allowed, payment, context)
        notes.append(ranking.reason)
        kept = set(allowed)
        ordered = ranking.ordered
        if not ranking.eliminated and len(ordered) == len(kept) and kept.issuperset(ordered):
            order: Sequence[str] = ordered  # the usual case: a permutation of the candidates
            if len(set(ordered)) != len(ordered):
                order = list(dict.fromkeys(ordered)) + [n for n in allowed if n not in ordered]
        else:
            kept -= ranking.eliminated
            ranked = list(dict.fromkeys(name for name in ordered if name in kept))
            placed = set(ranked)
            rest = [name for name in allowed if name in kept and name not in placed]
            order = [*ranked, *rest]
            if rest and ranked:
                notes.append(f"fallbacks {rest}")
        if probes or prefer:
            first = [name for name in probes if name in kept]
            first.extend(name for name in prefer if name in kept and name not in first)
            final = (*first, *(name for name in order if name not in first))
            if first and first[0] in probes:
                notes.append(f"{first[0]} first: half-open circuit, probe call")
        else:
            final = tuple(order)
        if not final:
            notes.append("no gateway left")
        return RouteDecision(final, "; ".join(notes), ranking.label)

    def _eliminate(self, allowed: Sequence[str]) -> tuple[list[str], list[str], str, str]:
        """(kept, half-open probes among them, a note on what was removed, the reason when
        nothing is kept). Removes gateways whose circuit rejects calls and, when
        ``health_floor`` is set, closed-circuit gateways whose score is below it once their
        window holds ``health_floor_min_calls`` judged calls. If only the floor left nothing,
        the gateways below it are kept after all (a weak gateway beats certain failure)."""
        assert self.monitor is not None
        monitor = self.monitor
        pairs = monitor.pairs
        now = monitor.clock()
        floor = self.health_floor
        min_calls = self.floor_min_calls
        kept: list[str] = []
        probes: list[str] = []
        opened: list[str] = []
        low: list[tuple[float, str]] = []
        closed = CircuitState.CLOSED
        for name in allowed:
            pair = pairs.get(name)
            if pair is None:  # never called yet: nothing known against it
                kept.append(name)
                continue
            health, breaker = pair
            if breaker.state is not closed:
                if breaker.wants_probe(now):
                    kept.append(name)
                    if self.probe_half_open:
                        probes.append(name)
                else:
                    opened.append(name)
                continue
            if floor:
                # A gateway that lost its traffic records nothing, so nothing else would age its
                # failures out of the time window: it would stay below the floor for good.
                health.refresh(now)
                good = health.counts[0]
                judged = good + health.failures
                if judged >= min_calls:
                    score = good / judged  # GatewayHealth.fast_score, inlined (hot path)
                    if health.latency_target_ms > 0:
                        score *= health.latency_factor(health.p95_ms(now))
                    if score < floor:
                        low.append((score, name))
                        continue
            kept.append(name)
        if not opened and not low:
            return kept, probes, "", ""
        parts = []
        if opened:
            parts.append(f"circuit open: {self._describe_open(opened, now)}")
        below = ", ".join(f"{name} {score:.2f}" for score, name in low)
        if kept:
            if low:
                parts.append(f"below health floor {floor:g}: {below}")
            return kept, probes, "eliminated (" + "; ".join(parts) + ")", ""
        if low:  # only the floor emptied the list: the best of the weak, by score
            names = [name for _, name in sorted(low, key=lambda pair: -pair[0])]
            parts.append(
                f"every other gateway is below health floor {floor:g} ({below}): trying them anyway"
            )
            return names, probes, "; ".join(parts), ""
        return (
            [],
            [],
            "",
            "no gateway left: every circuit is open (" + self._describe_open(opened, now) + ")",
        )

    def _describe_open(self, names: Sequence[str], now: float) -> str:
        assert self.monitor is not None
        breakers = self.monitor.breakers
        described = []
        for name in names:
            wait = breakers[name].reopens_in(now)
            described.append(
                f"{name} (half-opens in {wait:.1f}s)" if wait else f"{name} (probe in flight)"
            )
        return ", ".join(described)
