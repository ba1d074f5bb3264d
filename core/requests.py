"""What a caller asks for: a payment request, validated at construction, with a fingerprint.

The fingerprint covers the whole canonical request (nested metadata included), so an
idempotency key reused with any difference is detected.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import attrs

from .errors import InvalidInput
from .money import Money

CAPTURE_MODES = ("automatic", "manual")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
# A payment method family, in the gateways' own words: "card", "upi", "sepa_debit", "paypal".
_METHOD_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def _optional_str(field: str, value: object, max_len: int = 255) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidInput(field, f"expected a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise InvalidInput(field, f"at most {max_len} characters, got {len(value)}")


def _freeze_metadata(value: Mapping[str, Any] | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput("metadata", f"expected a mapping of strings, got {type(value).__name__}")
    frozen: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise InvalidInput(f"metadata[{key!r}]", "keys and values must be strings")
        frozen[key] = item
    return frozen


@attrs.frozen
class PaymentRequest:
    """A request to take a payment. Only ``amount`` is required.

    ``capture_mode`` "automatic" authorises and captures in one go; "manual" only authorises,
    and :meth:`PaymentService.capture` takes the money later. ``metadata`` is string to string.

    ``payment_method`` is the instrument as the gateway knows it (a token, a vaulted wallet's
    id); ``payment_method_type`` is its family - "card", "upi", "paypal"... as gateways list
    them in ``GatewayCapabilities.methods``. When it is given, the payment is only routed to
    gateways whose declared capabilities list it (a gateway that declares none is not second-
    guessed); when it is not, to any gateway, as before.
    """

    amount: Money
    merchant_id: str = "default"
    customer_id: str | None = None
    payment_method: str | None = None
    reference: str | None = None
    description: str | None = None
    country: str | None = None
    capture_mode: str = "automatic"
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_freeze_metadata)
    payment_method_type: str | None = None  # last: positional construction stays as it was

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.amount, Money):
            raise InvalidInput("amount", f"expected Money, got {type(self.amount).__name__}")
        if self.amount.minor == 0:
            raise InvalidInput("amount", "must be greater than zero")
        if not isinstance(self.merchant_id, str) or not self.merchant_id:
            raise InvalidInput("merchant_id", "must be a non-empty string")
        for field in ("customer_id", "payment_method", "reference", "description"):
            _optional_str(field, getattr(self, field), 1000 if field == "description" else 255)
        if self.country is not None and not (
            isinstance(self.country, str) and _COUNTRY.match(self.country)
        ):
            raise InvalidInput(
                "country", f"expected an ISO 3166 alpha-2 code, got {self.country!r}"
            )
        method_type = self.payment_method_type
        if method_type is not None and not (
            isinstance(method_type, str) and _METHOD_TYPE.match(method_type)
        ):
            raise InvalidInput(
                "payment_method_type",
                "expected a payment method family in lower case (letters, digits, _; at most"
                f' 64), such as "card" or "upi", got {method_type!r}',
            )
        if self.capture_mode not in CAPTURE_MODES:
            raise InvalidInput(
                "capture_mode", f"expected one of {CAPTURE_MODES}, got {self.capture_mode!r}"
            )

    def canonical(self) -> dict[str, Any]:
        """Every field, as plain JSON-ready data (the basis of the fingerprint)."""
        return {
            "amount": {"minor": self.amount.minor, "currency": self.amount.currency},
            "merchant_id": self.merchant_id,
            "customer_id": self.customer_id,
            "payment_method": self.payment_method,
            "reference": self.reference,
            "description": self.description,
            "country": self.country,
            "capture_mode": self.capture_mode,
            "metadata": dict(self.metadata),
            "payment_method_type": self.payment_method_type,
        }

    def fingerprint(self) -> str:
        """SHA-256 over every field in a fixed order, metadata sorted by key.

        ``repr`` of a tuple of str/int/None is canonical and several times cheaper than JSON,
        and this runs once per create with an idempotency key.
        """
        body: tuple[Any, ...] = (
            self.amount.minor,
            self.amount.currency,
            self.merchant_id,
            self.customer_id,
            self.payment_method,
            self.reference,
            self.description,
            self.country,
            self.capture_mode,
            tuple(sorted(self.metadata.items())),
        )
        if self.payment_method_type is not None:
            # Only when given: a request without it keeps the fingerprint it had before the
            # field existed, so keys stored by an earlier version still match their retries.
            body += (("payment_method_type", self.payment_method_type),)
        return hashlib.sha256(repr(body).encode()).hexdigest()
