"""Per-payment locks with fencing tokens.

A lease only avoids duplicate work; the store is the arbiter: every write made under a lease
carries its fencing token, and the store rejects a token older than one it has already seen
(Kleppmann). The in-process manager is the default; Redis comes with the durable backends.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

import attrs


@attrs.frozen
class Lease:
    key: str
    token: int


class LockManager(Protocol):
    def hold(self, key: str, timeout: float) -> AbstractAsyncContextManager[Lease]:
        """Hold ``key`` exclusively; raises LockTimeout after ``timeout`` seconds of waiting."""

    async def close(self) -> None: ...
