"""Per-payment locks in Redis, with fencing tokens (asyncio only: built on ``redis.asyncio``).

A Redis lease is *not* correctness. A holder can be paused (GC, page fault, a slow network)
past its lease; the key expires, a second holder is granted the lock, and now two processes
believe they hold it. No lock service can prevent that, because the paused holder cannot
know it was paused. So every grant also returns a **fencing token**: a per-key counter
(``<prefix><key>:fence``) incremented in the same Lua script that sets the lease, so tokens
are strictly increasing, never reused, and survive the lease's expiry (the counter outlives
the lease: ``fence_retention_s``, an hour by default). Every write made under the lease
carries the token, and the store rejects a token older than the highest it has seen for that
payment (Kleppmann, "How to do distributed locking"). The store is the arbiter; the lease
only keeps two workers from doing the same work at the same time.

Keys: ``<prefix><key>:lock`` (the lease, value = a random owner id), ``<prefix><key>:fence``
(the counter) and the pub/sub channel ``<prefix><key>:released``. Giving the lease its own
suffix means no key's lease can collide with another key's counter (a key ``"p:fence"``
would otherwise share a name with the counter of ``"p"``).

Release and renewal compare the owner id before deleting/extending, so a holder whose lease
expired can never remove or prolong a successor's lease. Waiters watch the release channel -
all of a manager's waiters on one subscription, one connection (:mod:`.redis_release`) - and
retry ``SET NX`` when woken, one at a time in the order they came; a lease that expires
publishes nothing, so each wait is also bounded by the holder's remaining TTL (a poll
fallback, never a tight loop). Waiters of different processes race.

Throughput: a worker holds one lease per payment it is working on, often a thousand at once, so
the Python cost per lease matters as much as the round trips. Concurrent first tries and
releases are coalesced: one task per kind sends whatever queued while its previous call was out
as one script call (at most ``_MAX_BATCH`` keys), each key answered on its own. A batch's
command is packed for the wire by hiredis (in C) and sent on a pooled connection (EVALSHA; the
script body when Redis answers NOSCRIPT), bypassing redis-py's per-argument command packing.
One task renews every lease the process holds in a single call per round,
instead of a task per holder; it stops with the last lease. Nothing per hold is a task, a
subscription or a cancel scope unless the holder has to wait or is cancelled. A holder cancelled
while its grant was in flight gives the lease straight back (and a grant that arrives for a
holder no longer waiting is given back by the batch task). A holder cancelled while releasing
still waits for the release to reach Redis. (Multi-key scripts assume one Redis, not a Redis
Cluster, whose keys of one call must share a slot.)

A token is never below the Redis server's clock in microseconds, so a counter that Redis lost
(a flush, a restart without persistence) or let expire (``fence_retention_s`` after its
key's last grant) starts again above every token it gave before, and the store keeps
accepting the new holders.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn
from urllib.parse import unquote

import anyio
import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ConfigError, LockTimeout, StoreError, StoreUnavailable
from ..urls import hide_password
from .base import Lease
from .redis_release import Release, ReleaseWatch

log = logging.getLogger("aegispay.locks.redis")

# Bounds each Redis round trip, so a hung server cannot hold a waiter past its timeout by
# much, nor hang a (shielded) release.
_IO_TIMEOUT_S = 5.0
# A lease about to expire (PTTL of a few ms) must not make waiters poll in a tight loop.
_MIN_WAIT_S = 0.01

# A key's fencing counter expires ``fence_retention_s`` after its last grant: a counter per
# payment ever locked would otherwise grow Redis without bound (one key per payment, forever:
# 5,000 payments/s is 18 million keys an hour). Safe because of the clock floor below: a
# counter made afresh starts at the server's time in microseconds, above every token granted
# before it expired (tokens track the clock they were granted at, a grant per key being far
# rarer than one per microsecond). What the retention adds is a margin for Redis's clock
# stepping back: within it, the counter still orders the tokens.
DEFAULT_FENCE_RETENTION_S = 3600

# Each script takes many keys, so concurrent holders share one round trip (see
# RedisLockManager: acquires, releases and renewals are coalesced into batches).
#
# Acquire. Idempotent: if a retried call finds our own owner id, the grant already happened and
# the counter's current value is our token (only a granted holder increments it). The fencing
# token never goes below the server's clock in microseconds: a durable store remembers the
# highest token it has seen per payment, and a Redis that lost its counters (restarted without
# persistence) must not hand out smaller tokens than before. Per key the answer is the token
# (> 0), or minus the current holder's remaining lease in ms.
# KEYS: lock1, fence1, lock2, fence2, ...  ARGV: lease_ms, retention_ms, owner1, owner2, ...
_ACQUIRE = """
local lease = ARGV[1]
local floor = nil
local out = {}
for i = 1, #KEYS / 2 do
  local lock, fence, owner = KEYS[2 * i - 1], KEYS[2 * i], ARGV[i + 2]
  if redis.call('SET', lock, owner, 'NX', 'PX', lease) then
    local token = redis.call('INCR', fence)
    if floor == nil then
      local now = redis.call('TIME')
      floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
    end
    if token < floor then
      redis.call('SET', fence, floor)
      token = floor
    end
    redis.call('PEXPIRE', fence, ARGV[2])
    out[i] = token
  elseif redis.call('GET', lock) == owner then
    out[i] = tonumber(redis.call('GET', fence))
  else
    local ttl = redis.call('PTTL', lock)
    if ttl < 0 then ttl = tonumber(lease) end
    out[i] = -ttl
  end
