"""Values that plugins hand back to the engine: fraud verdicts, routing decisions, hook context."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from .gateways import Gateway


class Verdict(enum.IntEnum):
    """Ordered so that combining verdicts is ``max``: any DENY wins, then REVIEW."""

    ALLOW = 0
    REVIEW = 1
    DENY = 2


@attrs.frozen
class FraudVerdict:
    """One fraud check's answer. ``risk_score`` is 0 (safe) to 100 (certain fraud)."""

    verdict: Verdict
    risk_score: int = 0
    reason: str = ""
    source: str = ""

    @classmethod
    def allow(cls, risk_score: int = 0, reason: str = "", source: str = "") -> FraudVerdict:
        return cls(Verdict.ALLOW, risk_score, reason, source)

    @classmethod
    def review(cls, risk_score: int, reason: str, source: str = "") -> FraudVerdict:
        return cls(Verdict.REVIEW, risk_score, reason, source)

    @classmethod
    def deny(cls, risk_score: int, reason: str, source: str = "") -> FraudVerdict:
        return cls(Verdict.DENY, risk_score, reason, source)


def combine_verdicts(verdicts: Sequence[FraudVerdict]) -> FraudVerdict:
    """Any DENY wins, then REVIEW; the score is the highest; reasons of the winners are joined."""
    if not verdicts:
        return FraudVerdict.allow(source="(no fraud checks)")
    if len(verdicts) == 1:
        return verdicts[0]
    worst = max(v.verdict for v in verdicts)
    winners = [v for v in verdicts if v.verdict == worst]
    return FraudVerdict(
        worst,
        max(v.risk_score for v in verdicts),
        "; ".join(v.reason for v in winners if v.reason),
        ",".join(v.source for v in winners if v.source),
    )


@attrs.frozen
class RouteDecision:
    """Gateways to try, in order: the first choice, then fallbacks (used only after NOT_SENT or
    a DECLINED marked ``retryable_elsewhere``, never after UNKNOWN)."""

    gateways: tuple[str, ...]
    reason: str = ""
    strategy: str = ""

    def __attrs_post_init__(self) -> None:
        if isinstance(self.gateways, str):
            raise TypeError("RouteDecision.gateways is a sequence of names, not one string")


@attrs.frozen
class HookContext:
    """What every pipeline hook receives as ``context``.

    ``gateways`` is a read-only view of the registered gateways by name; ``now`` the service's
    clock; ``operation`` the service method running ("create", "process", ...);
    ``idempotency_key`` the caller's key on create (None elsewhere).
    """

    merchant_id: str
    operation: str
    now: Callable[[], datetime]
    gateways: Mapping[str, Gateway]
    idempotency_key: str | None = None
