"""Circuit state and health counters shared by a fleet of workers through Redis (optional).

Each worker keeps judging gateways from its own calls (``aegispay.breaker``); this module
adds what the others saw. Nothing here is on the hot path: a background task
(:meth:`SharedBreakerState.run`, started while the service is entered) calls
:meth:`~SharedBreakerState.refresh_once` every ``refresh_s`` seconds, and breaker checks read
only the local breakers it updates. One round is one pipelined round trip (two when this
worker asks for a probe slot):

1. Publish local changes since the last round. A circuit this worker opened:
   ``SET <prefix>open:<gateway> {"id", "until_ms", "reason", "worker"} PX <remaining>``
   (and the probe slot is cleared). A circuit this worker's probe closed: a script deletes
   the open key if it still holds the open that was closed, and leaves a tombstone
   ``closed:<id>`` in the probe slot for ``open_timeout_s``, so the workers that adopted
   that open close too (a key that merely expired is not a close: see 3).
2. Publish this worker's window counters (successes, failures, declines, volume, p95) per
   gateway into the hash ``<prefix>stats:<gateway>`` (one field per worker, with a
   timestamp; the hash expires ``stats_ttl_s`` after the last write).
3. Read every gateway's open key (and its PTTL) and probe slot, and adopt them: an open
   this worker has not seen makes its breaker OPEN for the key's remaining time; a
   tombstone for the open it adopted closes it; a breaker whose open time is over asks
   for the fleet's one probe slot, ``SET <prefix>probe:<gateway> probe:<worker> NX PX
   <open_timeout>``, and only the winner half-opens (``breaker.probe_granted``).

Every key has a TTL, so a crashed worker cannot hold a circuit open, or the probe slot,
for longer than one open timeout. Redis errors never reach a payment: the round is logged
and dropped, every breaker falls back to judging alone (``breaker.shared = False``), and
the next round tries again. Time across workers is Redis's PTTL, never a worker's clock
(``until_ms`` in the value is for people reading it).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import anyio
import attrs
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .breaker import CircuitBreaker, CircuitState, GatewayMonitor
from .errors import ConfigError
from .health import CallClass
from .settings import SharedBreakerSettings
from .urls import hide_password

log = logging.getLogger("aegispay.shared_breaker")

# A round trip longer than this is abandoned (the round is retried), so a hung Redis cannot
# stall the refresh task for long; it never stalls a payment.
_IO_TIMEOUT_S = 2.0
_CLOSED = "closed:"
_PROBE = "probe:"

# Delete the open key if it still holds the open that was closed (a newer open by another
# worker stays), and leave a tombstone in the probe slot naming the closed open.
# KEYS: open key, probe key  ARGV: open id, tombstone ttl ms
_CLOSE = """
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v)['id'] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], 'closed:' .. ARGV[1], 'PX', ARGV[2])
return 1
"""


@attrs.define
class _Track:
    """What this worker last agreed with Redis about one gateway."""

    generation: int = 0  # the breaker's generation when last published or adopted
    open_id: str | None = None  # the open published or adopted (matched against a tombstone)


@attrs.frozen
class _Publish:
    name: str
    generation: int
    open: dict[str, Any] | None  # the value of a new open, else a close of ``closing``
    remaining_ms: int = 0
    closing: str | None = None


class SharedBreakerState:
    """One worker's view of the fleet's breaker state (see the module docstring)."""

    def __init__(
        self,
        monitor: GatewayMonitor,
        url: str,
        settings: SharedBreakerSettings | None = None,
        *,
        worker: str | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.monitor = monitor
        self.settings = settings or SharedBreakerSettings()
        self.prefix = self.settings.prefix
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.wall = wall  # epoch seconds: only for the stats' staleness and until_ms
        self._safe_url, self._password = hide_password(url)
        try:
            self._client = aioredis.Redis.from_url(
                url, socket_timeout=_IO_TIMEOUT_S, socket_connect_timeout=_IO_TIMEOUT_S
            )
        except ValueError as error:
            raise ConfigError(
                f"engine.gateway_health.shared: invalid redis URL {self._safe_url}: {error}"
            ) from None
        self._tracks: dict[str, _Track] = {}
        self.failed_rounds = 0  # consecutive rounds Redis did not answer
        self.rounds = 0  # rounds completed

    def __repr__(self) -> str:
        return f"SharedBreakerState({self._safe_url!r}, prefix={self.prefix!r})"

    def open_key(self, gateway: str) -> str:
        return f"{self.prefix}open:{gateway}"

    def probe_key(self, gateway: str) -> str:
        return f"{self.prefix}probe:{gateway}"

    def stats_key(self, gateway: str) -> str:
        return f"{self.prefix}stats:{gateway}"

    @property
    def _probe_value(self) -> str:
        return _PROBE + self.worker

    # -- the background task ----------------------------------------------------------------

    async def run(self) -> None:
        """Refresh every ``refresh_s`` until cancelled; then judge alone and close."""
        try:
            while True:
                try:
                    await self.refresh_once()
                except Exception:  # a bug here must not stop the service's other tasks
                    self.detach()
                    log.exception("shared breaker state: refresh failed")
                await anyio.sleep(self.settings.refresh_s)  # pacing, not synchronisation
        finally:
            self.detach()
            with anyio.CancelScope(shield=True):
                await self.aclose()

    def detach(self) -> None:
        """Every breaker back to judging alone (Redis unreachable, or the task stopped)."""
        for breaker in self.monitor.breakers.values():
            breaker.shared = False
            breaker.probe_granted = False

    async def aclose(self) -> None:
        try:
            await self._client.aclose()
        except (RedisError, OSError) as error:
            log.warning("closing %s: %s", self._safe_url, self._hide(error))

    def _hide(self, error: BaseException) -> str:
        message = f"{type(error).__name__}: {error}"
        if self._password:  # drivers may echo what they were given
            message = message.replace(self._password, "***").replace(unquote(self._password), "***")
        return message

    async def refresh_once(self) -> bool:
        """One round (publish, read, adopt); False when Redis failed (logged, not raised)."""
        try:
            await self._round()
        except (RedisError, OSError, ValueError, KeyError, TypeError) as error:
            # The others: a value in Redis that is not ours (bad JSON); same treatment.
            self.detach()
            self.failed_rounds += 1
            level = logging.WARNING if self.failed_rounds == 1 else logging.DEBUG
            log.log(
                level,
                "shared breaker state at %s: %s; judging gateways locally until it answers",
                self._safe_url,
                self._hide(error),
            )
            return False
        if self.failed_rounds:
            log.warning("shared breaker state at %s answers again", self._safe_url)
            self.failed_rounds = 0
        self.rounds += 1
        return True

    async def _round(self) -> None:
        monitor = self.monitor
        now = monitor.clock()
        wall_ms = int(self.wall() * 1000)
        breakers = dict(monitor.breakers)  # a gateway added during the await waits a round
        publishes = [p for name, b in breakers.items() if (p := self._change(name, b, now))]
        pipe = self._client.pipeline(transaction=False)
        writes = 0  # commands before the reads, whose answers are skipped
        for p in publishes:
            writes += 2
            if p.open is not None:
                pipe.set(self.open_key(p.name), json.dumps(p.open), px=p.remaining_ms)
                pipe.delete(self.probe_key(p.name))
            else:
                ttl_ms = _ms(breakers[p.name].settings.open_timeout_s)
                keys = (self.open_key(p.name), self.probe_key(p.name))
                pipe.eval(_CLOSE, 2, *keys, p.closing or "", ttl_ms)
                writes -= 1
        stats_ttl_ms = _ms(self.settings.stats_ttl_s)
        for name, breaker in breakers.items():
            stats = self._stats(name, breaker, now, wall_ms)
            pipe.hset(self.stats_key(name), self.worker, json.dumps(stats))
            pipe.pexpire(self.stats_key(name), stats_ttl_ms)
            writes += 2
        for name in breakers:
            pipe.get(self.open_key(name))
            pipe.pttl(self.open_key(name))
            pipe.get(self.probe_key(name))
        results = await pipe.execute()
        for p in publishes:  # published: later rounds compare against this generation
            track = self._tracks.setdefault(p.name, _Track())
            track.generation = p.generation
            track.open_id = p.open["id"] if p.open is not None else None
        reads = results[writes:]
        now = monitor.clock()
        wanting = []
        for i, (name, breaker) in enumerate(breakers.items()):
            open_raw, pttl, probe_raw = reads[3 * i : 3 * i + 3]
            if self._adopt(name, breaker, _text(open_raw), int(pttl), _text(probe_raw), now):
                wanting.append(name)
        if wanting:
            await self._claim_probes(wanting, breakers)

    def _change(self, name: str, breaker: CircuitBreaker, now: float) -> _Publish | None:
        """What to publish about a change made here since the last agreement, if anything."""
        track = self._tracks.setdefault(name, _Track())  # breakers start at generation 0
        generation = breaker.generation
        if generation == track.generation or not breaker.settings.enabled:
            return None
        state = breaker.state
        if state is CircuitState.OPEN:
            remaining = breaker.reopens_in(now)
            if remaining > 0:
                value = {
                    "id": uuid.uuid4().hex,
                    "until_ms": int(self.wall() * 1000) + _ms(remaining),
                    "reason": breaker.reason,
                    "worker": self.worker,
                }
                return _Publish(name, generation, value, remaining_ms=_ms(remaining))
        elif state is CircuitState.CLOSED and track.open_id is not None:
            return _Publish(name, generation, None, closing=track.open_id)
        track.generation = generation  # half-open, or nothing the fleet needs to hear
        return None

    def _adopt(
        self,
        name: str,
        breaker: CircuitBreaker,
        open_raw: str | None,
        pttl_ms: int,
        probe_raw: str | None,
        now: float,
    ) -> bool:
        """Apply what Redis says about ``name``; True when this worker wants the probe slot."""
        track = self._tracks.setdefault(name, _Track(generation=breaker.generation))
        if breaker.generation != track.generation or not breaker.settings.enabled:
            # Changed here while the round was in flight: publish it next round first.
            return False
        breaker.shared = True
        if open_raw is not None:
            value = json.loads(open_raw)
            if value["id"] != track.open_id and pttl_ms > 0:
                breaker.adopt_open(pttl_ms / 1000, str(value.get("reason", "")), now)
                track.open_id = value["id"]
            track.generation = breaker.generation
            breaker.probe_granted = False  # nobody probes while an open is in force
            return False
        if probe_raw is not None and probe_raw.startswith(_CLOSED):
            if probe_raw[len(_CLOSED) :] == track.open_id:
                breaker.adopt_close("closed by a successful probe on another worker", now)
                track.open_id = None
                track.generation = breaker.generation
            breaker.probe_granted = False
            return False
        state = breaker.state
        if state is CircuitState.CLOSED or (
            state is CircuitState.OPEN and breaker.reopens_in(now) > 0
        ):
            breaker.probe_granted = False
            return False
        if probe_raw == self._probe_value:
            breaker.probe_granted = True
            return False
        breaker.probe_granted = False
        return probe_raw is None

    async def _claim_probes(self, names: list[str], breakers: dict[str, CircuitBreaker]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            ttl_ms = _ms(breakers[name].settings.open_timeout_s)
            pipe.set(self.probe_key(name), self._probe_value, nx=True, px=ttl_ms)
        for name, won in zip(names, await pipe.execute(), strict=True):
            breaker = breakers[name]
            track = self._tracks[name]
            if won and breaker.generation == track.generation:
                breaker.probe_granted = True

    def _stats(
        self, name: str, breaker: CircuitBreaker, now: float, wall_ms: int
    ) -> dict[str, Any]:
        health = self.monitor.health[name]
        health.refresh(now)
        counts = health.counts
        return {
            "at_ms": wall_ms,
            "successes": counts[CallClass.SUCCESS],
            "failures": health.failures,
            "declined": counts[CallClass.DECLINED],
            "volume": health.volume,
            "p95_ms": round(health.p95_ms(now), 3),
            "circuit": breaker.current_state(now).value,
        }

    # -- the fleet view -------------------------------------------------------------------

    async def fleet_health(self) -> dict[str, dict[str, Any]]:
        """Per gateway, the counters of every worker that refreshed within ``stats_ttl_s``,
        summed, and the fleet's circuit: ``open`` while a shared open is in force (with
        ``reopens_in_s``), ``half_open`` while a worker holds the probe slot, else ``closed``.
        ``p95_ms`` is the highest worker p95 (p95s do not merge exactly; this bounds it).
        Raises the Redis error when Redis does not answer (this is not the hot path)."""
        names = sorted(self.monitor.breakers)
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.stats_key(name))
            pipe.pttl(self.open_key(name))
            pipe.get(self.probe_key(name))
        results = await pipe.execute()
        cutoff_ms = int(self.wall() * 1000) - _ms(self.settings.stats_ttl_s)
        report: dict[str, dict[str, Any]] = {}
        stale = self._client.pipeline(transaction=False)
        for i, name in enumerate(names):
            fields, pttl, probe_raw = results[3 * i : 3 * i + 3]
            merged = {"successes": 0, "failures": 0, "declined": 0, "volume": 0}
            p95 = 0.0
            workers: dict[str, str] = {}
            for field, raw in fields.items():
                worker, stats = _text(field) or "", json.loads(raw)
                if stats["at_ms"] < cutoff_ms:
                    stale.hdel(self.stats_key(name), worker)  # a worker that stopped
                    continue
                for key in merged:
                    merged[key] += int(stats[key])
                p95 = max(p95, float(stats["p95_ms"]))
                workers[worker] = stats["circuit"]
            judged = merged["successes"] + merged["failures"]
            volume = merged["volume"]
            probe = _text(probe_raw) or ""
            pttl = int(pttl)
            circuit = "open" if pttl > 0 else "half_open" if probe.startswith(_PROBE) else "closed"
            report[name] = {
                **merged,
                "availability": round(merged["successes"] / judged, 4) if judged else 1.0,
                "success_rate": round(merged["successes"] / volume, 4) if volume else 1.0,
                "p95_ms": p95,
                "circuit": circuit,
                "reopens_in_s": round(pttl / 1000, 3) if pttl > 0 else 0.0,
                "workers": dict(sorted(workers.items())),
            }
        if len(stale):
            await stale.execute()
        return report


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