end
return out
"""
# Release what is still ours (1) and wake its waiters; 0 where the lease had gone. The channel
# is the lease's name with ``:released`` for ``:lock`` (a channel is not a key: deriving it
# here saves an argument per lease).
# KEYS: lock1..lockN  ARGV: owner1..ownerN
_RELEASE = """
local out = {}
for i = 1, #KEYS do
  local lock = KEYS[i]
  if redis.call('GET', lock) == ARGV[i] then
    redis.call('DEL', lock)
    redis.call('PUBLISH', string.sub(lock, 1, -6) .. ':released', '1')
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
# Extend what is still ours (1); 0 where the lease had gone.
# KEYS: lock1..lockN  ARGV: lease_ms, owner1..ownerN
_RENEW = """
local out = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i + 1] then
    out[i] = redis.call('PEXPIRE', KEYS[i], ARGV[1])
  else
    out[i] = 0
  end
end
return out
"""

# Items of one batch share a script call.
_MAX_BATCH = 256

# What a hold is doing (``_Hold._state``): the batch tasks read it to know what to send and
# whom to answer.
_IDLE = 0  # no try queued or in flight (before the first one, or a try abandoned unsent)
_QUEUED = 1  # a try waits for the next acquire batch
_SENT = 2  # a try is (or was) in a script call: a grant may have happened
_RELEASING = 3  # the holder let go; its release is queued or in flight
_UNDOING = 4  # giving back a grant that no one waits for
_DONE = 5  # released, or the release failed (the lease then expires on its own)


class _Script:
    """A Lua script and the fixed start of the commands that run it."""

    __slots__ = ("body", "sha")

    def __init__(self, body: str) -> None:
        self.body = body.encode()
        self.sha = hashlib.sha1(self.body).hexdigest().encode()

    def command(self, keys: list[bytes], args: list[bytes], *, by_sha: bool = True) -> bytes:
        """EVALSHA (or EVAL) with ``keys`` and ``args``, packed for the wire by hiredis (in C:
        about 0.3 us per hold of a batch, where redis-py's own packing cost ~1.4 us per
        argument)."""
        name, script = (b"EVALSHA", self.sha) if by_sha else (b"EVAL", self.body)
        # hiredis's stub types the tuple as if it had one element.
        command = (name, script, len(keys), *keys, *args)
        packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]
        return packed


