"""A structured logging listener: one line per committed event on the ``aegispay.events``
logger (INFO), and one per gateway call on ``aegispay.gateway`` (DEBUG).

Lines carry ids, types, amounts and outcomes; never metadata, payment-method tokens or
anything else a merchant might consider personal or secret.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from aegispay.events import Event
from aegispay.gateways import GatewayResult
from aegispay.hookspecs import hookimpl
from aegispay.money import Money
from aegispay.observe import GatewayCall

_SAFE_FIELDS = (
    "attempt_no",
    "gateway",
    "outcome",
    "decline_code",
    "code",
    "refund_no",
    "voided",
    "risk_score",
    "capture_mode",
    "merchant_id",
)


class EventLogPlugin:
    def __init__(self, config: Mapping[str, Any]) -> None:
        self.events = logging.getLogger("aegispay.events")
        self.calls = logging.getLogger("aegispay.gateway")

    @hookimpl(trylast=True)
    def aegispay_on_event(self, event: Event) -> None:
        if not self.events.isEnabledFor(logging.INFO):
            return
        record: dict[str, Any] = {
            "event": event.type_name,
            "event_id": event.event_id,
            "payment_id": event.payment_id,
            "version": event.version,
            "at": event.occurred_at.isoformat(),
        }
        amount = getattr(event, "amount", None)
        if isinstance(amount, Money):
            record["amount"] = amount.minor
            record["currency"] = amount.currency
        for field in _SAFE_FIELDS:
            value = getattr(event, field, None)
            if value is not None:
                record[field] = getattr(value, "value", value)
        self.events.info(json.dumps(record, sort_keys=True))

    @hookimpl(trylast=True)
    def aegispay_after_gateway_call(
        self, call: GatewayCall, result: GatewayResult, elapsed_ms: float
    ) -> None:
        if self.calls.isEnabledFor(logging.DEBUG):
            self.calls.debug(
                json.dumps(
                    {
                        "gateway": call.gateway,
                        "operation": call.operation.value,
                        "payment_id": call.payment_id,
                        "attempt_no": call.attempt_no,
                        "outcome": result.outcome.value,
                        "elapsed_ms": round(elapsed_ms, 3),
                    }
                )
            )
