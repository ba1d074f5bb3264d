"""Basic validation rules: amount limits, currency support, metadata size, idempotency keys.

Configuration (``[plugins.validation]``)::

    max_metadata_keys = 50
    max_metadata_key_length = 40
    max_metadata_value_length = 500
    [plugins.validation.limits.USD]   # per currency, major units as decimal strings
    min = "0.50"
    max = "50000.00"
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs
from aegispay.decisions import HookContext
from aegispay.errors import InvalidMoney, Problem
from aegispay.gateways import supports_currency
from aegispay.hookspecs import hookimpl
from aegispay.money import Money
from aegispay.requests import PaymentRequest
from aegispay.settings import structure_config

# Printable ASCII without spaces, as the gateways accept in their idempotency headers.
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


@attrs.frozen
class AmountLimit:
    min: str = "0"
    max: str | None = None


@attrs.frozen
class ValidationConfig:
    limits: dict[str, AmountLimit] = attrs.field(factory=dict)
    max_metadata_keys: int = 50
    max_metadata_key_length: int = 40
    max_metadata_value_length: int = 500


class ValidationPlugin:
    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = structure_config(config, ValidationConfig, "plugins.validation")
        self._limits: dict[str, tuple[Money, Money | None]] = {}
        self._currency_cache: dict[tuple[int, str], tuple[Mapping[str, Any], bool]] = {}
        for currency, limit in self.config.limits.items():
            where = f"plugins.validation.limits.{currency}"
            try:
                low = Money.of(limit.min, currency, f"{where}.min")
                high = Money.of(limit.max, currency, f"{where}.max") if limit.max else None
            except InvalidMoney as exc:
                from aegispay.errors import ConfigError

                raise ConfigError(f"invalid configuration: {exc}") from None
            self._limits[currency] = (low, high)

    def _accepted(self, gateways: Mapping[str, Any], currency: str) -> bool:
        """Whether some gateway takes ``currency``; remembered per gateway set and currency
        (a service's gateways do not change once it is built)."""
        key = (id(gateways), currency)
        cached = self._currency_cache.get(key)
        # The entry keeps the mapping alive, so its id cannot be reused by another object.
        if cached is None or cached[0] is not gateways:
            cached = (gateways, any(supports_currency(g, currency) for g in gateways.values()))
            self._currency_cache[key] = cached
        return cached[1]

    @hookimpl(trylast=True)
    def aegispay_validate_payment(
        self, request: PaymentRequest, context: HookContext
    ) -> list[Problem]:
        problems: list[Problem] = []
        amount = request.amount
        limit = self._limits.get(amount.currency)
        if limit is not None:
            low, high = limit
            if amount.minor < low.minor:
                problems.append(Problem("amount", f"{amount} is below the minimum {low}"))
            if high is not None and amount.minor > high.minor:
                problems.append(Problem("amount", f"{amount} is above the maximum {high}"))
        if not self._accepted(context.gateways, amount.currency):
            problems.append(
                Problem("amount.currency", f"no registered gateway accepts {amount.currency}")
            )
        metadata = request.metadata
        if metadata:
            c = self.config
            if len(metadata) > c.max_metadata_keys:
                problems.append(
                    Problem("metadata", f"at most {c.max_metadata_keys} keys, got {len(metadata)}")
                )
            for key, value in metadata.items():
                if len(key) > c.max_metadata_key_length:
                    problems.append(
                        Problem(
                            f"metadata[{key[:20]!r}...]",
                            f"key longer than {c.max_metadata_key_length}",
                        )
                    )
                if len(value) > c.max_metadata_value_length:
                    problems.append(
                        Problem(
                            f"metadata[{key!r}]", f"value longer than {c.max_metadata_value_length}"
                        )
                    )
        idempotency_key = context.idempotency_key
        if idempotency_key is not None and not _KEY.match(idempotency_key):
            problems.append(
                Problem("idempotency_key", "1 to 255 printable ASCII characters, no spaces")
            )
        return problems
