"""A complete AegisPay plugin: deny any payment whose metadata says ``block`` is ``"yes"``."""

from aegispay import FraudVerdict, HookContext, Payment, hookimpl


@hookimpl
def aegispay_check_fraud(payment: Payment, context: HookContext) -> FraudVerdict | None:
    if payment.metadata.get("block") == "yes":
        return FraudVerdict.deny(100, "blocked by metadata (block=yes)", source="example_fraud")
    return None  # abstain: let the other fraud checks decide