class _Hold:
    """``async with manager.hold(key, timeout) as lease``; ``lost`` says whether the lease was
    found gone (by renewal or release) before the holder let go. A class with slots, not a
    generator-based context manager: one is entered for every operation on every payment."""

    __slots__ = (
        "_fence_arg",
        "_lock_arg",
        "_manager",
        "_owner_arg",
        "_serial",
        "_started",
        "_state",
        "_timeout",
        "_waiter",
        "key",
        "lost",
    )

    def __init__(self, manager: RedisLockManager, key: str, timeout: float) -> None:
        self._manager = manager
        self.key = key
        self._timeout = timeout
        # The owner id is the manager's random id and this serial: unique without a call to
        # the OS's random source per hold.
        manager._serial += 1
        self._serial = manager._serial
        self.lost = False
        self._state = _IDLE
        self._started = 0.0  # when the first try was queued (the event loop's clock)
        # What the holder awaits from a batch task right now (a try's answer or a release).
        self._waiter: asyncio.Future[Any] | None = None
        # Bulk strings for the script calls, built by the first try.
        self._lock_arg = self._fence_arg = self._owner_arg = b""

    @property
    def owner(self) -> str:
        """The value of the lease in Redis while this hold has it."""
        return f"{self._manager._owner_id.decode()}{self._serial:016x}"

    async def __aenter__(self) -> Lease:
        manager = self._manager
        token = await manager._try_acquire(self)
        if token <= 0:  # taken: wait for its release (the slow path)
            token = await manager._wait_and_acquire(self, self._timeout)
        if manager.renew:
            manager._track(self)
        return Lease(self.key, token)

    async def __aexit__(self, *exc_info: object) -> None:
        manager = self._manager
        if manager.renew:
            manager._untrack(self)
        # The release is queued before the first await, and the release task sends it whatever
        # happens to this holder. Errors are logged there, not raised: the lease expires on its
        # own, and raising here would turn a committed operation into a reported failure.
        self._state = _RELEASING
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        manager._releases.put(self)
        try:
            await waiter
        except asyncio.CancelledError:
            # Cancelled while the release is out: it still happens, but leave only once it
            # has (the next holder must not find the lease still there after we are gone).
            if self._state != _DONE:
                waiter = self._waiter = asyncio.get_running_loop().create_future()
                with anyio.CancelScope(shield=True):
                    await waiter
            raise


class _Batches:
    """Holds queued for one script: a task runs them, up to ``_MAX_BATCH`` per call, whatever
    queued while the previous call was out forming the next. ``run`` answers every hold of its
    batch itself. Cheaper than the store's Coalescer: no future or tuple per item beyond the
    holder's own waiter, and no per-key deduplication (a key twice in one script call is
    answered in order: the second try of a key finds it taken, a second release finds it gone).
    """

    __slots__ = ("_name", "_queue", "_run", "_task", "batches", "items")

    def __init__(self, run: Callable[[list[_Hold]], Awaitable[None]], name: str) -> None:
        self._run = run
        self._name = name
        self._queue: list[_Hold] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # how many script calls ran (for benchmarks and tests)
        self.items = 0

    def put(self, hold: _Hold) -> None:
        self._queue.append(hold)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain(), name=self._name)

    async def wait_idle(self) -> None:
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        try:
            while queue := self._queue:
                batch = queue[:_MAX_BATCH]
                del queue[:_MAX_BATCH]
                self.batches += 1
                self.items += len(batch)
                await self._run(batch)
        finally:
            self._task = None
            # Anything queued after the last take (only if run raised BaseException) must not
            # be stranded: hand it to a new task.
            if self._queue:
                self._task = asyncio.get_running_loop().create_task(self._drain(), name=self._name)


