"""The project's own error types.

Callers catch these, never a driver's or a plugin library's exceptions. Every message names the
field, payment or key it is about, and never carries a secret.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs


class AegisPayError(Exception):
    """Base class of every error AegisPay raises on purpose."""


class InvalidInput(AegisPayError, ValueError):
    """Bad input from a caller: names the field and the problem."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class InvalidMoney(InvalidInput):
    """An amount or currency that cannot be money (float, NaN, negative, too precise, unknown)."""


@attrs.frozen
class Problem:
    """One validation problem: which field, and what is wrong with it."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class PaymentValidationError(AegisPayError, ValueError):
    """A payment request failed validation; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems) or "invalid payment request")

    @property
    def field(self) -> str:
        return self.problems[0].field if self.problems else ""


class ConfigError(AegisPayError, ValueError):
    """A configuration value is wrong: names the key, the value and what was expected."""


class InvalidTransition(AegisPayError):
    """A state change the transition table forbids."""

    def __init__(
        self, payment_id: str, from_state: object, to_state: object, why: str = ""
    ) -> None:
        self.payment_id = payment_id
        self.from_state = from_state
        self.to_state = to_state
        detail = f" ({why})" if why else ""
        super().__init__(
            f"payment {payment_id}: transition {_name(from_state)} -> {_name(to_state)} "
            f"is not allowed{detail}"
        )


class OperationNotAllowed(AegisPayError):
    """An operation that the payment's state or amounts do not allow (e.g. over-refund)."""

    def __init__(self, payment_id: str, message: str) -> None:
        self.payment_id = payment_id
        super().__init__(f"payment {payment_id}: {message}")


class PaymentNotFound(AegisPayError, LookupError):
    def __init__(self, payment_id: str) -> None:
        self.payment_id = payment_id
        super().__init__(f"payment {payment_id}: not found")


class ConcurrencyConflict(AegisPayError):
    """An optimistic-concurrency check failed: someone else wrote this payment first."""

    def __init__(self, payment_id: str, expected_version: int, actual_version: int) -> None:
        self.payment_id = payment_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        super().__init__(
            f"payment {payment_id}: expected version {expected_version}, store has {actual_version}"
        )


class FencingTokenRejected(ConcurrencyConflict):
    """A write carried a lock fencing token older than one the store has already seen."""

    def __init__(self, payment_id: str, token: int, highest: int) -> None:
        AegisPayError.__init__(
            self,
            f"payment {payment_id}: fencing token {token} is older than {highest}; "
            "the lock was lost and another holder has written since",
        )
        self.payment_id = payment_id
        self.expected_version = -1
        self.actual_version = -1
        self.token = token
        self.highest = highest


class IdempotencyKeyReused(AegisPayError):
    """The idempotency key was already used with a different request (HTTP 422 semantics)."""

    def __init__(self, key: str, scope: str) -> None:
        self.key = key
        self.scope = scope
        super().__init__(
            f"idempotency key {key!r} (merchant {scope!r}) was already used with a different "
            "request; use a new key for a new request"
        )


class IdempotencyKeyInProgress(AegisPayError):
    """The first request with this key is still running (HTTP 409 semantics): retry later."""

    def __init__(self, key: str, scope: str) -> None:
        self.key = key
        self.scope = scope
        super().__init__(f"idempotency key {key!r} (merchant {scope!r}): request in progress")


class LockTimeout(AegisPayError, TimeoutError):
    def __init__(self, key: str, seconds: float) -> None:
        self.key = key
        super().__init__(f"lock {key!r}: not acquired within {seconds:g}s")


class NoGatewayAvailable(AegisPayError):
    def __init__(self, payment_id: str, why: str) -> None:
        self.payment_id = payment_id
        super().__init__(f"payment {payment_id}: no gateway available ({why})")


class PluginError(AegisPayError):
    """A plugin misbehaved: names the plugin and what it did."""


class StoreError(AegisPayError):
    """Base of storage failures mapped from a backend's own errors."""


class StoreUnavailable(StoreError):
    """The store cannot be reached; nothing of the operation was written."""


def _name(state: object) -> str:
    return getattr(state, "name", str(state))


class GatewayDeclined(AegisPayError):
    """The gateway refused a capture, void or refund; the refusal is recorded on the payment."""

    def __init__(self, payment_id: str, operation: str, code: str, message: str = "") -> None:
        self.payment_id = payment_id
        self.operation = operation
        self.code = code
        super().__init__(
            f"payment {payment_id}: {operation} declined by the gateway ({code}) {message}".rstrip()
        )


class GatewayUnavailable(AegisPayError):
    """The request never reached the gateway (NOT_SENT): nothing happened, safe to retry."""

    def __init__(self, payment_id: str, operation: str, message: str = "") -> None:
        self.payment_id = payment_id
        self.operation = operation
        super().__init__(f"payment {payment_id}: {operation} not sent to the gateway: {message}")


class OutcomeUnknown(AegisPayError):
    """The gateway may or may not have done it. Retrying the same operation reuses the same
    idempotency key, so it cannot happen twice."""

    def __init__(self, payment_id: str, operation: str, message: str = "") -> None:
        self.payment_id = payment_id
        self.operation = operation
        super().__init__(
            f"payment {payment_id}: {operation} outcome unknown ({message}); retry it: the same "
            "idempotency key is reused"
        )
