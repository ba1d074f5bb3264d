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

If Redis loses the counters (flush, restart without persistence) tokens restart at 1 and a
durable store rejects writes on payments it has seen: safe, but stuck until fences reset.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, NoReturn
from urllib.parse import unquote

import anyio
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ConfigError, LockTimeout, StoreError, StoreUnavailable
from ..urls import hide_password
from .base import Lease

log = logging.getLogger("aegispay.locks.redis")

# Bounds each Redis round trip, so a hung server cannot hold a waiter past its timeout by
# much, nor hang a (shielded) release.
_IO_TIMEOUT_S = 5.0
# A lease about to expire (PTTL of a few ms) must not make waiters poll in a tight loop.
_MIN_WAIT_S = 0.01

# Idempotent: if a retried call finds our own owner id, the grant already happened and the
# counter's current value is our token (only a granted holder increments it).
# The fencing token never goes below the server's clock in microseconds: a durable store
# remembers the highest token it has seen per payment, and a Redis that lost its counters
# (restarted without persistence) must not hand out smaller tokens than before.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local token = redis.call('INCR', KEYS[2])
  local now = redis.call('TIME')
  local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
  if token < floor then
    redis.call('SET', KEYS[2], floor)
    token = floor
  end
  return token
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return tonumber(redis.call('GET', KEYS[2]))
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then ttl = tonumber(ARGV[2]) end
return -ttl
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '1')
  return 1
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class _Hold:
    """``async with manager.hold(key, timeout) as lease``; ``lost`` says whether the lease was
    found gone (by renewal or release) before the holder let go."""

    def __init__(self, manager: RedisLockManager, key: str, timeout: float) -> None:
        self._manager = manager
        self._key = key
        self._timeout = timeout
        self._owner = uuid.uuid4().hex
        self._task_group: Any = None
        self.lost = False

    async def __aenter__(self) -> Lease:
        token = await self._manager._acquire(self._key, self._owner, self._timeout)
        if self._manager.renew:
            self._task_group = anyio.create_task_group()
            await self._task_group.__aenter__()
            self._task_group.start_soon(self._renew_loop)
        return Lease(self._key, token)

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self._task_group is not None:
                self._task_group.cancel_scope.cancel()
                # The body's exception is not handed to the task group: it would come out
                # wrapped in an ExceptionGroup. The renewal task never raises.
                await self._task_group.__aexit__(None, None, None)
        finally:
            await self._release()

    async def _release(self) -> None:
        # Shielded: a cancelled holder must still give the lock back rather than make the next
        # one wait out the lease. Errors are logged, not raised: the lease expires on its own,
        # and raising here would turn a committed operation into a reported failure.
        with anyio.CancelScope(shield=True):
            try:
                released = await self._manager._release(self._key, self._owner)
            except StoreError as error:
                log.warning("lock %r: release failed (%s); the lease will expire", self._key, error)
                return
        if not released:
            self.lost = True
            log.warning("lock %r: lease had expired before release", self._key)

    async def _renew_loop(self) -> None:
        manager = self._manager
        while True:
            await anyio.sleep(manager.lease_ms / 3000)
            try:
                renewed = await manager._renew(self._key, self._owner)
            except StoreError as error:  # transient: the next round may succeed in time
                log.warning("lock %r: renewal failed (%s)", self._key, error)
                continue
            if not renewed:
                # Lost: someone else may hold it now. The holder's writes carry a token older
                # than the successor's, so the store rejects them; nothing else to do here.
                self.lost = True
                log.warning("lock %r: lease lost while held", self._key)
                return


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

    async def _script(self, script: Any, keys: list[str], args: list[Any]) -> int:
        try:
            return int(await script(keys=keys, args=args))
        except (RedisError, OSError) as error:
            self._fail(error)

    async def _acquire(self, key: str, owner: str, timeout: float) -> int:  # noqa: ASYNC109
        deadline = anyio.current_time() + timeout
        keys = [self.lock_key(key), self.fence_key(key)]
        result = await self._script(self._acquire_script, keys, [owner, self.lease_ms])
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
                result = await self._script(self._acquire_script, keys, [owner, self.lease_ms])
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
        keys = [self.lock_key(key)]
        return bool(await self._script(self._release_script, keys, [owner, self.channel(key)]))

    async def _renew(self, key: str, owner: str) -> bool:
        keys = [self.lock_key(key)]
        return bool(await self._script(self._renew_script, keys, [owner, self.lease_ms]))
