"""The shipped pytest plugin (aegispay.testing): fake clock, register_plugin, hook recorder."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aegispay import FraudVerdict, Money, PaymentRequest, PaymentState, Verdict, hookimpl
from aegispay.errors import PluginError
from aegispay.testing import FakeClock, HookRecorder

pytestmark = pytest.mark.anyio


def test_fake_clock_moves_only_when_told(fake_clock: FakeClock) -> None:
    start = fake_clock()
    assert start == datetime(2024, 1, 1, tzinfo=UTC) and fake_clock() == start
    assert fake_clock.advance(30) == start + timedelta(seconds=30)
    assert fake_clock.advance(minutes=1) == start + timedelta(seconds=90)
    with pytest.raises(ValueError, match="back in time"):
        fake_clock.advance(-1)
    with pytest.raises(ValueError, match="time zone"):
        fake_clock.set(datetime(2024, 1, 1))


async def test_fake_clock_drives_a_service(aegispay_service: Any, fake_clock: FakeClock) -> None:
    service = aegispay_service(clock=fake_clock)
    payment = await service.pay(PaymentRequest(Money(100, "USD")))
    assert payment.created_at == fake_clock.now
    fake_clock.advance(hours=1)
    refunded = await service.refund(payment.id)
    assert refunded.updated_at == fake_clock.now


class Deny:
    @hookimpl
    def aegispay_check_fraud(self, payment: Any, context: Any) -> FraudVerdict:
        return FraudVerdict(Verdict.DENY, 100, "test says no")


async def test_register_plugin_applies_for_the_test_only(
    aegispay_service: Any, register_plugin: Any
) -> None:
    service = aegispay_service()
    register_plugin(service, Deny(), "deny")
    denied = await service.pay(PaymentRequest(Money(100, "USD")))
    assert denied.state is PaymentState.FAILED
    with pytest.raises(PluginError, match="already registered"):
        register_plugin(service, Deny(), "deny")


def test_register_plugin_unregisters_on_teardown(pytester_like: Any) -> None:
    pytester_like(
        """
        from aegispay import Money, PaymentRequest, PaymentState
        from aegispay.testing import make_test_service
        import pytest

        class Deny:
            def aegispay_check_fraud(self, payment, context):
                from aegispay import FraudVerdict, Verdict
                return FraudVerdict(Verdict.DENY, 100, "no")

        SERVICE = make_test_service()

        def test_registers(register_plugin):
            register_plugin(SERVICE, Deny(), "deny")
            assert SERVICE.host.pm.get_plugin("deny") is not None

        @pytest.mark.anyio
        async def test_gone_afterwards():
            assert SERVICE.host.pm.get_plugin("deny") is None
            paid = await SERVICE.pay(PaymentRequest(Money(100, "USD")))
            assert paid.state is PaymentState.COMPLETED
        """
    )


async def test_hook_recorder_sees_calls_without_changing_decisions(
    aegispay_service: Any, hook_recorder: Any
) -> None:
    service = aegispay_service()
    recorder: HookRecorder = hook_recorder(service)
    payment = await service.pay(PaymentRequest(Money(250, "USD")))
    assert payment.state is PaymentState.COMPLETED  # routing still chose, fraud still passed
    names = recorder.names()
    assert names.index("validate_payment") < names.index("check_fraud")
    assert names.index("select_gateway") < names.index("before_gateway_call")
    assert names.index("before_gateway_call") < names.index("after_gateway_call")
    fraud = recorder.of("check_fraud")
    assert len(fraud) == 1 and fraud[0]["payment"].id == payment.id
    recorder.clear()
    assert recorder.calls == []
    with pytest.raises(ValueError, match="not an AegisPay hook"):
        HookRecorder(["pytest_runtest_setup"])


@pytest.fixture
def pytester_like(tmp_path: Any) -> Any:
    """Run a small test file in a subprocess with the installed plugin (as a user would)."""

    def run(source: str) -> None:
        import textwrap

        path = tmp_path / "test_user.py"
        path.write_text(textwrap.dedent(source))
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert " passed" in done.stdout and "error" not in done.stdout, done.stdout

    return run


def test_importing_the_plugin_stays_cheap() -> None:
    code = (
        "import sys, aegispay.testing; "
        "heavy = [m for m in ('sqlalchemy', 'starlette', 'h11', 'redis', 'httpx') "
        "if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == ""
