"""Payment ids: ``pay_`` and 96 random bits from the OS's CSPRNG, drawn 256 ids at a time.

``os.urandom`` is a system call that releases the GIL: under load every payment's id handed
the interpreter to another thread (aiosqlite's) and waited to get it back, ~18 us a payment on
the event loop where the call itself takes ~0.4 us. One draw of 3 KiB per 256 ids keeps the
ids exactly as unpredictable and makes that wait rare.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

_BYTES = 12  # 96 bits: a collision is not a practical concern
_BATCH = 256


class PaymentIds:
    """A callable handing out new payment ids; one per :class:`~aegispay.PaymentService`.

    Fork-safe: a child process draws its own ids rather than the parent's buffered ones (the
    check is ``os.getpid()``, which does not release the GIL). Thread-safe: each id is taken
    by ``next()`` on a list iterator, which the GIL makes atomic."""

    __slots__ = ("_ids", "_pid", "_prefix")

    def __init__(self, prefix: str = "pay_") -> None:
        self._prefix = prefix
        self._pid = -1
        self._ids: Iterator[str] = iter(())

    def __call__(self) -> str:
        if self._pid != os.getpid():
            self._refill()
        for payment_id in self._ids:
            return payment_id
        self._refill()
        return next(self._ids)

    def _refill(self) -> None:
        pool, prefix = os.urandom(_BYTES * _BATCH), self._prefix
        self._ids = iter([prefix + pool[i : i + _BYTES].hex() for i in range(0, len(pool), _BYTES)])
        self._pid = os.getpid()
