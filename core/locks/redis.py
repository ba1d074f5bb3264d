"""Per-payment locks in Redis, with fencing tokens (asyncio only: built on ``redis.asyncio``).

A Redis lease is *not* correctness. A holder can be paused (GC, page fault, a slow network)
past its lease; the key expires, a second holder is granted the lock, and now two processes
believe they hold it. No lock service can prevent that, because the paused holder cannot
know it was paused. So every grant also returns a **fencing token**: a per-key counter
(``<prefix><key>:fence``) incremented in the same Lua script that sets the lease, so tokens
are strictly increasing, never reused, and survive the lease's expiry (the counter has no
TTL). Every write made under the lease carries the token, and the store rejects a token
older than the highest it has seen for that payment (Kleppmann, "How to do distributed
locking"). The store is the arbiter; the lease only keeps two workers from doing the same
work at the same time.

Keys: ``<prefix><key>:lock`` (the lease, value = a random owner id), ``<prefix><key>:fence``
(the counter) and the pub/sub channel ``<prefix><key>:released``. Giving the lease its own
suffix means no key's lease can collide with another key's counter (a key ``"p:fence"``
would otherwise share a name with the counter of ``"p"``).

Release and renewal compare the owner id before deleting/extending, so a holder whose lease
expired can never remove or prolong a successor's lease. Waiters subscribe to the release
channel and retry ``SET NX`` when woken; a lease that expires publishes nothing, so each wait
is also bounded by the holder's remaining TTL (a poll fallback, never a tight loop). Waiters
race when woken (no FIFO, unlike the in-process manager).

Throughput: a worker holds one lease per payment it is working on, often a thousand at once, and
redis-py costs tens of microseconds of CPU per command. So concurrent first tries and releases
are coalesced (``Coalescer``, as the SQL store does for commits): one script call grants or
releases a whole batch, each key answered on its own. One task renews every lease the process
holds in a single call per round, instead of a task per holder; it stops with the last lease.
A holder cancelled while its grant was in flight gives the lease straight back. (Multi-key
scripts assume one Redis, not a Redis Cluster, whose keys of one call must share a slot.)

If Redis loses the counters (flush, restart without persistence) tokens restart at 1 and a
durable store rejects writes on payments it has seen: safe, but stuck until fences reset.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from typing import Any, NoReturn
from urllib.parse import unquote

import anyio
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ConfigError, LockTimeout, StoreError, StoreUnavailable
from ..store.group_commit import Coalescer
from ..urls import hide_password
from .base import Lease

log = logging.getLogger("aegispay.locks.redis")

# Bounds each Redis round trip, so a hung server cannot hold a waiter past its timeout by
# much, nor hang a (shielded) release.
_IO_TIMEOUT_S = 5.0
# A lease about to expire (PTTL of a few ms) must not make waiters poll in a tight loop.
_MIN_WAIT_S = 0.01

# Each script takes many keys, so concurrent holders share one round trip (see
# RedisLockManager: acquires, releases and renewals are coalesced into batches).
#
# Acquire. Idempotent: if a retried call finds our own owner id, the grant already happened and
# the counter's current value is our token (only a granted holder increments it). The fencing
# token never goes below the server's clock in microseconds: a durable store remembers the
# highest token it has seen per payment, and a Redis that lost its counters (restarted without
# persistence) must not hand out smaller tokens than before. Per key the answer is the token
# (> 0), or minus the current holder's remaining lease in ms.
# KEYS: lock1, fence1, lock2, fence2, ...  ARGV: lease_ms, owner1, owner2, ...
_ACQUIRE = """
local lease = ARGV[1]
local floor = nil
local out = {}
for i = 1, #KEYS / 2 do
  local lock, fence, owner = KEYS[2 * i - 1], KEYS[2 * i], ARGV[i + 1]
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
# Release what is still ours (1) and wake its waiters; 0 where the lease had gone.
# KEYS: lock1..lockN  ARGV: owner1..ownerN, channel1..channelN
_RELEASE = """
local n = #KEYS
local out = {}
for i = 1, n do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('DEL', KEYS[i])
    redis.call('PUBLISH', ARGV[n + i], '1')
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

# Items of one batch share a script call; a key appears at most once per batch.
_MAX_BATCH = 256


class _Hold:
    """``async with manager.hold(key, timeout) as lease``; ``lost`` says whether the lease was
    found gone (by renewal or release) before the holder let go."""

    def __init__(self, manager: RedisLockManager, key: str, timeout: float) -> None:
        self._manager = manager
        self.key = key
        self._timeout = timeout
        self.owner = uuid.uuid4().hex
        self.lost = False

    async def __aenter__(self) -> Lease:
        token = await self._manager._acquire(self.key, self.owner, self._timeout)
        self._manager._track(self)
        return Lease(self.key, token)

    async def __aexit__(self, *exc_info: object) -> None:
        self._manager._untrack(self)
        await self._release()

    async def _release(self) -> None:
        # Shielded: a cancelled holder must still give the lock back rather than make the next
        # one wait out the lease. Errors are logged, not raised: the lease expires on its own,
        # and raising here would turn a committed operation into a reported failure.
        with anyio.CancelScope(shield=True):
            try:
                released = await self._manager._release(self.key, self.owner)
            except StoreError as error:
                log.warning("lock %r: release failed (%s); the lease will expire", self.key, error)
                return
        if not released:
            self.lost = True
            log.warning("lock %r: lease had expired before release", self.key)


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
    ) -> None:
        self._safe_url, self._password = hide_password(url)
        if not isinstance(lease_ms, int) or lease_ms < 3:
            raise ConfigError(f"lock lease_ms: expected an integer >= 3, got {lease_ms!r}")
        self.lease_ms = lease_ms
        self.prefix = prefix
        self.renew = renew
        try:
            # A blocking pool: a burst of holders queues for a connection instead of failing
            # with "too many connections" (each waiter's pub/sub takes one more while it waits).
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=_IO_TIMEOUT_S,
                socket_timeout=_IO_TIMEOUT_S,
                socket_connect_timeout=_IO_TIMEOUT_S,
            )
            self._client = aioredis.Redis(connection_pool=pool)
        except ValueError as error:
            raise ConfigError(f"lock: invalid redis URL {self._safe_url}: {error}") from None
        self._acquire_script = self._client.register_script(_ACQUIRE)
        self._release_script = self._client.register_script(_RELEASE)
        self._renew_script = self._client.register_script(_RENEW)
        owner = "the Redis lock manager"
        # First tries and releases of concurrent holders go to Redis together.
        self._acquires: Coalescer[tuple[str, str], int] = Coalescer(
            self._acquire_batch, max_batch=_MAX_BATCH, keys=_first, owner=owner
        )
        self._releases: Coalescer[tuple[str, str], bool] = Coalescer(
            self._release_batch, max_batch=_MAX_BATCH, keys=_first, owner=owner
        )
        # Leases held right now, renewed together by one task while there are any.
        self._held: dict[str, _Hold] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._renewing = False

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
        try:
            await self._client.aclose()
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

    async def _script(self, script: Any, keys: list[str], args: list[Any]) -> list[int]:
        try:
            return [int(value) for value in await script(keys=keys, args=args)]
        except (RedisError, OSError) as error:
            self._fail(error)

    async def _acquire_batch(self, items: Sequence[tuple[str, str]]) -> list[int]:
        keys = [name for key, _ in items for name in (self.lock_key(key), self.fence_key(key))]
        owners = [owner for _, owner in items]
        return await self._script(self._acquire_script, keys, [self.lease_ms, *owners])

    async def _release_batch(self, items: Sequence[tuple[str, str]]) -> list[bool]:
        keys = [self.lock_key(key) for key, _ in items]
        args = [owner for _, owner in items] + [self.channel(key) for key, _ in items]
        return [bool(done) for done in await self._script(self._release_script, keys, args)]

    async def _try_acquire(self, key: str, owner: str) -> int:
        """The token if granted now, else minus the holder's remaining lease (ms)."""
        try:
            return await self._acquires.submit((key, owner))
        except BaseException:
            # Cancelled (or failed) after the batch may have gone out: the grant may have
            # happened for a holder that no longer waits. Give it back rather than leave the
            # payment locked until the lease runs out (a release that finds someone else's
            # lease changes nothing).
            with anyio.CancelScope(shield=True):
                try:
                    await self._release(key, owner)
                except StoreError as error:
                    log.warning("lock %r: undoing an abandoned acquire failed: %s", key, error)
            raise

    async def _acquire(self, key: str, owner: str, timeout: float) -> int:  # noqa: ASYNC109
        deadline = anyio.current_time() + timeout
        result = await self._try_acquire(key, owner)
        if result > 0:
            return result
        pubsub: Any = self._client.pubsub()  # redis-py's PubSub is partly untyped
        try:
            try:
                await pubsub.subscribe(self.channel(key))
            except (RedisError, OSError) as error:
                self._fail(error)
            while True:
                # Retry after subscribing: a release between the first try and the
                # subscription published to nobody.
                result = await self._try_acquire(key, owner)
                if result > 0:
                    return result
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    raise LockTimeout(key, timeout)
                # An expiring lease publishes nothing: wait at most its remaining TTL.
                ttl = max(-result / 1000, _MIN_WAIT_S)
                await self._wait_for_release(pubsub, min(remaining, ttl))
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await pubsub.aclose()
                except (RedisError, OSError) as error:
                    log.warning("lock %r: closing subscription failed: %s", key, error)

    async def _wait_for_release(self, pubsub: Any, seconds: float) -> None:
        """Block (no polling) until a release is published or ``seconds`` pass."""
        end = anyio.current_time() + seconds
        while (left := end - anyio.current_time()) > 0:
            try:
                # Returns None early for the subscribe confirmation: hence the loop.
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            except (RedisError, OSError) as error:
                self._fail(error)
            if message is not None:
                return

    async def _release(self, key: str, owner: str) -> bool:
        return await self._releases.submit((key, owner))

    # -- renewal: one task renews every lease held in this process ------------------------

    def _track(self, hold: _Hold) -> None:
        if not self.renew:
            return
        self._held[hold.owner] = hold
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(
                self._renew_loop(), name="aegispay lock renewal"
            )

    def _untrack(self, hold: _Hold) -> None:
        if self._held.pop(hold.owner, None) is None or self._held:
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
                holds = list(self._held.values())
                if not holds:
                    break
                self._renewing = True
                try:
                    renewed = await self._script(
                        self._renew_script,
                        [self.lock_key(hold.key) for hold in holds],
                        [self.lease_ms, *(hold.owner for hold in holds)],
                    )
                except StoreError as error:  # transient: the next round may succeed in time
                    log.warning("lock renewal of %d leases failed (%s)", len(holds), error)
                    continue
                finally:
                    self._renewing = False
                for hold, ok in zip(holds, renewed, strict=True):
                    # Released meanwhile: not lost, just gone from the table.
                    if not ok and self._held.pop(hold.owner, None) is not None:
                        # Lost: someone else may hold it now. The holder's writes carry a token
                        # older than the successor's, so the store rejects them.
                        hold.lost = True
                        log.warning("lock %r: lease lost while held", hold.key)
        finally:
            if self._renewer is asyncio.current_task():
                self._renewer = None


def _first(item: tuple[str, str]) -> tuple[str]:
    return (item[0],)