class RedisLockManager:
    """Leases in Redis with per-key fencing tokens (see the module docstring)."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        lease_ms: int = 10_000,
        prefix: str = "aegispay:lock:",
        renew: bool = True,
        max_connections: int = 64,
        fence_retention_s: int = DEFAULT_FENCE_RETENTION_S,
    ) -> None:
        self._safe_url, self._password = hide_password(url)
        if not isinstance(lease_ms, int) or lease_ms < 3:
            raise ConfigError(f"lock lease_ms: expected an integer >= 3, got {lease_ms!r}")
        if not isinstance(fence_retention_s, int) or fence_retention_s * 1000 <= lease_ms:
            raise ConfigError(
                "lock fence_retention_s: expected an integer number of seconds longer than the"
                f" lease ({lease_ms} ms), got {fence_retention_s!r}"
            )
        self.lease_ms = lease_ms
        self.fence_retention_s = fence_retention_s
        self.prefix = prefix
        self.renew = renew
        try:
            # A blocking pool: a burst of holders queues for a connection instead of failing
            # with "too many connections" (the waiters' one subscription takes one while any
            # waits).
            self._pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=_IO_TIMEOUT_S,
                socket_timeout=_IO_TIMEOUT_S,
                socket_connect_timeout=_IO_TIMEOUT_S,
            )
            self._client = aioredis.Redis(connection_pool=self._pool)
        except ValueError as error:
            raise ConfigError(f"lock: invalid redis URL {self._safe_url}: {error}") from None
        self._prefix = prefix.encode()
        self._lease_arg = b"%d" % lease_ms
        self._retention_arg = b"%d" % (fence_retention_s * 1000)
        self._owner_id = uuid.uuid4().hex.encode()  # this manager's; a serial tells holds apart
        self._serial = 0
        self._acquire_script = _Script(_ACQUIRE)
        self._release_script = _Script(_RELEASE)
        self._renew_script = _Script(_RENEW)
        # First tries and releases of concurrent holders go to Redis together.
        self._acquires = _Batches(self._run_acquires, "aegispay lock acquires")
        self._releases = _Batches(self._run_releases, "aegispay lock releases")
        # Leases held right now, renewed together by one task while there are any.
        self._held: set[_Hold] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._renewing = False
        self._spare: list[Any] = []  # redis-py connections kept for the next script call
        # Every waiter's release channel, on one subscription (see redis_release).
        self._watch = ReleaseWatch(self._client, self._fail)

    def __repr__(self) -> str:
        return (
            f"RedisLockManager({self._safe_url!r}, lease_ms={self.lease_ms}, "
            f"prefix={self.prefix!r}, renew={self.renew})"
        )

    def lock_key(self, key: str) -> str:
        return f"{self.prefix}{key}:lock"

    def fence_key(self, key: str) -> str:
        return f"{self.prefix}{key}:fence"

    def channel(self, key: str) -> str:
        return f"{self.prefix}{key}:released"

    def hold(self, key: str, timeout: float) -> _Hold:
        return _Hold(self, key, timeout)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        # Releases still queued (and grants being given back) go out before the pool closes.
        await self._acquires.wait_idle()
        await self._releases.wait_idle()
        await self._watch.close()
        try:
            while self._spare:
                await self._pool.release(self._spare.pop())
            await self._client.aclose(close_connection_pool=True)
        except (RedisError, OSError) as error:
            log.warning("closing %s: %s", self._safe_url, error)

    # -- Redis calls: every redis exception stops here ------------------------------------

    def _fail(self, error: Exception) -> NoReturn:
        message = f"{type(error).__name__}: {error}"
        if self._password:  # drivers may echo what they were given
            message = message.replace(self._password, "***")
            message = message.replace(unquote(self._password), "***")
        kind = (
            StoreUnavailable
            if isinstance(error, RedisConnectionError | RedisTimeoutError | OSError)
            else StoreError
        )
        raise kind(f"redis lock store at {self._safe_url}: {message}") from None

    async def _script(self, script: _Script, keys: list[bytes], args: list[bytes]) -> list[int]:
        """One script call. The reply has one integer
        per lease, in order (the callers check its length)."""
        # The connection of the last call is kept out of the pool for the next one: taking one
        # from redis-py's blocking pool costs more than encoding a small batch. (At most one
        # per concurrent caller: the acquire and release tasks and the renewer.)
        spare = self._spare
        kept = bool(spare)
        while True:
            connection: Any = None
            try:
                if kept:
                    connection = spare.pop()
                else:
                    connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
                reply = await _call(connection, script, keys, args)
                break
            except BaseException as error:
                if connection is not None:
                    # redis-py closed it if the call failed or was cancelled (a reply may
                    # still be on its way); the pool reconnects it on next use.
                    await self._pool.release(connection)
                if kept and isinstance(error, RedisConnectionError):
                    # A connection kept idle may have been closed by the server (restart,
                    # idle timeout): once more on one from the pool. The scripts are
                    # idempotent: a retried acquire finds its own grant (a retried release
                    # that had gone through only reports the lease lost: a warning).
                    kept = False
                    continue
                if isinstance(error, RedisError | OSError):
                    self._fail(error)
                raise
        spare.append(connection)
        if not isinstance(reply, list):
            self._unexpected(reply)
        return reply

    def _unexpected(self, reply: object) -> NoReturn:
        raise StoreError(f"redis lock store at {self._safe_url}: unexpected reply {reply!r}")

    # -- acquiring --------------------------------------------------------------------------

    async def _acquire_batch(self, items: Sequence[_Hold]) -> list[int]:
        keys: list[bytes] = []
        args: list[bytes] = [self._lease_arg, self._retention_arg]
        for hold in items:
            keys.append(hold._lock_arg)
            keys.append(hold._fence_arg)
            args.append(hold._owner_arg)
        tokens = await self._script(self._acquire_script, keys, args)
        if len(tokens) != len(items):
            self._unexpected(tokens)
        return tokens

    async def _run_acquires(self, batch: list[_Hold]) -> None:
        # Holds whose holder gave up while queued are not sent (they asked for nothing yet).
        sent: list[_Hold] = []
        waiters: list[asyncio.Future[Any]] = []
        for hold in batch:
            if hold._state == _QUEUED and hold._waiter is not None:
                hold._state = _SENT
                sent.append(hold)
                waiters.append(hold._waiter)
        if not sent:
            return
        try:
            tokens = await self._acquire_batch(sent)
        except Exception as error:  # the whole call failed (e.g. Redis went away)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)
            return
        except BaseException:
            for waiter in waiters:
                waiter.cancel()
            raise
        for hold, waiter, token in zip(sent, waiters, tokens, strict=True):
            if not waiter.done():
                waiter.set_result(token)
            elif token > 0:
                # Granted to a holder that stopped waiting (cancelled while the call was out).
                # It gives the lease back itself, but its release may have reached Redis
                # before this grant did: give it back again (a release that finds someone
                # else's lease changes nothing).
                hold._state = _UNDOING
                self._releases.put(hold)

    async def _try_acquire(self, hold: _Hold) -> int:
        """The token if granted now, else minus the holder's remaining lease (ms)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on asyncio (trio): say so, rather than fail obscurely
            raise StoreError(
                "the Redis lock manager runs on asyncio only (anyio's asyncio backend); "
                'on trio, use the in-memory store and lock (store = "memory://", no lock URL)'
            ) from None
        if hold._state == _IDLE:  # the first try
            hold._started = loop.time()  # the timeout counts from here
            # Encoded here, not in the batch: a key that cannot be encoded fails its own
            # holder only, never the others of its batch.
            name = self._prefix + hold.key.encode()
            hold._lock_arg = name + b":lock"
            hold._fence_arg = name + b":fence"
            hold._owner_arg = b"%b%016x" % (self._owner_id, hold._serial)
        waiter = hold._waiter = loop.create_future()
        hold._state = _QUEUED
        self._acquires.put(hold)
        try:
            return await waiter  # type: ignore[no-any-return]
        except BaseException:
            if hold._state == _QUEUED:  # never sent: the batch task will skip it
                hold._state = _IDLE
                raise
            # Cancelled (or failed) after the call went out: the grant may have happened for
            # a holder that no longer waits. Give it back rather than leave the payment locked
            # until the lease runs out.
            with anyio.CancelScope(shield=True):
                await self._give_back(hold, loop)
            raise

    async def _give_back(self, hold: _Hold, loop: asyncio.AbstractEventLoop) -> None:
        hold._state = _UNDOING
        waiter = hold._waiter = loop.create_future()
        self._releases.put(hold)
        await waiter

    async def _wait_and_acquire(self, hold: _Hold, timeout: float) -> int:  # noqa: ASYNC109
        """The first try found the lease taken: wait for its release (or expiry) and try
        again, until granted or ``timeout`` seconds after the first try."""
        key = hold.key
        loop = asyncio.get_running_loop()
        deadline = hold._started + timeout
        async with self._watch.watching(self.channel(key)) as released:
            while True:
                # Tried again once subscribed: a release between the first try and the
                # subscription was published to nobody. A release from here on sets the event.
                released.event.clear()
                result = await self._try_acquire(hold)
                if result > 0:
                    released.granted = True
                    return result
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise LockTimeout(key, timeout)
                # An expiring lease publishes nothing: wait at most its remaining TTL.
                ttl = max(-result / 1000, _MIN_WAIT_S)
                await self._wait_for_release(released, min(remaining, ttl))

    async def _wait_for_release(self, released: Release, seconds: float) -> None:
        """Block (no polling) until a release is published or ``seconds`` pass."""
        with anyio.move_on_after(seconds):
            await released.event.wait()
        if released.error is not None:  # the shared subscription broke
            self._fail(released.error)

    # -- releasing --------------------------------------------------------------------------

    async def _release_batch(self, items: Sequence[_Hold]) -> list[int]:
        keys = [hold._lock_arg for hold in items]
        args = [hold._owner_arg for hold in items]
        done = await self._script(self._release_script, keys, args)
        if len(done) != len(items):
            self._unexpected(done)
        return done

    async def _run_releases(self, batch: list[_Hold]) -> None:
        # Every queued release is sent, whatever became of its holder.
        try:
            done = await self._release_batch(batch)
        except Exception as error:  # the whole call failed (e.g. Redis went away)
            for hold in batch:
                if hold._state == _RELEASING:
                    log.warning(
                        "lock %r: release failed (%s); the lease will expire", hold.key, error
                    )
                else:
                    log.warning("lock %r: undoing an abandoned acquire failed: %s", hold.key, error)
                _released(hold)
            return
        except BaseException:
            for hold in batch:
                _released(hold)
            raise
        for hold, released in zip(batch, done, strict=True):
            if not released and hold._state == _RELEASING:
                hold.lost = True
                log.warning("lock %r: lease had expired before release", hold.key)
            _released(hold)

    # -- renewal: one task renews every lease held in this process ------------------------

    def _track(self, hold: _Hold) -> None:
        self._held.add(hold)
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(
                self._renew_loop(), name="aegispay lock renewal"
            )

    def _untrack(self, hold: _Hold) -> None:
        held = self._held
        try:
            held.remove(hold)
        except KeyError:  # renewal found it lost, or renew=False
            return
        if held:
            return
        # The last lease went: stop the task now (not after its next sleep), unless it is in
        # the middle of a Redis call (cancelling that would throw away a pooled connection);
        # it then sees the empty table itself.
        if self._renewer is not None and not self._renewing:
            self._renewer.cancel()
            self._renewer = None

    async def _renew_loop(self) -> None:
        try:
            while self._held:
                await asyncio.sleep(self.lease_ms / 3000)
                holds = list(self._held)
                if not holds:
                    break
                self._renewing = True
                try:
                    renewed = await self._script(
                        self._renew_script,
                        [hold._lock_arg for hold in holds],
                        [self._lease_arg, *(hold._owner_arg for hold in holds)],
                    )
                    if len(renewed) != len(holds):
                        self._unexpected(renewed)
                except StoreError as error:  # transient: the next round may succeed in time
                    log.warning("lock renewal of %d leases failed (%s)", len(holds), error)
                    continue
                finally:
                    self._renewing = False
                for hold, ok in zip(holds, renewed, strict=True):
                    # Released meanwhile: not lost, just gone from the table.
                    if not ok and hold in self._held:
                        self._held.discard(hold)
                        # Lost: someone else may hold it now. The holder's writes carry a token
                        # older than the successor's, so the store rejects them.
                        hold.lost = True
                        log.warning("lock %r: lease lost while held", hold.key)
        finally:
            if self._renewer is asyncio.current_task():
                self._renewer = None


async def _call(connection: Any, script: _Script, keys: list[bytes], args: list[bytes]) -> Any:
    """Send one script call on ``connection`` and read its reply (redis-py's hiredis parser)."""
    try:
        await connection.send_packed_command(script.command(keys, args), False)
        return await connection.read_response()
    except NoScriptError:
        # Redis lost its script cache (restart, SCRIPT FLUSH): sending the body runs the
        # script and caches it again for the next EVALSHA.
        await connection.send_packed_command(script.command(keys, args, by_sha=False), False)
        return await connection.read_response()


def _released(hold: _Hold) -> None:
    """The hold's release (or give-back) is done: wake its holder if it waits."""
    hold._state = _DONE
    waiter = hold._waiter
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
