"""AegisPay: payment orchestration with a state machine, an event store and an outbox, extended
through pluggy hooks. The names here are the public API."""

from .decisions import FraudVerdict, HookContext, RouteDecision, Verdict
from .errors import (
    AegisPayError,
    ConcurrencyConflict,
    ConfigError,
    FencingTokenRejected,
    GatewayDeclined,
    GatewayUnavailable,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    InvalidInput,
    InvalidMoney,
    InvalidTransition,
    LockTimeout,
    OperationNotAllowed,
    OutcomeUnknown,
    PaymentNotFound,
    PaymentValidationError,
    PluginError,
    Problem,
)
from .gateways import (
    AuthorizeRequest,
    CaptureRequest,
    FeeModel,
    Gateway,
    GatewayCapabilities,
    GatewayNotSent,
    GatewayResult,
    Operation,
    Outcome,
    RefundRequest,
    StatusRequest,
    VoidRequest,
)
from .hookspecs import hookimpl
from .money import Money
from .payment import Attempt, Payment, Refund
from .pluginmanager import PluginHost, make_plugin_host
from .requests import PaymentRequest
from .service import PaymentService, ReconcileReport
from .settings import Settings, load_settings
from .stack import build_service
from .states import TRANSITIONS, PaymentState

__all__ = [
    "TRANSITIONS",
    "AegisPayError",
    "Attempt",
    "AuthorizeRequest",
    "CaptureRequest",
    "ConcurrencyConflict",
    "ConfigError",
    "FeeModel",
    "FencingTokenRejected",
    "FraudVerdict",
    "Gateway",
    "GatewayCapabilities",
    "GatewayDeclined",
    "GatewayNotSent",
    "GatewayResult",
    "GatewayUnavailable",
    "HookContext",
    "IdempotencyKeyInProgress",
    "IdempotencyKeyReused",
    "InvalidInput",
    "InvalidMoney",
    "InvalidTransition",
    "LockTimeout",
    "Money",
    "Operation",
    "OperationNotAllowed",
    "Outcome",
    "OutcomeUnknown",
    "Payment",
    "PaymentNotFound",
    "PaymentRequest",
    "PaymentService",
    "PaymentState",
    "PaymentValidationError",
    "PluginError",
    "PluginHost",
    "Problem",
    "ReconcileReport",
    "Refund",
    "RefundRequest",
    "RouteDecision",
    "Settings",
    "StatusRequest",
    "Verdict",
    "VoidRequest",
    "build_service",
    "hookimpl",
    "load_settings",
    "make_plugin_host",
]
