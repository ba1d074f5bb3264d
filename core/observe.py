"""Values handed to the lifecycle hooks (logging, metrics, tracing)."""

from __future__ import annotations

import attrs

from .gateways import Operation
from .payment import Payment


@attrs.frozen
class GatewayCall:
    """One call to one gateway, as the lifecycle hooks see it. Carries no secrets."""

    gateway: str
    operation: Operation
    payment_id: str
    idempotency_key: str
    attempt_no: int | None = None


@attrs.frozen
class OperationRecord:
    """How one service operation ended."""

    operation: str
    payment_id: str | None
    payment: Payment | None
    error: BaseException | None
    elapsed_ms: float
