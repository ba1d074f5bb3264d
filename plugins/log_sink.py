"""An event sink that writes one JSON line per outbox message to a logger.

Configuration (``[plugins.log_sink]``; the sink is active when the section has any key)::

    enabled = true               # false keeps the section but registers nothing
    logger = "aegispay.sinks.log"
    level = "INFO"               # DEBUG, INFO or WARNING

A line carries ``message_id`` (deduplicate on it), ``payment_id``, ``sequence`` (per-payment
order), ``type``, the time, and the safe fields of the event (amount, gateway, outcome and
decline codes, ...). Never metadata, payment-method tokens, customer ids, idempotency keys,
free-text messages or anything else a merchant might consider personal or secret.

Unlike the ``event_log`` listener it is a sink: it sees each batch before listeners do, and a
line may be written twice when another sink fails the batch (at-least-once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from aegispay.hookspecs import hookimpl
from aegispay.outbox import EventSink, OutboxMessage
from aegispay.settings import PluginConfig

from ._sinks import config_error, dumps, read_config, safe_summary

NAME = "log_sink"
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING}


@attrs.frozen
class LogSinkConfig:
    enabled: bool = True
    logger: str = "aegispay.sinks.log"
    level: str = "INFO"


def message_record(message: OutboxMessage) -> dict[str, Any]:
    """What the log sink writes for one message (safe fields only)."""
    return {
        "message_id": message.message_id,
        "payment_id": message.payment_id,
        "sequence": message.sequence,
        "type": message.event.type_name,
        **safe_summary(message.event),
    }


class LogSink:
    """One JSON line per message on ``logger`` at ``level``."""

    def __init__(self, logger: logging.Logger, level: int = logging.INFO) -> None:
        self.name = NAME
        self.logger = logger
        self.level = level

    def __repr__(self) -> str:
        return f"LogSink(logger={self.logger.name!r}, level={logging.getLevelName(self.level)})"

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        for message in messages:
            self.logger.log(self.level, dumps(message_record(message)))


class LogSinkPlugin:
    def __init__(self, config: Mapping[str, Any]) -> None:
        self._section = dict(config)

    @hookimpl(trylast=True)
    def aegispay_register_event_sinks(
        self, register: Callable[[EventSink], None], config: PluginConfig
    ) -> None:
        where = f"plugins.{NAME}"
        settings = read_config(self._section, LogSinkConfig, where)
        if settings is None:
            return
        level = _LEVELS.get(settings.level.upper())
        if level is None:
            raise config_error(
                f"{where}.level", f"expected one of {sorted(_LEVELS)} (got {settings.level!r})"
            )
        register(LogSink(logging.getLogger(settings.logger), level))
