"""A structured logging listener: one line per committed event on the ``aegispay.events``
logger (INFO). (Gateway calls are logged by the engine itself on ``aegispay.gateway`` at
DEBUG, so the per-call path pays nothing for it when DEBUG is off.)

Lines carry ids, types, amounts and outcomes; never metadata, payment-method tokens or
anything else a merchant might consider personal or secret.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from aegispay.events import Event
from aegispay.hookspecs import hookimpl
from aegispay.money import Money

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
